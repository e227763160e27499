/** The worker every entry point builds: the same options in production, `npm start` and tests. */
import type { DataConverter } from '@temporalio/common';
import { Worker, type NativeConnection, type WorkerOptions } from '@temporalio/worker';
import { projectRoot } from '../lib/paths.js';
import { activityFailureMetrics } from './activity-metrics.js';
import path from 'node:path';

export const WORKFLOWS_PATH = path.join(projectRoot, 'workflows', 'index.ts');

export interface LabWorkerOptions {
  connection: NativeConnection;
  namespace: string;
  taskQueue: string;
  dataConverter: DataConverter;
  activities: WorkerOptions['activities'];
  /** A prebuilt bundle (tests build it once); the workflows are bundled from source otherwise. */
  workflowBundle?: WorkerOptions['workflowBundle'];
  /** How long in-flight activities may run on after SIGINT/SIGTERM before they are cancelled. */
  shutdownGraceTime?: WorkerOptions['shutdownGraceTime'];
  /** Worker plugins: the OpenTelemetry tracing of lib/tracing.ts when it is on. */
  plugins?: WorkerOptions['plugins'];
}

export async function createLabWorker(opts: LabWorkerOptions): Promise<Worker> {
  return Worker.create({
    connection: opts.connection,
    namespace: opts.namespace,
    taskQueue: opts.taskQueue,
    dataConverter: opts.dataConverter,
    activities: opts.activities,
    interceptors: { activity: [activityFailureMetrics] },
    ...(opts.workflowBundle ? { workflowBundle: opts.workflowBundle } : { workflowsPath: WORKFLOWS_PATH }),
    shutdownGraceTime: opts.shutdownGraceTime ?? '30 seconds',
    plugins: opts.plugins,
    // Heartbeats carry cancellation back to an activity: without a cap the SDK sends them only every
    // 0.8 × heartbeatTimeout, so cancelling a long Packer build would take most of a minute to arrive.
    maxHeartbeatThrottleInterval: '5 seconds',
    // After a crash, the dead worker's sticky queue holds the next workflow task (an idle timer
    // firing, say) this long before another worker may take it; the SDK's 10 s default delays
    // every such handover.
    stickyQueueScheduleToStartTimeout: '3 seconds',
  });
}
