/**
 * The peers of the burst benches: a Temporal server, moto behind the recording fault proxy, a
 * fake model server, the pool's launch template, and a worker in a child process (the EC2
 * activities, the prebuilt workflow bundle) on `taskQueue`. Everything is stopped by `cleanups`.
 * The server is the dev server (SQLite, what `npm start` runs) or, with `server: 'production'`,
 * the production topology (temporal-server on PostgreSQL, deploy/temporal's settings).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Client, Connection } from '@temporalio/client';
import { bundleWorkflowCode } from '@temporalio/worker';
import { AesGcmCodec, keyIdOf, parseKey } from '../lib/codec.js';
import { quietLogger } from '../lib/log.js';
import { cacheDir, projectRoot } from '../lib/paths.js';
import { stopProcess } from '../lib/processes.js';
import { startDevServer } from '../sim/dev-server.js';
import { ec2Env, prepareBurstPool, startFakeModelServer, startMotoServer, type FakeModelServer } from '../sim/ec2.js';
import { startFaultProxy, type FaultProxy } from '../test/harness/fault-proxy.js';
import {
  runSetupStep,
  startPostgres,
  startTemporalServer,
  temporalEnv,
  temporalSettingsFile,
} from '../test/harness/temporal-cluster.js';

export type ServerKind = 'dev' | 'production';

export interface BenchServer {
  address: string;
  /** Its processes by name, for their CPU (each with the processes below it). */
  processes: Array<{ name: string; pid: number }>;
}

export interface BurstLab {
  client: Client;
  server: BenchServer;
  faults: FaultProxy;
  model: FakeModelServer;
  worker: ChildProcess;
}

export async function startBurstLab(
  cleanups: Array<() => Promise<unknown>>,
  opts: { taskQueue: string; region: string; pollMs: number; server?: ServerKind },
): Promise<BurstLab> {
  const work = await fs.mkdtemp(path.join(os.tmpdir(), 'labwright-bench-'));
  cleanups.push(() => fs.rm(work, { recursive: true, force: true }));
  console.log(`starting peers: Temporal (${opts.server ?? 'dev'} server), moto, fake model server, worker…`);
  const server = await startServer(opts.server ?? 'dev', work, cleanups);
  const moto = await startMotoServer({ logFile: path.join(cacheDir, 'bench-logs', 'moto.log') });
  cleanups.push(() => moto.stop());
  const faults = await startFaultProxy(moto.endpoint);
  cleanups.push(() => faults.stop());
  const model = await startFakeModelServer({ name: 'bench' });
  cleanups.push(() => model.stop());
  await prepareBurstPool(moto.endpoint, {
    region: opts.region,
    instanceTypes: ['g5.xlarge'],
    launchTemplate: { name: 'llm-gpu-worker' },
  });

  const bundle = await bundleWorkflowCode({
    workflowsPath: path.join(projectRoot, 'workflows', 'index.ts'),
    logger: quietLogger(['error']),
  });
  const bundlePath = path.join(work, 'workflows.js');
  await fs.writeFile(bundlePath, bundle.code);
  const worker: ChildProcess = spawn(
    process.execPath,
    ['--import', 'tsx', path.join(projectRoot, 'test', 'harness', 'ec2-worker.ts')],
    {
      cwd: projectRoot,
      env: {
        ...process.env,
        ...ec2Env(faults.url, model.port),
        TEMPORAL_ADDRESS: server.address,
        LABWRIGHT_TASK_QUEUE: opts.taskQueue,
        LABWRIGHT_WORKFLOW_BUNDLE: bundlePath,
        LABWRIGHT_EC2_POLL_MS: String(opts.pollMs),
      },
      stdio: ['ignore', 'pipe', 'inherit'],
    },
  );
  cleanups.unshift(() => stopProcess(worker, 3000));
  await new Promise<void>((resolve, reject) => {
    worker.stdout!.on('data', (d: Buffer) => d.toString().includes('worker ready') && resolve());
    worker.once('exit', (code) => reject(new Error(`worker exited (${code})`)));
  });

  const key = parseKey(await fs.readFile(path.join(projectRoot, 'test', 'fixtures', 'codec-test.key'), 'utf8'), 'key');
  const connection = await Connection.connect({ address: server.address });
  cleanups.unshift(() => connection.close());
  const client = new Client({
    connection,
    dataConverter: { payloadCodecs: [new AesGcmCodec(new Map([[keyIdOf(key), key]]))] },
  });
  return { client, server, faults, model, worker };
}

async function startServer(
  kind: ServerKind,
  work: string,
  cleanups: Array<() => Promise<unknown>>,
): Promise<BenchServer> {
  if (kind === 'dev') {
    const dev = await startDevServer({ logFile: path.join(cacheDir, 'bench-logs', 'temporal.log') });
    cleanups.push(() => dev.stop());
    return { address: dev.address, processes: [{ name: 'Temporal dev server', pid: dev.pid! }] };
  }
  const pg = await startPostgres((await temporalSettingsFile()).POSTGRES_USER!);
  cleanups.push(() => pg.stop());
  const env = await temporalEnv(pg);
  await runSetupStep('schema', env);
  const temporal = await startTemporalServer(work, env);
  cleanups.unshift(() => temporal.stop());
  await runSetupStep('namespace', { ...env, TEMPORAL_ADDRESS: temporal.address });
  return {
    address: temporal.address,
    processes: [
      { name: 'temporal-server', pid: temporal.pid() },
      { name: 'PostgreSQL', pid: pg.pid },
    ],
  };
}
