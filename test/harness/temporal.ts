/** What a test needs to run workflows on the shared dev server: clients, workers, task queues. */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { randomUUID } from 'node:crypto';
import { Client, Connection } from '@temporalio/client';
import type { DataConverter } from '@temporalio/common';
import { NativeConnection, Runtime, type Worker, type WorkerOptions } from '@temporalio/worker';
import { inject } from 'vitest';
import { HISTOGRAM_BUCKETS } from '../../common/metrics.js';
import { AesGcmCodec, keyIdOf, parseKey } from '../../lib/codec.js';
import { quietLogger } from '../../lib/log.js';
import { projectRoot } from '../../lib/paths.js';
import { createLabWorker } from '../../workers/worker.js';

export const NAMESPACE = 'default';

/** The key recorded histories under test/histories were encrypted with. Test-only. */
export const TEST_CODEC_KEY = parseKey(
  readFileSync(path.join(projectRoot, 'test', 'fixtures', 'codec-test.key'), 'utf8'),
  'test/fixtures/codec-test.key',
);

export const testDataConverter: DataConverter = {
  payloadCodecs: [new AesGcmCodec(new Map([[keyIdOf(TEST_CODEC_KEY), TEST_CODEC_KEY]]))],
};

let quietRuntime = false;
/** Keeps the SDK's own log lines out of test output unless LABWRIGHT_TEST_LOGS=1. */
export function installQuietRuntime(): void {
  if (quietRuntime || process.env.LABWRIGHT_TEST_LOGS === '1') return;
  quietRuntime = true;
  Runtime.install({ logger: quietLogger() });
}

/**
 * Installs the runtime as workers/main.ts does, with the Prometheus endpoint at `bindAddress`
 * (quiet unless LABWRIGHT_TEST_LOGS=1). Call it before any worker starts in the test file.
 */
export function installMetricsRuntime(bindAddress: string): void {
  quietRuntime = true;
  Runtime.install({
    ...(process.env.LABWRIGHT_TEST_LOGS === '1' ? {} : { logger: quietLogger() }),
    telemetryOptions: { metrics: { prometheus: { bindAddress, histogramBucketOverrides: HISTOGRAM_BUCKETS } } },
  });
}

export function temporalAddress(): string {
  return inject('temporalAddress');
}

/** A client with the project's codec, as the `labwright` command and other programs use it. */
export async function testClient(
  dataConverter: DataConverter = testDataConverter,
  address = temporalAddress(),
): Promise<Client> {
  const connection = await Connection.connect({ address });
  return new Client({ connection, namespace: NAMESPACE, dataConverter });
}

/** A task queue (and workflow ID prefix) no other test uses. */
export function uniqueName(prefix: string): string {
  return `${prefix}-${randomUUID().slice(0, 8)}`;
}

export interface TestWorkerOptions {
  activities?: WorkerOptions['activities'];
  taskQueue?: string;
  dataConverter?: DataConverter;
  shutdownGraceTime?: WorkerOptions['shutdownGraceTime'];
  /** A Temporal server of the test's own; the run's shared dev server by default. */
  address?: string;
}

export interface TestWorker {
  worker: Worker;
  taskQueue: string;
  /** Resolves when the worker has stopped polling and finished. */
  running: Promise<void>;
  stop(): Promise<void>;
}

/** Starts a worker with the prebuilt test bundle (every real workflow plus test-only ones). */
export async function startTestWorker(opts: TestWorkerOptions = {}): Promise<TestWorker> {
  installQuietRuntime();
  const taskQueue = opts.taskQueue ?? uniqueName('tq');
  const connection = await NativeConnection.connect({ address: opts.address ?? temporalAddress() });
  const worker = await createLabWorker({
    connection,
    namespace: NAMESPACE,
    taskQueue,
    dataConverter: opts.dataConverter ?? testDataConverter,
    activities: opts.activities ?? {},
    workflowBundle: { codePath: inject('workflowBundlePath') },
    shutdownGraceTime: opts.shutdownGraceTime ?? '2 seconds',
  });
  const running = worker.run().finally(() => connection.close());
  return {
    worker,
    taskQueue,
    running,
    stop: async () => {
      if (worker.getState() === 'RUNNING') worker.shutdown();
      await running;
    },
  };
}

/** Runs `body` with a worker polling its own task queue, and stops the worker afterwards. */
export async function withWorker<T>(opts: TestWorkerOptions, body: (w: TestWorker) => Promise<T>): Promise<T> {
  const w = await startTestWorker(opts);
  try {
    return await body(w);
  } finally {
    await w.stop();
  }
}
