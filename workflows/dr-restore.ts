/**
 * DR restore: bring back PVCs (Volsync restic backups), VMs (Proxmox vzdump archives) and etcd
 * (a `talosctl etcd snapshot`) from a plan of targets. ID `dr-restore/<plan>` (restore) or
 * `dr-drill/<plan>` (drill). The runbook it replaces:
 *
 *   1. Validate the plan.
 *   2. Check every target's backup before anything is touched: it exists, it is younger than
 *      `maxBackupAge`, and it is not empty. Any problem fails the run here, naming each one.
 *   3. Compute the plan (what is restored from which backup of what age, what it overwrites or
 *      where it goes) and expose it (`plan` query).
 *   4. restore mode: wait for the `approve` update carrying the plan's digest; a wrong or stale
 *      digest is refused at once with the reason, and who approved is the caller's Temporal
 *      identity as the server recorded it. Nothing is touched without it (a rejection or the
 *      approval timeout end the run untouched).
 *   5. Restore each target, in parallel:
 *      - PVC: a ReplicationDestination with a manual trigger, pinned to the approved backup
 *        (`restoreAsOf` its time); done when status.lastManualSync is the trigger and
 *        latestMoverStatus.result is Successful. A drill restores into a scratch namespace (a new
 *        PVC from the mover's VolumeSnapshot); a restore writes into the real PVC (copyMethod
 *        Direct, enableFileDeletion), with the owning Flux Kustomization suspended, the
 *        ReplicationSource paused and the app scaled to 0 until the data is verified.
 *      - VM: the newest archive restored to a VMID: a drill to a free VMID of the drill range,
 *        with every NIC's link down (isolated); a restore replaces the VM at its own VMID.
 *      - etcd: a restore recovers through Talos (`talosctl bootstrap --recover-from`) on the
 *        cluster's control plane; a drill recovers on a scratch control plane: a VM cloned from
 *        the cluster's template into the drill range, NIC isolated, with the cluster's secrets
 *        (a scratch cluster of its own, discovery off), and checks that its etcd comes up with the
 *        snapshot's data (revision at least the snapshot's).
 *   6. Verify: a Job checks the PVC's sentinel checksum and size; the VM boots and its guest
 *      agent answers; an undersized or empty result is refused.
 *   7. A drill always cleans up what it created (also on failure and cancellation).
 *   8. Report per target and in total: measured RTO (to the last verification; the cleanup is
 *      reported apart) and RPO (the age of the backup used), kept for the next run, which reports
 *      the RTO trend.
 */
import * as wf from '@temporalio/workflow';
import type { DrReportActivities } from '../activities/dr-reports.js';
import type { TemporalActivities } from '../activities/temporal.js';
import type { createKubernetesActivities, PvcWorkload } from '../activities/kubernetes.js';
import type { createProxmoxActivities, TaskOutcome } from '../activities/proxmox.js';
import type { createTalosActivities } from '../activities/talos.js';
import { apiCall, oneShot, waitFor } from '../common/activity-options.js';
import {
  DRILL_CONTROL_PLANE_PATCH,
  DR_LABELS,
  approvalProblem,
  approveUpdate,
  drRestoreInputSchema,
  drStatusQuery,
  drillEtcdName,
  drillMac,
  drillNamespace,
  drillVmName,
  dnsLabel,
  formatBytes,
  formatDuration,
  isolatedNet,
  planDigest,
  planQuery,
  quantityBytes,
  replicationDestinationObject,
  restoredPvcObject,
  summarize,
  targetLabel,
  verifyJobObject,
  type Approval,
  type BackupInfo,
  type DrPlan,
  type DrReport,
  type DrRestoreParsed,
  type DrStatus,
  type DrTarget,
  type PlanItem,
  type TargetReport,
} from '../common/dr-restore.js';
import { nonRetryable } from '../common/errors.js';
import { ProgressTracker } from '../common/progress.js';
import { runPveTask } from '../common/pve-tasks.js';
import { RESOURCE_KEY } from '../common/search-attributes.js';
import type { SecretRef } from '../common/secret-ref.js';
import {
  networkOf,
  nodeConfigRequest,
  parseInventory,
  planCluster,
  talosStore,
  templateFor,
  type NodePlan,
} from '../common/talos.js';
import { parseInput } from '../common/validation.js';
import type { Inventory } from '../hardware/schema.js';

type Kube = ReturnType<typeof createKubernetesActivities>;
type Pve = ReturnType<typeof createProxmoxActivities>;
type Talos = ReturnType<typeof createTalosActivities>;

const kube = wf.proxyActivities<Kube>(apiCall);
const kubeWait = wf.proxyActivities<Kube>(waitFor);
const pve = wf.proxyActivities<Pve>(apiCall);
const pveWait = wf.proxyActivities<Pve>(waitFor);
const talos = wf.proxyActivities<Talos>(apiCall);
const talosOnce = wf.proxyActivities<Talos>(oneShot);
const talosWait = wf.proxyActivities<Talos>(waitFor);
const files = wf.proxyActivities<DrReportActivities>(apiCall);
const temporal = wf.proxyActivities<TemporalActivities>(apiCall);

export const DR_RESTORE_STEPS = [
  'validate',
  'check backups',
  'plan',
  'approval',
  'restore and verify',
  'clean up',
  'report',
] as const;

/** What the checks found for one target, used by its restore. */
type Checked =
  | {
      target: Extract<DrTarget, { kind: 'pvc' }>;
      backup: BackupInfo;
      replicationSource: string;
      /** The Flux Kustomization that applies the ReplicationSource (suspended during a restore). */
      kustomization?: { namespace: string; name: string };
      repository: string;
      capacity: string;
      accessModes: string[];
      storageClassName?: string;
      /** restore mode: the Deployments/StatefulSets mounting the PVC, scaled to 0 and back. */
      users?: PvcWorkload[];
    }
  | { target: Extract<DrTarget, { kind: 'vm' }>; backup: BackupInfo; archive: string; currentName?: string }
  | {
      target: Extract<DrTarget, { kind: 'etcd' }>;
      backup: BackupInfo;
      snapshot: string;
      /** What the integrity check found (bbolt, appended sha256). */
      integrity: string;
      address?: string;
    };

/** Something a drill made, removed again at the end. */
type Made =
  | { kind: 'k8s'; apiVersion: string; k8sKind: string; namespace?: string; name: string }
  | { kind: 'vm'; host: string; node: string; vmid: number; name: string }
  /** A scratch cluster's Talos material in the secret store (`talos/<drill-...>/`). */
  | { kind: 'talos'; cluster: string };

export async function drRestore(raw: unknown): Promise<DrReport> {
  const input = parseInput(drRestoreInputSchema, raw, 'dr-restore input');
  const info = wf.workflowInfo();
  wf.upsertSearchAttributes([{ key: RESOURCE_KEY, value: input.plan }]);
  const progress = new ProgressTracker(DR_RESTORE_STEPS);
  const status: DrStatus = { phase: 'checking' };
  let plan: DrPlan | null = null;
  let approval: Approval | undefined;
  let rejection: { by: string; reason: string } | undefined;
  let decided = false;
  wf.setHandler(planQuery, () => plan);
  wf.setHandler(drStatusQuery, () => status);
  wf.setHandler(
    approveUpdate,
    async (req) => {
      decided = true;
      const { identity: by } = await temporal.temporalUpdateCaller({ updateId: wf.currentUpdateInfo()!.id });
      if (req.approve) {
        approval = { digest: req.digest, by, ...(req.reason ? { comment: req.reason } : {}) };
        status.approval = approval;
      } else {
        rejection = { by, reason: req.reason! };
        status.rejection = rejection;
      }
      return { decision: req.approve ? 'approved' : 'rejected', digest: req.digest, by };
    },
    {
      validator: (req) => {
        const problem = approvalProblem(req, plan, status.phase, decided);
        if (problem) throw new Error(problem);
      },
    },
  );

  const startedAt = Date.now();
  const drill = input.mode === 'drill';
  const kubeconfig: SecretRef = input.kubeconfig ?? { store: talosStore.kubeconfig(input.cluster) };
  const talosconfig: SecretRef = input.talosconfig ?? { store: talosStore.talosconfig(input.cluster) };

  // 1. validate: the inventory when a target needs it (VMIDs of the drill range, etcd nodes).
  const inventory = await progress.run(
    'validate',
    async () => {
      const needs = input.targets.some((t) => t.kind !== 'pvc');
      return needs ? parseInventory(input.inventory ?? (await talos.talosLabInventory())) : undefined;
    },
    () => `${input.mode} of ${input.targets.length} target(s): ${input.targets.map(targetLabel).join(', ')}`,
  );

  // An etcd drill recovers the snapshot on a scratch control plane (issue 7); runs started before
  // that only checked the snapshot, and replay the same way.
  const scratchEtcd = drill && input.targets.some((t) => t.kind === 'etcd') && wf.patched('etcd-drill-recover');

  // 2. backups: all targets checked, every problem named, before anything is touched.
  const checked = await progress
    .run(
      'check backups',
      async () => {
        // One drill per plan at a time, whoever starts it (a manual run, the weekly schedule's
        // `dr-drill/<plan>-<time>`): the one that started later gives way, touching nothing.
        if (drill && wf.patched('one-drill-per-plan')) {
          const others = await temporal.temporalRunningWorkflows({ workflowType: 'drRestore', resource: input.plan });
          const mine = info.startTime.getTime();
          const earlier = others.find(
            (o) =>
              o.workflowId.startsWith('dr-drill/') &&
              o.runId !== info.runId &&
              (Date.parse(o.startTime) < mine || (Date.parse(o.startTime) === mine && o.runId < info.runId)),
          );
          if (earlier) {
            throw nonRetryable(
              'precondition',
              `drill ${input.plan}: another drill of this plan is running (${earlier.workflowId}, started ${earlier.startTime}): one drill per plan at a time; nothing was touched`,
            );
          }
        }
        const results = await Promise.all(
          input.targets.map((t) => checkBackup(t, input, kubeconfig, talosconfig, inventory, scratchEtcd)),
        );
        const problems = results.filter((r): r is { problem: string } => 'problem' in r).map((r) => r.problem);
        if (problems.length > 0) {
          throw nonRetryable(
            'precondition',
            `${input.mode} ${input.plan}: ${problems.join('; ')}; nothing was touched`,
            {
              problems,
            },
          );
        }
        return results as Checked[];
      },
      (cs) => cs.map((c) => `${targetLabel(c.target)} ${formatDuration(c.backup.ageMs)} old`).join(', '),
    )
    .catch((err: unknown) => {
      status.phase = 'failed';
      status.detail = (err as Error).message;
      progress.finishWith((err as Error).message);
      throw err;
    });

  // 3. the plan: VMIDs of drill VMs are chosen here, once, and recorded with the plan.
  const drillVmids = new Map<number, number>();
  if (drill) {
    for (const [i, c] of checked.entries()) {
      if (c.target.kind !== 'vm' && !(c.target.kind === 'etcd' && scratchEtcd)) continue;
      const vmid = await pve.pveNextFreeVmid({
        host: c.target.kind === 'vm' ? c.target.host : planCluster(inventory!, c.target.cluster).template.host,
        range: inventory!.proxmox.vmidRanges.drills,
        exclude: [...drillVmids.values()],
      });
      drillVmids.set(i, vmid);
    }
  }
  const namespace = drillNamespace(input.plan, info.runId);
  const items: PlanItem[] = checked.map((c, i) =>
    planItem(
      c,
      drill,
      namespace,
      drillVmids.get(i),
      scratchEtcd ? { plan: input.plan, inventory: inventory! } : undefined,
    ),
  );
  plan = { plan: input.plan, mode: input.mode, digest: planDigest(items), items, computedAt: new Date().toISOString() };
  progress.done('plan', `digest ${plan.digest}: ${items.map((i) => `${i.target} -> ${i.into}`).join('; ')}`);

  // 4. approval: a restore waits for it; nothing has been touched so far.
  if (drill) {
    progress.skip('approval', 'a drill touches only scratch space');
  } else {
    status.phase = 'awaiting-approval';
    progress.start('approval', `waiting for the approve update with digest ${plan.digest} (labwright plan)`);
    const got = await wf.condition(() => approval !== undefined || rejection !== undefined, input.approvalTimeout);
    if (!approval) {
      const why = rejection
        ? `rejected by ${rejection.by}: ${rejection.reason}`
        : `not approved within ${formatDuration(input.approvalTimeout)}`;
      status.phase = 'failed';
      progress.fail('approval', why);
      progress.finishWith(`restore ${input.plan} ${why}; nothing was touched`);
      throw nonRetryable('precondition', `restore ${input.plan} ${why}; nothing was touched`, { plan, timedOut: !got });
    }
    progress.done('approval', `approved by ${approval.by}${approval.comment ? `: ${approval.comment}` : ''}`);
  }

  // 5-7. restore and verify, in parallel; a drill removes whatever it made, whatever happens.
  const restoreStart = Date.now();
  let lastVerifiedAt = restoreStart;
  let cleanupMs = 0;
  status.phase = 'restoring';
  const made: Made[] = [];
  const cleanedUp: string[] = [];
  let reports: TargetReport[] = [];
  progress.start('restore and verify');
  try {
    if (drill && checked.some((c) => c.target.kind === 'pvc')) {
      made.push({ kind: 'k8s', apiVersion: 'v1', k8sKind: 'Namespace', name: namespace });
      await kube.k8sApply({
        kubeconfig,
        fieldManager: 'labwright',
        manifests: JSON.stringify({
          apiVersion: 'v1',
          kind: 'Namespace',
          metadata: { name: namespace, labels: { ...DR_LABELS, 'labwright.dev/plan': input.plan } },
        }),
      });
    }
    const settled = await Promise.allSettled(checked.map((c, i) => restoreTarget(c, i)));
    reports = settled.map((s, i) => {
      const c = checked[i]!;
      if (s.status === 'fulfilled') return s.value;
      if (wf.isCancellation(s.reason)) throw s.reason;
      return {
        target: targetLabel(c.target),
        kind: c.target.kind,
        ok: false,
        backup: c.backup,
        rpoMs: restoreStart - Date.parse(c.backup.takenAt),
        restoredTo: plan!.items[i]!.into,
        error: (s.reason as Error).message,
      };
    });
    const failed = reports.filter((r) => !r.ok);
    if (failed.length > 0) progress.fail('restore and verify', failed.map((r) => `${r.target}: ${r.error}`).join('; '));
    else progress.done('restore and verify', reports.map((r) => `${r.target}: ${r.verification}`).join('; '));
  } finally {
    await wf.CancellationScope.nonCancellable(async () => {
      if (!drill && made.length === 0) {
        progress.skip('clean up', 'a restore keeps what it restored');
        return;
      }
      status.phase = 'cleaning-up';
      progress.start('clean up', `${made.length} object(s)`);
      const cleanupStart = Date.now();
      for (const m of [...made].reverse()) cleanedUp.push(await remove(m));
      cleanupMs = Date.now() - cleanupStart;
      const left = cleanedUp.filter((c) => c.startsWith('LEFT'));
      if (left.length > 0) progress.fail('clean up', left.join('; '));
      else progress.done('clean up', cleanedUp.join(', ') || 'nothing to remove');
    });
  }

  // 8. the report, kept for the next run's comparison.
  const finishedAt = Date.now();
  const failed = reports.filter((r) => !r.ok);
  const totalRtoMs = lastVerifiedAt - restoreStart;
  const previous = await files.drLastReport({ plan: input.plan, mode: input.mode, exceptRunId: info.runId });
  const base: Omit<DrReport, 'summary'> = {
    plan: input.plan,
    mode: input.mode,
    workflowId: info.workflowId,
    runId: info.runId,
    ok: failed.length === 0,
    startedAt: new Date(startedAt).toISOString(),
    finishedAt: new Date(finishedAt).toISOString(),
    totalRtoMs,
    cleanupMs,
    maxRpoMs: Math.max(...reports.map((r) => r.rpoMs)),
    targets: reports,
    cleanedUp,
    ...(failed.length > 0 ? { error: failed.map((r) => `${r.target}: ${r.error}`).join('; ') } : {}),
    ...(previous
      ? {
          previous: {
            workflowId: previous.workflowId,
            finishedAt: previous.finishedAt,
            ok: previous.ok,
            totalRtoMs: previous.totalRtoMs,
            maxRpoMs: previous.maxRpoMs,
          },
          rtoTrendMs: totalRtoMs - previous.totalRtoMs,
        }
      : {}),
  };
  const report: DrReport = { ...base, summary: summarize(base) };
  await progress.run(
    'report',
    () => files.drSaveReport({ report }),
    (r) => r.file,
  );
  progress.finishWith(report.summary);
  status.phase = report.ok ? 'done' : 'failed';
  status.detail = report.summary;
  if (!report.ok) throw nonRetryable('precondition', report.summary, { report });
  return report;

  // ---------------------------------------------------------------- per target

  async function restoreTarget(c: Checked, index: number): Promise<TargetReport> {
    const t0 = Date.now();
    const label = targetLabel(c.target);
    const into = plan!.items[index]!.into;
    const step = (detail: string): void => progress.detail('restore and verify', `${label}: ${detail}`);
    let verification: string;
    let restoredBytes: number | undefined;
    if (c.target.kind === 'pvc') {
      ({ verification, restoredBytes } = await restorePvc(c as Extract<Checked, { target: { kind: 'pvc' } }>, step));
    } else if (c.target.kind === 'vm') {
      ({ verification, restoredBytes } = await restoreVm(
        c as Extract<Checked, { target: { kind: 'vm' } }>,
        index,
        step,
      ));
    } else {
      const e = c as Extract<Checked, { target: { kind: 'etcd' } }>;
      ({ verification, restoredBytes } =
        drill && scratchEtcd ? await restoreEtcdScratch(e, index, step) : await restoreEtcd(e, step));
    }
    step(`verified: ${verification}`);
    lastVerifiedAt = Math.max(lastVerifiedAt, Date.now());
    return {
      target: label,
      kind: c.target.kind,
      ok: true,
      backup: c.backup,
      rtoMs: Date.now() - t0,
      rpoMs: t0 - Date.parse(c.backup.takenAt),
      restoredTo: into,
      verification,
      ...(restoredBytes !== undefined ? { restoredBytes } : {}),
    };
  }

  async function restorePvc(
    c: Extract<Checked, { target: { kind: 'pvc' } }>,
    step: (d: string) => void,
  ): Promise<{ verification: string; restoredBytes: number }> {
    const t = c.target;
    const ns = drill ? namespace : t.namespace;
    const rdName = dnsLabel(`restore-${t.pvc}`);
    const trigger = `labwright-${info.runId.slice(0, 8)}`;
    const minBytes = quantityBytes(t.minSize)!;
    let repository = c.repository;
    if (drill) {
      repository = dnsLabel(`${c.repository}`);
      made.push({ kind: 'k8s', apiVersion: 'v1', k8sKind: 'Secret', namespace: ns, name: repository });
      await kube.k8sCopySecret({
        kubeconfig,
        from: { namespace: t.namespace, name: c.repository },
        to: { namespace: ns, name: repository },
        labels: DR_LABELS,
      });
    }
    // In place: Flux must not scale the app back up (its Kustomization suspended), the
    // ReplicationSource must not back up the broken or half-restored volume (paused), and the
    // app's Deployments/StatefulSets are scaled to 0 (Volsync writes into the PVC directly, which
    // must not be in use). All come back once the data is verified.
    const users = drill ? [] : (c.users ?? []);
    const held: Held[] = drill
      ? []
      : [
          ...(c.kustomization
            ? [
                {
                  what: `Kustomization ${c.kustomization.namespace}/${c.kustomization.name}`,
                  apiVersion: 'kustomize.toolkit.fluxcd.io/v1',
                  kind: 'Kustomization',
                  namespace: c.kustomization.namespace,
                  name: c.kustomization.name,
                  spec: { suspend: true },
                },
              ]
            : []),
          {
            what: `ReplicationSource ${t.namespace}/${c.replicationSource}`,
            apiVersion: 'volsync.backube/v1alpha1',
            kind: 'ReplicationSource',
            namespace: t.namespace,
            name: c.replicationSource,
            spec: { paused: true },
          },
        ];
    for (const h of held) {
      step(`${h.kind === 'Kustomization' ? 'suspending' : 'pausing'} ${h.what}`);
      await hold(h, true);
    }
    if (users.length > 0) {
      step(`scaling ${users.map((u) => `${u.kind} ${u.name}`).join(', ')} to 0`);
      for (const u of users) {
        await kube.k8sScaleWorkload({ kubeconfig, namespace: ns, kind: u.kind, name: u.name, replicas: 0 });
      }
      try {
        await kubeWait.k8sWaitPvcUnused({
          kubeconfig,
          namespace: ns,
          pvc: t.pvc,
          workloads: users.map((u) => ({ kind: u.kind, name: u.name })),
          timeoutSeconds: input.scaleDownTimeoutSeconds,
        });
      } catch (err) {
        throw nonRetryable(
          'precondition',
          `PVC ${ns}/${t.pvc} still in use ${formatDuration(input.scaleDownTimeoutSeconds * 1000)} after scaling ${describeUsers(users, 0)}: ${causeMessage(err)}; nothing was restored, ${scaledDownNote(users, held)}`,
        );
      }
    }
    let restored: { verification: string; restoredBytes: number };
    try {
      restored = await restorePvcData();
    } catch (err) {
      if ((users.length === 0 && held.length === 0) || wf.isCancellation(err)) throw err;
      // The data may be half-written: the app stays down, unsynced and unbacked-up until someone looks.
      throw nonRetryable('precondition', `${causeMessage(err)}; ${scaledDownNote(users, held)}`);
    }
    for (const h of [...held].reverse()) await hold(h, false);
    return held.length > 0
      ? {
          ...restored,
          verification: `${restored.verification}; ${held.map((h) => h.what).join(' and ')} held during the restore, resumed`,
        }
      : restored;

    /** The workflow-side poll of runs started before `rd-wait-activity` (replay only). */
    async function pollReplicationDestination(deadline: number): Promise<RdStatus> {
      let rdStatus: RdStatus = {};
      for (;;) {
        const rd = await kube.k8sGetObject({
          kubeconfig,
          apiVersion: 'volsync.backube/v1alpha1',
          kind: 'ReplicationDestination',
          namespace: ns,
          name: rdName,
        });
        rdStatus = ((rd.object?.status ?? {}) as RdStatus) ?? {};
        if (rdStatus.lastManualSync === trigger && rdStatus.latestMoverStatus?.result === 'Successful') break;
        const mover = rdStatus.latestMoverStatus?.result;
        step(
          `syncing (mover ${mover ?? 'not reported yet'}${mover === 'Failed' ? `: ${rdStatus.latestMoverStatus?.logs ?? ''}; Volsync retries` : ''})`,
        );
        if (Date.now() >= deadline) {
          throw wf.ApplicationFailure.create({
            type: 'TimeoutError',
            nonRetryable: true,
            message: `ReplicationDestination ${ns}/${rdName} did not sync within ${formatDuration(input.syncTimeoutSeconds * 1000)} (mover ${mover ?? 'silent'})`,
          });
        }
        await wf.sleep(input.pollSeconds * 1000);
      }
      return rdStatus;
    }

    async function restorePvcData(): Promise<{ verification: string; restoredBytes: number }> {
      step(`ReplicationDestination ${ns}/${rdName}, trigger ${trigger}`);
      made.push({
        kind: 'k8s',
        apiVersion: 'volsync.backube/v1alpha1',
        k8sKind: 'ReplicationDestination',
        namespace: ns,
        name: rdName,
      });
      await kube.k8sApply({
        kubeconfig,
        fieldManager: 'labwright',
        manifests: JSON.stringify(
          replicationDestinationObject({
            name: rdName,
            namespace: ns,
            trigger,
            repository,
            plan: input.plan,
            restoreAsOf: c.backup.takenAt,
            ...(drill ? {} : { direct: { destinationPVC: t.pvc } }),
            capacity: c.capacity,
            accessModes: c.accessModes,
            ...((t.storageClassName ?? c.storageClassName)
              ? { storageClassName: t.storageClassName ?? c.storageClassName }
              : {}),
            ...(t.volumeSnapshotClassName ? { volumeSnapshotClassName: t.volumeSnapshotClassName } : {}),
          }),
        ),
      });

      // The sync: waited for in a heartbeating activity (its history stays a few events however
      // long the mover takes); runs started before replay the workflow-side poll they recorded.
      const deadline = Date.now() + input.syncTimeoutSeconds * 1000;
      let rdStatus: RdStatus = {};
      if (wf.patched('rd-wait-activity')) {
        step('syncing (the mover runs)');
        try {
          // One call per 20 minutes at most (the waitFor profile allows 30): a day-long sync
          // records a few dozen activities, not one per poll.
          for (let synced = false; !synced;) {
            const r = await kubeWait.k8sWaitReplicationDestination({
              kubeconfig,
              namespace: ns,
              name: rdName,
              trigger,
              deadlineAt: deadline,
              returnAt: Math.min(deadline, Date.now() + 20 * 60_000),
            });
            synced = r.synced;
            rdStatus = r;
          }
        } catch (err) {
          if (wf.isCancellation(err)) throw err;
          throw nonRetryable(
            'precondition',
            `ReplicationDestination ${ns}/${rdName} did not sync within ${formatDuration(input.syncTimeoutSeconds * 1000)}: ${causeMessage(err)}`,
          );
        }
      } else {
        rdStatus = await pollReplicationDestination(deadline);
      }

      // The size: the mover's VolumeSnapshot (drill) or the restored PVC (restore).
      let restoredBytes: number | undefined;
      let claim = t.pvc;
      if (drill) {
        const image = rdStatus.latestImage;
        if (!image?.name || image.kind !== 'VolumeSnapshot') {
          throw nonRetryable(
            'precondition',
            `ReplicationDestination ${ns}/${rdName} synced but reports no VolumeSnapshot (latestImage)`,
          );
        }
        made.push({
          kind: 'k8s',
          apiVersion: 'snapshot.storage.k8s.io/v1',
          k8sKind: 'VolumeSnapshot',
          namespace: ns,
          name: image.name,
        });
        const snap = await kube.k8sGetObject({
          kubeconfig,
          apiVersion: 'snapshot.storage.k8s.io/v1',
          kind: 'VolumeSnapshot',
          namespace: ns,
          name: image.name,
        });
        restoredBytes = quantityBytes((snap.object?.status as { restoreSize?: string } | undefined)?.restoreSize);
        assertSize(`VolumeSnapshot ${ns}/${image.name}`, restoredBytes, minBytes);
        claim = t.pvc;
        made.push({ kind: 'k8s', apiVersion: 'v1', k8sKind: 'PersistentVolumeClaim', namespace: ns, name: claim });
        await kube.k8sApply({
          kubeconfig,
          fieldManager: 'labwright',
          manifests: JSON.stringify(
            restoredPvcObject({
              name: claim,
              namespace: ns,
              snapshot: image.name,
              capacity: c.capacity,
              accessModes: c.accessModes,
              ...((t.storageClassName ?? c.storageClassName)
                ? { storageClassName: t.storageClassName ?? c.storageClassName }
                : {}),
              plan: input.plan,
            }),
          ),
        });
      } else {
        const pvc = await kube.k8sGetObject({
          kubeconfig,
          apiVersion: 'v1',
          kind: 'PersistentVolumeClaim',
          namespace: ns,
          name: t.pvc,
        });
        const o = pvc.object as
          | { status?: { capacity?: { storage?: string } }; spec?: { resources?: { requests?: { storage?: string } } } }
          | undefined;
        restoredBytes = quantityBytes(o?.status?.capacity?.storage ?? o?.spec?.resources?.requests?.storage);
        assertSize(`PVC ${ns}/${t.pvc}`, restoredBytes, minBytes);
      }

      // The data: a Job checks the sentinel's checksum and the volume's size.
      const jobName = dnsLabel(`verify-${t.pvc}-${info.runId.slice(0, 8)}`);
      step(`verification Job ${ns}/${jobName}`);
      made.push({ kind: 'k8s', apiVersion: 'batch/v1', k8sKind: 'Job', namespace: ns, name: jobName });
      const job = verifyJobObject({
        name: jobName,
        namespace: ns,
        pvc: claim,
        image: input.verifyImage,
        sentinelPath: t.sentinel.path,
        sha256: t.sentinel.sha256,
        minBytes,
        plan: input.plan,
      });
      await kube.k8sCreateJob({ kubeconfig, job: job as Parameters<Kube['k8sCreateJob']>[0]['job'] });
      try {
        await kubeWait.k8sWaitJob({
          kubeconfig,
          namespace: ns,
          name: jobName,
          timeoutSeconds: input.jobTimeoutSeconds,
        });
      } catch (err) {
        throw nonRetryable('precondition', `verification of ${t.namespace}/${t.pvc} failed: ${causeMessage(err)}`);
      }
      let scaledBack = '';
      if (users.length > 0) {
        step(`scaling ${describeUsers(users)} back`);
        for (const u of users) {
          await kube.k8sScaleWorkload({ kubeconfig, namespace: ns, kind: u.kind, name: u.name, replicas: u.replicas });
        }
        scaledBack = `; ${describeUsers(users)} scaled back`;
      }
      return {
        verification: `sentinel ${t.sentinel.path} sha256 ok (Job ${jobName}); ${formatBytes(restoredBytes!)} restored${scaledBack}`,
        restoredBytes: restoredBytes!,
      };
    }
  }

  async function restoreVm(
    c: Extract<Checked, { target: { kind: 'vm' } }>,
    index: number,
    step: (d: string) => void,
  ): Promise<{ verification: string; restoredBytes?: number }> {
    const t = c.target;
    const host = t.host;
    const node = t.node;
    const wait = (upid: string): Promise<TaskOutcome> => pveWait.pveWaitForTask({ host, upid });
    const vmid = drill ? drillVmids.get(index)! : t.vmid;
    const name = drill ? drillVmName(input.plan, t.name) : (c.currentName ?? t.name);
    const ref = { host, node, vmid };
    // In place: the VM is stopped and the archive restored over it (PVE's force), not deleted and
    // recreated: deleting with purge would drop its VMID from backup jobs, replication and HA.
    const over = !drill && c.currentName !== undefined;
    if (over) {
      step(`stopping VM ${vmid} (${c.currentName})`);
      const vm = await pve.pveGetVm(ref);
      if (vm && vm.status !== 'stopped') await runPveTask(`stop VM ${vmid}`, () => pve.pveStop(ref), wait);
    }
    step(`restoring ${c.archive} to VM ${vmid} (${name})`);
    if (drill) made.push({ kind: 'vm', host, node, vmid, name });
    await runPveTask(
      `restore ${c.archive} to VM ${vmid}`,
      () =>
        pve.pveRestore({
          ...ref,
          archive: c.archive,
          name,
          ...(t.restoreStorage ? { storage: t.restoreStorage } : {}),
          unique: drill,
          ...(over ? { over: { name: c.currentName! } } : {}),
        }),
      wait,
    );
    const restored = await pve.pveGetVm(ref);
    if (!restored) throw nonRetryable('notFound', `VM ${vmid} is missing after its restore`);
    if (drill) {
      // Isolated: every NIC's link down; and no passthrough device (a GPU, a USB stick) the
      // production VM holds, which the drill VM would contend for.
      const net: Record<number, string> = {};
      const hostpci: Record<number, null> = {};
      const usb: Record<string, null> = {};
      for (const [key, value] of Object.entries(restored.config)) {
        const m = /^(net|hostpci|usb)(\d+)$/.exec(key);
        if (m?.[1] === 'net') net[Number(m[2])] = isolatedNet(String(value));
        else if (m?.[1] === 'hostpci') hostpci[Number(m[2])] = null;
        else if (m) usb[key] = null;
      }
      const stripped = [...Object.keys(hostpci).map((i) => `hostpci${i}`), ...Object.keys(usb)];
      step(
        `isolating VM ${vmid}: ${Object.keys(net).length} NIC(s) link down${stripped.length ? `, ${stripped.join(', ')} removed` : ''}`,
      );
      await pve.pveSetConfig({
        ...ref,
        guard: { name },
        config: {
          net,
          ...(Object.keys(hostpci).length ? { hostpci } : {}),
          ...(Object.keys(usb).length ? { extra: usb } : {}),
          onboot: false,
          tags: ['labwright', 'dr-drill'],
          description: `labwright DR drill ${input.plan} (${info.workflowId}); removed when the drill ends`,
        },
      });
    }
    step(`starting VM ${vmid}`);
    await runPveTask(`start VM ${vmid}`, () => pve.pveStart(ref), wait, { okReasons: ['already-running'] });
    step(`waiting for the guest agent of VM ${vmid}`);
    let ifaces;
    try {
      // A drill VM's links are down: a DHCP guest never gets an address, so the agent answering is the proof.
      ifaces = await pveWait.pveWaitForAgent({
        ...ref,
        timeoutSeconds: input.agentTimeoutSeconds,
        ...(drill ? { anyAnswer: true } : {}),
      });
    } catch (err) {
      throw nonRetryable(
        'precondition',
        `VM ${vmid} (${name}) booted but its guest agent did not answer: ${causeMessage(err)}`,
      );
    }
    const addresses = ifaces.filter((i) => i.name !== 'lo').flatMap((i) => i.ipv4);
    return {
      verification: `VM ${vmid} booted, guest agent answers (${addresses.join(', ') || 'no IPv4'})`,
      ...(c.backup.size !== undefined ? { restoredBytes: c.backup.size } : {}),
    };
  }

  async function restoreEtcd(
    c: Extract<Checked, { target: { kind: 'etcd' } }>,
    step: (d: string) => void,
  ): Promise<{ verification: string; restoredBytes?: number }> {
    // The snapshot was checked before the approval (bbolt, appended sha256): what talosctl and
    // etcd check on a recovery. A drill started before `etcd-drill-recover` stopped there (its
    // replay does); newer drills recover on a scratch control plane (restoreEtcdScratch).
    if (drill) {
      return {
        verification: `snapshot intact: ${c.integrity} (not recovered in a drill)`,
        restoredBytes: c.backup.size,
      };
    }
    const t = c.target;
    step(`talosctl bootstrap --recover-from=${c.snapshot} on ${c.address}`);
    const recovered = await talosOnce.talosRecoverEtcd({
      address: c.address!,
      talosconfig,
      snapshot: c.snapshot,
      ...(t.skipHashCheck ? { skipHashCheck: true } : {}),
    });
    // etcd starts from the snapshot after the bootstrap has answered: a durable wait for a member.
    const deadline = Date.now() + input.etcdTimeoutSeconds * 1000;
    let members = 0;
    for (;;) {
      const m = await talos.talosEtcdMembers({ address: c.address!, talosconfig });
      members = m.members.length;
      if (members > 0) break;
      if (Date.now() >= deadline) {
        throw nonRetryable(
          'precondition',
          `etcd on ${c.address} has no member ${formatDuration(input.etcdTimeoutSeconds * 1000)} after the recovery from ${c.snapshot}` +
            `${m.warning ? ` (${m.warning.split('\n')[0]})` : ''}: the recovery failed (talosctl -n ${c.address} logs etcd)`,
        );
      }
      step(`waiting for etcd on ${c.address} to start from the snapshot`);
      await wf.sleep(input.pollSeconds * 1000);
    }
    const api = await kube.k8sGetObject({ kubeconfig, apiVersion: 'v1', kind: 'Namespace', name: 'kube-system' });
    if (!api.exists) throw nonRetryable('precondition', 'the Kubernetes API has no kube-system after the recovery');
    const s = recovered.snapshot;
    const from = s
      ? `snapshot hash ${s.hash}, revision ${s.revision}, ${s.totalKeys} keys`
      : `${c.snapshot}${recovered.outcome === 'already-recovered' ? ' (by an earlier attempt)' : ''}`;
    return {
      verification: `etcd recovered from ${from} (${members} member(s)); the Kubernetes API answers`,
      restoredBytes: c.backup.size,
    };
  }

  /**
   * An etcd drill: the snapshot recovered on a scratch control plane, a one-node cluster of its
   * own with the cluster's secrets (so the recovered data is readable as the cluster's), in a VM
   * cloned from the cluster's template into the drill range, its NIC isolated. What a restore
   * does, on scratch: the VM and the scratch Talos material are removed by the cleanup.
   */
  async function restoreEtcdScratch(
    c: Extract<Checked, { target: { kind: 'etcd' } }>,
    index: number,
    step: (d: string) => void,
  ): Promise<{ verification: string; restoredBytes?: number }> {
    const t = c.target;
    const cp = planCluster(inventory!, t.cluster);
    const name = drillEtcdName(input.plan, t.cluster);
    const ip = t.drill!.ip;
    const vmid = drillVmids.get(index)!;
    const host = cp.template.host;
    const ref = { host, node: cp.template.node, vmid };
    const wait = (upid: string): Promise<TaskOutcome> => pveWait.pveWaitForTask({ host, upid });
    const like = cp.controlPlane.find((n) => n.vm)?.vm;
    const mac = drillMac(name);
    const nic = t.drill!.net
      ? `virtio=${mac.toUpperCase()},${t.drill!.net}`
      : isolatedNet(`virtio=${mac.toUpperCase()},bridge=${like?.bridge ?? 'vmbr0'}`);
    const endpoint = `https://${ip}:6443`;
    const scratchTc: SecretRef = { store: talosStore.talosconfig(name) };
    const bootSeconds = input.agentTimeoutSeconds;

    // The scratch cluster's Talos material: the cluster's secrets, a talosconfig and a control
    // plane config for the scratch endpoint (no discovery: it carries the cluster's identity).
    step(`scratch cluster ${name} with the secrets of ${t.cluster}`);
    made.push({ kind: 'talos', cluster: name });
    await talos.talosCopyClusterSecrets({ from: t.cluster, to: name });
    await talos.talosEnsureSecrets({ cluster: name, endpoint });
    const vlan = networkOf(ip, inventory!.proxmox.vlans);
    const node: NodePlan = {
      name,
      role: 'controlplane',
      ip,
      prefix: vlan.prefix,
      gateway: vlan.gateway,
      kind: 'vm',
      arch: 'amd64',
      installDisk: cp.controlPlane[0]!.installDisk,
      labels: {},
      taints: [],
      vm: {
        host,
        node: ref.node,
        vmid,
        mac,
        cores: like?.cores ?? 2,
        memoryMiB: like?.memoryMiB ?? 4096,
        diskGiB: like?.diskGiB ?? 20,
        storage: like?.storage ?? inventory!.templates.find((x) => x.name === cp.template.name)?.storage ?? 'local-lvm',
        bridge: like?.bridge ?? 'vmbr0',
      },
    };
    const config = await talos.talosGenNodeConfig(
      nodeConfigRequest({ ...cp, name, endpoint, patches: [...cp.patches, DRILL_CONTROL_PLANE_PATCH] }, node),
    );

    // The VM: a full clone of the cluster's template, isolated, not started on boot.
    const templates = await pve.pveListTemplates({ host });
    const template = templateFor(templates, cp.template.name, ref.node);
    if (!template) {
      throw nonRetryable(
        'precondition',
        `template ${cp.template.name} (clusters.${t.cluster}.template) is not on Proxmox host ${host}`,
      );
    }
    step(`cloning ${cp.template.name} to VM ${vmid} (${name})`);
    made.push({ kind: 'vm', host, node: ref.node, vmid, name });
    await runPveTask(
      `clone VM ${vmid} (${name})`,
      () =>
        pve.pveClone({
          host,
          node: template.node,
          vmid: template.vmid,
          newid: vmid,
          name,
          full: true,
          storage: node.vm!.storage,
          ...(template.node !== ref.node ? { target: ref.node } : {}),
        }),
      wait,
    );
    await pve.pveSetConfig({
      ...ref,
      guard: { name },
      config: {
        net: { 0: nic },
        cores: node.vm!.cores,
        memoryMiB: node.vm!.memoryMiB,
        onboot: false,
        tags: ['labwright', 'dr-drill'],
        description: `labwright DR drill ${input.plan} (${info.workflowId}): scratch control plane recovering etcd of ${t.cluster}; removed when the drill ends`,
      },
    });
    step(`starting VM ${vmid} (${name}, ${ip}; NIC ${nic})`);
    await runPveTask(`start VM ${vmid}`, () => pve.pveStart(ref), wait, { okReasons: ['already-running'] });

    // Talos: maintenance mode, the config, the install and reboot.
    const boot = async (what: string, body: () => Promise<unknown>): Promise<void> => {
      try {
        await body();
      } catch (err) {
        if (wf.isCancellation(err)) throw err;
        throw nonRetryable('precondition', `scratch control plane ${name} (${ip}) ${what}: ${causeMessage(err)}`);
      }
    };
    step(`waiting for Talos on ${ip} (maintenance mode)`);
    await boot('did not come up in maintenance mode', () =>
      talosWait.talosWaitForApi({ address: ip, timeoutSeconds: bootSeconds }),
    );
    step(`applying the scratch control plane config to ${ip}`);
    await talos.talosApplyConfig({ address: ip, config: config.config, insecure: true, talosconfig: scratchTc });
    await boot('did not reach stage running', () =>
      talosWait.talosWaitForApi({ address: ip, talosconfig: scratchTc, timeoutSeconds: bootSeconds, stage: 'running' }),
    );

    // The recovery, as a restore does it, then a durable wait for etcd to start from it.
    step(`talosctl bootstrap --recover-from=${c.snapshot} on ${ip}`);
    const recovered = await talosOnce.talosRecoverEtcd({
      address: ip,
      talosconfig: scratchTc,
      snapshot: c.snapshot,
      ...(t.skipHashCheck ? { skipHashCheck: true } : {}),
    });
    const deadline = Date.now() + input.etcdTimeoutSeconds * 1000;
    let members: string[] = [];
    for (;;) {
      const m = await talos.talosEtcdMembers({ address: ip, talosconfig: scratchTc });
      members = m.members.map((x) => x.hostname);
      if (members.length > 0) break;
      if (Date.now() >= deadline) {
        throw nonRetryable(
          'precondition',
          `etcd on the scratch control plane ${name} (${ip}) has no member ${formatDuration(input.etcdTimeoutSeconds * 1000)} after the recovery from ${c.snapshot}` +
            `${m.warning ? ` (${lastLine(m.warning)})` : ''}: the snapshot does not recover (etcd refused it; talosctl logs etcd tells why)`,
        );
      }
      step(`waiting for etcd on ${ip} to start from the snapshot`);
      await wf.sleep(input.pollSeconds * 1000);
    }
    if (!members.includes(name)) {
      throw nonRetryable(
        'precondition',
        `etcd on the scratch control plane ${name} lists member(s) ${members.join(', ')}, not ${name}: not the recovered etcd`,
      );
    }

    // Verify: the recovered etcd serves the snapshot's data (its revision at least the snapshot's).
    const now = await talos.talosEtcdSnapshotStatus({ address: ip, talosconfig: scratchTc });
    const s = recovered.snapshot;
    if (s && now.revision < s.revision) {
      throw nonRetryable(
        'precondition',
        `etcd on the scratch control plane ${name} is at revision ${now.revision}, behind the snapshot's ${s.revision}: not recovered from it`,
      );
    }
    const from = s
      ? `snapshot hash ${s.hash}, revision ${s.revision}, ${s.totalKeys} keys`
      : `${c.snapshot} (by an earlier attempt)`;
    return {
      verification:
        `etcd recovered on scratch control plane ${name} (VM ${vmid}, ${ip}) from ${from}; ` +
        `member ${name}; it serves revision ${now.revision}, ${now.totalKeys} keys`,
      restoredBytes: c.backup.size,
    };
  }

  /**
   * Sets a Held field (on) or gives it back (off) by server-side apply as labwright's own field
   * manager: giving it back drops the field, so the owner's value (or the default) applies again.
   */
  async function hold(h: Held, on: boolean): Promise<void> {
    await kube.k8sApply({
      kubeconfig,
      fieldManager: 'labwright-dr-restore',
      ...(on ? { force: true } : {}),
      manifests: JSON.stringify({
        apiVersion: h.apiVersion,
        kind: h.kind,
        metadata: { name: h.name, namespace: h.namespace },
        ...(on ? { spec: h.spec } : {}),
      }),
    });
  }

  /** Removes one thing a drill made; returns what happened, `LEFT ...` when it could not. */
  async function remove(m: Made): Promise<string> {
    try {
      if (m.kind === 'talos') {
        const r = await talos.talosForgetScratchCluster({ cluster: m.cluster });
        return `Talos secrets and configs ${r.removed}`;
      }
      if (m.kind === 'k8s') {
        const r = await kube.k8sDeleteObject({
          kubeconfig,
          apiVersion: m.apiVersion,
          kind: m.k8sKind,
          ...(m.namespace ? { namespace: m.namespace } : {}),
          name: m.name,
        });
        return `${m.k8sKind} ${m.namespace ? `${m.namespace}/` : ''}${m.name}${r.deleted ? '' : ' (gone already)'}`;
      }
      const ref = { host: m.host, node: m.node, vmid: m.vmid };
      const wait = (upid: string): Promise<TaskOutcome> => pveWait.pveWaitForTask({ host: m.host, upid });
      const vm = await pve.pveGetVm(ref);
      if (!vm) return `VM ${m.vmid} (gone already)`;
      if (vm.name !== m.name) return `LEFT VM ${m.vmid}: it is ${vm.name}, not ${m.name}`;
      if (vm.status !== 'stopped') await runPveTask(`stop VM ${m.vmid}`, () => pve.pveStop(ref), wait);
      await runPveTask(`delete VM ${m.vmid}`, () => pve.pveDelete({ ...ref, guard: { name: m.name } }), wait);
      return `VM ${m.vmid} (${m.name})`;
    } catch (err) {
      const what =
        m.kind === 'vm'
          ? `VM ${m.vmid}`
          : m.kind === 'talos'
            ? `Talos secrets talos/${m.cluster}`
            : `${m.k8sKind} ${m.namespace ?? ''}/${m.name}`;
      return `LEFT ${what}: ${causeMessage(err)}`;
    }
  }
}

interface RdStatus {
  lastManualSync?: string;
  lastSyncTime?: string;
  latestMoverStatus?: { result?: string; logs?: string };
  latestImage?: { kind?: string; name?: string };
}

/** `Deployment grafana (1 -> 0)`, or with the replicas they had: `Deployment grafana to 1`. */
function describeUsers(users: PvcWorkload[], to?: number): string {
  return users
    .map((u) => `${u.kind} ${u.name} ${to === undefined ? `to ${u.replicas}` : `from ${u.replicas} to ${to}`}`)
    .join(', ');
}

/** A field labwright sets on an object for the length of an in-place restore (suspend, paused). */
interface Held {
  what: string;
  apiVersion: string;
  kind: string;
  namespace: string;
  name: string;
  spec: Record<string, boolean>;
}

function scaledDownNote(users: PvcWorkload[], held: Held[] = []): string {
  const parts = [
    ...(users.length > 0
      ? [`left scaled to 0: ${users.map((u) => `${u.kind} ${u.name} (was ${u.replicas})`).join(', ')}`]
      : []),
    ...held.map((h) => `${h.what} left ${h.kind === 'Kustomization' ? 'suspended' : 'paused'}`),
  ];
  return `${parts.join('; ')}; resume once the data is right`;
}

function assertSize(what: string, bytes: number | undefined, min: number): void {
  if (bytes === undefined || bytes === 0)
    throw nonRetryable('precondition', `${what} is empty (no size reported): refused`);
  if (bytes < min) {
    throw nonRetryable(
      'precondition',
      `${what} holds ${formatBytes(bytes)}, less than the minimum ${formatBytes(min)}: refused`,
    );
  }
}

/** The last non-empty line of talosctl's warning (the node's error, after `WARNING: 1 error occurred:`). */
function lastLine(text: string): string {
  const lines = text
    .split('\n')
    .map((l) => l.trim().replace(/^\*\s*/, ''))
    .filter(Boolean);
  return lines.at(-1) ?? '';
}

/** The innermost message of an activity failure (`ActivityFailure` wraps the activity's own). */
function causeMessage(err: unknown): string {
  let e = err as { message?: string; cause?: unknown } | undefined;
  while (e?.cause && typeof e.cause === 'object') e = e.cause as typeof e;
  return e?.message ?? String(err);
}

// ---------------------------------------------------------------- checks and plan

async function checkBackup(
  t: DrTarget,
  input: DrRestoreParsed,
  kubeconfig: SecretRef,
  talosconfig: SecretRef,
  inventory: Inventory | undefined,
  scratchEtcd = false,
): Promise<Checked | { problem: string }> {
  const now = Date.now();
  const label = targetLabel(t);
  const tooOld = (takenAt: number): string | undefined =>
    now - takenAt > input.maxBackupAge
      ? `${label}: the newest backup is ${formatDuration(now - takenAt)} old, older than maxBackupAge ${formatDuration(input.maxBackupAge)}`
      : undefined;
  if (t.kind === 'pvc') {
    const rsName = t.replicationSource ?? t.pvc;
    const rs = await kube.k8sGetObject({
      kubeconfig,
      apiVersion: 'volsync.backube/v1alpha1',
      kind: 'ReplicationSource',
      namespace: t.namespace,
      name: rsName,
    });
    if (!rs.exists) return { problem: `${label}: no ReplicationSource ${t.namespace}/${rsName}: no backup` };
    const o = rs.object as {
      metadata?: { labels?: Record<string, string> };
      spec?: { restic?: { repository?: string } };
      status?: RdStatus;
    };
    const fluxName = o.metadata?.labels?.['kustomize.toolkit.fluxcd.io/name'];
    const fluxNamespace = o.metadata?.labels?.['kustomize.toolkit.fluxcd.io/namespace'];
    const last = o.status?.lastSyncTime;
    if (!last) return { problem: `${label}: ReplicationSource ${t.namespace}/${rsName} has never completed a backup` };
    const old = tooOld(Date.parse(last));
    if (old) return { problem: old };
    const repository = o.spec?.restic?.repository;
    if (!repository) return { problem: `${label}: ReplicationSource ${t.namespace}/${rsName} is not a restic source` };
    const pvc = await kube.k8sGetObject({
      kubeconfig,
      apiVersion: 'v1',
      kind: 'PersistentVolumeClaim',
      namespace: t.namespace,
      name: t.pvc,
    });
    const spec = (pvc.object?.spec ?? {}) as {
      accessModes?: string[];
      storageClassName?: string;
      resources?: { requests?: { storage?: string } };
    };
    const capacity = t.capacity ?? spec.resources?.requests?.storage;
    if (!capacity) return { problem: `${label}: PVC ${t.namespace}/${t.pvc} does not exist and no capacity was given` };
    // In place, the PVC must not be in use while Volsync writes into it: the Deployments and
    // StatefulSets mounting it are scaled to 0 and back; a pod nothing would scale is refused.
    let users: PvcWorkload[] | undefined;
    if (input.mode === 'restore') {
      if (!pvc.exists)
        return { problem: `${label}: PVC ${t.namespace}/${t.pvc} does not exist: nothing to restore into` };
      const found = await kube.k8sPvcUsers({ kubeconfig, namespace: t.namespace, pvc: t.pvc });
      const unowned = found.pods.filter((p) => !p.owner);
      if (unowned.length > 0) {
        return {
          problem: `${label}: pod(s) ${unowned.map((p) => `${t.namespace}/${p.name} (${p.phase})`).join(', ')} mount the PVC and no Deployment or StatefulSet owns them: stop them first`,
        };
      }
      users = found.workloads;
    }
    return {
      target: t,
      backup: {
        id: `ReplicationSource ${t.namespace}/${rsName} sync of ${last}`,
        takenAt: new Date(Date.parse(last)).toISOString(),
        ageMs: now - Date.parse(last),
      },
      replicationSource: rsName,
      ...(fluxName && fluxNamespace ? { kustomization: { namespace: fluxNamespace, name: fluxName } } : {}),
      repository,
      capacity,
      accessModes: spec.accessModes ?? ['ReadWriteOnce'],
      ...(spec.storageClassName ? { storageClassName: spec.storageClassName } : {}),
      ...(users ? { users } : {}),
    };
  }
  if (t.kind === 'vm') {
    const backups = await pve.pveListBackups({ host: t.host, node: t.node, storage: t.backupStorage, vmid: t.vmid });
    const newest = backups[0];
    if (!newest) return { problem: `${label}: no backup of VM ${t.vmid} on ${t.host}/${t.backupStorage}` };
    const takenAt = newest.ctime * 1000;
    const old = tooOld(takenAt);
    if (old) return { problem: old };
    const min = quantityBytes(t.minArchiveSize)!;
    if (newest.size < min) {
      return {
        problem: `${label}: the newest backup ${newest.volid} holds ${formatBytes(newest.size)}, less than ${formatBytes(min)}: empty`,
      };
    }
    const current = input.mode === 'restore' ? await pve.pveGetVm({ host: t.host, node: t.node, vmid: t.vmid }) : null;
    return {
      target: t,
      backup: { id: newest.volid, takenAt: new Date(takenAt).toISOString(), ageMs: now - takenAt, size: newest.size },
      archive: newest.volid,
      ...(current ? { currentName: current.name } : {}),
    };
  }
  const snap = await files.drNewestEtcdSnapshot({ dir: t.snapshotDir });
  if (!snap) return { problem: `${label}: no etcd snapshot (*.snapshot, *.db) in ${t.snapshotDir}` };
  const old = tooOld(snap.mtimeMs);
  if (old) return { problem: old };
  const min = quantityBytes(t.minSize)!;
  if (snap.size < min)
    return { problem: `${label}: ${snap.path} holds ${formatBytes(snap.size)}, less than ${formatBytes(min)}` };
  // What talosctl (bbolt status) and etcd (the appended sha256) check on a recovery, checked now.
  const integrity = await files.drCheckEtcdSnapshot({ path: snap.path, skipHashCheck: t.skipHashCheck });
  if (!integrity.ok) return { problem: `${label}: etcd snapshot ${snap.path}: ${integrity.detail}` };
  let address: string | undefined;
  if (input.mode === 'drill' && scratchEtcd) {
    // The scratch control plane: an address of its own, outside the cluster.
    if (!t.drill) {
      return {
        problem: `${label}: a drill recovers the snapshot on a scratch control plane: give the target drill.ip (its address; drill.net its isolated network)`,
      };
    }
    const cluster = planCluster(inventory!, t.cluster);
    const taken = [...cluster.controlPlane, ...cluster.workers].find((n) => n.ip === t.drill!.ip);
    if (taken)
      return {
        problem: `${label}: drill.ip ${t.drill.ip} is ${taken.name}'s address: the scratch control plane needs its own`,
      };
  }
  if (input.mode === 'restore') {
    const cluster = planCluster(inventory!, t.cluster);
    const node = t.node ? cluster.controlPlane.find((n) => n.name === t.node) : cluster.controlPlane[0];
    if (!node) return { problem: `${label}: ${t.node} is not a control plane of ${t.cluster}` };
    address = node.ip;
    // Talos recovers only into an empty etcd (all control planes reset, EPHEMERAL wiped).
    const members = await talos.talosEtcdMembers({ address, talosconfig });
    if (members.members.length > 0) {
      return {
        problem:
          `${label}: etcd on ${node.name} (${address}) has ${members.members.length} member(s) ` +
          `(${members.members.map((m) => m.hostname).join(', ')}): Talos recovers only into an empty etcd; ` +
          'reset every control plane with --system-labels-to-wipe=EPHEMERAL first',
      };
    }
  }
  return {
    target: t,
    backup: {
      id: snap.path,
      takenAt: new Date(snap.mtimeMs).toISOString(),
      ageMs: now - snap.mtimeMs,
      size: snap.size,
    },
    snapshot: snap.path,
    integrity: integrity.detail,
    ...(address ? { address } : {}),
  };
}

function planItem(
  c: Checked,
  drill: boolean,
  namespace: string,
  drillVmid: number | undefined,
  scratch?: { plan: string; inventory: Inventory },
): PlanItem {
  const base = { target: targetLabel(c.target), kind: c.target.kind, backup: c.backup };
  const t = c.target;
  if (t.kind === 'pvc') {
    const p = c as Extract<Checked, { target: { kind: 'pvc' } }>;
    const users = p.users ?? [];
    const holds = [
      ...(p.kustomization ? [`suspends Kustomization ${p.kustomization.namespace}/${p.kustomization.name}`] : []),
      `pauses ReplicationSource ${t.namespace}/${p.replicationSource}`,
      ...(users.length > 0 ? [`scales ${describeUsers(users, 0)}`] : []),
    ];
    const scale = `; restores the snapshot as of ${c.backup.takenAt}, deleting files it does not hold; ${holds.join(', ')} during the restore, and resumes them after`;
    return drill
      ? { ...base, into: `PVC ${namespace}/${t.pvc} (scratch namespace)` }
      : {
          ...base,
          overwrites: `the data of PVC ${t.namespace}/${t.pvc}${scale}`,
          into: `PVC ${t.namespace}/${t.pvc}`,
        };
  }
  if (t.kind === 'vm') {
    const name = (c as Extract<Checked, { target: { kind: 'vm' } }>).currentName;
    return drill
      ? { ...base, into: `VM ${drillVmid} on ${t.host}/${t.node}, network isolated` }
      : {
          ...base,
          overwrites: name
            ? `VM ${t.vmid} (${name}) on ${t.host}/${t.node}: stopped and restored over (keeps its backup jobs, replication and HA)`
            : `nothing (VM ${t.vmid} is absent)`,
          into: `VM ${t.vmid} on ${t.host}/${t.node}`,
        };
  }
  if (drill && scratch) {
    const tpl = planCluster(scratch.inventory, t.cluster).template;
    return {
      ...base,
      into: `scratch control plane ${drillEtcdName(scratch.plan, t.cluster)} (VM ${drillVmid} on ${tpl.host}/${tpl.node}, ${t.drill?.ip}, ${t.drill?.net ? `network ${t.drill.net}` : 'network isolated'}), with the secrets of ${t.cluster}`,
    };
  }
  return drill
    ? { ...base, into: 'nowhere: the snapshot is checked, not recovered' }
    : {
        ...base,
        overwrites: `etcd of cluster ${t.cluster} (must be empty: EPHEMERAL wiped)`,
        into: `etcd of ${t.cluster}`,
      };
}
