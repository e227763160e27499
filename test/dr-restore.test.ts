// drRestore on the real dev server, fakepve and the run's shared kube-apiserver; VolSync's restic
// mover and the Job runner work on real bytes (sim/volume-lab.ts): the tests write the data, back
// it up with the real restic, and the verification Jobs run their script on the restored files.
import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  AppsV1Api,
  BatchV1Api,
  CoreV1Api,
  CustomObjectsApi,
  PatchStrategy,
  setHeaderOptions,
} from '@kubernetes/client-node';
import { Client, WorkflowFailedError, WorkflowUpdateFailedError, type WorkflowHandle } from '@temporalio/client';
import { ApplicationFailure } from '@temporalio/common';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { approveRestore } from '../clients/approve-restore.js';
import { drillNamespace, type DrPlan, type DrReport, type DrStatus } from '../common/dr-restore.js';
import { recordHistory } from './harness/histories.js';
import {
  appWithBackups,
  appWithData,
  readVolume,
  startDrLab,
  storeVmBackup,
  writeVolume,
  type DrLab,
} from './harness/dr-lab.js';
import { kubeConfigFor } from './harness/kube-controllers.js';
import { sharedKube } from './harness/kube.js';
import { testClient, uniqueName, withWorker } from './harness/temporal.js';

const SHA = 'a'.repeat(64);
const SENTINEL = '.labwright-sentinel';
const sha256 = (text: string) => createHash('sha256').update(text).digest('hex');
/** A volume's files: its sentinel and some data. */
const data = (sentinel: string, extra: Record<string, string> = {}) => ({
  [SENTINEL]: sentinel,
  'db/app.sqlite': `rows of ${sentinel}`,
  ...extra,
});
let lab: DrLab;

beforeAll(async () => {
  lab = await startDrLab();
});
afterAll(async () => {
  await lab?.stop();
});

/** Requests that change something in PVE (the API, not the fake's control endpoint). */
async function pveWrites(): Promise<number> {
  const requests = await lab.pve.fake.control<Array<{ method: string; path: string }>>({ op: 'requests' });
  return requests.filter((r) => r.method !== 'GET' && r.path.startsWith('/api2/')).length;
}
const kc = () => kubeConfigFor(sharedKube().kubeconfigPath);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function pvc(namespace: string, name: string, over: Record<string, unknown> = {}) {
  return {
    kind: 'pvc',
    namespace,
    pvc: name,
    sentinel: { path: SENTINEL, sha256: SHA },
    minSize: '4Ki',
    ...over,
  };
}
const hass = { kind: 'vm', name: 'hass', host: 'pve1', node: 'pve1', vmid: 120, backupStorage: 'unraid-backup' };

function input(plan: string, mode: 'drill' | 'restore', targets: unknown[], over: Record<string, unknown> = {}) {
  return {
    plan,
    mode,
    kubeconfig: sharedKube().kubeconfig,
    inventory: lab.inventory,
    targets,
    maxBackupAge: '1d',
    pollSeconds: 0.2,
    syncTimeoutSeconds: 60,
    jobTimeoutSeconds: 60,
    agentTimeoutSeconds: 30,
    ...over,
  };
}

async function getObject(
  apiVersion: string,
  plural: string,
  namespace: string,
  name: string,
): Promise<Record<string, unknown> | undefined> {
  const [group, version] = apiVersion.split('/') as [string, string];
  return kc()
    .makeApiClient(CustomObjectsApi)
    .getNamespacedCustomObject({ group, version, plural, namespace, name })
    .then(
      (o) => o as Record<string, unknown>,
      () => undefined,
    );
}

/** Polls the `plan` query until the plan is computed. */
async function planOf(handle: WorkflowHandle): Promise<DrPlan> {
  for (let i = 0; i < 200; i++) {
    const shown = await handle.query<DrPlan | null>('plan');
    if (shown) return shown;
    await sleep(100);
  }
  throw new Error('no plan computed');
}

/** The Deployment controller, as far as a restore looks: status.replicas follows spec.replicas. */
async function playDeployment(namespace: string, name: string): Promise<number> {
  const apps = kc().makeApiClient(AppsV1Api);
  const d = await apps.readNamespacedDeployment({ namespace, name });
  const replicas = d.spec?.replicas ?? 1;
  if (d.status?.observedGeneration === d.metadata?.generation && (d.status?.replicas ?? 0) === replicas)
    return replicas;
  await apps.patchNamespacedDeploymentStatus(
    {
      namespace,
      name,
      body: {
        status: {
          observedGeneration: d.metadata?.generation,
          replicas,
          readyReplicas: replicas,
          availableReplicas: replicas,
          updatedReplicas: replicas,
        },
      },
    },
    setHeaderOptions('Content-Type', PatchStrategy.MergePatch),
  );
  return replicas;
}

async function gone(fn: () => Promise<unknown>): Promise<boolean> {
  return fn().then(
    (o) => Boolean((o as { metadata?: { deletionTimestamp?: unknown } }).metadata?.deletionTimestamp),
    () => true,
  );
}

describe('drRestore', () => {
  it('drills two PVCs and one VM: restores into scratch space, verifies, cleans up everything, reports RTO and RPO', async () => {
    const app = await appWithData(lab, { zigbee2mqtt: data('zigbee'), paperless: data('paperless') });
    await storeVmBackup(lab, 120, 3 * 3600);
    const plan = uniqueName('home');
    let scratch = '';
    const client = await testClient();
    let isolatedNic: string | undefined;
    let drillConfig: Record<string, unknown> = {};
    const report = await withWorker({ activities: lab.activities }, async ({ taskQueue }) => {
      const handle = await client.workflow.start('drRestore', {
        taskQueue,
        workflowId: `dr-drill/${plan}`,
        args: [
          input(plan, 'drill', [
            pvc(app, 'zigbee2mqtt', { sentinel: { path: SENTINEL, sha256: sha256('zigbee') } }),
            pvc(app, 'paperless', { sentinel: { path: SENTINEL, sha256: sha256('paperless') } }),
            hass,
          ]),
        ],
      });
      scratch = drillNamespace(plan, handle.firstExecutionRunId);
      const result = handle.result();
      lab.volumes.watch(scratch);
      // The drill VM as it boots: in the drill range, its NIC's link down.
      const watchVm = (async () => {
        for (let i = 0; i < 300 && !isolatedNic; i++) {
          const vm = (await lab.pve.fake.vms()).find((v) => v.vmid >= 8900 && v.vmid <= 8999 && v.status === 'running');
          if (vm) {
            isolatedNic = String(vm.config.net0);
            drillConfig = vm.config;
          }
          await sleep(100);
        }
      })();
      const r = await result;
      await watchVm;
      await recordHistory(handle as WorkflowHandle, 'dr-restore-drill');
      return r as DrReport;
    });

    expect(report.ok).toBe(true);
    expect(report.targets.map((t) => t.target)).toEqual([
      `pvc ${app}/zigbee2mqtt`,
      `pvc ${app}/paperless`,
      'vm hass (120)',
    ]);
    for (const t of report.targets) {
      expect(t.ok).toBe(true);
      expect(t.rtoMs).toBeGreaterThan(0);
    }
    // RPO: the age of the backup used (the PVCs' restic snapshots of just now, 3 h for the VM).
    expect(report.targets[0]!.rpoMs).toBeLessThan(120_000);
    expect(report.targets[2]!.rpoMs).toBeGreaterThanOrEqual(3 * 3600_000);
    expect(report.maxRpoMs).toBe(report.targets[2]!.rpoMs);
    // RTO to the last verification; the cleanup after it is reported apart.
    expect(report.totalRtoMs).toBeGreaterThanOrEqual(Math.max(...report.targets.map((t) => t.rtoMs!)));
    expect(report.cleanupMs).toBeGreaterThan(0);
    expect(Date.parse(report.finishedAt) - Date.parse(report.startedAt)).toBeGreaterThanOrEqual(
      report.totalRtoMs + report.cleanupMs,
    );
    expect(report.targets[0]!.verification).toMatch(/sentinel \.labwright-sentinel sha256 ok/);
    expect(report.targets[0]!.restoredBytes).toBe(2 * 1024 ** 3);
    // The verification Jobs ran their script on the restored bytes.
    const jobs = lab.volumes.events.filter((e) => e.kind === 'job' && e.namespace === scratch);
    expect(jobs.map((j) => j.kind === 'job' && j.exitCode)).toEqual([0, 0]);
    expect(jobs.map((j) => (j.kind === 'job' ? j.output : '')).join('')).toContain(`/data/${SENTINEL}: OK`);
    expect(report.targets[2]!.verification).toMatch(/VM 89\d\d booted, guest agent answers \(192\.0\.2\.10\)/);
    expect(report.summary).toMatch(/drill .*: 3 target\(s\) restored and verified; RTO \S+, RPO 3h/);

    // Isolated: the drill VM's NIC was link_down and off VLAN 80.
    expect(isolatedNic).toMatch(/link_down=1/);
    expect(isolatedNic).not.toMatch(/tag=80/);
    // No passthrough device of the production VM: it still has them, the drill VM did not.
    expect(Object.keys(drillConfig).filter((k) => /^(hostpci|usb)\d+$/.test(k))).toEqual([]);
    expect((await lab.pve.fake.vms()).find((v) => v.vmid === 120)?.config).toMatchObject({
      hostpci0: 'mapping=coral-tpu,pcie=1',
      usb0: 'host=10c4:ea60',
    });

    // Everything the drill made is gone: the VM, and every object in the scratch namespace.
    expect((await lab.pve.fake.vms()).filter((v) => v.vmid >= 8900 && v.vmid <= 8999)).toEqual([]);
    expect(report.cleanedUp.filter((c) => c.startsWith('LEFT'))).toEqual([]);
    const core = kc().makeApiClient(CoreV1Api);
    for (const name of ['zigbee2mqtt', 'paperless']) {
      expect(
        await getObject('volsync.backube/v1alpha1', 'replicationdestinations', scratch, `restore-${name}`),
      ).toBeUndefined();
      expect(await gone(() => core.readNamespacedPersistentVolumeClaim({ namespace: scratch, name }))).toBe(true);
      expect(await gone(() => core.readNamespacedSecret({ namespace: scratch, name: `${name}-restic` }))).toBe(true);
    }
    const snapshots = (await kc().makeApiClient(CustomObjectsApi).listNamespacedCustomObject({
      group: 'snapshot.storage.k8s.io',
      version: 'v1',
      plural: 'volumesnapshots',
      namespace: scratch,
    })) as { items: unknown[] };
    expect(snapshots.items).toEqual([]);
    expect((await kc().makeApiClient(BatchV1Api).listNamespacedJob({ namespace: scratch })).items).toEqual([]);
    // No namespace controller runs here: a deleted namespace stays Terminating.
    expect(await gone(() => core.readNamespace({ name: scratch }))).toBe(true);
    // The source is untouched: VM 120 still runs, the app's PVCs are there.
    expect((await lab.pve.fake.vms()).find((v) => v.vmid === 120)).toMatchObject({ name: 'hass', status: 'running' });
    expect(
      (await core.readNamespacedPersistentVolumeClaim({ namespace: app, name: 'paperless' })).metadata
        ?.deletionTimestamp,
    ).toBeUndefined();
  });

  it('the PVE peer, as PVE: destroying a VM with purge drops it from backup jobs and replication, without purge a replicated VM is kept', async () => {
    const vmid = 131;
    const job = uniqueName('backup');
    await lab.pve.fake.api('POST', '/nodes/pve1/qemu', { vmid, name: 'purge-me' });
    await lab.pve.fake.api('POST', '/cluster/backup', { id: job, vmid: `120,${vmid}`, storage: 'unraid-backup' });
    await lab.pve.fake.api('POST', '/cluster/replication', { id: `${vmid}-0`, target: 'pve2', type: 'local' });
    const ref = { host: 'pve1', node: 'pve1', vmid };
    const refused = await (lab.activities.pveDelete as (a: unknown) => Promise<unknown>)({
      ...ref,
      purge: false,
    }).catch((e: unknown) => e);
    expect((refused as Error).message).toMatch(/There are replication jobs for guest '131'/);
    const { upid } = await (lab.activities.pveDelete as (a: unknown) => Promise<{ upid: string }>)({
      ...ref,
      purge: true,
    });
    await (lab.activities.pveWaitForTask as (a: unknown) => Promise<unknown>)({ host: 'pve1', upid });
    const jobs = await lab.pve.fake.api<Array<{ id: string; vmid: string }>>('GET', '/cluster/backup');
    expect(jobs.find((j) => j.id === job)?.vmid).toBe('120');
    const replication = await lab.pve.fake.api<Array<{ guest: number }>>('GET', '/cluster/replication');
    expect(replication.filter((r) => r.guest === vmid)).toEqual([]);
  });

  it('a restore computes and shows the plan, waits for approval, and touches nothing without it', async () => {
    const app = await appWithBackups(['grafana'], 3600);
    await storeVmBackup(lab, 120, 1800);
    const plan = uniqueName('restore');
    const client = await testClient();
    const writesBefore = await pveWrites();
    const err = await withWorker({ activities: lab.activities }, async ({ taskQueue }) => {
      const handle = await client.workflow.start('drRestore', {
        taskQueue,
        workflowId: `dr-restore/${plan}`,
        args: [input(plan, 'restore', [pvc(app, 'grafana'), hass], { approvalTimeout: '4s' })],
      });
      const shown: DrPlan | null = await planOf(handle);
      expect(shown.items.map((i) => [i.target, i.overwrites])).toEqual([
        [
          `pvc ${app}/grafana`,
          `the data of PVC ${app}/grafana; restores the snapshot as of ${shown.items[0]!.backup.takenAt}, deleting files it does not hold; pauses ReplicationSource ${app}/grafana during the restore, and resumes them after`,
        ],
        [
          'vm hass (120)',
          'VM 120 (hass) on pve1/pve1: stopped and restored over (keeps its backup jobs, replication and HA)',
        ],
      ]);
      expect(shown!.items[1]!.backup.id).toMatch(/^unraid-backup:backup\/vzdump-qemu-120-/);
      expect(shown!.items[1]!.backup.ageMs).toBeGreaterThanOrEqual(1800_000);
      expect((await handle.query<DrStatus>('drStatus')).phase).toBe('awaiting-approval');
      // An approval of another plan (a wrong or stale digest) is refused at once, with the reason.
      const refused = await approveRestore(client, `dr-restore/${plan}`, { digest: 'deadbeef', approve: true }).catch(
        (e: unknown) => e,
      );
      expect(refused).toBeInstanceOf(WorkflowUpdateFailedError);
      expect(((refused as WorkflowUpdateFailedError).cause as Error).message).toBe(
        `digest deadbeef is not the plan's ${shown.digest}: read the plan again (labwright plan) and approve what it shows`,
      );
      const status = await handle.query<DrStatus>('drStatus');
      expect(status.phase).toBe('awaiting-approval');
      expect(status.approval).toBeUndefined();
      return handle.result().catch((e: unknown) => e);
    });
    expect(err).toBeInstanceOf(WorkflowFailedError);
    const cause = (err as WorkflowFailedError).cause as ApplicationFailure;
    expect(cause.type).toBe('PreconditionFailed');
    expect(cause.message).toMatch(/^restore .* not approved within 4s; nothing was touched$/);
    // Nothing touched: no PVE writes, VM 120 as it was, no ReplicationDestination in the app namespace.
    const writesAfter = await pveWrites();
    expect(writesAfter).toBe(writesBefore);
    expect((await lab.pve.fake.vms()).find((v) => v.vmid === 120)).toMatchObject({ name: 'hass', status: 'running' });
    const rds = (await kc().makeApiClient(CustomObjectsApi).listNamespacedCustomObject({
      group: 'volsync.backube',
      version: 'v1alpha1',
      plural: 'replicationdestinations',
      namespace: app,
    })) as { items: unknown[] };
    expect(rds.items).toEqual([]);
  });

  it('an approved restore replaces the real VM from its backup and verifies it; the VM stays in its backup job, replication and HA', async () => {
    await storeVmBackup(lab, 120, 600);
    // VM 120 as PVE knows it outside its config: in a backup job, replicated, HA managed.
    const job = uniqueName('backup');
    await lab.pve.fake.api('POST', '/cluster/backup', { id: job, vmid: '120', storage: 'unraid-backup' });
    await lab.pve.fake.api('POST', '/cluster/replication', { id: '120-0', target: 'pve2', type: 'local' }).catch(
      () => undefined, // kept from an earlier test of this file
    );
    await lab.pve.fake.api('POST', '/cluster/ha/resources', { sid: 'vm:120', state: 'started' });
    const heldBy = async () => ({
      backup: (await lab.pve.fake.api<Array<{ id: string; vmid: string }>>('GET', '/cluster/backup')).find(
        (j) => j.id === job,
      )?.vmid,
      replication: (await lab.pve.fake.api<Array<{ guest: number }>>('GET', '/cluster/replication')).some(
        (j) => j.guest === 120,
      ),
      ha: (await lab.pve.fake.api<Array<{ sid: string }>>('GET', '/cluster/ha/resources')).some(
        (r) => r.sid === 'vm:120',
      ),
    });
    expect(await heldBy()).toEqual({ backup: '120', replication: true, ha: true });
    const plan = uniqueName('restore-ok');
    const client = await testClient();
    const report = await withWorker({ activities: lab.activities }, async ({ taskQueue }) => {
      const handle = await client.workflow.start('drRestore', {
        taskQueue,
        workflowId: `dr-restore/${plan}`,
        args: [input(plan, 'restore', [hass])],
      });
      const shown = await planOf(handle);
      const before = (await lab.pve.fake.vms()).find((v) => v.vmid === 120);
      expect(before?.config.onboot).toBeDefined(); // the original VM, untouched so far
      // Who approved is the caller's Temporal identity, not something it types.
      const alice = new Client({
        connection: client.connection,
        namespace: client.options.namespace,
        dataConverter: client.options.dataConverter,
        identity: 'alice@ops-laptop',
      });
      const decision = await approveRestore(alice, `dr-restore/${plan}`, {
        digest: shown.digest,
        approve: true,
        reason: 'hass disk died',
      });
      expect(decision).toEqual({ decision: 'approved', digest: shown.digest, by: 'alice@ops-laptop' });
      const again = await approveRestore(client, `dr-restore/${plan}`, { digest: shown.digest, approve: true }).catch(
        (e: unknown) => e,
      );
      expect(((again as WorkflowUpdateFailedError).cause as Error).message).toMatch(
        /^the plan is no longer awaiting approval/,
      );
      expect((await handle.query<DrStatus>('drStatus')).approval).toEqual({
        digest: shown.digest,
        by: 'alice@ops-laptop',
        comment: 'hass disk died',
      });
      return (await handle.result()) as DrReport;
    });
    expect(report.ok).toBe(true);
    expect(report.targets[0]).toMatchObject({ target: 'vm hass (120)', ok: true, restoredTo: 'VM 120 on pve1/pve1' });
    // Restored over, not deleted with purge: still in its backup job, replicated and HA managed.
    expect(await heldBy()).toEqual({ backup: '120', replication: true, ha: true });
    const restores = (await lab.pve.fake.control<Array<{ method: string; path: string }>>({ op: 'requests' })).filter(
      (r) => r.method === 'DELETE' && r.path.endsWith('/qemu/120'),
    );
    expect(restores).toEqual([]);
    expect(report.targets[0]!.backup.id).toMatch(/^unraid-backup:backup\/vzdump-qemu-120-/);
    expect(report.targets[0]!.rpoMs).toBeGreaterThanOrEqual(600_000);
    const vm = (await lab.pve.fake.vms()).find((v) => v.vmid === 120);
    expect(vm).toMatchObject({ name: 'hass', status: 'running' });
  });

  it('an approved PVC restore restores the approved backup N although N+1 exists, in place with file deletion, Flux suspended, the ReplicationSource paused, the app at 0, then resumes all', async () => {
    // The Flux Kustomization `apps` applies the app (its labels are on the ReplicationSource).
    const app = await appWithData(lab, { grafana: data('backup N') }, { kustomization: 'apps' });
    const custom = kc().makeApiClient(CustomObjectsApi);
    await custom.createNamespacedCustomObject({
      group: 'kustomize.toolkit.fluxcd.io',
      version: 'v1',
      plural: 'kustomizations',
      namespace: app,
      body: {
        apiVersion: 'kustomize.toolkit.fluxcd.io/v1',
        kind: 'Kustomization',
        metadata: { name: 'apps', namespace: app },
        spec: {
          interval: '10m',
          path: './apps',
          prune: true,
          sourceRef: { kind: 'GitRepository', name: 'flux-system' },
        },
      },
    });
    const apps = kc().makeApiClient(AppsV1Api);
    await apps.createNamespacedDeployment({
      namespace: app,
      body: {
        metadata: { name: 'grafana' },
        spec: {
          replicas: 2,
          selector: { matchLabels: { app: 'grafana' } },
          template: {
            metadata: { labels: { app: 'grafana' } },
            spec: {
              containers: [{ name: 'grafana', image: 'docker.io/grafana/grafana:12.1.0' }],
              volumes: [{ name: 'data', persistentVolumeClaim: { claimName: 'grafana' } }],
            },
          },
        },
      },
    });
    await playDeployment(app, 'grafana');
    const plan = uniqueName('restore-pvc');
    const client = await testClient();
    const seen: {
      rdSpec?: Record<string, unknown>;
      replicasAtRd?: number;
      suspendAtRd?: unknown;
      minReplicas: number;
    } = { minReplicas: 2 };
    const report = await withWorker({ activities: lab.activities }, async ({ taskQueue }) => {
      const handle = await client.workflow.start('drRestore', {
        taskQueue,
        workflowId: `dr-restore/${plan}`,
        args: [
          input(plan, 'restore', [pvc(app, 'grafana', { sentinel: { path: SENTINEL, sha256: sha256('backup N') } })]),
        ],
      });
      const shown = await planOf(handle);
      const n = shown.items[0]!.backup.takenAt;
      // The plan the operator approves says which backup, and what is held and scaled.
      expect(shown.items[0]!.overwrites).toBe(
        `the data of PVC ${app}/grafana; restores the snapshot as of ${n}, deleting files it does not hold; ` +
          `suspends Kustomization ${app}/apps, pauses ReplicationSource ${app}/grafana, scales Deployment grafana from 2 to 0 during the restore, and resumes them after`,
      );
      // Before the approval: backup N+1 is taken, then the volume breaks (a -wal appears).
      await writeVolume(lab, app, 'grafana', data('backup N+1'));
      const n1 = await lab.volumes.backup(app, 'grafana');
      expect(Date.parse(n1!.time)).toBeGreaterThan(Date.parse(n));
      await writeVolume(lab, app, 'grafana', data('broken', { 'db/app.sqlite-wal': 'written after the backup' }));
      expect((await apps.readNamespacedDeployment({ namespace: app, name: 'grafana' })).spec?.replicas).toBe(2);
      // VolSync from now on, its schedule due every 300 ms.
      lab.volumes.watch(app, { scheduleEveryMs: 300 });
      await approveRestore(client, `dr-restore/${plan}`, { digest: shown.digest, approve: true, reason: 'db corrupt' });
      const result = handle.result();
      let stop = false;
      void result.finally(() => (stop = true));
      // The Deployment controller; and the world when the ReplicationDestination appears.
      const watch = (async () => {
        while (!stop) {
          seen.minReplicas = Math.min(seen.minReplicas, await playDeployment(app, 'grafana').catch(() => 2));
          if (!seen.rdSpec) {
            const rd = await getObject('volsync.backube/v1alpha1', 'replicationdestinations', app, 'restore-grafana');
            if (rd) {
              seen.rdSpec = rd.spec as Record<string, unknown>;
              // status.replicas is omitted when 0 (omitempty)
              seen.replicasAtRd =
                (await apps.readNamespacedDeployment({ namespace: app, name: 'grafana' })).status?.replicas ?? 0;
              const k = await getObject('kustomize.toolkit.fluxcd.io/v1', 'kustomizations', app, 'apps');
              seen.suspendAtRd = (k?.spec as { suspend?: boolean }).suspend;
            }
          }
          await sleep(50);
        }
      })();
      await watch;
      return (await result) as DrReport;
    });

    expect(report.ok).toBe(true);
    const t = report.targets[0]!;
    expect(t).toMatchObject({ target: `pvc ${app}/grafana`, ok: true, restoredTo: `PVC ${app}/grafana` });
    expect(t.verification).toMatch(
      new RegExp(
        `^sentinel \\.labwright-sentinel sha256 ok \\(Job verify-grafana-\\S+\\); 2Gi restored; Deployment grafana to 2 scaled back; ` +
          `Kustomization ${app}/apps and ReplicationSource ${app}/grafana held during the restore, resumed$`,
      ),
    );
    // Backup N, exactly: not N+1, and the -wal written after the backup is gone (enableFileDeletion).
    expect(await readVolume(lab, app, 'grafana')).toEqual(data('backup N'));
    expect(seen.rdSpec).toMatchObject({
      restic: {
        copyMethod: 'Direct',
        destinationPVC: 'grafana',
        repository: 'grafana-restic',
        restoreAsOf: t.backup.takenAt,
        enableFileDeletion: true,
      },
    });
    // Volsync wrote only once the app was down and Flux suspended.
    expect(seen.replicasAtRd).toBe(0);
    expect(seen.suspendAtRd).toBe(true);
    expect(seen.minReplicas).toBe(0);
    // The ReplicationSource made no snapshot from the pause to the verification, though due.
    const restore = lab.volumes.events.find((e) => e.kind === 'restore' && e.namespace === app);
    const job = lab.volumes.events.find((e) => e.kind === 'job' && e.namespace === app);
    if (restore?.kind !== 'restore' || job?.kind !== 'job') throw new Error('no restore or verification ran');
    const during = (e: (typeof lab.volumes.events)[number]) =>
      e.namespace === app && 'at' in e && e.at >= restore.start && e.at <= job.end;
    expect(lab.volumes.events.filter((e) => e.kind === 'backup' && during(e))).toEqual([]);
    expect(lab.volumes.events.filter((e) => e.kind === 'backup-skipped' && during(e)).length).toBeGreaterThan(0);
    // Resumed: the schedule backs the restored volume up again.
    for (let i = 0; i < 100; i++) {
      if (lab.volumes.events.some((e) => e.kind === 'backup' && e.namespace === app && e.at > job.end)) break;
      await sleep(100);
    }
    expect(lab.volumes.events.some((e) => e.kind === 'backup' && e.namespace === app && e.at > job.end)).toBe(true);
    // Resumed: the app at its replicas, Flux not suspended, the source not paused; nothing left behind.
    expect((await apps.readNamespacedDeployment({ namespace: app, name: 'grafana' })).spec?.replicas).toBe(2);
    const k = await getObject('kustomize.toolkit.fluxcd.io/v1', 'kustomizations', app, 'apps');
    expect((k?.spec as { suspend?: boolean }).suspend).not.toBe(true);
    const rs = await getObject('volsync.backube/v1alpha1', 'replicationsources', app, 'grafana');
    expect((rs?.spec as { paused?: boolean }).paused).not.toBe(true);
    const core = kc().makeApiClient(CoreV1Api);
    expect(
      (await core.readNamespacedPersistentVolumeClaim({ namespace: app, name: 'grafana' })).metadata?.deletionTimestamp,
    ).toBeUndefined();
    expect(
      await getObject('volsync.backube/v1alpha1', 'replicationdestinations', app, 'restore-grafana'),
    ).toBeUndefined();
    expect((await kc().makeApiClient(BatchV1Api).listNamespacedJob({ namespace: app })).items).toEqual([]);
    expect(report.cleanedUp.filter((c) => c.startsWith('LEFT'))).toEqual([]);
    expect(report.cleanedUp).toEqual(
      expect.arrayContaining([
        expect.stringMatching(/^Job .*verify-grafana-/),
        `ReplicationDestination ${app}/restore-grafana`,
      ]),
    );
  });

  it('refuses an in-place PVC restore while a pod nothing would scale mounts the PVC, touching nothing', async () => {
    const app = await appWithBackups(['mqtt'], 3600);
    const core = kc().makeApiClient(CoreV1Api);
    await core.createNamespacedPod({
      namespace: app,
      body: {
        metadata: { name: 'debug-shell' },
        spec: {
          containers: [{ name: 'sh', image: 'docker.io/library/busybox:1.37' }],
          volumes: [{ name: 'data', persistentVolumeClaim: { claimName: 'mqtt' } }],
        },
      },
    });
    const plan = uniqueName('restore-busy');
    const client = await testClient();
    const err = await withWorker({ activities: lab.activities }, async ({ taskQueue }) =>
      client.workflow
        .execute('drRestore', {
          taskQueue,
          workflowId: `dr-restore/${plan}`,
          args: [input(plan, 'restore', [pvc(app, 'mqtt')])],
        })
        .catch((e: unknown) => e),
    );
    const cause = (err as WorkflowFailedError).cause as ApplicationFailure;
    expect(cause.type).toBe('PreconditionFailed');
    expect(cause.message).toBe(
      `restore ${plan}: pvc ${app}/mqtt: pod(s) ${app}/debug-shell (Pending) mount the PVC and no Deployment or StatefulSet owns them: stop them first; nothing was touched`,
    );
    expect(await getObject('volsync.backube/v1alpha1', 'replicationdestinations', app, 'restore-mqtt')).toBeUndefined();
  });

  it('fails before anything is touched when a backup is missing or too old, naming each', async () => {
    const app = await appWithBackups(['mosquitto'], 3 * 86_400);
    const plan = uniqueName('stale');
    const client = await testClient();
    const writesBefore = await pveWrites();
    const err = await withWorker({ activities: lab.activities }, async ({ taskQueue }) =>
      client.workflow
        .execute('drRestore', {
          taskQueue,
          workflowId: `dr-drill/${plan}`,
          args: [input(plan, 'drill', [pvc(app, 'mosquitto'), { ...hass, name: 'nas', vmid: 130 }])],
        })
        .catch((e: unknown) => e),
    );
    expect(err).toBeInstanceOf(WorkflowFailedError);
    const cause = (err as WorkflowFailedError).cause as ApplicationFailure;
    expect(cause.type).toBe('PreconditionFailed');
    expect(cause.message).toMatch(
      new RegExp(`pvc ${app}/mosquitto: the newest backup is 3d\\S* old, older than maxBackupAge 1d`),
    );
    expect(cause.message).toContain('vm nas (130): no backup of VM 130 on pve1/unraid-backup');
    expect(cause.message).toMatch(/nothing was touched$/);
    const core = kc().makeApiClient(CoreV1Api);
    const namespaces = await core.listNamespace();
    expect(namespaces.items.map((n) => n.metadata!.name!).filter((n) => n.startsWith(`dr-drill-${plan}`))).toEqual([]);
    const writesAfter = await pveWrites();
    expect(writesAfter).toBe(writesBefore);
  });

  it('fails the drill when one byte of the restored sentinel differs, and still cleans up', async () => {
    const app = await appWithData(lab, { immich: data('immich photos') });
    const plan = uniqueName('badverify');
    let scratch = '';
    const client = await testClient();
    const err = await withWorker({ activities: lab.activities }, async ({ taskQueue }) => {
      const handle = await client.workflow.start('drRestore', {
        taskQueue,
        workflowId: `dr-drill/${plan}`,
        // The sentinel's checksum as it should be: one byte differs from what the backup holds.
        args: [
          input(plan, 'drill', [pvc(app, 'immich', { sentinel: { path: SENTINEL, sha256: sha256('immich photoS') } })]),
        ],
      });
      scratch = drillNamespace(plan, handle.firstExecutionRunId);
      lab.volumes.watch(scratch);
      return handle.result().catch((e: unknown) => e);
    });
    const job = lab.volumes.events.find((e) => e.kind === 'job' && e.namespace === scratch);
    expect(job).toMatchObject({ exitCode: 1 });
    expect(job?.kind === 'job' && job.output).toContain(`/data/${SENTINEL}: FAILED`);
    expect(err).toBeInstanceOf(WorkflowFailedError);
    const cause = (err as WorkflowFailedError).cause as ApplicationFailure;
    expect(cause.type).toBe('PreconditionFailed');
    expect(cause.message).toMatch(
      /^drill .* FAILED: pvc .*\/immich: verification of .*\/immich failed: Job .*verify-immich-\S+ failed: BackoffLimitExceeded/,
    );
    const report = (cause.details?.[0] as { report: DrReport }).report;
    expect(report.ok).toBe(false);
    expect(report.cleanedUp.length).toBeGreaterThan(0);
    expect(report.cleanedUp.filter((c) => c.startsWith('LEFT'))).toEqual([]);
    expect(
      await getObject('volsync.backube/v1alpha1', 'replicationdestinations', scratch, 'restore-immich'),
    ).toBeUndefined();
    expect((await kc().makeApiClient(BatchV1Api).listNamespacedJob({ namespace: scratch })).items).toEqual([]);
  });

  it('cleans up what a drill made when the drill is cancelled midway; a scheduled drill of the plan meanwhile gives way; the long sync wait adds no events per poll', async () => {
    const app = await appWithData(lab, { frigate: data('frigate') });
    await storeVmBackup(lab, 120, 600);
    const plan = uniqueName('cancel');
    let scratch = '';
    const client = await testClient();
    await withWorker({ activities: lab.activities }, async ({ taskQueue }) => {
      const handle = await client.workflow.start('drRestore', {
        taskQueue,
        workflowId: `dr-drill/${plan}`,
        args: [input(plan, 'drill', [pvc(app, 'frigate'), hass])],
      });
      scratch = drillNamespace(plan, handle.firstExecutionRunId);
      // Nobody plays VolSync: the drill waits on its sync, with the namespace, Secret, RD and VM made.
      for (let i = 0; i < 200; i++) {
        const rd = await getObject('volsync.backube/v1alpha1', 'replicationdestinations', scratch, 'restore-frigate');
        const vmUp = (await lab.pve.fake.vms()).some((v) => v.vmid >= 8900 && v.vmid <= 8999 && v.status === 'running');
        if (rd && vmUp) break;
        await sleep(100);
      }
      // The weekly schedule starts the same plan's drill meanwhile: it gives way at once, touching nothing.
      const vmsBefore = (await lab.pve.fake.vms()).length;
      const scheduled = await client.workflow
        .execute('drRestore', {
          taskQueue,
          workflowId: `dr-drill/${plan}-2026-12-06T03:00:00Z`,
          args: [input(plan, 'drill', [pvc(app, 'frigate'), hass])],
        })
        .catch((e: unknown) => e);
      expect(((scheduled as WorkflowFailedError).cause as Error).message).toMatch(
        new RegExp(
          `^drill ${plan}: another drill of this plan is running \\(dr-drill/${plan}, started \\S+\\): one drill per plan at a time; nothing was touched$`,
        ),
      );
      expect((await lab.pve.fake.vms()).length).toBe(vmsBefore);
      // The sync wait goes on (25 polls' worth at pollSeconds 0.2) inside one heartbeating
      // activity: no timer or poll per look in the drill's history.
      await sleep(5000);
      const events = (await handle.fetchHistory()).events ?? [];
      expect(events.filter((e) => e.timerStartedEventAttributes)).toEqual([]);
      expect(events.length).toBeLessThan(150);
      await handle.cancel();
      const err = await handle.result().catch((e: unknown) => e);
      expect(err).toBeInstanceOf(WorkflowFailedError);
      expect((await handle.describe()).status.name).toBe('CANCELLED');
    });
    expect(
      await getObject('volsync.backube/v1alpha1', 'replicationdestinations', scratch, 'restore-frigate'),
    ).toBeUndefined();
    const core = kc().makeApiClient(CoreV1Api);
    expect(await gone(() => core.readNamespacedSecret({ namespace: scratch, name: 'frigate-restic' }))).toBe(true);
    expect(await gone(() => core.readNamespace({ name: scratch }))).toBe(true);
    expect((await lab.pve.fake.vms()).filter((v) => v.vmid >= 8900 && v.vmid <= 8999)).toEqual([]);
  });

  it('checks an etcd snapshot before a drill touches anything: intact passes the checks, a corrupt one fails with the reason', async () => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'labwright-etcd-'));
    try {
      // A bbolt file starts with a meta page whose magic 0xED0CDAED sits at offset 16.
      // `talosctl etcd snapshot` appends the database's sha256 (test/dr-etcd.test.ts takes real ones
      // and recovers them on a scratch control plane; this lab has no Talos).
      const page = Buffer.alloc(4 * 1024 ** 2);
      page.writeUInt32LE(0xed0cdaed, 16);
      const sum = createHash('sha256').update(page).digest();
      await fs.writeFile(path.join(dir, 'etcd-2026.snapshot'), Buffer.concat([page, sum]));
      const client = await testClient();
      const target = { kind: 'etcd', cluster: 'home', snapshotDir: dir };
      // The snapshot passes its checks; the drill then needs its scratch control plane's address.
      const noScratch = await withWorker({ activities: lab.activities }, async ({ taskQueue }) =>
        client.workflow
          .execute('drRestore', {
            taskQueue,
            workflowId: `dr-drill/${uniqueName('etcd')}`,
            args: [input(uniqueName('etcd'), 'drill', [target])],
          })
          .catch((e: unknown) => e),
      );
      expect(((noScratch as WorkflowFailedError).cause as ApplicationFailure).message).toMatch(
        /: etcd home: a drill recovers the snapshot on a scratch control plane: give the target drill\.ip \(its address; drill\.net its isolated network\); nothing was touched$/,
      );

      await fs.writeFile(path.join(dir, 'etcd-2027.snapshot'), Buffer.alloc(4 * 1024 ** 2, 1));
      const err = await withWorker({ activities: lab.activities }, async ({ taskQueue }) =>
        client.workflow
          .execute('drRestore', {
            taskQueue,
            workflowId: `dr-drill/${uniqueName('etcd')}`,
            args: [input(uniqueName('etcd'), 'drill', [target])],
          })
          .catch((e: unknown) => e),
      );
      const cause = (err as WorkflowFailedError).cause as ApplicationFailure;
      expect(cause.message).toMatch(/etcd home: etcd snapshot .*etcd-2027\.snapshot: not an etcd \(bbolt\) database/);
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  });
});
