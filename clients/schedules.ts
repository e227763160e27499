/**
 * Temporal Schedules labwright keeps: the weekly DR drill of a plan. Created, or updated in place
 * when it exists (same ID), so running the command twice leaves one schedule.
 *
 * The equivalent with the Temporal CLI (the input as JSON, the payload codec off):
 *
 *   temporal schedule create --schedule-id 'dr-drill/<plan>' \
 *     --cron '0 3 * * 0' --overlap-policy Skip \
 *     --workflow-id 'dr-drill/<plan>' --type drRestore --task-queue labwright \
 *     --input-file plan.json
 */
import {
  ScheduleAlreadyRunning,
  ScheduleOverlapPolicy,
  type Client,
  type ScheduleOptionsAction,
} from '@temporalio/client';
import { drDrillScheduleId, drRestoreInputSchema, drRestoreWorkflowId } from '../common/dr-restore.js';
import { RESOURCE_KEY } from '../common/search-attributes.js';
import { describeIssues } from '../common/validation.js';
import { taskQueue as defaultTaskQueue } from '../lib/temporal.js';
import { InputError } from './start.js';

export const DEFAULT_DRILL_CRON = '0 3 * * 0';

export interface DrillScheduleOptions {
  /** Cron (UTC) of the drill; default Sundays 03:00. */
  cron?: string;
  taskQueue?: string;
  /** Create it paused. */
  paused?: boolean;
  /** Where the plan came from, named in errors. */
  inputFile?: string;
}

export interface DrillScheduleResult {
  scheduleId: string;
  outcome: 'created' | 'updated';
}

/**
 * Creates the weekly drill of a plan, or updates the one there (spec, action, policies): one
 * schedule per plan. The input is validated first and forced to drill mode.
 */
export async function ensureDrillSchedule(
  client: Client,
  rawInput: unknown,
  opts: DrillScheduleOptions = {},
): Promise<DrillScheduleResult> {
  const candidate = { ...(rawInput as Record<string, unknown>), mode: 'drill' };
  const parsed = drRestoreInputSchema.safeParse(candidate);
  if (!parsed.success) throw new InputError('drRestore', describeIssues(parsed.error), opts.inputFile);
  const plan = parsed.data.plan;
  const scheduleId = drDrillScheduleId(plan);
  const cron = opts.cron ?? DEFAULT_DRILL_CRON;
  const action: ScheduleOptionsAction = {
    type: 'startWorkflow',
    workflowType: 'drRestore',
    workflowId: drRestoreWorkflowId(plan, 'drill'),
    taskQueue: opts.taskQueue ?? defaultTaskQueue(),
    args: [candidate],
    typedSearchAttributes: [{ key: RESOURCE_KEY, value: plan }],
  };
  const spec = { cronExpressions: [cron] };
  const policies = { overlap: ScheduleOverlapPolicy.SKIP, catchupWindow: '1 day' };
  const note = `labwright: weekly DR drill of plan ${plan}`;
  try {
    await client.schedule.create({
      scheduleId,
      spec,
      action,
      policies,
      state: { paused: opts.paused ?? false, note },
    });
    return { scheduleId, outcome: 'created' };
  } catch (err) {
    if (!(err instanceof ScheduleAlreadyRunning)) throw err;
  }
  await client.schedule.getHandle(scheduleId).update((previous) => ({
    ...previous,
    spec,
    action,
    policies: { ...previous.policies, ...policies },
    state: { ...previous.state, note, ...(opts.paused !== undefined ? { paused: opts.paused } : {}) },
  }));
  return { scheduleId, outcome: 'updated' };
}
