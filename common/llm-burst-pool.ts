/**
 * The burst pool's model, pure: what its recorded state means at a given instant. The `llmBurst`
 * workflow keeps the state and talks to EC2; everything it decides from the clock goes through
 * here — the ledger (running time and dollars, split at UTC midnight for the daily budget, priced
 * per instance type and market), the limits (budget, maximum running time, idle, the model-server
 * wait), and when the workflow must next wake up. No I/O, no workflow APIs: unit-tested directly.
 */
import type { BurstPool } from '../hardware/schema.js';
import { formatDuration, type CarriedState, type LlmBurstStatus } from './llm-burst.js';

export interface PoolLimits {
  pool: BurstPool;
  idleMs: number;
  maxRunMs?: number;
  terminateAfterMs?: number;
  /** How long a start may wait for the model server to answer once the instance runs. */
  modelServerTimeoutMs: number;
}

/** What the workflow knows besides the carried state: waiting acquires, an ongoing start. */
export interface PoolMoment {
  now: number;
  /** An acquire is waiting that no shutdown has failed. */
  liveAcquires: boolean;
  /** While starting: since when it waits for the model server. */
  modelWaitSince?: number;
}

type Market = 'spot' | 'on-demand';

export const dayOf = (ms: number): string => new Date(ms).toISOString().slice(0, 10);

export const nextMidnight = (ms: number): number => {
  const d = new Date(ms);
  return Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate() + 1);
};

const usd = (n: number): string => `$${n.toFixed(2)}`;

/** USD per hour of `instanceType` on `market`: the inventory's price for it, else the pool's hourlyPriceUsd. */
export function hourlyPrice(pool: BurstPool, instanceType: string | undefined, market: Market | undefined): number {
  const known = instanceType && market ? pool.prices?.[instanceType]?.[market] : undefined;
  if (known !== undefined) return known;
  if (instanceType && market && pool.hourlyPriceUsd !== undefined) return pool.hourlyPriceUsd;
  // Type or market not known yet: the dearest the pool can launch, so a budget never under-counts.
  return Math.max(
    pool.hourlyPriceUsd ?? 0,
    ...Object.values(pool.prices ?? {}).flatMap((p) => [p.spot ?? 0, p['on-demand'] ?? 0]),
  );
}

/** The price of what is running now (its type and market as recorded). */
export const currentPrice = (pool: BurstPool, s: CarriedState): number => hourlyPrice(pool, s.instanceType, s.market);

export type Ledger = Pick<
  CarriedState,
  'runStartedAt' | 'accruedAt' | 'runSeconds' | 'runUsd' | 'today' | 'totalSeconds' | 'totalUsd'
>;

/**
 * Adds the running time since the last accrual at `pricePerHour`, splitting it at UTC midnight so
 * that each day's budget counts only that day's share. Also rolls `today` over when the day changed.
 */
export function accrue<T extends Ledger>(u: T, now: number, pricePerHour: number): T {
  const out = { ...u, today: { ...u.today } };
  if (out.runStartedAt !== undefined && out.accruedAt !== undefined) {
    let from = out.accruedAt;
    while (from < now) {
      const to = Math.min(now, nextMidnight(from));
      if (out.today.day !== dayOf(from)) out.today = { day: dayOf(from), seconds: 0, usd: 0 };
      const seconds = (to - from) / 1000;
      const cost = (seconds * pricePerHour) / 3600;
      out.today.seconds += seconds;
      out.today.usd += cost;
      out.runSeconds += seconds;
      out.runUsd += cost;
      out.totalSeconds += seconds;
      out.totalUsd += cost;
      from = to;
    }
    out.accruedAt = now;
  }
  if (out.today.day !== dayOf(now)) out.today = { day: dayOf(now), seconds: 0, usd: 0 };
  return out;
}

/** The ledger brought up to `now` at the current instance's price. */
export const ledgerAt = (l: PoolLimits, s: CarriedState, now: number): CarriedState =>
  accrue(s, now, currentPrice(l.pool, s));

export const demandCounts = (s: CarriedState): boolean =>
  s.lastDemandAt !== undefined && (s.demandFloor === undefined || s.lastDemandAt > s.demandFloor);

/** When the pool goes idle unless demand arrives; undefined when no demand counts. */
export const idleDeadline = (l: PoolLimits, s: CarriedState): number | undefined =>
  demandCounts(s) ? s.lastDemandAt! + l.idleMs : undefined;

/** True while something wants the instance up: a hold, a waiting acquire, or demand within idleTimeout. */
export function desired(l: PoolLimits, s: CarriedState, m: PoolMoment): boolean {
  const deadline = idleDeadline(l, s);
  return s.held || m.liveAcquires || (deadline !== undefined && m.now < deadline);
}

/** Why the pool refuses to start now, if it does: the day's budget is spent. */
export function refusal(l: PoolLimits, s: CarriedState, now: number): string | undefined {
  const budget = l.pool.dailyBudgetUsd;
  if (budget === undefined) return undefined;
  const spent = ledgerAt(l, s, now).today.usd;
  return spent >= budget ? `daily budget of ${usd(budget)} reached (${usd(spent)} spent on ${dayOf(now)})` : undefined;
}

export interface LimitHit {
  reason: string;
  /** The maximum running time: the run ends whatever the demand (holds and older demand are dropped). */
  endsRun: boolean;
  /** The start failed (the model server never answered) rather than being stopped by a limit. */
  startFailed?: boolean;
}

/** Why a billing instance must stop now, whatever the demand. */
export function limitReached(l: PoolLimits, s: CarriedState, now: number): LimitHit | undefined {
  const refused = refusal(l, s, now);
  if (refused) return { reason: refused, endsRun: false };
  if (l.maxRunMs !== undefined && ledgerAt(l, s, now).runSeconds * 1000 >= l.maxRunMs) {
    return { reason: `maximum running time of ${formatDuration(l.maxRunMs)} reached`, endsRun: true };
  }
  return undefined;
}

/**
 * Why a start under way must stop now: the limits a running instance obeys (it bills from the
 * launch on), no demand left, or a model server that has not answered within its timeout.
 */
export function startLimit(l: PoolLimits, s: CarriedState, m: PoolMoment): LimitHit | undefined {
  if (s.runStartedAt !== undefined) {
    const hit = limitReached(l, s, m.now);
    if (hit) return hit;
  }
  if (!desired(l, s, m)) return { reason: `idle for ${formatDuration(l.idleMs)} while starting`, endsRun: false };
  if (m.modelWaitSince !== undefined && m.now >= m.modelWaitSince + l.modelServerTimeoutMs) {
    return {
      reason: `the model server did not answer within ${formatDuration(l.modelServerTimeoutMs)}`,
      endsRun: false,
      startFailed: true,
    };
  }
  return undefined;
}

/** True when a stopped instance has been stopped for terminateAfter. */
export function terminateDue(l: PoolLimits, s: CarriedState, now: number): boolean {
  return (
    s.state === 'stopped' &&
    s.instanceId !== undefined &&
    l.terminateAfterMs !== undefined &&
    s.stoppedAt !== undefined &&
    now >= s.stoppedAt + l.terminateAfterMs
  );
}

/** When the budget runs out at the current price, while billing. */
function budgetEnd(l: PoolLimits, s: CarriedState, now: number): number | undefined {
  const budget = l.pool.dailyBudgetUsd;
  const perHour = currentPrice(l.pool, s);
  if (budget === undefined || s.runStartedAt === undefined || perHour <= 0) return undefined;
  return now + ((budget - ledgerAt(l, s, now).today.usd) / perHour) * 3_600_000;
}

/** The next instant the workflow must look again even if nothing happens: the earliest due limit. */
export function nextWake(l: PoolLimits, s: CarriedState, m: PoolMoment & { nextReconcileAt: number }): number {
  const { now } = m;
  const times = [m.nextReconcileAt];
  const billingLimits = (): void => {
    const end = budgetEnd(l, s, now);
    if (end !== undefined) times.push(end);
    if (l.maxRunMs !== undefined && s.runStartedAt !== undefined) {
      times.push(now + l.maxRunMs - ledgerAt(l, s, now).runSeconds * 1000);
    }
  };
  if (s.state === 'ready' || s.state === 'starting') {
    billingLimits();
    if (!s.held && !m.liveAcquires) times.push(idleDeadline(l, s) ?? now);
  }
  if (s.state === 'starting' && m.modelWaitSince !== undefined) times.push(m.modelWaitSince + l.modelServerTimeoutMs);
  if (s.state === 'stopped' && s.instanceId && l.terminateAfterMs !== undefined && s.stoppedAt !== undefined) {
    times.push(s.stoppedAt + l.terminateAfterMs);
  }
  if (refusal(l, s, now)) times.push(nextMidnight(now));
  return Math.max(now + 1, Math.min(...times));
}

const round = (n: number, places: number): number => Math.round(n * 10 ** places) / 10 ** places;

/** The `status` query's answer. */
export function statusOf(
  l: PoolLimits,
  s: CarriedState,
  m: PoolMoment & { pendingAcquires: number; endpoint?: string },
): LlmBurstStatus {
  const u = ledgerAt(l, s, m.now);
  const deadline = s.state === 'ready' && !s.held && !m.liveAcquires ? idleDeadline(l, s) : undefined;
  const refused = s.state === 'ready' ? undefined : refusal(l, s, m.now);
  const iso = (ms: number | undefined): string | undefined =>
    ms === undefined ? undefined : new Date(ms).toISOString();
  return {
    pool: l.pool.name,
    state: s.state,
    since: iso(s.since)!,
    instanceId: s.instanceId,
    instanceType: s.instanceType,
    market: s.market,
    endpoint: s.state === 'ready' ? m.endpoint : undefined,
    held: s.held,
    lastDemandAt: iso(s.lastDemandAt),
    idleDeadline: iso(deadline),
    idleTimeoutSeconds: l.idleMs / 1000,
    reason: refused ?? s.reason,
    refusedUntil: refused ? iso(nextMidnight(m.now)) : undefined,
    runningSeconds: round(u.runSeconds, 1),
    costUsd: round(u.runUsd, 4),
    today: { day: u.today.day, runningSeconds: round(u.today.seconds, 1), costUsd: round(u.today.usd, 4) },
    total: { runningSeconds: round(u.totalSeconds, 1), costUsd: round(u.totalUsd, 4) },
    limits: {
      maxRunningSeconds: l.maxRunMs === undefined ? undefined : l.maxRunMs / 1000,
      dailyBudgetUsd: l.pool.dailyBudgetUsd,
      hourlyPriceUsd: currentPrice(l.pool, s),
    },
    pendingAcquires: m.pendingAcquires,
    events: [...s.events],
  };
}
