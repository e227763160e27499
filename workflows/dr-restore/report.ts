/** Step 8 of a DR restore: the report, compared with the previous run of the plan (RTO trend). */
import { summarize, type DrReport, type TargetReport } from '../../common/dr-restore.js';
import type { DrContext } from './context.js';

export interface Outcome {
  startedAt: number;
  /** RTO runs from the restore's start to the last verification; the cleanup is reported apart. */
  restoreStart: number;
  lastVerifiedAt: number;
  cleanupMs: number;
  targets: TargetReport[];
  cleanedUp: string[];
}

export async function buildReport(ctx: DrContext, o: Outcome): Promise<DrReport> {
  const { input, info } = ctx;
  const finishedAt = ctx.clock.now();
  const failed = o.targets.filter((r) => !r.ok);
  const totalRtoMs = o.lastVerifiedAt - o.restoreStart;
  const previous = await ctx.act.files.drLastReport({ plan: input.plan, mode: input.mode, exceptRunId: info.runId });
  const base: Omit<DrReport, 'summary'> = {
    plan: input.plan,
    mode: input.mode,
    workflowId: info.workflowId,
    runId: info.runId,
    ok: failed.length === 0,
    startedAt: new Date(o.startedAt).toISOString(),
    finishedAt: new Date(finishedAt).toISOString(),
    totalRtoMs,
    cleanupMs: o.cleanupMs,
    maxRpoMs: Math.max(...o.targets.map((r) => r.rpoMs)),
    targets: o.targets,
    cleanedUp: o.cleanedUp,
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
  return { ...base, summary: summarize(base) };
}
