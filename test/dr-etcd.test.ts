// drRestore's etcd target on the real dev server, fakepve, a real kube-apiserver and the Talos
// stand-in (sim/talos-standin.ts): a one-control-plane cluster bootstrapped by talosBootstrap, a
// snapshot taken with `talosctl etcd snapshot`, and recoveries through `talosctl bootstrap
// --recover-from`, which the stand-in carries out as Talos does (status, upload, bootstrap into an
// empty etcd, the appended sha256 checked) and records. A drill recovers on a scratch control
// plane: a VM of the drill range (8900) that the stand-in plays as a one-node cluster of its own
// at SCRATCH_IP (mapped to loopback like the inventory's addresses).
import { createHash } from 'node:crypto';
import { execFile } from 'node:child_process';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { WorkflowFailedError, type WorkflowHandle } from '@temporalio/client';
import proto from '@temporalio/proto';
import { ApplicationFailure } from '@temporalio/common';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createDrReportActivities } from '../activities/dr-reports.js';
import { createTemporalActivities } from '../activities/temporal.js';
import { approveRestore } from '../clients/approve-restore.js';
import { freePort } from '../lib/processes.js';
import { startDevServer, type DevServer } from '../sim/dev-server.js';
import { drillEtcdName, type DrPlan, type DrReport } from '../common/dr-restore.js';
import { standinSnapshotStatus, type StandinSnapshotStatus } from '../sim/talos-standin.js';
import { SecretStore } from '../lib/secrets.js';
import { newIdentity } from '../lib/state-archive.js';
import { runTs } from './harness/processes.js';
import { startTalosLab, talosLabActivities, type Draft, type TalosLab } from './harness/talos.js';
import { testClient, uniqueName, withWorker } from './harness/temporal.js';

const run = promisify(execFile);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const CP = '192.168.1.101';
const SCRATCH_IP = '192.168.1.190';
const SCRATCH_VMID = 8900;

let lab: TalosLab;
let activities: Record<string, (...args: never[]) => Promise<unknown>>;
let snapshotDir: string;
let snapshot: string;
let taken: StandinSnapshotStatus;

/** One control plane, no workers. */
function oneControlPlane(home: Draft): void {
  home.controlPlane = [(home.controlPlane as Draft[])[0]];
  home.allowNoQuorumTolerance = true;
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
    targets: [{ kind: 'etcd', cluster: 'home', snapshotDir, drill: { ip: SCRATCH_IP }, ...over }],
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

/** The drill's leftovers: its VM, and scratch Talos material in the secret store. */
async function leftovers(): Promise<{ vm: unknown; scratchSecrets: string[] }> {
  const vm = await (lab.activities.pveGetVm as (a: unknown) => Promise<unknown>)({
    host: 'pve1',
    node: 'pve1',
    vmid: SCRATCH_VMID,
  });
  const talosDir = path.join(lab.dir, 'secrets', 'talos');
  const scratchSecrets = (await fs.readdir(talosDir)).filter((d) => d !== 'home');
  return { vm, scratchSecrets };
}

beforeAll(async () => {
  lab = await startTalosLab({
    cluster: oneControlPlane,
    scratchNodes: [{ name: 'drill-scratch', ip: SCRATCH_IP, node: 'pve1', vmid: SCRATCH_VMID }],
  });
  activities = {
    ...lab.activities,
    ...createDrReportActivities({ dir: path.join(lab.dir, 'reports') }),
    ...createTemporalActivities(),
  };
  const client = await testClient();
  await withWorker({ activities }, async ({ taskQueue }) =>
    client.workflow.execute('talosBootstrap', {
      taskQueue,
      workflowId: 'talos-bootstrap/home', // the only ID it runs under
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

  it('drills the snapshot: recovered on a scratch control plane in the drill range, verified, everything removed', async () => {
    const plan = uniqueName('etcd');
    const writesBefore = (await lab.pveWrites()).length;
    const client = await testClient();
    const report = (await withWorker({ activities }, async ({ taskQueue }) => {
      const handle = await client.workflow.start('drRestore', {
        taskQueue,
        workflowId: `dr-drill/${plan}`,
        args: [input(plan, 'drill')],
      });
      const shown = await planOf(handle);
      expect(shown.items[0]!.into).toMatch(
        new RegExp(
          `^scratch control plane ${drillEtcdName(plan, 'home')} \\(VM ${SCRATCH_VMID} on pve1/pve1, ${SCRATCH_IP}, network isolated\\), with the secrets of home$`,
        ),
      );
      return (await handle.result()) as DrReport;
    })) as DrReport;
    const name = drillEtcdName(plan, 'home');

    expect(report.ok).toBe(true);
    const t = report.targets[0]!;
    // Recovered from this snapshot, on the scratch node, and its etcd serves at least its revision.
    const recovery = lab.standin.recoveries.at(-1)!;
    expect(recovery).toEqual({ node: 'drill-scratch', outcome: 'recovered', snapshot: taken, skipHashCheck: false });
    expect(t.verification).toMatch(
      new RegExp(
        `^etcd recovered on scratch control plane ${name} \\(VM ${SCRATCH_VMID}, ${SCRATCH_IP}\\) from snapshot hash ${taken.hash}, revision ${taken.revision}, ${taken.totalKeys} keys; member ${name}; it serves revision (\\d+), ${taken.totalKeys} keys$`,
      ),
    );
    const served = Number(/serves revision (\d+)/.exec(t.verification!)![1]);
    expect(served).toBeGreaterThanOrEqual(taken.revision);
    expect(t.rtoMs).toBeGreaterThan(0);
    expect(t.rpoMs).toBeGreaterThanOrEqual(0);
    expect(report.totalRtoMs).toBeGreaterThanOrEqual(t.rtoMs!);
    expect(report.maxRpoMs).toBe(t.rpoMs);

    // The cluster itself was not touched: its etcd as it was, not recovered.
    expect(lab.standin.etcdMembers()).toEqual(['talos-cp-1']);
    expect(lab.standin.etcdState()?.recoveredFrom).toBeUndefined();
    expect(lab.standin.bootstraps.filter((b) => b.node === 'talos-cp-1')).toHaveLength(1);

    // The VM: a full clone of the template into the drill range, its NIC down and untagged.
    const writes = (await lab.pveWrites()).slice(writesBefore).map((w) => `${w.method} ${w.path}`);
    expect(writes).toContain('POST /api2/json/nodes/pve1/qemu/9000/clone');
    expect(writes).toContain(`DELETE /api2/json/nodes/pve1/qemu/${SCRATCH_VMID}`);

    // Cleaned up: no VM, no scratch secrets or configs, and the scratch node's etcd went with it.
    expect(report.cleanedUp).toEqual([`VM ${SCRATCH_VMID} (${name})`, `Talos secrets and configs talos/${name}`]);
    expect(await leftovers()).toEqual({ vm: null, scratchSecrets: [] });
    await expect.poll(() => lab.standin.scratchEtcd('drill-scratch')).toBeUndefined();
  });

  it('a drill whose Temporal server is killed during the recovery (a one-shot step) loses seconds, not its 10-minute time limit', async () => {
    const plan = uniqueName('etcd-outage');
    // A dev server of its own on SQLite, so the restart keeps the run.
    const dbFile = path.join(lab.dir, `${plan}.db`);
    const port = await freePort();
    const start = (): Promise<DevServer> =>
      startDevServer({ dbFile, port, logFile: path.join(lab.dir, `temporal-${plan}-${Date.now()}.log`) });
    let server = await start();
    const recoveriesBefore = lab.standin.recoveries.length;
    try {
      await withWorker({ activities, address: server.address }, async ({ taskQueue }) => {
        // The recovery reaches the scratch node (etcd starts there); its answer is held while Temporal is down.
        const recovery = lab.standin.holdNextAnswer(
          (c) => c.command === 'bootstrap' && c.code === 0 && c.argv.some((a) => a.startsWith('--recover-from')),
        );
        await (
          await testClient(undefined, server.address)
        ).workflow.start('drRestore', { taskQueue, workflowId: `dr-drill/${plan}`, args: [input(plan, 'drill')] });
        await recovery.reached;
        // The recovery answers while the server is down, for longer than the worker retries the
        // completion: the completion is lost, only a timeout on the server's side retries the step.
        await server.kill();
        recovery.release();
        await sleep(20_000);
        server = await start();
        const restartedAt = Date.now();

        const handle = (await testClient(undefined, server.address)).workflow.getHandle(`dr-drill/${plan}`);
        const report = (await handle.result()) as DrReport;
        expect(report.ok).toBe(true);
        // One recovery on the scratch node: the retry found it recovered.
        expect(
          lab.standin.recoveries
            .slice(recoveriesBefore)
            .filter((r) => r.outcome === 'recovered')
            .map((r) => r.node),
        ).toEqual(['drill-scratch']);
        // The step ended within a minute of the restart, far inside its 10-minute start-to-close
        // timeout: the one-shot profile's heartbeat timeout noticed the lost call.
        const events = (await handle.fetchHistory()).events ?? [];
        const scheduled = events.filter(
          (e) => e.activityTaskScheduledEventAttributes?.activityType?.name === 'talosRecoverEtcd',
        );
        expect(scheduled.length).toBeGreaterThan(0);
        const completed = events.find(
          (e) =>
            e.eventType === proto.temporal.api.enums.v1.EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED &&
            String(e.activityTaskCompletedEventAttributes?.scheduledEventId) === String(scheduled.at(-1)!.eventId),
        )!;
        expect(Number(completed.eventTime!.seconds) * 1000 - restartedAt).toBeLessThan(90_000);
        expect(scheduled[0]!.activityTaskScheduledEventAttributes?.heartbeatTimeout?.seconds?.toString()).toBe('30');
      });
    } finally {
      await server.stop();
    }
  }, 300_000);

  it('a drill whose recovered etcd does not start fails with the reason and still cleans up', async () => {
    // The snapshot rots between the check and the upload: talosctl still reads and uploads it,
    // the bootstrap answers, and etcd refuses it (its sha256), so no member ever shows up.
    const original = await fs.readFile(snapshot);
    const hold = lab.standin.holdNextAnswer((c) => c.node === 'drill-scratch' && c.command === 'apply-config');
    const plan = uniqueName('etcd-down');
    const client = await testClient();
    let history: Awaited<ReturnType<WorkflowHandle['fetchHistory']>> | undefined;
    const err = await withWorker({ activities }, async ({ taskQueue }) => {
      const handle = await client.workflow.start('drRestore', {
        taskQueue,
        workflowId: `dr-drill/${plan}`,
        args: [input(plan, 'drill')],
      });
      const done = handle.result().catch((e: unknown) => e);
      await hold.reached;
      const rotten = Buffer.from(original);
      rotten[3 * 4096] = 0xff;
      await fs.writeFile(snapshot, rotten);
      hold.release();
      const failure = await done;
      history = await handle.fetchHistory();
      return failure;
    });
    await fs.writeFile(snapshot, original);

    expect(err).toBeInstanceOf(WorkflowFailedError);
    const cause = (err as WorkflowFailedError).cause as ApplicationFailure;
    expect(cause.type).toBe('PreconditionFailed');
    const name = drillEtcdName(plan, 'home');
    expect(cause.message).toMatch(
      new RegExp(
        `^drill ${plan} FAILED: etcd home: etcd on the scratch control plane ${name} \\(${SCRATCH_IP}\\) has no member 5s after the recovery from .*home-2026\\.snapshot \\(.*: rpc error: code = Unavailable .*connection refused"\\): the snapshot does not recover \\(etcd refused it; talosctl logs etcd tells why\\); RTO`,
      ),
    );
    expect(lab.standin.recoveries.at(-1)).toMatchObject({
      node: 'drill-scratch',
      outcome: 'failed',
      error: expect.stringMatching(/^expected sha256 [0-9a-f]{64}, got [0-9a-f]{64}$/),
    });
    const report = (cause.details as [{ report: DrReport }])[0].report;
    expect(report.ok).toBe(false);
    expect(report.targets[0]!.error).toMatch(/has no member/);
    expect(report.cleanedUp).toEqual([`VM ${SCRATCH_VMID} (${name})`, `Talos secrets and configs talos/${name}`]);
    expect(await leftovers()).toEqual({ vm: null, scratchSecrets: [] });
    expect(lab.standin.etcdState()?.recoveredFrom).toBeUndefined();
    // The 5 s wait for a member (25 looks at pollSeconds 0.2) was one heartbeating activity:
    // no timer and no activity per look in the drill's history.
    const events = history?.events ?? [];
    const scheduled = events.map((e) => e.activityTaskScheduledEventAttributes?.activityType?.name).filter(Boolean);
    expect(events.filter((e) => e.timerStartedEventAttributes)).toEqual([]);
    expect(scheduled.filter((a) => a === 'talosWaitEtcdMember')).toHaveLength(1);
    expect(scheduled.filter((a) => a === 'talosEtcdMembers')).toEqual([]);
  });

  it('a drill cancelled while the scratch control plane boots removes its VM and scratch secrets', async () => {
    const recoveriesBefore = lab.standin.recoveries.length;
    const hold = lab.standin.holdNextAnswer((c) => c.node === 'drill-scratch' && c.command === 'apply-config');
    const plan = uniqueName('etcd-cancel');
    const client = await testClient();
    await withWorker({ activities }, async ({ taskQueue }) => {
      const handle = await client.workflow.start('drRestore', {
        taskQueue,
        workflowId: `dr-drill/${plan}`,
        args: [input(plan, 'drill')],
      });
      await hold.reached; // the VM runs, the scratch config is stored and being applied
      expect((await leftovers()).scratchSecrets).toEqual([drillEtcdName(plan, 'home')]);
      // Its NIC: the cluster's bridge, link down, no VLAN; not started on boot; tagged as a drill's.
      const { vm } = (await leftovers()) as { vm: { name: string; config: Record<string, unknown>; tags: string[] } };
      expect(vm.name).toBe(drillEtcdName(plan, 'home'));
      expect(String(vm.config.net0)).toMatch(/^virtio=02:4C:57:[0-9A-F:]{8},bridge=vmbr0,link_down=1$/);
      expect(String(vm.config.onboot)).toBe('0');
      expect(vm.tags).toEqual(expect.arrayContaining(['labwright', 'dr-drill']));
      await handle.cancel();
      hold.release();
      const err = await handle.result().catch((e: unknown) => e);
      expect(err).toBeInstanceOf(WorkflowFailedError);
      expect((await handle.describe()).status.name).toBe('CANCELLED');
    });
    expect(await leftovers()).toEqual({ vm: null, scratchSecrets: [] });
    expect(lab.standin.recoveries).toHaveLength(recoveriesBefore); // cancelled before its recovery
  });

  it('a drill without a scratch address fails before anything is touched', async () => {
    const callsBefore = lab.standin.calls.length;
    const client = await testClient();
    const err = await withWorker({ activities }, async ({ taskQueue }) =>
      client.workflow
        .execute('drRestore', {
          taskQueue,
          workflowId: `dr-drill/${uniqueName('etcd-noip')}`,
          args: [
            { ...input(uniqueName('etcd-noip'), 'drill'), targets: [{ kind: 'etcd', cluster: 'home', snapshotDir }] },
          ],
        })
        .catch((e: unknown) => e),
    );
    expect(((err as WorkflowFailedError).cause as ApplicationFailure).message).toMatch(
      /etcd home: a drill recovers the snapshot on a scratch control plane: give the target drill\.ip .*; nothing was touched$/,
    );
    expect(lab.standin.calls.length).toBe(callsBefore);
    expect(await leftovers()).toEqual({ vm: null, scratchSecrets: [] });
  });

  it('after the control plane is reset, a restore waits for approval and recovers from the snapshot exactly once, with RTO and RPO', async () => {
    // The disaster: every control plane reset, EPHEMERAL (etcd's data) wiped; the config kept.
    await talosctl('reset', '--graceful=false', '--reboot', '--system-labels-to-wipe=EPHEMERAL');
    expect(lab.standin.etcdMembers()).toEqual([]);
    expect(lab.standin.etcdState()).toBeUndefined();
    await sleep(500); // the reboot

    const plan = uniqueName('etcd-restore');
    const recoveriesBefore = lab.standin.recoveries.length; // the drills' (on the scratch node)
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
      expect(lab.standin.recoveries.slice(recoveriesBefore)).toEqual([]); // nothing before the approval
      await approveRestore(client, `dr-restore/${plan}`, {
        digest: shown.digest,
        approve: true,
        reason: 'lost all control planes',
      });
      return (await handle.result()) as DrReport;
    });

    // Exactly one recovery, from this snapshot, and etcd is at its revision.
    expect(lab.standin.recoveries.slice(recoveriesBefore)).toEqual([
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
      (c) =>
        c.node === 'talos-cp-1' && c.command === 'bootstrap' && c.argv.some((a) => a.startsWith('--recover-from=')),
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
              targets: [{ kind: 'etcd', cluster: 'home', snapshotDir: raw, drill: { ip: SCRATCH_IP } }],
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
            targets: [
              { kind: 'etcd', cluster: 'home', snapshotDir: raw, skipHashCheck: true, drill: { ip: SCRATCH_IP } },
            ],
          },
        ],
      }),
    )) as DrReport;
    expect(ok.targets[0]!.verification).toMatch(/^etcd recovered on scratch control plane drill-.*-etcd-home /);
    expect(lab.standin.recoveries.at(-1)).toMatchObject({
      node: 'drill-scratch',
      outcome: 'recovered',
      skipHashCheck: true,
    });
    expect(await leftovers()).toEqual({ vm: null, scratchSecrets: [] });

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
  it("recovers etcd from a fresh state directory that only `labwright state import` of another's export filled", async () => {
    // labwright's own state, exported from the lab's state directory with the CLI, as the DR plan
    // says (docs/dr-restore.md): encrypted to an age recipient whose identity is kept elsewhere.
    const away = path.join(lab.dir, 'offsite');
    await fs.mkdir(away);
    const identity = path.join(away, 'dr-identity.txt');
    const keygen = await runTs('clients/labwright.ts', ['state', 'keygen', '--out', identity], {});
    expect(keygen.code, keygen.stderr).toBe(0);
    const recipient = keygen.stdout.trim();
    expect(recipient).toMatch(/^age1[0-9a-z]{58}$/);
    const archive = path.join(away, 'labwright-state.age');
    const exported = await runTs(
      'clients/labwright.ts',
      ['state', 'export', '--recipient', recipient, '--out', archive],
      { LABWRIGHT_SECRETS_DIR: path.join(lab.dir, 'secrets') },
    );
    expect(exported.code, exported.stderr).toBe(0);
    const names = await lab.secrets.list();
    expect(names).toEqual(expect.arrayContaining(['talos/home/secrets.yaml', 'talos/home/talosconfig']));
    expect(exported.stdout).toContain(
      `exported ${names.length} secret(s) from ${path.join(lab.dir, 'secrets')} to ${archive}, encrypted to 1 recipient(s)`,
    );
    // Ciphertext only: no line of the talosconfig is in the archive.
    const sealed = await fs.readFile(archive, 'utf8');
    expect(sealed).toMatch(/^-----BEGIN AGE ENCRYPTED FILE-----\n/);
    const talosconfig = await lab.secrets.resolve({ store: 'talos/home/talosconfig' });
    for (const line of talosconfig.split('\n').filter((l) => l.trim().length > 12))
      expect(sealed).not.toContain(line.trim());
    expect((await fs.stat(archive)).mode & 0o777).toBe(0o600);

    // The disaster: every control plane reset, and labwright's machine lost with its state dir.
    await talosctl('reset', '--graceful=false', '--reboot', '--system-labels-to-wipe=EPHEMERAL');
    expect(lab.standin.etcdMembers()).toEqual([]);
    await expect.poll(() => lab.standin.etcdState(), { timeout: 10_000 }).toBeUndefined();

    const restore = async (store: SecretStore, plan: string) => {
      const fresh = talosLabActivities(lab, store);
      const acts = {
        ...fresh.activities,
        ...createDrReportActivities({ dir: path.join(away, 'reports') }),
        ...createTemporalActivities(),
      };
      const client = await testClient();
      try {
        return await withWorker({ activities: acts }, async ({ taskQueue }) => {
          const handle = await client.workflow.start('drRestore', {
            taskQueue,
            workflowId: `dr-restore/${plan}`,
            args: [input(plan, 'restore')],
          });
          const done = handle.result().catch((e: unknown) => e);
          const shown = await Promise.race([planOf(handle), done]);
          if (!shown || !('digest' in (shown as object))) return done;
          await approveRestore(client, `dr-restore/${plan}`, {
            digest: (shown as DrPlan).digest,
            approve: true,
            reason: 'lost the control planes and labwright',
          });
          return done;
        });
      } finally {
        await fresh.close();
      }
    };

    // A new, empty state directory cannot: it holds none of the secrets (talosconfig, tokens).
    const cpRecoveries = () => lab.standin.recoveries.filter((r) => r.node === 'talos-cp-1').length;
    const cpRecoveriesBefore = cpRecoveries();
    const empty = await restore(new SecretStore(path.join(away, 'empty-state', 'secrets')), uniqueName('etcd-nostate'));
    expect(empty).toBeInstanceOf(WorkflowFailedError);
    const causes: string[] = [];
    for (let e = (empty as Error).cause as Error | undefined; e; e = e.cause as Error | undefined)
      causes.push(e.message);
    expect(causes.join(' <- ')).toMatch(/secret file \S*empty-state\/secrets\/\S+ does not exist/);
    // It stopped before the approval: no recovery on the cluster's control plane.
    expect(cpRecoveries()).toBe(cpRecoveriesBefore);

    // The new machine's state directory, filled from the export.
    const freshSecrets = path.join(away, 'new-machine-state', 'secrets');
    const imported = await runTs(
      'clients/labwright.ts',
      ['state', 'import', '--in', archive, '--identity-file', identity],
      { LABWRIGHT_SECRETS_DIR: freshSecrets },
    );
    expect(imported.code, imported.stderr).toBe(0);
    expect(imported.stdout).toMatch(new RegExp(`^imported ${names.length} secret\\(s\\) into ${freshSecrets}`));
    const store = new SecretStore(freshSecrets);
    expect(await store.list()).toEqual(names);
    expect((await fs.stat(path.join(freshSecrets, 'talos', 'home', 'talosconfig'))).mode & 0o777).toBe(0o600);
    // A wrong identity decrypts nothing and writes nothing.
    const other = path.join(away, 'other-identity.txt');
    await fs.writeFile(other, (await newIdentity()).file, { mode: 0o600 });
    const refused = await runTs(
      'clients/labwright.ts',
      ['state', 'import', '--in', archive, '--identity-file', other],
      { LABWRIGHT_SECRETS_DIR: path.join(away, 'wrong-key-state', 'secrets') },
    );
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/^cannot decrypt the archive with this identity/);
    await expect(fs.access(path.join(away, 'wrong-key-state'))).rejects.toThrow();

    const plan = uniqueName('etcd-from-export');
    const recoveriesBefore = lab.standin.recoveries.length;
    const report = (await restore(store, plan)) as DrReport;
    expect(report.ok, JSON.stringify(report)).toBe(true);
    expect(lab.standin.recoveries.slice(recoveriesBefore)).toEqual([
      { node: 'talos-cp-1', outcome: 'recovered', snapshot: taken, skipHashCheck: false },
    ]);
    expect(lab.standin.etcdMembers()).toEqual(['talos-cp-1']);
    expect(report.targets[0]!.verification).toBe(
      `etcd recovered from snapshot hash ${taken.hash}, revision ${taken.revision}, ${taken.totalKeys} keys (1 member(s)); the Kubernetes API answers`,
    );
  }, 300_000);
});
