/** Step 5-6 of a DR restore for one target: restored and verified by its kind's module, timed. */
import { targetLabel, type PlanItem, type TargetReport } from '../../common/dr-restore.js';
import type { Checked, CheckedEtcd, CheckedPvc, CheckedVm, DrContext, Restored } from './context.js';
import { restoreEtcd, restoreEtcdScratch } from './etcd.js';
import { restorePvc } from './pvc.js';
import { restoreVm } from './vm.js';

/** The target's report (RTO to its verification) and when it was verified. */
export async function restoreTarget(
  ctx: DrContext,
  c: Checked,
  item: PlanItem,
  drillVmid: number | undefined,
): Promise<{ report: TargetReport; verifiedAt: number }> {
  const t0 = ctx.clock.now();
  const label = targetLabel(c.target);
  const step = (detail: string): void => ctx.progress.detail('restore and verify', `${label}: ${detail}`);
  let restored: Restored;
  if (c.target.kind === 'pvc') restored = await restorePvc(ctx, c as CheckedPvc, step);
  else if (c.target.kind === 'vm') restored = await restoreVm(ctx, c as CheckedVm, drillVmid, step);
  else if (ctx.drill && ctx.scratchEtcd) restored = await restoreEtcdScratch(ctx, c as CheckedEtcd, drillVmid!, step);
  else restored = await restoreEtcd(ctx, c as CheckedEtcd, step);
  const { verification, restoredBytes } = restored;
  step(`verified: ${verification}`);
  const verifiedAt = ctx.clock.now();
  return {
    verifiedAt,
    report: {
      target: label,
      kind: c.target.kind,
      ok: true,
      backup: c.backup,
      rtoMs: ctx.clock.now() - t0,
      rpoMs: t0 - Date.parse(c.backup.takenAt),
      restoredTo: item.into,
      verification,
      ...(restoredBytes !== undefined ? { restoredBytes } : {}),
    },
  };
}

/** The report of a target whose restore failed. */
export function failedTarget(c: Checked, item: PlanItem, restoreStart: number, err: unknown): TargetReport {
  return {
    target: targetLabel(c.target),
    kind: c.target.kind,
    ok: false,
    backup: c.backup,
    rpoMs: restoreStart - Date.parse(c.backup.takenAt),
    restoredTo: item.into,
    error: (err as Error).message,
  };
}
