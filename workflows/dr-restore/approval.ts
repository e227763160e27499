/**
 * Step 4 of a DR restore: the `approve` update. Its validator refuses a wrong or stale digest at
 * once with the reason; who approved is the caller's Temporal identity as the server recorded it.
 */
import * as wf from '@temporalio/workflow';
import {
  approvalProblem,
  approveUpdate,
  formatDuration,
  type Approval,
  type DrPlan,
  type DrStatus,
} from '../../common/dr-restore.js';
import { nonRetryable } from '../../common/errors.js';
import type { DrActivities, DrContext } from './context.js';

export interface Decision {
  approval?: Approval;
  rejection?: { by: string; reason: string };
}

/** Registers the `approve` update handler; the returned decision fills in when it is called. */
export function acceptApproval(act: DrActivities, status: DrStatus, plan: () => DrPlan | null): Decision {
  const decision: Decision = {};
  let decided = false;
  wf.setHandler(
    approveUpdate,
    async (req) => {
      decided = true;
      const { identity: by } = await act.temporal.temporalUpdateCaller({ updateId: wf.currentUpdateInfo()!.id });
      if (req.approve) {
        decision.approval = { digest: req.digest, by, ...(req.reason ? { comment: req.reason } : {}) };
        status.approval = decision.approval;
      } else {
        decision.rejection = { by, reason: req.reason! };
        status.rejection = decision.rejection;
      }
      return { decision: req.approve ? 'approved' : 'rejected', digest: req.digest, by };
    },
    {
      validator: (req) => {
        const problem = approvalProblem(req, plan(), status.phase, decided);
        if (problem) throw new Error(problem);
      },
    },
  );
  return decision;
}

/** Waits for the decision; a rejection or the approval timeout end the run, nothing touched. */
export async function awaitApproval(
  ctx: DrContext,
  plan: DrPlan,
  status: DrStatus,
  decision: Decision,
): Promise<Approval> {
  const { input, progress } = ctx;
  status.phase = 'awaiting-approval';
  progress.start('approval', `waiting for the approve update with digest ${plan.digest} (labwright plan)`);
  const got = await wf.condition(
    () => decision.approval !== undefined || decision.rejection !== undefined,
    input.approvalTimeout,
  );
  const { approval, rejection } = decision;
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
  return approval;
}
