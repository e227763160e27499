/**
 * talos-bootstrap with its worker as a separate OS process (workers/main.ts, as production runs it),
 * killed with SIGKILL, together with the talosctl it is running, at the riskiest moments: after a
 * node took its machine config and after the first control plane bootstrapped etcd, each before
 * the answer got back. A new worker process takes over each time; etcd is bootstrapped once.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { CoreV1Api } from '@kubernetes/client-node';
import type { WorkflowHandle } from '@temporalio/client';
import { temporal } from '@temporalio/proto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TalosBootstrapResult } from '../common/talos.js';
import { kubeConfigFor } from './harness/kube-controllers.js';
import { startWorkerProcess, type WorkerProcess } from './harness/processes.js';
import { labWorkerEnv, startTalosLab, type Draft, type TalosLab } from './harness/talos.js';
import { temporalAddress, testClient, uniqueName } from './harness/temporal.js';

const EventType = temporal.api.enums.v1.EventType;

/** Three control planes, and two workers: a VM on the IoT VLAN and the Raspberry Pi. */
function threePlusTwo(home: Draft): void {
  home.workers = (home.workers as Draft[]).filter((w) => ['talos-iot-1', 'rpi5'].includes(w.name as string));
}

/** This file's cluster: talos-bootstrap runs only as talos-bootstrap/<cluster>. */
const CLUSTER = 'kill-lab';

/** Every file under `dir` (relative paths). */
async function filesUnder(dir: string): Promise<string[]> {
  const entries = await fs.readdir(dir, { recursive: true, withFileTypes: true }).catch(() => []);
  return entries.filter((e) => e.isFile()).map((e) => path.relative(dir, path.join(e.parentPath, e.name)));
}

describe('talosBootstrap with its worker process killed (SIGKILL) mid-step', () => {
  let lab: TalosLab;
  let tempRoot: string;
  let workerEnv: NodeJS.ProcessEnv;
  const workers: WorkerProcess[] = [];

  beforeAll(async () => {
    lab = await startTalosLab({ cluster: threePlusTwo, clusterName: CLUSTER });
    tempRoot = path.join(lab.dir, 'worker-tmp');
    workerEnv = await labWorkerEnv(lab, {
      temporalAddress: temporalAddress(),
      taskQueue: uniqueName('talos-kill'),
      extra: { LABWRIGHT_TALOS_TMPDIR: tempRoot },
    });
  });
  afterAll(async () => {
    for (const w of workers) if (w.child.exitCode === null && w.child.signalCode === null) kill(w, 'SIGKILL');
    await Promise.all(workers.map((w) => w.exited));
    await lab?.stop();
  });

  function startWorker(): WorkerProcess {
    const w = startWorkerProcess(workerEnv);
    workers.push(w);
    return w;
  }

  /** The worker and every program it runs (tsx's node, talosctl), as when its machine dies. */
  function kill(w: WorkerProcess, signal: NodeJS.Signals): void {
    process.kill(-w.child.pid!, signal);
  }

  async function historyOf(handle: WorkflowHandle): Promise<temporal.api.history.v1.IHistoryEvent[]> {
    return (await handle.fetchHistory()).events ?? [];
  }

  /** Completed activities of `type` in the history so far. */
  async function completed(handle: WorkflowHandle, type: string): Promise<number> {
    const events = await historyOf(handle);
    const scheduled = new Set(
      events
        .filter((e) => e.activityTaskScheduledEventAttributes?.activityType?.name === type)
        .map((e) => String(e.eventId)),
    );
    return events.filter(
      (e) =>
        e.eventType === EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED &&
        scheduled.has(String(e.activityTaskCompletedEventAttributes?.scheduledEventId)),
    ).length;
  }

  it('ends with one etcd bootstrap and no AlreadyExists when killed after apply-config and after bootstrap', async () => {
    const client = await testClient();
    // Both answers are held back after the node acted on them; the worker is killed meanwhile.
    const apply = lab.standin.holdNextAnswer(
      (c) => c.command === 'apply-config' && !c.argv.includes('--dry-run') && c.code === 0,
    );
    const bootstrap = lab.standin.holdNextAnswer((c) => c.command === 'bootstrap' && c.code === 0);

    const first = startWorker();
    const handle = await client.workflow.start('talosBootstrap', {
      taskQueue: workerEnv.LABWRIGHT_TASK_QUEUE!,
      workflowId: `talos-bootstrap/${CLUSTER}`,
      args: [{ cluster: CLUSTER, inventory: lab.inventory, waitSeconds: 60, heartbeatSeconds: 5 }],
    });
    const result = handle.result();
    result.catch(() => undefined); // awaited below
    /** A held call, or the run's failure if it ends first. */
    const held = <T>(p: Promise<T>): Promise<T> =>
      Promise.race([
        p,
        result.then(() => {
          throw new Error('the run finished before the held call reached the node');
        }),
      ]);

    // 1. A node has taken its config in maintenance mode (and is rebooting into it); the worker dies
    //    before it hears so.
    const applied = await held(apply.reached);
    expect(await completed(handle, 'talosApplyConfig')).toBeLessThan(5);
    kill(first, 'SIGKILL');
    expect(await first.exited).toBe('SIGKILL');
    // The killed worker's talosctl files (the machine config, the talosconfig: a client key) are
    // left in its private temp folder...
    expect(await filesUnder(tempRoot)).toEqual(
      expect.arrayContaining([expect.stringMatching(/^\d+\/talosctl-\w+\/machine\.yaml$/)]),
    );
    apply.release();
    const second = startWorker();

    // 2. etcd is bootstrapped on the first control plane; the worker dies before it hears so, so
    //    nothing in the workflow's history says it happened.
    const bootstrapped = await held(bootstrap.reached);
    expect(bootstrapped.node).toBe('talos-cp-1');
    expect(lab.standin.etcdMembers()).toContain('talos-cp-1');
    expect(await completed(handle, 'talosBootstrap')).toBe(0);
    kill(second, 'SIGKILL');
    expect(await second.exited).toBe('SIGKILL');
    bootstrap.release();
    const third = startWorker();

    const run: TalosBootstrapResult = await result;
    // ...and the next worker removed them as it started: no secret file is left behind.
    expect(await filesUnder(tempRoot)).toEqual([]);

    // Exactly one bootstrap reached a node, and nothing ever answered AlreadyExists.
    expect(lab.standin.bootstraps).toEqual([{ node: 'talos-cp-1', outcome: 'bootstrapped' }]);
    expect(lab.standin.calls.filter((c) => /AlreadyExists/.test(c.stderr))).toEqual([]);
    expect(lab.standin.etcdMembers().sort()).toEqual(['talos-cp-1', 'talos-cp-2', 'talos-cp-3']);
    expect(run.etcd.node).toBe('talos-cp-1');
    expect((await handle.describe()).memo).toMatchObject({ etcdBootstrapped: true, etcdNode: 'talos-cp-1' });

    // The killed calls were retried by Temporal on the next worker, after their heartbeat timeout:
    // the config applied once is not applied again, and the bootstrap's retry found etcd running.
    const events = await historyOf(handle);
    const retried = events
      .filter((e) => e.eventType === EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED)
      .filter((e) => (e.activityTaskStartedEventAttributes?.attempt ?? 1) > 1)
      .map((e) => {
        const scheduled = events.find(
          (s) => String(s.eventId) === String(e.activityTaskStartedEventAttributes?.scheduledEventId),
        );
        return {
          type: scheduled?.activityTaskScheduledEventAttributes?.activityType?.name,
          failure: e.activityTaskStartedEventAttributes?.lastFailure?.timeoutFailureInfo?.timeoutType,
        };
      });
    const heartbeat = temporal.api.enums.v1.TimeoutType.TIMEOUT_TYPE_HEARTBEAT;
    expect(retried).toContainEqual({ type: 'talosApplyConfig', failure: heartbeat });
    expect(retried).toContainEqual({ type: 'talosBootstrap', failure: heartbeat });
    const applies = lab.standin.calls.filter(
      (c) => c.node === applied.node && c.command === 'apply-config' && !c.argv.includes('--dry-run') && c.code === 0,
    );
    expect(applies).toHaveLength(1);

    // The cluster is whole: every node Ready in the real API server, the kubeconfig stored.
    const core = kubeConfigFor(lab.kube).makeApiClient(CoreV1Api);
    expect((await core.listNode()).items.map((n) => n.metadata?.name).sort()).toEqual([
      'rpi5',
      'talos-cp-1',
      'talos-cp-2',
      'talos-cp-3',
      'talos-iot-1',
    ]);
    expect(await lab.secrets.resolve(run.kubeconfig)).toContain(lab.kube.server);
    // The third worker finished the run, and stops gracefully (tsx passes SIGTERM on).
    expect(third.output()).toContain('"msg":"worker started"');
    third.child.kill('SIGTERM');
    expect(await third.exited).toBe(0);
  }, 120_000);
});
