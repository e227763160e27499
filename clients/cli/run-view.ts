/**
 * One look at a workflow run, as `labwright status` and `watch` show it: its state, the `progress`
 * steps, and each pending activity with its attempt, last failure and heartbeat details (Packer's
 * current step, the object waited on) decoded with the payload codec.
 */
import type { Client } from '@temporalio/client';
import {
  decodeArrayFromPayloads,
  decodeOptionalFailureToOptionalError,
} from '@temporalio/common/lib/internal-non-workflow/index.js';
import proto from '@temporalio/proto';
import type { Progress } from '../../common/progress.js';
import { renderProgress } from '../render.js';

const { PendingActivityState } = proto.temporal.api.enums.v1;

export interface PendingActivityView {
  activityId: string;
  activityType: string;
  /** scheduled, started or cancel-requested. */
  state: string;
  attempt: number;
  /** 0 when unlimited. */
  maximumAttempts: number;
  /** What the activity last reported with its heartbeat, decoded. */
  heartbeat?: unknown[];
  lastHeartbeatAt?: string;
  lastFailure?: string;
  nextAttemptAt?: string;
}

export interface RunView {
  workflowId: string;
  runId: string;
  type: string;
  status: string;
  startTime: string;
  closeTime?: string;
  progress?: Progress;
  pendingActivities: PendingActivityView[];
}

export async function readRun(client: Client, workflowId: string): Promise<RunView> {
  const handle = client.workflow.getHandle(workflowId);
  const info = await handle.describe();
  const progress = await handle.query<Progress>('progress').catch(() => undefined);
  const converter = client.options.loadedDataConverter;
  const pendingActivities = await Promise.all(
    (info.raw.pendingActivities ?? []).map(async (a): Promise<PendingActivityView> => {
      const heartbeat = a.heartbeatDetails?.payloads?.length
        ? await decodeArrayFromPayloads(converter, a.heartbeatDetails.payloads).catch((err: unknown) => [
            `(cannot decode the heartbeat: ${(err as Error).message})`,
          ])
        : undefined;
      const failure = a.lastFailure
        ? await decodeOptionalFailureToOptionalError(converter, a.lastFailure).catch(() => undefined)
        : undefined;
      return {
        activityId: a.activityId ?? '',
        activityType: a.activityType?.name ?? '?',
        state: stateName(a.state),
        attempt: a.attempt ?? 1,
        maximumAttempts: a.maximumAttempts ?? 0,
        heartbeat,
        lastHeartbeatAt: timestamp(a.lastHeartbeatTime),
        lastFailure: failure?.message ?? a.lastFailure?.message ?? undefined,
        nextAttemptAt: timestamp(a.nextAttemptScheduleTime),
      };
    }),
  );
  return {
    workflowId,
    runId: info.runId,
    type: info.type,
    status: info.status.name,
    startTime: info.startTime.toISOString(),
    closeTime: info.closeTime?.toISOString(),
    progress,
    pendingActivities,
  };
}

/** The run for people; `now` makes ages ("12s ago") stable for a given moment. */
export function renderRun(view: RunView, now = Date.now()): string {
  const lines = [
    `${view.type} ${view.workflowId}: ${view.status} (started ${view.startTime}${view.closeTime ? `, closed ${view.closeTime}` : ''})`,
  ];
  if (view.progress) lines.push(renderProgress(view.progress));
  for (const a of view.pendingActivities) {
    const of = a.maximumAttempts > 0 ? `/${a.maximumAttempts}` : '';
    lines.push(`  activity ${a.activityType} (${a.state}, attempt ${a.attempt}${of})`);
    if (a.heartbeat) {
      const age = a.lastHeartbeatAt ? ` (${ago(a.lastHeartbeatAt, now)})` : '';
      lines.push(`    heartbeat: ${a.heartbeat.map(describeValue).join(', ')}${age}`);
    }
    if (a.lastFailure) lines.push(`    last failure: ${a.lastFailure}`);
    if (a.nextAttemptAt && a.state === 'scheduled') lines.push(`    next attempt: ${a.nextAttemptAt}`);
  }
  return lines.join('\n');
}

function describeValue(value: unknown): string {
  return typeof value === 'string' ? value : JSON.stringify(value);
}

function ago(iso: string, now: number): string {
  const seconds = Math.max(0, Math.round((now - Date.parse(iso)) / 1000));
  return seconds < 120 ? `${seconds}s ago` : `${Math.round(seconds / 60)}m ago`;
}

function stateName(state: number | null | undefined): string {
  switch (state) {
    case PendingActivityState.PENDING_ACTIVITY_STATE_STARTED:
      return 'started';
    case PendingActivityState.PENDING_ACTIVITY_STATE_CANCEL_REQUESTED:
      return 'cancel requested';
    case PendingActivityState.PENDING_ACTIVITY_STATE_PAUSED:
      return 'paused';
    default:
      return 'scheduled';
  }
}

function timestamp(t: { seconds?: unknown; nanos?: number | null } | null | undefined): string | undefined {
  if (!t?.seconds) return undefined;
  return new Date(Number(t.seconds) * 1000 + Math.floor((t.nanos ?? 0) / 1e6)).toISOString();
}
