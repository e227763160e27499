/**
 * LLM burst pool: one GPU instance on EC2, up while the proxy has demand for it, stopped (never
 * terminated: its EBS volume keeps the models) after idleTimeout of silence. One workflow per pool,
 * ID `llm-burst/<pool>`, living for as long as the pool exists and continuing as new when the
 * server suggests it. The runbook it replaces:
 *
 *   1. On demand (a `demand` touch, an `acquire`, a `hold`): refuse if a limit says so; else find
 *      the pool's instance by tag, start it if stopped, launch one if there is none; wait until it
 *      runs and passes its status checks, then until the model server answers.
 *   2. Serve: `acquire` hands out the endpoint; every touch pushes the idle deadline back.
 *   3. Stop it after idleTimeout without demand, at the maximum running time, at the daily
 *      budget, or on `shutdownNow`; terminate it after `terminateAfter` stopped, if asked to.
 *   4. Every reconcileEvery, compare with EC2: an instance stopped or terminated behind our back
 *      is noticed and, while demand goes on, started again.
 */
import * as wf from '@temporalio/workflow';
import type { createEc2Activities, InstanceView } from '../activities/ec2.js';
import { apiCall, waitFor } from '../common/activity-options.js';
import { nonRetryable, retryable } from '../common/errors.js';
import {
  acquireUpdate,
  demandSignal,
  formatDuration,
  holdSignal,
  llmBurstInputSchema,
  shutdownNowSignal,
  statusQuery,
  unholdSignal,
  type AcquireRequest,
  type CarriedState,
  type LlmBurstInput,
  type LlmBurstStatus,
  type BurstState,
} from '../common/llm-burst.js';
import { ProgressTracker } from '../common/progress.js';
import { RESOURCE_KEY } from '../common/search-attributes.js';
import { parseInput } from '../common/validation.js';

type Ec2 = ReturnType<typeof createEc2Activities>;
const ec2 = wf.proxyActivities<Ec2>(apiCall);
const ec2Wait = wf.proxyActivities<Ec2>(waitFor);

const RUN_STEPS = [
  'find or launch instance',
  'wait for running and status checks',
  'wait for the model server',
  'serve',
  'stop instance',
] as const;
const MAX_EVENTS = 30;

const dayOf = (ms: number): string => new Date(ms).toISOString().slice(0, 10);
const nextMidnight = (ms: number): number => {
  const d = new Date(ms);
  return Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate() + 1);
};
const iso = (ms: number | undefined): string | undefined => (ms === undefined ? undefined : new Date(ms).toISOString());
const usd = (n: number): string => `$${n.toFixed(2)}`;

type Usage = Pick<CarriedState, 'runStartedAt' | 'accruedAt' | 'runSeconds' | 'today' | 'totalSeconds'>;

/** Adds the running time since the last accrual, splitting it at UTC midnight for the daily budget. */
function accrue<T extends Usage>(u: T, now: number): T {
  const out = { ...u, today: { ...u.today } };
  if (out.runStartedAt !== undefined && out.accruedAt !== undefined) {
    let from = out.accruedAt;
    while (from < now) {
      const to = Math.min(now, nextMidnight(from));
      if (out.today.day !== dayOf(from)) out.today = { day: dayOf(from), seconds: 0 };
      const seconds = (to - from) / 1000;
      out.today.seconds += seconds;
      out.runSeconds += seconds;
      out.totalSeconds += seconds;
      from = to;
    }
    out.accruedAt = now;
  }
  if (out.today.day !== dayOf(now)) out.today = { day: dayOf(now), seconds: 0 };
  return out;
}

export async function llmBurst(raw: LlmBurstInput): Promise<LlmBurstStatus> {
  const input = parseInput(llmBurstInputSchema, raw, 'llmBurst input');
  const pool = input.pool;
  const idleMs = input.idleTimeout ?? pool.idleTimeoutMinutes * 60_000;
  const maxRunMs =
    input.maxRunning ?? (pool.maxRunningHours === undefined ? undefined : pool.maxRunningHours * 3_600_000);
  const budget = pool.dailyBudgetUsd;
  const pricePerSecond = pool.hourlyPriceUsd / 3600;
  wf.upsertSearchAttributes([{ key: RESOURCE_KEY, value: pool.name }]);

  const started = Date.now();
  const s: CarriedState = input.carried ?? {
    state: 'stopped',
    since: started,
    held: false,
    runSeconds: 0,
    today: { day: dayOf(started), seconds: 0 },
    totalSeconds: 0,
    launches: 0,
    events: [],
  };

  let wake = 0;
  /** Waiting acquires, by id, with the shutdown epoch they arrived in: a shutdown fails the older ones. */
  const acquires = new Map<number, number>();
  let acquireIds = 0;
  let shutdownEpoch = 0;
  let handledShutdown = 0;
  let shutdownReason = 'shutdownNow';
  let failureEpoch = 0;
  let startScope: wf.CancellationScope | undefined;
  let nextReconcileAt = started + input.reconcileEvery;
  let reconcileWanted = false;
  let reconciliations = 0;

  let progress = initialProgress();

  // ------------------------------------------------------------ what the state means

  const cost = (seconds: number): number => seconds * pricePerSecond;
  const demandCounts = (): boolean =>
    s.lastDemandAt !== undefined && (s.demandFloor === undefined || s.lastDemandAt > s.demandFloor);
  const idleDeadline = (): number | undefined => (demandCounts() ? s.lastDemandAt! + idleMs : undefined);
  const liveAcquires = (): boolean => [...acquires.values()].some((epoch) => epoch === shutdownEpoch);
  const desired = (now: number): boolean =>
    s.held || liveAcquires() || (idleDeadline() !== undefined && now < idleDeadline()!);
  const billing = (): boolean => s.runStartedAt !== undefined;

  /** Why the pool refuses to start now, if it does. */
  function refusal(now: number): string | undefined {
    if (budget === undefined) return undefined;
    const spent = cost(accrue(s, now).today.seconds);
    return spent >= budget
      ? `daily budget of ${usd(budget)} reached (${usd(spent)} spent on ${dayOf(now)})`
      : undefined;
  }

  /** Why a running instance must stop now, whatever the demand. */
  function limitReached(now: number): { reason: string; endsRun: boolean } | undefined {
    const refused = refusal(now);
    if (refused) return { reason: refused, endsRun: false };
    if (maxRunMs !== undefined && accrue(s, now).runSeconds * 1000 >= maxRunMs) {
      return { reason: `maximum running time of ${formatDuration(maxRunMs)} reached`, endsRun: true };
    }
    return undefined;
  }

  function setState(state: BurstState, reason?: string): void {
    s.state = state;
    s.since = Date.now();
    if (reason !== undefined) s.reason = reason;
    wf.log.info('llm burst pool state', { pool: pool.name, state, reason, instanceId: s.instanceId });
  }

  function event(what: string): void {
    s.events.push({ at: new Date().toISOString(), what });
    if (s.events.length > MAX_EVENTS) s.events.splice(0, s.events.length - MAX_EVENTS);
  }

  function startBilling(): void {
    if (billing()) return;
    const now = Date.now();
    Object.assign(s, accrue(s, now));
    s.runStartedAt = now;
    s.accruedAt = now;
    s.runSeconds = 0;
  }

  function stopBilling(): void {
    Object.assign(s, accrue(s, Date.now()));
    s.runStartedAt = undefined;
    s.accruedAt = undefined;
  }

  function adopt(i: InstanceView): void {
    s.instanceId = i.instanceId;
    s.instanceType = i.instanceType;
    s.market = i.market;
    s.privateIp = i.privateIp;
  }

  function forgetInstance(): void {
    s.instanceId = undefined;
    s.instanceType = undefined;
    s.market = undefined;
    s.privateIp = undefined;
    s.stoppedAt = undefined;
  }

  function endpoint(): string | undefined {
    return s.privateIp ? `http://${s.privateIp}:${pool.modelPort}` : undefined;
  }

  function initialProgress(): ProgressTracker {
    if (s.state === 'ready') {
      const p = new ProgressTracker(RUN_STEPS);
      for (const step of RUN_STEPS.slice(0, 3)) p.skip(step, 'done in an earlier run (continued as new)');
      p.start('serve', `${s.instanceId} at ${endpoint()}`);
      return p;
    }
    const p = new ProgressTracker(['wait for demand']);
    p.start('wait for demand', s.reason);
    return p;
  }

  function status(): LlmBurstStatus {
    const now = Date.now();
    const u = accrue(s, now);
    const deadline = s.state === 'ready' && !s.held && !liveAcquires() ? idleDeadline() : undefined;
    const refused = s.state === 'ready' ? undefined : refusal(now);
    return {
      pool: pool.name,
      state: s.state,
      since: iso(s.since)!,
      instanceId: s.instanceId,
      instanceType: s.instanceType,
      market: s.market,
      endpoint: s.state === 'ready' ? endpoint() : undefined,
      held: s.held,
      lastDemandAt: iso(s.lastDemandAt),
      idleDeadline: iso(deadline),
      idleTimeoutSeconds: idleMs / 1000,
      reason: refused ?? s.reason,
      refusedUntil: refused ? iso(nextMidnight(now)) : undefined,
      runningSeconds: Math.round(u.runSeconds * 10) / 10,
      costUsd: Math.round(cost(u.runSeconds) * 10_000) / 10_000,
      today: {
        day: u.today.day,
        runningSeconds: Math.round(u.today.seconds * 10) / 10,
        costUsd: Math.round(cost(u.today.seconds) * 10_000) / 10_000,
      },
      total: {
        runningSeconds: Math.round(u.totalSeconds * 10) / 10,
        costUsd: Math.round(cost(u.totalSeconds) * 10_000) / 10_000,
      },
      limits: {
        maxRunningSeconds: maxRunMs === undefined ? undefined : maxRunMs / 1000,
        dailyBudgetUsd: budget,
        hourlyPriceUsd: pool.hourlyPriceUsd,
      },
      pendingAcquires: acquires.size,
      events: [...s.events],
    };
  }

  // ------------------------------------------------------------ handlers

  wf.setHandler(statusQuery, status);
  wf.setHandler(demandSignal, () => {
    s.lastDemandAt = Date.now();
    wake++;
  });
  wf.setHandler(holdSignal, () => {
    s.held = true;
    s.lastExplicitAt = Date.now();
    event('held: stays up whatever the traffic');
    wake++;
  });
  wf.setHandler(unholdSignal, () => {
    s.held = false;
    s.lastDemandAt = Date.now();
    event('unheld: stops after idleTimeout without demand');
    wake++;
  });
  wf.setHandler(shutdownNowSignal, (reason?: string) => {
    s.held = false;
    s.demandFloor = Date.now();
    shutdownReason = reason ? `shutdownNow: ${reason}` : 'shutdownNow';
    shutdownEpoch++;
    startScope?.cancel();
    wake++;
  });
  wf.setHandler(
    acquireUpdate,
    async (req: AcquireRequest | undefined) => {
      const arrived = Date.now();
      s.lastDemandAt = arrived;
      s.lastExplicitAt = arrived;
      const myShutdown = shutdownEpoch;
      const myFailure = failureEpoch;
      const deadlineMs = req?.deadlineSeconds !== undefined ? req.deadlineSeconds * 1000 : input.acquireDeadline;
      const id = ++acquireIds;
      acquires.set(id, myShutdown);
      wake++;
      try {
        if (req?.unreachable !== undefined && s.state === 'ready' && req.unreachable === endpoint()) {
          // The caller says the endpoint is dead: check with EC2 now rather than hand it out again.
          const seen = reconciliations;
          reconcileWanted = true;
          wake++;
          await wf.condition(() => reconciliations !== seen || s.state !== 'ready', deadlineMs);
        }
        const settled = await wf.condition(
          () =>
            s.state === 'ready' ||
            shutdownEpoch !== myShutdown ||
            failureEpoch !== myFailure ||
            (s.state !== 'starting' && refusal(Date.now()) !== undefined),
          deadlineMs,
        );
        if (s.state === 'ready' && s.instanceId && s.privateIp) {
          s.lastDemandAt = Date.now();
          return { pool: pool.name, endpoint: endpoint()!, instanceId: s.instanceId, idleTimeoutMs: idleMs };
        }
        if (!settled) {
          throw retryable(
            'timeout',
            `pool ${pool.name} was not ready within ${formatDuration(deadlineMs)} (state ${s.state})`,
          );
        }
        if (shutdownEpoch !== myShutdown) throw nonRetryable('precondition', `pool ${pool.name}: ${shutdownReason}`);
        const refused = refusal(Date.now());
        if (refused) throw nonRetryable('precondition', `pool ${pool.name} refuses to start: ${refused}`);
        throw nonRetryable('precondition', `pool ${pool.name} could not start: ${s.reason ?? 'unknown failure'}`);
      } finally {
        acquires.delete(id);
        wake++;
      }
    },
    {
      validator: (req: AcquireRequest | undefined) => {
        const d = req?.deadlineSeconds;
        if (d !== undefined && !(typeof d === 'number' && d > 0)) {
          throw nonRetryable('validation', 'acquire deadlineSeconds: expected a positive number of seconds');
        }
        if (req?.unreachable !== undefined && typeof req.unreachable !== 'string') {
          throw nonRetryable('validation', 'acquire unreachable: expected the endpoint URL the caller could not reach');
        }
        const refused = s.state === 'ready' ? undefined : refusal(Date.now());
        if (refused) throw nonRetryable('precondition', `pool ${pool.name} refuses to start: ${refused}`);
      },
    },
  );

  // ------------------------------------------------------------ the steps

  async function bringUp(): Promise<void> {
    setState('starting');
    progress = new ProgressTracker(RUN_STEPS);
    const p = progress;
    const scope = new wf.CancellationScope();
    startScope = scope;
    try {
      await scope.run(async () => {
        await p.run(
          'find or launch instance',
          async () => {
            let found: InstanceView | null = s.instanceId ? await ec2.ec2DescribeInstance(pool, s.instanceId) : null;
            if (!found || found.state === 'terminated' || found.state === 'shutting-down') {
              found = (await ec2.ec2FindPoolInstances(pool))[0] ?? null;
            }
            if (!found) {
              s.launchToken ??= `${pool.name}-${wf.uuid4()}`;
              const launched = await ec2.ec2LaunchInstance(pool, s.launchToken);
              s.launchToken = undefined;
              s.launches++;
              adopt(launched);
              startBilling();
              const refused = launched.refused.length > 0 ? ` after ${launched.refused.join(', ')}` : '';
              event(`launched ${launched.instanceId} (${launched.instanceType} ${launched.market})${refused}`);
              return `launched ${launched.instanceId} (${launched.instanceType} ${launched.market})${refused}`;
            }
            adopt(found);
            if (found.state === 'running' || found.state === 'pending') {
              startBilling();
              event(`found ${found.instanceId} already ${found.state}`);
              return `found ${found.instanceId} ${found.state}`;
            }
            await ec2.ec2StartInstance(pool, found.instanceId);
            startBilling();
            event(`started ${found.instanceId}`);
            return `started ${found.instanceId} (was ${found.state})`;
          },
          (detail) => detail,
        );
        const running = await p.run('wait for running and status checks', () =>
          ec2Wait.ec2WaitRunning(pool, s.instanceId!),
        );
        adopt(running);
        if (!s.privateIp) throw nonRetryable('precondition', `instance ${s.instanceId} has no private address`);
        await p.run('wait for the model server', () => ec2Wait.ec2WaitModelServer(pool, s.privateIp!));
      });
      const now = Date.now();
      if (demandCounts()) s.lastDemandAt = now; // the idle window starts once it can serve
      s.reason = undefined;
      setState('ready');
      nextReconcileAt = now + input.reconcileEvery;
      event(`ready: ${s.instanceId} at ${endpoint()}`);
      p.start('serve', `${s.instanceId} at ${endpoint()}`);
    } catch (err) {
      if (wf.isCancellation(err)) {
        if (wf.CancellationScope.current().consideredCancelled) throw err; // the workflow itself is cancelled
        event(`start cancelled: ${shutdownReason}`);
        return; // the loop stops what was started
      }
      const message =
        err instanceof Error ? (err.cause instanceof Error ? err.cause.message : err.message) : String(err);
      s.failedAt = Date.now();
      failureEpoch++;
      setState('failed', message);
      event(`start failed: ${message}`);
      if (billing() || s.launchToken) await stopQuietly(`start failed: ${message}`);
    } finally {
      startScope = undefined;
    }
  }

  /** Stops the pool's instance (or, if the start was cut short before its id was known, any running one). */
  async function stopInstances(): Promise<void> {
    const ids = s.instanceId
      ? [s.instanceId]
      : (await ec2.ec2FindPoolInstances(pool))
          .filter((i) => i.state === 'running' || i.state === 'pending')
          .map((i) => i.instanceId);
    for (const id of ids) {
      const after = await ec2.ec2StopInstance(pool, id);
      const final =
        after && after.state !== 'stopped' && after.state !== 'terminated'
          ? await ec2Wait.ec2WaitStopped(pool, id)
          : after;
      if (id === s.instanceId && (!final || final.state === 'terminated')) forgetInstance();
    }
    // A launch token without an instance stays: reconciliation looks for it once more later.
    if (s.instanceId) s.launchToken = undefined;
  }

  async function bringDown(reason: string): Promise<void> {
    const p = progress;
    const id = s.instanceId;
    setState('stopping', reason);
    p.start('stop instance', reason);
    try {
      await stopInstances();
      stopBilling();
      s.stoppedAt = Date.now();
      setState('stopped', reason);
      event(`stopped ${id ?? 'the pool'}: ${reason}`);
      p.done('stop instance', reason);
      p.finishWith(`stopped ${id ?? 'the pool'}: ${reason}`);
    } catch (err) {
      if (wf.isCancellation(err)) throw err;
      const message =
        err instanceof Error ? (err.cause instanceof Error ? err.cause.message : err.message) : String(err);
      s.failedAt = Date.now();
      failureEpoch++;
      setState('failed', `could not stop ${id}: ${message}`);
      event(`stop failed: ${message}`);
      p.fail('stop instance', message);
    }
  }

  /** After a failed start: stop whatever it started; a failure here is left to reconciliation. */
  async function stopQuietly(reason: string): Promise<void> {
    try {
      await stopInstances();
      stopBilling();
      s.stoppedAt = Date.now();
      event(`stopped ${s.instanceId ?? 'the pool'} after a failed start`);
    } catch (err) {
      if (wf.isCancellation(err)) throw err;
      event(`could not stop after a failed start (${reason}); reconciliation retries`);
    }
  }

  async function terminate(): Promise<void> {
    const id = s.instanceId!;
    await ec2.ec2TerminateInstance(pool, id);
    event(`terminated ${id}: stopped for longer than ${formatDuration(input.terminateAfter!)}`);
    forgetInstance();
    s.reason = `terminated ${id} after ${formatDuration(input.terminateAfter!)} stopped`;
  }

  /** Compares the recorded state with EC2's; true when it corrected something. */
  async function reconcile(): Promise<boolean> {
    if (!['ready', 'stopped', 'failed'].includes(s.state)) return false;
    let actual: InstanceView | null;
    try {
      if (!s.instanceId) {
        // A launch cut short (shutdownNow, cancellation) may have created an instance we never heard of.
        if (!s.launchToken) return false;
        const found = (await ec2.ec2FindPoolInstances(pool))[0];
        s.launchToken = undefined;
        if (!found) return false;
        adopt(found);
        event(`reconcile: found ${found.instanceId} from a launch that was cut short`);
      }
      actual = await ec2.ec2DescribeInstance(pool, s.instanceId!);
    } catch (err) {
      if (wf.isCancellation(err)) throw err;
      event(`reconcile: could not describe ${s.instanceId}: ${err instanceof Error ? err.message : String(err)}`);
      return false;
    }
    const id = s.instanceId!;
    const state = actual?.state ?? 'terminated';
    const why = actual?.stateReason ? ` (${actual.stateReason})` : '';
    const gone = state === 'terminated' || state === 'shutting-down';
    if (s.state === 'ready') {
      if (state === 'running' || state === 'pending') return false;
      stopBilling();
      s.stoppedAt = Date.now();
      if (gone) forgetInstance();
      setState('stopped', `instance ${id} was ${state} outside labwright${why}`);
      event(`reconcile: ${id} found ${state}${why}, not stopped by labwright`);
      progress.fail('serve', `instance ${state} outside labwright`);
      return true;
    }
    if (gone) {
      forgetInstance();
      event(`reconcile: ${id} found ${state} outside labwright; a new one will be launched on demand`);
      return true;
    }
    if (state === 'running' || state === 'pending') {
      event(`reconcile: ${id} found ${state} though labwright had it ${s.state}`);
      startBilling();
      if (desired(Date.now())) await bringUp();
      else await bringDown(`found ${state} outside labwright with no demand`);
      return true;
    }
    return false;
  }

  function nextWake(now: number): number {
    const times = [nextReconcileAt];
    if (s.state === 'ready') {
      const deadline = idleDeadline();
      if (!s.held && !liveAcquires()) times.push(deadline ?? now);
      if (maxRunMs !== undefined) times.push(now + maxRunMs - accrue(s, now).runSeconds * 1000);
      if (budget !== undefined && pricePerSecond > 0) {
        times.push(now + ((budget - cost(accrue(s, now).today.seconds)) / pricePerSecond) * 1000);
      }
    }
    if (s.state === 'stopped' && s.instanceId && input.terminateAfter !== undefined && s.stoppedAt !== undefined) {
      times.push(s.stoppedAt + input.terminateAfter);
    }
    if (refusal(now)) times.push(nextMidnight(now));
    return Math.max(now + 1, Math.min(...times));
  }

  function continueAsNewDue(): boolean {
    const info = wf.workflowInfo();
    const due =
      info.continueAsNewSuggested ||
      (input.continueAsNewAfterEvents !== undefined && info.historyLength >= input.continueAsNewAfterEvents);
    return due && acquires.size === 0 && ['ready', 'stopped', 'failed'].includes(s.state);
  }

  // ------------------------------------------------------------ the loop

  try {
    for (;;) {
      const now = Date.now();
      Object.assign(s, accrue(s, now));

      if (handledShutdown !== shutdownEpoch) {
        handledShutdown = shutdownEpoch;
        if (billing() || s.state === 'ready' || s.state === 'starting' || s.launchToken) {
          await bringDown(shutdownReason);
          continue;
        }
        s.reason = shutdownReason;
      }

      if (s.state === 'ready') {
        const limit = limitReached(now);
        if (limit) {
          if (limit.endsRun) {
            s.held = false;
            s.demandFloor = now;
          }
          await bringDown(limit.reason);
          continue;
        }
        if (!desired(now)) {
          await bringDown(`idle for ${formatDuration(idleMs)}`);
          continue;
        }
      }

      if (s.state === 'stopped' || s.state === 'failed') {
        const retryAllowed = s.state === 'stopped' || (s.lastExplicitAt ?? 0) > (s.failedAt ?? 0);
        if (desired(now) && retryAllowed) {
          const refused = refusal(now);
          if (!refused) {
            await bringUp();
            continue;
          }
          if (s.reason !== refused) {
            s.reason = refused;
            event(`refused to start: ${refused}`);
          }
        } else if (
          s.state === 'stopped' &&
          s.instanceId &&
          input.terminateAfter !== undefined &&
          s.stoppedAt !== undefined &&
          now >= s.stoppedAt + input.terminateAfter
        ) {
          await terminate();
          continue;
        }
      }

      if (now >= nextReconcileAt || reconcileWanted) {
        nextReconcileAt = now + input.reconcileEvery;
        reconcileWanted = false;
        const corrected = await reconcile();
        reconciliations++;
        if (corrected) continue;
      }

      if (continueAsNewDue()) {
        await wf.condition(wf.allHandlersFinished);
        Object.assign(s, accrue(s, Date.now()));
        const { carried: _previous, ...rest } = raw;
        await wf.continueAsNew<typeof llmBurst>({ ...rest, carried: s });
      }

      const seen = wake;
      const t = Date.now();
      await wf.condition(() => wake !== seen, nextWake(t) - t);
    }
  } catch (err) {
    if (!wf.isCancellation(err)) throw err;
    // Cancelling the workflow retires the pool: nothing may be left billing.
    await wf.CancellationScope.nonCancellable(async () => {
      if (billing() || s.state === 'ready' || s.state === 'starting' || s.launchToken) {
        await bringDown('workflow cancelled');
      }
    });
    progress.finishWith(`retired: ${s.instanceId ?? 'no instance'} ${s.state}`);
    return status();
  }
}
