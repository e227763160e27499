/**
 * One cell of the fault matrix: a workflow run to its end on the chaos lab under one fault, and
 * what it left. Faults:
 * - `worker-kill`: SIGKILL to the worker's process group while a boundary's activity runs, or
 *   right after it completed; a new worker takes over.
 * - `server-kill`: SIGKILL to the Temporal dev server (SQLite) while a boundary's activity runs;
 *   a new one starts on the same file and port, and the worker (still running) carries on.
 * - `peer`: a peer misbehaves for the whole run (see chaos/peer-faults.ts).
 * - `duplicate`: the same workflow started twice at once, and its signals/updates sent twice.
 */
import { WorkflowExecutionAlreadyStartedError } from '@temporalio/client';
import proto from '@temporalio/proto';
import type { ChaosLab } from './lab.js';
import type { PeerFault } from './peer-faults.js';
import { acquireAndShutdown, approveOnce, stoppedPool, workflowIdOf, type Scenario } from './scenarios.js';
import { compareEffects, effectOf, labState, type Effect } from './state.js';
import { retrying } from './temporal.js';

const { temporal } = proto;
const EventType = temporal.api.enums.v1.EventType;
const STARTED = temporal.api.enums.v1.PendingActivityState.PENDING_ACTIVITY_STATE_STARTED;

/**
 * Where a kill lands: the clean run's activity `at` (in the order it scheduled them), found in a
 * run as that run's `occurrence`-th activity of the same type. Not by index alone: a run may
 * schedule a step the clean run did not (stopping a VM the previous run left running), and the
 * kill meant for the one-shot restore would land on the step before it.
 */
export interface Boundary {
  at: number;
  /** Its type; for a `during` kill, the peer slowed until the kill lands. */
  activity: string;
  occurrence: number;
}

export type Fault =
  | { kind: 'none' }
  | { kind: 'worker-kill'; boundary: Boundary; when: 'during' | 'after' }
  | { kind: 'server-kill'; boundary: Boundary }
  | { kind: 'peer'; fault: PeerFault }
  | { kind: 'duplicate' }
  /** Started again the moment a run ends (a drill re-run): both runs correct. */
  | { kind: 'rerun' };

export function faultLabel(f: Fault): string {
  switch (f.kind) {
    case 'none':
      return 'none';
    case 'worker-kill':
      return `worker SIGKILL ${f.when}`;
    case 'server-kill':
      return 'server SIGKILL';
    case 'peer':
      return f.fault.name;
    case 'duplicate':
      return 'duplicate start/signal';
    case 'rerun':
      return 're-run at once';
  }
}

export interface ScheduledActivity {
  type: string;
  eventId: number;
}

export interface RunOutcome {
  scenario: string;
  fault: string;
  /** The boundary's activity (`#12 talosBootstrap`), for kill faults. */
  boundary?: string;
  correct: boolean;
  /** The result's problem, or the workflow's failure. */
  problem?: string;
  /** A fault from a peer may fail the workflow cleanly: with this reason, nothing leaked. */
  failedCleanly?: string;
  leaked: string[];
  duplicated: string[];
  activities: ScheduledActivity[];
  seconds: number;
}

/** Activities in the order the workflow scheduled them. */
export async function scheduledActivities(lab: ChaosLab, workflowId: string): Promise<ScheduledActivity[]> {
  const history = await retrying(lab, (client) => client.workflow.getHandle(workflowId).fetchHistory());
  return (history.events ?? [])
    .filter((e) => e.eventType === EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED)
    .map((e) => ({
      type: e.activityTaskScheduledEventAttributes?.activityType?.name ?? '?',
      eventId: Number(e.eventId),
    }));
}

/** Waits for `boundary` in the run (its activity running, or completed), then does `act`. */
async function atBoundary(
  lab: ChaosLab,
  workflowId: string,
  boundary: Boundary,
  when: 'during' | 'after',
  finished: () => boolean,
  act: () => Promise<void>,
): Promise<string | undefined> {
  while (!finished()) {
    const found = await retrying(lab, async (client) => {
      const handle = client.workflow.getHandle(workflowId);
      const events = (await handle.fetchHistory()).events ?? [];
      const scheduled = events.filter(
        (e) =>
          e.eventType === EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED &&
          e.activityTaskScheduledEventAttributes?.activityType?.name === boundary.activity,
      )[boundary.occurrence];
      if (!scheduled) return undefined;
      const label = `#${boundary.at} ${boundary.activity}`;
      const closed = events.some(
        (e) =>
          [
            e.activityTaskCompletedEventAttributes,
            e.activityTaskFailedEventAttributes,
            e.activityTaskTimedOutEventAttributes,
          ].some((a) => a && String(a.scheduledEventId) === String(scheduled.eventId)) ||
          (e.eventType === EventType.EVENT_TYPE_ACTIVITY_TASK_CANCELED &&
            String(e.activityTaskCanceledEventAttributes?.scheduledEventId) === String(scheduled.eventId)),
      );
      if (when === 'after') return closed ? label : undefined;
      if (closed) return `${label} (closed before it was seen running)`;
      const pending = (await handle.describe()).raw.pendingActivities ?? [];
      const id = scheduled.activityTaskScheduledEventAttributes?.activityId;
      return pending.some((p) => p.activityId === id && p.state === STARTED) ? label : undefined;
    });
    if (found) {
      await act();
      return found;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return undefined;
}

/**
 * How long every call to the system behind a `during` kill's activity takes in that run until the
 * kill: most API activities finish within the runner's 100 ms look otherwise, and the kill would
 * land after them.
 */
const HOLD_MS = 750;

/** Slows the peer an activity of `type` calls (by its name's system); returns what undoes it. */
async function slowPeerOf(lab: ChaosLab, type: string): Promise<() => Promise<void>> {
  if (type.startsWith('pve')) {
    await lab.pve.control({ op: 'latency', ms: HOLD_MS });
    return async () => void (await lab.pve.control({ op: 'latency', ms: 0 }));
  }
  if (type.startsWith('ec2')) {
    lab.ec2.add({ fault: { kind: 'delay', ms: HOLD_MS }, times: Infinity });
    return async () => lab.ec2.clearRules();
  }
  if (type.startsWith('k8s')) {
    lab.kubeFaults.add({ fault: { kind: 'delay', ms: HOLD_MS }, times: Infinity });
    return async () => lab.kubeFaults.clearRules();
  }
  if (type.startsWith('talos')) {
    lab.standin.setCallLatency(HOLD_MS);
    return async () => lab.standin.setCallLatency(0);
  }
  // Packer builds run for seconds anyway; the rest (DR reports, the inventory) call no peer.
  return async () => undefined;
}

/** Runs `scenario` once under `fault`; `clean` is a clean run's effect on the lab (undefined: this is that run). */
export async function runCell(
  lab: ChaosLab,
  scenario: Scenario,
  run: number,
  fault: Fault,
  clean: Effect | undefined,
): Promise<{ outcome: RunOutcome; effect: Effect }> {
  const t0 = Date.now();
  await scenario.reset?.(lab);
  await lab.proxyKubeconfig();
  lab.setWorkerEnv(fault.kind === 'peer' ? (fault.fault.workerEnv ?? {}) : {});
  await lab.killWorker(); // a worker with this run's environment
  await lab.worker();
  const before = await labState(lab);
  const input = await scenario.input(run);
  const workflowId = workflowIdOf(scenario, input);
  const client = await lab.client();
  if (fault.kind === 'peer') await fault.fault.inject(lab);
  let unslow: () => Promise<void> = async () => undefined;
  if (fault.kind === 'worker-kill' && fault.when === 'during') {
    unslow = await slowPeerOf(lab, fault.boundary.activity);
  }

  let done = false;
  let boundary: string | undefined;
  let problem: string | undefined;
  let result: unknown;
  let failed: unknown;
  try {
    const copies = fault.kind === 'duplicate' ? 2 : 1;
    const starts = await Promise.allSettled(
      Array.from({ length: copies }, () =>
        client.workflow.start(scenario.workflow, { taskQueue: lab.taskQueue, workflowId, args: [input] }),
      ),
    );
    const refused = starts.filter((s) => s.status === 'rejected');
    if (
      refused.length !== copies - 1 ||
      refused.some((r) => !(r.reason instanceof WorkflowExecutionAlreadyStartedError))
    ) {
      problem = `${copies} starts: ${starts.map((s) => (s.status === 'fulfilled' ? 'started' : String(s.reason))).join('; ')}`;
    }
    const saboteur =
      fault.kind === 'worker-kill'
        ? atBoundary(
            lab,
            workflowId,
            fault.boundary,
            fault.when,
            () => done,
            async () => {
              await lab.killWorker();
              await unslow();
              await lab.worker();
            },
          )
        : fault.kind === 'server-kill'
          ? atBoundary(
              lab,
              workflowId,
              fault.boundary,
              'during',
              () => done,
              async () => {
                await lab.restartServer();
                await lab.worker();
              },
            )
          : Promise.resolve(undefined);
    const driven =
      fault.kind === 'duplicate' && scenario.workflow === 'llmBurst'
        ? acquireAndShutdown(lab, workflowId, 2).then(async (endpoints) => {
            if (new Set(endpoints).size !== 1) problem = `two acquires answered ${endpoints.join(' and ')}`;
            return stoppedPool(lab, workflowId);
          })
        : fault.kind === 'duplicate' && scenario.name === 'drRestore (restore)'
          ? approveOnce(lab, workflowId, 2).then(() => retrying(lab, (c) => c.workflow.getHandle(workflowId).result()))
          : fault.kind === 'rerun'
            ? scenario.drive(lab, workflowId).then(async (first) => {
                const wrong = scenario.wrong(first);
                if (wrong) problem = `first run: ${wrong}`;
                await client.workflow.start(scenario.workflow, { taskQueue: lab.taskQueue, workflowId, args: [input] });
                return scenario.drive(lab, workflowId);
              })
            : scenario.drive(lab, workflowId);
    try {
      result = await driven;
    } catch (err) {
      failed = err;
    } finally {
      done = true;
    }
    boundary = await saboteur;
  } finally {
    if (fault.kind === 'peer') await fault.fault.clear(lab);
    await unslow();
  }

  const runs = await retrying(lab, async (c) => {
    let n = 0;
    for await (const _ of c.workflow.list({
      query: `WorkflowId = '${workflowId}' AND StartTime > '${new Date(t0).toISOString()}'`,
    }))
      n++;
    return n;
  });
  const expectedRuns = fault.kind === 'rerun' ? 2 : 1;
  if (runs !== expectedRuns) problem = `${runs} runs of ${workflowId}, not ${expectedRuns}`;
  const activities = await scheduledActivities(lab, workflowId);
  const effect = effectOf(before, await labState(lab));
  const verdict = clean ? compareEffects(effect, clean) : { leaked: [], duplicated: [] };
  let failedCleanly: string | undefined;
  if (failed) {
    const reason = causeChain(failed);
    if (fault.kind === 'peer' && verdict.leaked.length === 0 && reason) failedCleanly = reason;
    else problem = problem ?? `failed: ${reason}`;
  } else problem = problem ?? scenario.wrong(result);
  return {
    outcome: {
      scenario: scenario.name,
      fault: faultLabel(fault),
      boundary,
      correct: problem === undefined,
      problem,
      failedCleanly,
      leaked: verdict.leaked,
      duplicated: verdict.duplicated,
      activities,
      seconds: Math.round((Date.now() - t0) / 1000),
    },
    effect,
  };
}

/** `WorkflowFailedError: … <- ActivityFailure … <- ConflictError: VMID 201 …` in one line. */
function causeChain(err: unknown): string {
  const parts: string[] = [];
  let e = err as { name?: string; message?: string; type?: string; cause?: unknown } | undefined;
  while (e && parts.length < 5) {
    parts.push(`${e.type ?? e.name}: ${e.message}`);
    e = e.cause as typeof e;
  }
  return parts.join(' <- ');
}
