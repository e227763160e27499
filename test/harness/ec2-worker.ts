/**
 * A worker in its own process, for the test that kills it with SIGKILL: the EC2 activities and
 * the prebuilt workflow bundle, on the task queue and Temporal address given in the environment.
 * Prints `worker ready` once it polls.
 *   TEMPORAL_ADDRESS, LABWRIGHT_TASK_QUEUE, LABWRIGHT_WORKFLOW_BUNDLE, AWS_ENDPOINT_URL_EC2,
 *   AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, LABWRIGHT_EC2_ADDRESS_MAP, LABWRIGHT_EC2_POLL_MS
 */
import { readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { NativeConnection, Runtime } from '@temporalio/worker';
import { createEc2Activities } from '../../activities/ec2.js';
import { AesGcmCodec, keyIdOf, parseKey } from '../../lib/codec.js';
import { projectRoot } from '../../lib/paths.js';
import { SecretStore } from '../../lib/secrets.js';
import { createLabWorker } from '../../workers/worker.js';

const env = process.env;
const quiet = () => undefined;
Runtime.install({ logger: { log: quiet, trace: quiet, debug: quiet, info: quiet, warn: quiet, error: quiet } });

const key = parseKey(readFileSync(path.join(projectRoot, 'test', 'fixtures', 'codec-test.key'), 'utf8'), 'test key');
const connection = await NativeConnection.connect({ address: env.TEMPORAL_ADDRESS! });
const worker = await createLabWorker({
  connection,
  namespace: 'default',
  taskQueue: env.LABWRIGHT_TASK_QUEUE!,
  dataConverter: { payloadCodecs: [new AesGcmCodec(new Map([[keyIdOf(key), key]]))] },
  activities: createEc2Activities({ secrets: new SecretStore(path.join(os.tmpdir(), 'labwright-none'), env), env }),
  workflowBundle: { codePath: env.LABWRIGHT_WORKFLOW_BUNDLE! },
  shutdownGraceTime: '1 second',
});
const running = worker.run();
console.log('worker ready');
await running;
await connection.close();
