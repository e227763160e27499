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
 *      budget, or on `shutdownNow` — while it starts as well as once it serves (it bills from the
 *      launch on); give up a start whose model server does not answer within modelServerTimeout;
 *      terminate it after `terminateAfter` stopped, if asked to, cancelling its spot request first.
 *   4. Every reconcileEvery, compare with EC2: an instance stopped or terminated behind our back
 *      is noticed and, while demand goes on, started again; an instance of the pool's tags that
 *      the workflow does not know (a spot request's replacement, a launch cut short) is adopted
 *      if the pool has none, else terminated.
 *
 * What the clock decides (ledger, limits, next wake-up) is the pure pool model in
 * common/llm-burst-pool.ts; this file keeps the state, the handlers and the loop.
 */
import * as wf from '@temporalio/workflow';
import type { createEc2Activities, InstanceView } from '../activities/ec2.js';
import { apiCall, quickLook, waitFor, withHeartbeat } from '../common/activity-options.js';
import { NON_RETRYABLE, nonRetryable, retryable } from '../common/errors.js';
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
import {
  dayOf,
  demandCounts,
  desired as poolDesired,
  ledgerAt,
  limitReached,
  nextWake as poolNextWake,
  refusal as poolRefusal,
  startLimit,
  statusOf,
  terminateDue,
  type LimitHit,
  type PoolLimits,
  type PoolMoment,
} from '../common/llm-burst-pool.js';
import {
  recordBurstColdStart,
  recordBurstLedger,
  recordBurstRefusal,
  recordBurstState,
  type RefusalReason,
} from '../common/metrics.js';
import { ProgressTracker } from '../common/progress.js';
import { RESOURCE_KEY } from '../common/search-attributes.js';
import { parseInput } from '../common/validation.js';

type Ec2 = ReturnType<typeof createEc2Activities>;
const ec2 = wf.proxyActivities<Ec2>(apiCall);
const ec2Wait = wf.proxyActivities<Ec2>(waitFor);
/**
 * The cold path's look right after a start (status checks, then the model server), in the worker
 * within the workflow task: a start that finds everything up at the first look costs no further
 * round trip through the server. A local activity holds the workflow's handlers (queries,
 * shutdownNow) until it ends, so only this bounded look runs locally; the start and every wait
 * stay regular activities (responsive, heartbeating, cancellable).
 */
const ec2Local = wf.proxyLocalActivities<Ec2>(quickLook);
/** The local look at the model server gives up after this long (then the regular wait takes over). */
const QUICK_LOOK_MS = 1000;
/** Histories recorded before the cold path's shortcuts (start at once, local looks) replay without them. */
const LOCAL_COLD_PATH_PATCH = 'burst-local-cold-path';
/** Histories recorded with two local looks (status checks, then model server) replay with two. */
const ONE_LOCAL_LOOK_PATCH = 'burst-one-local-look';
/** The launch heartbeats and cleans up what it made when cancelled; the workflow waits for that clean-up. */
const ec2Launch = wf.proxyActivities<Ec2>({
  ...withHeartbeat(apiCall, 5),
  cancellationType: 'WAIT_CANCELLATION_COMPLETED',
});

const RUN_STEPS = [
  'find or launch instance',
  'wait for running and status checks',
  'wait for the model server',
  'serve',
  'stop instance',
] as const;
const MAX_EVENTS = 30;

const errorMessage = (err: unknown): string =>
  err instanceof Error ? (err.cause instanceof Error ? err.cause.message : err.message) : String(err);

export async function llmBurst(raw: LlmBurstInput): Promise<LlmBurstStatus> {
  const input = parseInput(llmBurstInputSchema, raw, 'llmBurst input');
  const pool = input.pool;
  const limits: PoolLimits = {
    pool,
    idleMs: input.idleTimeout ?? pool.idleTimeoutMinutes * 60_000,
    maxRunMs: input.maxRunning ?? (pool.maxRunningHours === undefined ? undefined : pool.maxRunningHours * 3_600_000),
    terminateAfterMs: input.terminateAfter,
    modelServerTimeoutMs: input.modelServerTimeout,
  };
  wf.upsertSearchAttributes([{ key: RESOURCE_KEY, value: pool.name }]);

  const started = Date.now();
  const s: CarriedState = input.carried ?? {
    state: 'stopped',
    since: started,
    held: false,
    runSeconds: 0,
    runUsd: 0,
    today: { day: dayOf(started), seconds: 0, usd: 0 },
    totalSeconds: 0,
    totalUsd: 0,
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
  /** While starting: since when it waits for the model server. */
  let modelWaitSince: number | undefined;
  /** A limit that cut a start short: the loop stops the instance with its reason. */
  let stopAfterStart: LimitHit | undefined;
  let nextReconcileAt = started + input.reconcileEvery;
  let reconcileWanted = false;
  let reconciliations = 0;

  let progress = initialProgress();

  // ------------------------------------------------------------ what the state means

  const liveAcquires = (): boolean => [...acquires.values()].some((epoch) => epoch === shutdownEpoch);
  const moment = (now = Date.now()): PoolMoment => ({ now, liveAcquires: liveAcquires(), modelWaitSince });
  const desired = (now: number): boolean => poolDesired(limits, s, moment(now));
  const refusal = (now: number): string | undefined => poolRefusal(limits, s, now);
  const billing = (): boolean => s.runStartedAt !== undefined;
  const accrueNow = (): void => void Object.assign(s, ledgerAt(limits, s, Date.now()));
  const countRefusal = (reason: RefusalReason): void => recordBurstRefusal(pool.name, reason);

  function setState(state: BurstState, reason?: string): void {
    s.state = state;
    s.since = Date.now();
    if (reason !== undefined) s.reason = reason;
    recordBurstState(pool.name, state);
    recordBurstLedger(pool.name, s);
    wf.log.info('llm burst pool state', { pool: pool.name, state, reason, instanceId: s.instanceId });
  }

  function event(what: string): void {
    s.events.push({ at: new Date().toISOString(), what });
    if (s.events.length > MAX_EVENTS) s.events.splice(0, s.events.length - MAX_EVENTS);
  }

  function startBilling(): void {
    if (billing()) return;
    const now = Date.now();
    accrueNow();
    s.runStartedAt = now;
    s.accruedAt = now;
    s.runSeconds = 0;
    s.runUsd = 0;
    wake++; // a start under way now has a budget and a running time to watch
  }

  function stopBilling(): void {
    accrueNow();
    s.runStartedAt = undefined;
    s.accruedAt = undefined;
  }

  function adopt(i: InstanceView): void {
    // The ledger so far at the old price; from here on at the adopted instance's.
    if (billing() && (i.instanceType !== s.instanceType || i.market !== s.market)) accrueNow();
    s.instanceId = i.instanceId;
    s.instanceType = i.instanceType;
    s.market = i.market;
    s.privateIp = i.privateIp;
  }

  /**
   * Lets go of the instance (it is terminated or gone). Its persistent spot request is cancelled
   * first: EC2 would otherwise launch a replacement that bills while nobody knows of it. If that
   * fails, reconciliation terminates the replacement (and cancels the request) when it shows up.
   */
  async function forgetInstance(): Promise<void> {
    const id = s.instanceId;
    if (id && s.market === 'spot') {
      try {
        const cancelled = await ec2.ec2CancelSpotRequest(pool, id);
        if (cancelled) event(`cancelled spot request ${cancelled} of ${id}`);
      } catch (err) {
        if (wf.isCancellation(err)) throw err;
        event(`could not cancel the spot request of ${id} (${errorMessage(err)}); reconciliation checks again`);
      }
    }
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

  const status = (): LlmBurstStatus =>
    statusOf(limits, s, { ...moment(), pendingAcquires: acquires.size, endpoint: endpoint() });

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
          return {
            pool: pool.name,
            endpoint: endpoint()!,
            instanceId: s.instanceId,
            idleTimeoutMs: limits.idleMs,
            heldMs: s.lastDemandAt - arrived,
          };
        }
        if (!settled) {
          countRefusal('deadline');
          throw retryable(
            'timeout',
            `pool ${pool.name} was not ready within ${formatDuration(deadlineMs)} (state ${s.state})`,
          );
        }
        if (shutdownEpoch !== myShutdown) {
          countRefusal('shutdown');
          throw nonRetryable('precondition', `pool ${pool.name}: ${shutdownReason}`);
        }
        const overBudget = refusal(Date.now());
        countRefusal(overBudget ? 'budget' : 'start-failed');
        if (overBudget) throw nonRetryable('precondition', `pool ${pool.name} refuses to start: ${overBudget}`);
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
        const overBudget = s.state === 'ready' ? undefined : refusal(Date.now());
        if (overBudget) {
          countRefusal('budget');
          throw nonRetryable('precondition', `pool ${pool.name} refuses to start: ${overBudget}`);
        }
      },
    },
  );

  // ------------------------------------------------------------ the steps

  /**
   * Starts the instance the pool knows straight away, one activity (the start itself looks
   * first); null when it turns out gone, for findOrLaunch to look for another.
   */
  async function startKnown(instanceId: string): Promise<string | null> {
    try {
      const started = await ec2.ec2StartInstance(pool, instanceId);
      adopt(started);
      startBilling();
      if (started.previous !== 'stopped') {
        event(`found ${started.instanceId} already ${started.previous}`);
        return `found ${started.instanceId} ${started.previous}`;
      }
      event(`started ${started.instanceId}`);
      return `started ${started.instanceId} (was stopped)`;
    } catch (err) {
      if (wf.isCancellation(err) || !(err instanceof wf.ActivityFailure)) throw err;
      if (!(err.cause instanceof wf.ApplicationFailure) || err.cause.type !== NON_RETRYABLE.notFound) throw err;
      await forgetInstance();
      return null;
    }
  }

  /** A quick look's answer; null when it failed (the regular wait that follows looks again). */
  async function lookOnce<T>(look: () => Promise<T>): Promise<T | null> {
    try {
      return await look();
    } catch (err) {
      if (wf.isCancellation(err)) throw err;
      return null;
    }
  }

  async function findOrLaunch(fast: boolean): Promise<string> {
    if (fast && s.instanceId) {
      const started = await startKnown(s.instanceId);
      if (started) return started;
    }
    let found: InstanceView | null = s.instanceId ? await ec2.ec2DescribeInstance(pool, s.instanceId) : null;
    if (!found || found.state === 'terminated' || found.state === 'shutting-down') {
      if (s.instanceId) await forgetInstance();
      found = (await ec2.ec2FindPoolInstances(pool))[0] ?? null;
    }
    if (!found) {
      s.launchToken ??= `${pool.name}-${wf.uuid4()}`;
      const launched = await ec2Launch.ec2LaunchInstance(pool, s.launchToken);
      s.launchToken = undefined;
      s.launches++;
      adopt(launched);
      startBilling();
      const refused = launched.refused.length > 0 ? ` after ${launched.refused.join(', ')}` : '';
      const what = `launched ${launched.instanceId} (${launched.instanceType} ${launched.market})${refused}`;
      event(what);
      return what;
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
  }

  /**
   * Checks the limits while a start is under way (the instance bills from its launch on) and
   * cancels the start when one is reached, leaving its reason in stopAfterStart.
   */
  async function watchStart(scope: wf.CancellationScope, done: () => boolean): Promise<void> {
    while (!done()) {
      if (scope.consideredCancelled) return; // shutdownNow got there first
      const hit = startLimit(limits, s, moment());
      if (hit) {
        stopAfterStart = hit;
        scope.cancel();
        return;
      }
      const seen = wake;
      const t = Date.now();
      const next = poolNextWake(limits, s, { ...moment(t), nextReconcileAt: Infinity });
      const woken = () => wake !== seen || done();
      await (Number.isFinite(next) ? wf.condition(woken, next - t) : wf.condition(woken));
    }
  }

  async function bringUp(): Promise<void> {
    setState('starting');
    const startingAt = Date.now();
    progress = new ProgressTracker(RUN_STEPS);
    const p = progress;
    const scope = new wf.CancellationScope();
    startScope = scope;
    stopAfterStart = undefined;
    let finished = false;
    const watcher = watchStart(scope, () => finished).catch(() => undefined);
    const fast = wf.patched(LOCAL_COLD_PATH_PATCH);
    const oneLook = fast && wf.patched(ONE_LOCAL_LOOK_PATCH);
    try {
      await scope.run(async () => {
        await p.run(
          'find or launch instance',
          () => findOrLaunch(fast),
          (detail) => detail,
        );
        const look = oneLook ? await lookOnce(() => ec2Local.ec2CheckReady(pool, s.instanceId!, QUICK_LOOK_MS)) : null;
        const running = await p.run(
          'wait for running and status checks',
          async () =>
            look?.running ??
            (fast && !oneLook ? await lookOnce(() => ec2Local.ec2CheckRunning(pool, s.instanceId!)) : null) ??
            (await ec2Wait.ec2WaitRunning(pool, s.instanceId!)),
        );
        adopt(running);
        if (!s.privateIp) throw nonRetryable('precondition', `instance ${s.instanceId} has no private address`);
        modelWaitSince = Date.now();
        wake++;
        await p.run('wait for the model server', async () => {
          if (look?.modelServerOk) return; // only ever true of a running instance
          if (
            fast &&
            !oneLook &&
            (await lookOnce(() => ec2Local.ec2CheckModelServer(pool, s.privateIp!, QUICK_LOOK_MS)))?.ok
          )
            return;
          await ec2Wait.ec2WaitModelServer(pool, s.privateIp!);
        });
      });
      const now = Date.now();
      if (demandCounts(s)) s.lastDemandAt = now; // the idle window starts once it can serve
      s.reason = undefined;
      setState('ready');
      recordBurstColdStart(pool.name, 'ready', now - startingAt);
      nextReconcileAt = now + input.reconcileEvery;
      event(`ready: ${s.instanceId} at ${endpoint()}`);
      p.start('serve', `${s.instanceId} at ${endpoint()}`);
    } catch (err) {
      recordBurstColdStart(pool.name, wf.isCancellation(err) ? 'cancelled' : 'failed', Date.now() - startingAt);
      if (wf.isCancellation(err)) {
        if (wf.CancellationScope.current().consideredCancelled) throw err; // the workflow itself is cancelled
        // A shutdownNow that arrived meanwhile wins over a limit: the loop stops with its reason.
        const hit = handledShutdown === shutdownEpoch ? (stopAfterStart as LimitHit | undefined) : undefined;
        if (hit?.startFailed) {
          stopAfterStart = undefined;
          await startFailed(hit.reason);
          return;
        }
        event(`start cancelled: ${hit?.reason ?? shutdownReason}`);
        return; // the loop stops what was started
      }
      await startFailed(errorMessage(err));
    } finally {
      finished = true;
      modelWaitSince = undefined;
      startScope = undefined;
      wake++;
      await watcher;
    }
  }

  async function startFailed(message: string): Promise<void> {
    s.failedAt = Date.now();
    failureEpoch++;
    setState('failed', message);
    event(`start failed: ${message}`);
    if (billing() || s.launchToken) await stopQuietly(`start failed: ${message}`);
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
      if (id === s.instanceId && (!final || final.state === 'terminated')) await forgetInstance();
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
      const message = errorMessage(err);
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

  /** After terminateAfter stopped: cancels the spot request (no replacement), terminates, forgets. */
  async function terminate(): Promise<void> {
    const id = s.instanceId!;
    const after = formatDuration(limits.terminateAfterMs!);
    await ec2.ec2TerminateInstance(pool, id);
    event(`terminated ${id}: stopped for longer than ${after}`);
    s.market = undefined; // its spot request is cancelled already
    await forgetInstance();
    s.reason = `terminated ${id} after ${after} stopped`;
  }

  /**
   * Makes the pool's instances in EC2 match the one the workflow knows: adopts one if it knows
   * none (a launch cut short), terminates any other (a persistent spot request's replacement,
   * a duplicate). Returns false when EC2 could not be asked.
   */
  async function sweepStrangers(): Promise<boolean> {
    let found: InstanceView[];
    try {
      found = await ec2.ec2FindPoolInstances(pool);
    } catch (err) {
      if (wf.isCancellation(err)) throw err;
      event(`reconcile: could not list the pool's instances: ${errorMessage(err)}`);
      return false;
    }
    if (!s.instanceId) {
      const mine = found.find((i) => s.launchToken !== undefined && i.launchToken === s.launchToken) ?? found[0];
      s.launchToken = undefined;
      if (mine) {
        adopt(mine);
        event(`reconcile: found ${mine.instanceId} (${mine.state}), an instance of the pool labwright did not know`);
      }
    }
    for (const stranger of found.filter((i) => i.instanceId !== s.instanceId)) {
      try {
        await ec2.ec2TerminateInstance(pool, stranger.instanceId);
        event(`reconcile: terminated ${stranger.instanceId} (${stranger.state}): the pool runs one instance`);
      } catch (err) {
        if (wf.isCancellation(err)) throw err;
        event(`reconcile: could not terminate ${stranger.instanceId}: ${errorMessage(err)}`);
      }
    }
    return true;
  }

  /** Compares the recorded state with EC2's; true when it corrected something. */
  async function reconcile(): Promise<boolean> {
    if (!['ready', 'stopped', 'failed'].includes(s.state)) return false;
    if (!(await sweepStrangers()) || !s.instanceId) return false;
    let actual: InstanceView | null;
    try {
      actual = await ec2.ec2DescribeInstance(pool, s.instanceId);
    } catch (err) {
      if (wf.isCancellation(err)) throw err;
      event(`reconcile: could not describe ${s.instanceId}: ${errorMessage(err)}`);
      return false;
    }
    const id = s.instanceId;
    const state = actual?.state ?? 'terminated';
    const why = actual?.stateReason ? ` (${actual.stateReason})` : '';
    const gone = state === 'terminated' || state === 'shutting-down';
    if (s.state === 'ready') {
      if (state === 'running' || state === 'pending') return false;
      stopBilling();
      s.stoppedAt = Date.now();
      if (gone) await forgetInstance();
      setState('stopped', `instance ${id} was ${state} outside labwright${why}`);
      event(`reconcile: ${id} found ${state}${why}, not stopped by labwright`);
      progress.fail('serve', `instance ${state} outside labwright`);
      return true;
    }
    if (gone) {
      await forgetInstance();
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
      accrueNow();
      recordBurstLedger(pool.name, s);

      if (handledShutdown !== shutdownEpoch) {
        handledShutdown = shutdownEpoch;
        stopAfterStart = undefined;
        if (billing() || s.state === 'ready' || s.state === 'starting' || s.launchToken) {
          await bringDown(shutdownReason);
          continue;
        }
        s.reason = shutdownReason;
      }

      const limit = s.state === 'ready' ? limitReached(limits, s, now) : stopAfterStart;
      if (limit) {
        stopAfterStart = undefined;
        if (limit.endsRun) {
          s.held = false;
          s.demandFloor = now;
        }
        await bringDown(limit.reason);
        continue;
      }
      if (s.state === 'ready' && !desired(now)) {
        await bringDown(`idle for ${formatDuration(limits.idleMs)}`);
        continue;
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
        } else if (terminateDue(limits, s, now)) {
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
        accrueNow();
        const { carried: _previous, ...rest } = raw;
        await wf.continueAsNew<typeof llmBurst>({ ...rest, carried: s });
      }

      const seen = wake;
      const t = Date.now();
      await wf.condition(() => wake !== seen, poolNextWake(limits, s, { ...moment(t), nextReconcileAt }) - t);
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
