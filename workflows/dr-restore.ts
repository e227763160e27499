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
 *
 * Each step's work is in workflows/dr-restore/ (checks, approval, per target: pvc, vm, etcd;
 * cleanup, report), taking the run's DrContext.
 */
import * as wf from '@temporalio/workflow';
import {
  DR_LABELS,
  drRestoreInputSchema,
  drStatusQuery,
  drillNamespace,
  formatDuration,
  planQuery,
  runTag,
  targetLabel,
  type DrPlan,
  type DrReport,
  type DrStatus,
  type TargetReport,
} from '../common/dr-restore.js';
import { nonRetryable } from '../common/errors.js';
import { recordDrOutcome } from '../common/metrics.js';
import { ProgressTracker } from '../common/progress.js';
import { RESOURCE_KEY } from '../common/search-attributes.js';
import type { SecretRef } from '../common/secret-ref.js';
import { LAB_RULES_PATCH, parseInventory, talosStore } from '../common/talos.js';
import { parseInput } from '../common/validation.js';
import { acceptApproval, awaitApproval } from './dr-restore/approval.js';
import { checkBackups, computePlan } from './dr-restore/checks.js';
import { removeMade } from './dr-restore/cleanup.js';
import { drActivities, workflowClock, type DrContext } from './dr-restore/context.js';
import { buildReport } from './dr-restore/report.js';
import { failedTarget, restoreTarget } from './dr-restore/targets.js';

export const DR_RESTORE_STEPS = [
  'validate',
  'check backups',
  'plan',
  'approval',
  'restore and verify',
  'clean up',
  'report',
] as const;

export async function drRestore(raw: unknown): Promise<DrReport> {
  const input = parseInput(drRestoreInputSchema, raw, 'dr-restore input');
  const info = wf.workflowInfo();
  const act = drActivities();
  wf.upsertSearchAttributes([{ key: RESOURCE_KEY, value: input.plan }]);
  const progress = new ProgressTracker(DR_RESTORE_STEPS);
  const status: DrStatus = { phase: 'checking' };
  let plan: DrPlan | null = null;
  wf.setHandler(planQuery, () => plan);
  wf.setHandler(drStatusQuery, () => status);
  const decision = acceptApproval(act, status, () => plan);

  const startedAt = workflowClock.now();
  const drill = input.mode === 'drill';
  const kubeconfig: SecretRef = input.kubeconfig ?? { store: talosStore.kubeconfig(input.cluster) };
  const talosconfig: SecretRef = input.talosconfig ?? { store: talosStore.talosconfig(input.cluster) };

  // 1. validate: the inventory when a target needs it (VMIDs of the drill range, etcd nodes).
  const inventory = await progress.run(
    'validate',
    async () => {
      const needs = input.targets.some((t) => t.kind !== 'pvc');
      return needs
        ? parseInventory(input.inventory ?? (await act.talos.talosLabInventory()), wf.patched(LAB_RULES_PATCH))
        : undefined;
    },
    () => `${input.mode} of ${input.targets.length} target(s): ${input.targets.map(targetLabel).join(', ')}`,
  );

  // An etcd drill recovers the snapshot on a scratch control plane (issue 7); runs started before
  // that only checked the snapshot, and replay the same way.
  const scratchEtcd = drill && input.targets.some((t) => t.kind === 'etcd') && wf.patched('etcd-drill-recover');
  // Names unique per run (runs started before `run-unique-names` keep the names they made).
  const uniqueNames = wf.patched('run-unique-names');
  const ctx: DrContext = {
    input,
    info,
    drill,
    scratchEtcd,
    kubeconfig,
    talosconfig,
    inventory,
    namespace: drillNamespace(input.plan, info.runId, uniqueNames),
    runTag: runTag(info.runId, uniqueNames),
    act,
    progress,
    made: [],
    clock: workflowClock,
  };

  // 2. backups: all targets checked, every problem named, before anything is touched.
  const checked = await progress
    .run(
      'check backups',
      () => checkBackups(ctx),
      (cs) => cs.map((c) => `${targetLabel(c.target)} ${formatDuration(c.backup.ageMs)} old`).join(', '),
    )
    .catch((err: unknown) => {
      recordDrOutcome({ plan: input.plan, mode: input.mode }, { verdict: 'refused' });
      status.phase = 'failed';
      status.detail = (err as Error).message;
      progress.finishWith((err as Error).message);
      throw err;
    });

  // 3. the plan: VMIDs of drill VMs are chosen here, once, and recorded with the plan.
  const computed = await computePlan(ctx, checked);
  const { drillVmids } = computed;
  plan = computed.plan;
  progress.done('plan', `digest ${plan.digest}: ${plan.items.map((i) => `${i.target} -> ${i.into}`).join('; ')}`);

  // 4. approval: a restore waits for it; nothing has been touched so far.
  if (drill) progress.skip('approval', 'a drill touches only scratch space');
  else await awaitApproval(ctx, plan, status, decision);

  // 5-7. restore and verify, in parallel; a drill removes whatever it made, whatever happens.
  const restoreStart = workflowClock.now();
  let lastVerifiedAt = restoreStart;
  let cleanupMs = 0;
  status.phase = 'restoring';
  const cleanedUp: string[] = [];
  let targets: TargetReport[] = [];
  progress.start('restore and verify');
  try {
    if (drill && checked.some((c) => c.target.kind === 'pvc')) {
      ctx.made.push({ kind: 'k8s', apiVersion: 'v1', k8sKind: 'Namespace', name: ctx.namespace });
      await act.kube.k8sApply({
        kubeconfig,
        fieldManager: 'labwright',
        manifests: JSON.stringify({
          apiVersion: 'v1',
          kind: 'Namespace',
          metadata: { name: ctx.namespace, labels: { ...DR_LABELS, 'labwright.dev/plan': input.plan } },
        }),
      });
    }
    const items = plan.items;
    const settled = await Promise.allSettled(
      checked.map(async (c, i) => {
        const r = await restoreTarget(ctx, c, items[i]!, drillVmids.get(i));
        lastVerifiedAt = Math.max(lastVerifiedAt, r.verifiedAt);
        return r.report;
      }),
    );
    targets = settled.map((s, i) => {
      if (s.status === 'fulfilled') return s.value;
      if (wf.isCancellation(s.reason)) throw s.reason;
      return failedTarget(checked[i]!, items[i]!, restoreStart, s.reason);
    });
    const failed = targets.filter((r) => !r.ok);
    if (failed.length > 0) progress.fail('restore and verify', failed.map((r) => `${r.target}: ${r.error}`).join('; '));
    else progress.done('restore and verify', targets.map((r) => `${r.target}: ${r.verification}`).join('; '));
  } finally {
    await wf.CancellationScope.nonCancellable(async () => {
      if (!drill && ctx.made.length === 0) {
        progress.skip('clean up', 'a restore keeps what it restored');
        return;
      }
      status.phase = 'cleaning-up';
      progress.start('clean up', `${ctx.made.length} object(s)`);
      const cleanupStart = workflowClock.now();
      cleanedUp.push(...(await removeMade(ctx)));
      cleanupMs = workflowClock.now() - cleanupStart;
      const left = cleanedUp.filter((c) => c.startsWith('LEFT'));
      if (left.length > 0) progress.fail('clean up', left.join('; '));
      else progress.done('clean up', cleanedUp.join(', ') || 'nothing to remove');
    });
  }

  // 8. the report, kept for the next run's comparison.
  const report = await buildReport(ctx, { startedAt, restoreStart, lastVerifiedAt, cleanupMs, targets, cleanedUp });
  await progress.run(
    'report',
    () => act.files.drSaveReport({ report }),
    (r) => r.file,
  );
  progress.finishWith(report.summary);
  recordDrOutcome({ plan: input.plan, mode: input.mode }, { verdict: report.ok ? 'ok' : 'failed', ...report });
  status.phase = report.ok ? 'done' : 'failed';
  status.detail = report.summary;
  if (!report.ok) throw nonRetryable('precondition', report.summary, { report });
  return report;
}
