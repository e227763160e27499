// drRestore's etcd target on the real dev server, fakepve, a real kube-apiserver and the Talos
// stand-in (sim/talos-standin.ts): a one-control-plane cluster bootstrapped by talosBootstrap, a
// snapshot taken with `talosctl etcd snapshot`, and recoveries through `talosctl bootstrap
// --recover-from`, which the stand-in carries out as Talos does (status, upload, bootstrap into an
// empty etcd, the appended sha256 checked) and records.
import { createHash } from 'node:crypto';
import { execFile } from 'node:child_process';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { WorkflowFailedError } from '@temporalio/client';
import { ApplicationFailure } from '@temporalio/common';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createDrReportActivities } from '../activities/dr-reports.js';
import type { DrPlan, DrReport } from '../common/dr-restore.js';
import { standinSnapshotStatus, type StandinSnapshotStatus } from '../sim/talos-standin.js';
import { startTalosLab, type Draft, type TalosLab } from './harness/talos.js';
import { testClient, uniqueName, withWorker } from './harness/temporal.js';

const run = promisify(execFile);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const CP = '192.168.1.101';

let lab: TalosLab;
let activities: Record<string, (...args: never[]) => Promise<unknown>>;
let snapshotDir: string;
let snapshot: string;
let taken: StandinSnapshotStatus;

/** One control plane, no workers. */
function oneControlPlane(home: Draft): void {
  home.controlPlane = [(home.controlPlane as Draft[])[0]];
  home.workers = [];
}

/** talosctl (the stand-in's) against the control plane, with the cluster's talosconfig. */
async function talosctl(...args: string[]): Promise<{ stdout: string; stderr: string }> {
  const tc = path.join(lab.dir, 'talosconfig');
  await fs.writeFile(tc, await lab.secrets.resolve({ store: 'talos/home/talosconfig' }), { mode: 0o600 });
  const address = lab.standin.addressMap[CP]!;
  return run(lab.standin.talosctl, ['--talosconfig', tc, '-e', address, '-n', address, ...args]);
}

function input(plan: string, mode: 'drill' | 'restore', over: Record<string, unknown> = {}) {
  return {
    plan,
    mode,
    inventory: lab.inventory,
    targets: [{ kind: 'etcd', cluster: 'home', snapshotDir, ...over }],
    maxBackupAge: '1h',
    pollSeconds: 0.2,
    etcdTimeoutSeconds: 5,
  };
}

async function planOf(handle: { query: <T>(name: string) => Promise<T> }): Promise<DrPlan> {
  for (let i = 0; i < 100; i++) {
    const shown = await handle.query<DrPlan | null>('plan');
    if (shown) return shown;
    await sleep(100);
  }
  throw new Error('no plan');
}

beforeAll(async () => {
  lab = await startTalosLab({ cluster: oneControlPlane });
  activities = { ...lab.activities, ...createDrReportActivities({ dir: path.join(lab.dir, 'reports') }) };
  const client = await testClient();
  await withWorker({ activities }, async ({ taskQueue }) =>
    client.workflow.execute('talosBootstrap', {
      taskQueue,
      workflowId: `talos-bootstrap/home-${uniqueName('etcd')}`,
      args: [{ cluster: 'home', inventory: lab.inventory, waitSeconds: 60 }],
    }),
  );
  // The backup: `talosctl etcd snapshot`, as a CronJob or an operator takes it.
  snapshotDir = path.join(lab.dir, 'etcd-backups');
  await fs.mkdir(snapshotDir);
  snapshot = path.join(snapshotDir, 'home-2026.snapshot');
  const out = await talosctl('etcd', 'snapshot', snapshot);
  expect(out.stdout).toMatch(
    /^etcd snapshot saved to ".*home-2026\.snapshot" \(1048608 bytes\)\nsnapshot info: hash [0-9a-f]{8}, revision \d+/,
  );
  taken = standinSnapshotStatus(await fs.readFile(snapshot)) as StandinSnapshotStatus;
  expect(taken.revision).toBeGreaterThan(0);
}, 240_000);
afterAll(async () => {
  await lab?.stop();
});

describe('drRestore of etcd through Talos recovery', () => {
  it('refuses a recovery while etcd still has members, before the approval and before anything is touched', async () => {
    expect(lab.standin.etcdMembers()).toEqual(['talos-cp-1']);
    const callsBefore = lab.standin.calls.length;
    const client = await testClient();
    const err = await withWorker({ activities }, async ({ taskQueue }) =>
      client.workflow
        .execute('drRestore', {
          taskQueue,
          workflowId: `dr-restore/${uniqueName('etcd-busy')}`,
          args: [input(uniqueName('etcd-busy'), 'restore')],
        })
        .catch((e: unknown) => e),
    );
    expect(err).toBeInstanceOf(WorkflowFailedError);
    const cause = (err as WorkflowFailedError).cause as ApplicationFailure;
    expect(cause.type).toBe('PreconditionFailed');
    expect(cause.message).toMatch(
      /etcd home: etcd on talos-cp-1 \(192\.168\.1\.101\) has 1 member\(s\) \(talos-cp-1\): Talos recovers only into an empty etcd; reset every control plane with --system-labels-to-wipe=EPHEMERAL first; nothing was touched$/,
    );
    // Only looked: one `etcd members`, no bootstrap, no upload; etcd as it was.
    const calls = lab.standin.calls.slice(callsBefore).map((c) => c.command);
    expect(calls).toEqual(['etcd members']);
    expect(lab.standin.recoveries).toEqual([]);
    expect(lab.standin.bootstraps).toHaveLength(1);
    expect(lab.standin.etcdState()?.recoveredFrom).toBeUndefined();
  });

  it('drills the snapshot: what talosctl and etcd check on a recovery, nothing recovered', async () => {
    const callsBefore = lab.standin.calls.length;
    const client = await testClient();
    const report = (await withWorker({ activities }, async ({ taskQueue }) =>
      client.workflow.execute('drRestore', {
        taskQueue,
        workflowId: `dr-drill/${uniqueName('etcd')}`,
        args: [input(uniqueName('etcd'), 'drill')],
      }),
    )) as DrReport;
    expect(report.ok).toBe(true);
    expect(report.targets[0]!.verification).toMatch(
      /^snapshot intact: bbolt database, 1048608 bytes, appended sha256 matches, sha256 [0-9a-f]{12} \(not recovered in a drill\)$/,
    );
    expect(report.targets[0]!.rpoMs).toBeGreaterThanOrEqual(0);
    expect(lab.standin.calls.length).toBe(callsBefore); // a drill talks to no node
  });

  it('after the control plane is reset, a restore waits for approval and recovers from the snapshot exactly once, with RTO and RPO', async () => {
    // The disaster: every control plane reset, EPHEMERAL (etcd's data) wiped; the config kept.
    await talosctl('reset', '--graceful=false', '--reboot', '--system-labels-to-wipe=EPHEMERAL');
    expect(lab.standin.etcdMembers()).toEqual([]);
    expect(lab.standin.etcdState()).toBeUndefined();
    await sleep(500); // the reboot

    const plan = uniqueName('etcd-restore');
    const client = await testClient();
    const report = await withWorker({ activities }, async ({ taskQueue }) => {
      const handle = await client.workflow.start('drRestore', {
        taskQueue,
        workflowId: `dr-restore/${plan}`,
        args: [input(plan, 'restore')],
      });
      const shown = await planOf(handle);
      expect(shown.items[0]).toMatchObject({
        target: 'etcd home',
        overwrites: 'etcd of cluster home (must be empty: EPHEMERAL wiped)',
        backup: { id: snapshot, size: 1048608 },
      });
      await sleep(300);
      expect(lab.standin.recoveries).toEqual([]); // nothing before the approval
      await handle.signal('approve', { digest: shown.digest, by: 'operator', comment: 'lost all control planes' });
      return (await handle.result()) as DrReport;
    });

    // Exactly one recovery, from this snapshot, and etcd is at its revision.
    expect(lab.standin.recoveries).toEqual([
      {
        node: 'talos-cp-1',
        outcome: 'recovered',
        snapshot: taken,
        skipHashCheck: false,
      },
    ]);
    expect(taken.fileSha256).toBe(
      createHash('sha256')
        .update(await fs.readFile(snapshot))
        .digest('hex'),
    );
    const state = lab.standin.etcdState()!;
    expect(state.recoveredFrom).toEqual(taken);
    expect(state.revision).toBeGreaterThanOrEqual(taken.revision);
    expect(lab.standin.etcdMembers()).toEqual(['talos-cp-1']);
    const recoverCalls = lab.standin.calls.filter(
      (c) => c.command === 'bootstrap' && c.argv.some((a) => a.startsWith('--recover-from=')),
    );
    expect(recoverCalls).toHaveLength(1);

    expect(report.ok).toBe(true);
    const t = report.targets[0]!;
    expect(t).toMatchObject({ target: 'etcd home', kind: 'etcd', ok: true, restoredTo: 'etcd of home' });
    expect(t.verification).toBe(
      `etcd recovered from snapshot hash ${taken.hash}, revision ${taken.revision}, ${taken.totalKeys} keys (1 member(s)); the Kubernetes API answers`,
    );
    expect(t.rtoMs).toBeGreaterThan(0);
    expect(t.rpoMs).toBeGreaterThanOrEqual(Date.now() - (await fs.stat(snapshot)).mtimeMs - 120_000);
    expect(report.totalRtoMs).toBeGreaterThanOrEqual(t.rtoMs!);
    expect(report.maxRpoMs).toBe(t.rpoMs);
    expect(report.summary).toMatch(/^restore .*: 1 target\(s\) restored and verified; RTO \S+, RPO \S+$/);
  });

  it('a raw database copy without its sha256 is refused before anything is touched, unless skipHashCheck', async () => {
    const raw = path.join(lab.dir, 'raw-backups');
    await fs.mkdir(raw);
    const file = await fs.readFile(snapshot);
    await fs.writeFile(path.join(raw, 'member-snap.db'), file.subarray(0, file.length - 32));
    const client = await testClient();
    const err = await withWorker({ activities }, async ({ taskQueue }) =>
      client.workflow
        .execute('drRestore', {
          taskQueue,
          workflowId: `dr-drill/${uniqueName('etcd-raw')}`,
          args: [
            {
              ...input(uniqueName('etcd-raw'), 'drill'),
              targets: [{ kind: 'etcd', cluster: 'home', snapshotDir: raw }],
            },
          ],
        })
        .catch((e: unknown) => e),
    );
    const cause = (err as WorkflowFailedError).cause as ApplicationFailure;
    expect(cause.type).toBe('PreconditionFailed');
    expect(cause.message).toMatch(
      /no appended sha256 \(a raw copy of member\/snap\/db.*--recover-skip-hash-check\); nothing was touched$/,
    );
    const ok = (await withWorker({ activities }, async ({ taskQueue }) =>
      client.workflow.execute('drRestore', {
        taskQueue,
        workflowId: `dr-drill/${uniqueName('etcd-raw')}`,
        args: [
          {
            ...input(uniqueName('etcd-raw'), 'drill'),
            targets: [{ kind: 'etcd', cluster: 'home', snapshotDir: raw, skipHashCheck: true }],
          },
        ],
      }),
    )) as DrReport;
    expect(ok.targets[0]!.verification).toMatch(/no appended sha256 \(raw copy; skipHashCheck\)/);

    // A snapshot whose data does not match its sha256 (bit rot) is refused too.
    const rotten = Buffer.from(file);
    rotten[3 * 4096] = 0xff;
    await fs.writeFile(path.join(snapshotDir, 'home-2027.snapshot'), rotten);
    const bad = await withWorker({ activities }, async ({ taskQueue }) =>
      client.workflow
        .execute('drRestore', {
          taskQueue,
          workflowId: `dr-drill/${uniqueName('etcd-rot')}`,
          args: [input(uniqueName('etcd-rot'), 'drill')],
        })
        .catch((e: unknown) => e),
    );
    expect(((bad as WorkflowFailedError).cause as ApplicationFailure).message).toMatch(
      /home-2027\.snapshot: its appended sha256 [0-9a-f]{12} does not match the data \([0-9a-f]{12}\): corrupt or truncated/,
    );
    await fs.rm(path.join(snapshotDir, 'home-2027.snapshot'));
  });
});
