/**
 * Running a PVE task from a workflow: start it (an activity that returns a UPID, or null when
 * there was nothing to do), wait for it with heartbeats, and decide what its exit status means.
 * A task that failed because the VM was locked (a backup, a migration) is started again after a
 * backoff; any other failure ends the step with PVE's own reason.
 */
import * as wf from '@temporalio/workflow';
import type { PveReason, TaskOutcome, TaskStarted } from '../activities/proxmox.js';
import { nonRetryable } from './errors.js';

export interface PveTaskOptions {
  /** Exit reasons that count as done (e.g. `already-running` for a start). */
  okReasons?: PveReason[];
  /** How often a task that failed on a lock is started again (default 5). */
  attempts?: number;
  /** First pause before starting again, doubled each time (default 2 s). */
  backoffMs?: number;
}

export interface PveTaskResult {
  /** The task's final outcome; absent when nothing needed doing. */
  outcome?: TaskOutcome;
  note?: string;
  attempts: number;
}

export async function runPveTask(
  what: string,
  start: () => Promise<TaskStarted>,
  wait: (upid: string) => Promise<TaskOutcome>,
  opts: PveTaskOptions = {},
): Promise<PveTaskResult> {
  const attempts = opts.attempts ?? 5;
  let backoff = opts.backoffMs ?? 2000;
  for (let attempt = 1; ; attempt++) {
    const started = await start();
    if (started.upid === null) return { note: started.note, attempts: attempt };
    const outcome = await wait(started.upid);
    if (outcome.ok || (outcome.reason && opts.okReasons?.includes(outcome.reason))) {
      return { outcome, attempts: attempt };
    }
    if (outcome.reason === 'locked' && attempt < attempts) {
      await wf.sleep(backoff);
      backoff *= 2;
      continue;
    }
    const kind = outcome.reason === 'missing' ? 'notFound' : 'precondition';
    throw nonRetryable(kind, `${what}: ${outcome.exitStatus}`, {
      upid: outcome.upid,
      exitStatus: outcome.exitStatus,
      reason: outcome.reason,
      attempts: attempt,
    });
  }
}
