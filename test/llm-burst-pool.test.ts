/**
 * The burst pool's pure model (common/llm-burst-pool.ts): the ledger and its UTC-midnight
 * rollover, prices per instance type and market, terminateAfter, and the limits a start obeys.
 */
import { describe, expect, it } from 'vitest';
import { carriedStateSchema, type CarriedState } from '../common/llm-burst.js';
import {
  hourlyPrice,
  ledgerAt,
  nextWake,
  refusal,
  startLimit,
  statusOf,
  terminateDue,
  type PoolLimits,
} from '../common/llm-burst-pool.js';
import { burstPoolSchema } from '../hardware/schema.js';

const at = (iso: string): number => Date.parse(iso);

const pool = burstPoolSchema.parse({
  name: 'g5-llm',
  region: 'us-east-1',
  instanceTypes: ['g5.xlarge', 'g5.2xlarge'],
  launchTemplate: { name: 'llm-gpu-worker' },
  dailyBudgetUsd: 3,
  prices: {
    'g5.xlarge': { spot: 0.4, 'on-demand': 1 },
    'g5.2xlarge': { spot: 0.6, 'on-demand': 2 },
  },
});

const limits = (over: Partial<PoolLimits> = {}): PoolLimits => ({
  pool,
  idleMs: 15 * 60_000,
  modelServerTimeoutMs: 20 * 60_000,
  ...over,
});

function state(over: Partial<CarriedState>): CarriedState {
  return carriedStateSchema.parse({
    state: 'ready',
    since: 0,
    held: false,
    runSeconds: 0,
    today: { day: '2026-12-01', seconds: 0 },
    totalSeconds: 0,
    launches: 1,
    events: [],
    instanceId: 'i-1',
    ...over,
  });
}

const moment = (now: number, liveAcquires = false) => ({ now, liveAcquires });

describe('the burst pool model', () => {
  it('prices the run by its instance type and market, and the budget counts dollars, not hours', () => {
    expect(hourlyPrice(pool, 'g5.2xlarge', 'on-demand')).toBe(2);
    expect(hourlyPrice(pool, 'g5.xlarge', 'spot')).toBe(0.4);
    expect(hourlyPrice(pool, undefined, undefined)).toBe(2); // not known yet: the dearest
    const since = at('2026-12-01T10:00:00Z');
    // After a fallback to on-demand g5.2xlarge, one hour costs $2, five times the spot g5.xlarge.
    const fallback = state({
      instanceType: 'g5.2xlarge',
      market: 'on-demand',
      runStartedAt: since,
      accruedAt: since,
      held: true,
    });
    const spot = state({ instanceType: 'g5.xlarge', market: 'spot', runStartedAt: since, accruedAt: since });
    const hour = since + 3_600_000;
    expect(ledgerAt(limits(), fallback, hour).today.usd).toBeCloseTo(2, 6);
    expect(ledgerAt(limits(), spot, hour).today.usd).toBeCloseTo(0.4, 6);
    // $3 a day: the on-demand fallback reaches it after 1.5 h, the spot one would need 7.5 h.
    expect(refusal(limits(), fallback, since + 1.5 * 3_600_000)).toMatch(/^daily budget of \$3\.00 reached/);
    expect(refusal(limits(), spot, since + 1.5 * 3_600_000)).toBeUndefined();
    expect(nextWake(limits(), fallback, { ...moment(since), nextReconcileAt: Infinity })).toBeCloseTo(
      since + 1.5 * 3_600_000,
      -1,
    );
    expect(statusOf(limits(), fallback, { ...moment(hour), pendingAcquires: 0 }).limits.hourlyPriceUsd).toBe(2);
  });

  it('splits a run at UTC midnight: the new day starts with a fresh budget, the total keeps everything', () => {
    const start = at('2026-12-01T23:00:00Z');
    const s = state({ instanceType: 'g5.2xlarge', market: 'on-demand', runStartedAt: start, accruedAt: start });
    // 23:00 → 00:30 at $2/h: $2 on the first day, $1 on the second.
    const before = ledgerAt(limits(), s, at('2026-12-01T23:59:00Z'));
    expect(before.today.day).toBe('2026-12-01');
    expect(before.today.usd).toBeCloseTo((59 / 60) * 2, 6);
    const after = ledgerAt(limits(), before, at('2026-12-02T00:30:00Z'));
    expect(after.today).toEqual({ day: '2026-12-02', seconds: 1800, usd: expect.closeTo(1, 6) as number });
    expect(after.totalUsd).toBeCloseTo(3, 6);
    expect(after.runSeconds).toBe(5400);

    // Budget spent before midnight: refused until then, and the workflow wakes at midnight.
    const spent = state({ state: 'stopped', today: { day: '2026-12-01', seconds: 5400, usd: 3.2 } });
    const late = at('2026-12-01T23:40:00Z');
    expect(refusal(limits(), spent, late)).toBe('daily budget of $3.00 reached ($3.20 spent on 2026-12-01)');
    expect(nextWake(limits(), spent, { ...moment(late), nextReconcileAt: Infinity })).toBe(at('2026-12-02T00:00:00Z'));
    expect(refusal(limits(), spent, at('2026-12-02T00:00:01Z'))).toBeUndefined();
    expect(statusOf(limits(), spent, { ...moment(late), pendingAcquires: 0 }).refusedUntil).toBe(
      '2026-12-02T00:00:00.000Z',
    );
  });

  it('terminates a stopped instance only after terminateAfter, and wakes up for it', () => {
    const stoppedAt = at('2026-12-01T10:00:00Z');
    const l = limits({ terminateAfterMs: 3_600_000 });
    const s = state({ state: 'stopped', stoppedAt });
    expect(terminateDue(l, s, stoppedAt + 3_599_999)).toBe(false);
    expect(terminateDue(l, s, stoppedAt + 3_600_000)).toBe(true);
    expect(terminateDue(limits(), s, stoppedAt + 10 * 3_600_000)).toBe(false); // not asked to
    expect(terminateDue(l, { ...s, instanceId: undefined }, stoppedAt + 3_600_000)).toBe(false);
    expect(nextWake(l, s, { ...moment(stoppedAt + 1000), nextReconcileAt: Infinity })).toBe(stoppedAt + 3_600_000);
  });

  it('a start obeys the budget, the maximum running time, idleness and the model-server timeout', () => {
    const t0 = at('2026-12-01T10:00:00Z');
    const l = limits({ maxRunMs: 2 * 3_600_000, idleMs: 60_000, modelServerTimeoutMs: 10 * 60_000 });
    const launched = state({
      state: 'starting',
      instanceType: 'g5.xlarge',
      market: 'on-demand',
      runStartedAt: t0,
      accruedAt: t0,
      lastDemandAt: t0,
    });
    // Waiting acquires keep it wanted; a minute without demand and without acquires ends the start.
    expect(startLimit(l, launched, { ...moment(t0 + 30_000, true) })).toBeUndefined();
    expect(startLimit(l, launched, { ...moment(t0 + 61_000, true) })).toBeUndefined();
    expect(startLimit(l, launched, moment(t0 + 61_000))?.reason).toBe('idle for 1m while starting');

    // The model server gets modelServerTimeout, then the start fails (and is stopped).
    const waiting = { ...moment(t0 + 5 * 60_000, true), modelWaitSince: t0 + 5 * 60_000 };
    expect(startLimit(l, launched, waiting)).toBeUndefined();
    expect(startLimit(l, launched, { ...waiting, now: t0 + 15 * 60_000 })).toEqual({
      reason: 'the model server did not answer within 10m',
      endsRun: false,
      startFailed: true,
    });
    expect(nextWake(l, launched, { ...waiting, nextReconcileAt: Infinity })).toBe(t0 + 15 * 60_000);

    // It bills while starting: the maximum running time and the budget ($1/h, $3 a day) apply.
    expect(startLimit(l, launched, moment(t0 + 2 * 3_600_000, true))).toEqual({
      reason: 'maximum running time of 2h reached',
      endsRun: true,
    });
    const unlimited = limits({ idleMs: 60_000 });
    expect(startLimit(unlimited, launched, moment(t0 + 3 * 3_600_000, true))?.reason).toMatch(
      /^daily budget of \$3\.00 reached/,
    );
    // Before the launch returned nothing bills: only idleness and the model-server wait apply.
    const notLaunched = state({ state: 'starting', instanceId: undefined, lastDemandAt: t0 });
    expect(startLimit(unlimited, notLaunched, moment(t0 + 30_000))).toBeUndefined();
  });

  it('refuses a pool whose fallback launches have no price, naming the missing one', () => {
    const parsed = burstPoolSchema.safeParse({
      name: 'p',
      region: 'us-east-1',
      instanceTypes: ['g5.xlarge'],
      launchTemplate: { name: 'gpu-worker' },
      prices: { 'g5.xlarge': { spot: 0.4 } },
    });
    expect(parsed.success).toBe(false);
    expect(parsed.error?.issues.map((i) => [i.path.join('.'), i.message])).toEqual([
      [
        'prices.g5.xlarge.on-demand',
        'no price for g5.xlarge on-demand: set prices["g5.xlarge"].on-demand or hourlyPriceUsd',
      ],
    ]);
  });
});
