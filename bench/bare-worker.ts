/**
 * The worker-startup bench's baseline: the smallest worker of the same SDK (one no-op workflow,
 * one no-op activity, a prebuilt bundle), on TEMPORAL_ADDRESS and LABWRIGHT_TASK_QUEUE.
 */
import { NativeConnection, Runtime, Worker } from '@temporalio/worker';
import { quietLogger } from '../lib/log.js';

Runtime.install({ logger: quietLogger(['error']), shutdownSignals: ['SIGINT', 'SIGTERM'] });
const connection = await NativeConnection.connect({ address: process.env.TEMPORAL_ADDRESS! });
const worker = await Worker.create({
  connection,
  taskQueue: process.env.LABWRIGHT_TASK_QUEUE!,
  workflowBundle: { codePath: process.env.LABWRIGHT_WORKFLOW_BUNDLE! },
  activities: { noop: async () => undefined },
});
await worker.run();
await connection.close();
