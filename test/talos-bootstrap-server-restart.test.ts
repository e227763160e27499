/**
 * talos-bootstrap through a Temporal outage: its own dev server (SQLite file, so the restart
 * keeps every workflow) is killed with SIGKILL while `talosctl bootstrap` runs on the first
 * control plane, and started again on the same port and file. The one-shot step heartbeats by
 * default, so the lost call is noticed in seconds (not at its 10-minute start-to-close timeout),
 * and the result says that this run bootstrapped etcd.
 */
import path from 'node:path';
import type { ChildProcess } from 'node:child_process';
import { Client, Connection } from '@temporalio/client';
import { temporal } from '@temporalio/proto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TalosBootstrapResult } from '../common/talos.js';
import { startDevServer, type DevServer } from '../sim/dev-server.js';
import { freePort } from '../lib/processes.js';
import { spawnTs } from './harness/processes.js';
import {
  bootstrapThroughOutage,
  labWorkerEnv,
  oneControlPlane,
  startTalosLab,
  type TalosLab,
} from './harness/talos.js';
import { NAMESPACE, testDataConverter } from './harness/temporal.js';

const EventType = temporal.api.enums.v1.EventType;
const CLUSTER = 'outage-lab';

describe('talosBootstrap with its Temporal server killed and restarted during the etcd bootstrap', () => {
  let lab: TalosLab;
  let server: DevServer;
  let worker: { child: ChildProcess; output: () => string } | undefined;
  let dbFile: string;
  let port: number;

  const start = (): Promise<DevServer> =>
    startDevServer({ dbFile, port, logFile: path.join(lab.dir, `temporal-${Date.now()}.log`) });

  beforeAll(async () => {
    lab = await startTalosLab({ cluster: oneControlPlane, clusterName: CLUSTER });
    dbFile = path.join(lab.dir, 'temporal.db');
    port = await freePort();
    server = await start();
  });
  afterAll(async () => {
    if (worker && worker.child.exitCode === null) worker.child.kill('SIGKILL');
    await server?.stop();
    await lab?.stop();
  });

  it('costs seconds, not minutes, and the result says this run bootstrapped etcd', async () => {
    const taskQueue = 'talos-outage';
    worker = spawnTs('workers/main.ts', await labWorkerEnv(lab, { temporalAddress: server.address, taskQueue }));
    const connect = async (): Promise<Client> =>
      new Client({
        connection: await Connection.connect({ address: server.address }),
        namespace: NAMESPACE,
        dataConverter: testDataConverter,
      });
    // The bootstrap reaches the node (etcd starts there); its answer is held while Temporal is down.
    let restartedAt = 0;
    const handle = await bootstrapThroughOutage(lab, {
      connect,
      taskQueue,
      outage: async () => {
        await server.kill();
        server = await start();
        restartedAt = Date.now();
      },
    });
    const run = (await handle.result()) as TalosBootstrapResult;
    expect(run.etcd).toEqual({ node: 'talos-cp-1', bootstrappedByThisRun: true });
    expect(run.changes).toContain('bootstrapped etcd on talos-cp-1');
    expect(lab.standin.bootstraps).toEqual([{ node: 'talos-cp-1', outcome: 'bootstrapped' }]);

    // The bootstrap step ended seconds after the server came back, far inside its 10-minute
    // start-to-close timeout: its heartbeat timeout (10 s by default) noticed the lost call.
    const events = (await handle.fetchHistory()).events ?? [];
    const scheduled = events.find(
      (e) => e.activityTaskScheduledEventAttributes?.activityType?.name === 'talosBootstrap',
    )!;
    expect(scheduled.activityTaskScheduledEventAttributes?.heartbeatTimeout?.seconds?.toString()).toBe('10');
    const completed = events.find(
      (e) =>
        e.eventType === EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED &&
        String(e.activityTaskCompletedEventAttributes?.scheduledEventId) === String(scheduled.eventId),
    )!;
    const completedAt = Number(completed.eventTime!.seconds) * 1000;
    expect(completedAt - restartedAt).toBeLessThan(60_000);
  }, 180_000);
});
