/**
 * The LLM burst pool's contract, shared by the `llmBurst` workflow, its EC2 activities, the
 * proxy's client and the reference proxy: input schema, durations, the signals, update and
 * query, the status shape, and the address map that lets tests reach a fake model server on
 * loopback instead of an instance's private address.
 */
import * as wf from '@temporalio/workflow';
import { z } from 'zod';
import { burstPoolSchema, type BurstPool } from '../hardware/schema.js';

export { burstPoolSchema, type BurstPool };

// ------------------------------------------------------------------ durations

const UNIT_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };
const DURATION_RE = /^(\d+(?:\.\d+)?(?:ms|s|m|h|d))+$/;

/** `90` (seconds), `'30s'`, `'15m'`, `'1h30m'`, `'500ms'` → milliseconds; undefined when malformed. */
export function durationMs(value: number | string): number | undefined {
  if (typeof value === 'number') return Number.isFinite(value) && value >= 0 ? value * 1000 : undefined;
  const text = value.trim();
  if (!DURATION_RE.test(text)) return undefined;
  let total = 0;
  for (const m of text.matchAll(/(\d+(?:\.\d+)?)(ms|s|m|h|d)/g)) total += Number(m[1]) * (UNIT_MS[m[2]!] ?? 0);
  return total;
}

/** A duration as seconds (a number) or text like `30s`, `15m`, `1h30m`; parsed to milliseconds. */
export const durationSchema = z.union([z.number(), z.string()]).transform((value, ctx) => {
  const ms = durationMs(value);
  if (ms === undefined || ms <= 0) {
    ctx.addIssue({ code: 'custom', message: 'expected a positive duration: seconds, or text like 30s, 15m, 1h30m' });
    return z.NEVER;
  }
  return ms;
});

/** Renders milliseconds the way people write them: 15m, 1h30m, 4s, 250ms. */
export function formatDuration(ms: number): string {
  if (ms < 1000) return `${Math.round(ms)}ms`;
  let s = Math.round(ms / 1000);
  const parts: string[] = [];
  for (const [unit, size] of [
    ['d', 86_400],
    ['h', 3600],
    ['m', 60],
  ] as const) {
    if (s >= size) {
      parts.push(`${Math.floor(s / size)}${unit}`);
      s %= size;
    }
  }
  if (s > 0 || parts.length === 0) parts.push(`${s}s`);
  return parts.join('');
}

// ------------------------------------------------------------------ state

export const BURST_STATES = ['stopped', 'starting', 'ready', 'stopping', 'failed'] as const;
export type BurstState = (typeof BURST_STATES)[number];

export interface BurstEvent {
  at: string;
  what: string;
}

/** What a run hands to the next one on continue-as-new. Times are epoch milliseconds. */
export const carriedStateSchema = z.strictObject({
  state: z.enum(BURST_STATES),
  since: z.number(),
  instanceId: z.string().optional(),
  instanceType: z.string().optional(),
  market: z.enum(['spot', 'on-demand']).optional(),
  privateIp: z.string().optional(),
  lastDemandAt: z.number().optional(),
  /** Demand older than this does not count (set by shutdownNow and the maximum running time). */
  demandFloor: z.number().optional(),
  held: z.boolean(),
  reason: z.string().optional(),
  /** When the instance began billing in this run (undefined while it is stopped). */
  runStartedAt: z.number().optional(),
  accruedAt: z.number().optional(),
  runSeconds: z.number(),
  /** What the current run has cost, priced per instance type and market. */
  runUsd: z.number().default(0),
  today: z.strictObject({ day: z.string(), seconds: z.number(), usd: z.number().default(0) }),
  totalSeconds: z.number(),
  totalUsd: z.number().default(0),
  stoppedAt: z.number().optional(),
  failedAt: z.number().optional(),
  /** Bumped by every acquire and hold: a failed pool retries only on one newer than its failure. */
  lastExplicitAt: z.number().optional(),
  /** Tag of an instance being launched; kept until the launch is confirmed so a retry finds it. */
  launchToken: z.string().optional(),
  launches: z.number(),
  events: z.array(z.strictObject({ at: z.string(), what: z.string() })),
});
export type CarriedState = z.infer<typeof carriedStateSchema>;

// ------------------------------------------------------------------ input

export const llmBurstInputSchema = z.strictObject({
  /** The pool from the inventory's `burstPools`. */
  pool: burstPoolSchema,
  /** Stop after this long without demand; the pool's idleTimeoutMinutes when left out. */
  idleTimeout: durationSchema.optional(),
  /** Terminate an instance that has been stopped this long (its EBS volume goes with it). */
  terminateAfter: durationSchema.optional(),
  /** Longest single run; the pool's maxRunningHours when left out. */
  maxRunning: durationSchema.optional(),
  /** How long a start waits for the model server once the instance runs, before it gives up and stops it. */
  modelServerTimeout: durationSchema.prefault('20m'),
  /** How often the instance is checked against EC2. */
  reconcileEvery: durationSchema.prefault('1m'),
  /** How long an `acquire` waits for a ready instance unless it names its own deadline. */
  acquireDeadline: durationSchema.prefault('15m'),
  /** Continue-as-new once history has this many events, besides when the server suggests it. */
  continueAsNewAfterEvents: z.int().min(50).optional(),
  /** Set by the workflow itself on continue-as-new. */
  carried: carriedStateSchema.optional(),
});
export type LlmBurstInput = z.input<typeof llmBurstInputSchema>;
export type LlmBurstConfig = z.output<typeof llmBurstInputSchema>;

export const LLM_BURST_WORKFLOW = 'llmBurst';

export function llmBurstWorkflowId(pool: string): string {
  return `llm-burst/${pool}`;
}

// ------------------------------------------------------------------ messages

export interface AcquireRequest {
  /** Give up waiting for a ready instance after this many seconds (the workflow's acquireDeadline otherwise). */
  deadlineSeconds?: number;
  /**
   * The endpoint the caller could not reach: the workflow checks the instance against EC2 at once
   * (instead of at the next reconciliation) before it answers, so a spot interruption or a stop
   * from outside costs the caller one restart, not an error.
   */
  unreachable?: string;
}

export interface AcquireResult {
  pool: string;
  endpoint: string;
  instanceId: string;
  /** The pool's idle timeout: a client that sends no demand for this long loses the instance. */
  idleTimeoutMs: number;
  /**
   * How long the workflow held the request before answering, on its own clock. The idle window
   * starts at the answer, so a caller counts it from when it sent the request plus this.
   */
  heldMs: number;
}

export interface LlmBurstStatus {
  pool: string;
  state: BurstState;
  since: string;
  instanceId?: string;
  instanceType?: string;
  market?: 'spot' | 'on-demand';
  /** The model server's URL on the instance's private address. */
  endpoint?: string;
  held: boolean;
  lastDemandAt?: string;
  /** When it stops unless demand arrives (absent while held, stopped or starting). */
  idleDeadline?: string;
  idleTimeoutSeconds: number;
  /** Why it last stopped, refused, or failed. */
  reason?: string;
  /** Set while a limit refuses to start it. */
  refusedUntil?: string;
  /** The current run, and so far today (UTC) and in total. */
  runningSeconds: number;
  costUsd: number;
  today: { day: string; runningSeconds: number; costUsd: number };
  total: { runningSeconds: number; costUsd: number };
  /** hourlyPriceUsd: what the instance costs per hour (its type and market; the dearest when none runs). */
  limits: { maxRunningSeconds?: number; dailyBudgetUsd?: number; hourlyPriceUsd: number };
  pendingAcquires: number;
  /** The latest notable events, newest last: starts, stops, corrections after reconciliation. */
  events: BurstEvent[];
}

/** A touch from the proxy: someone is using the pool. Starts it if it is stopped. */
export const demandSignal = wf.defineSignal('demand');
/** Keep the instance up whatever the traffic (a long batch job) until `unhold`. */
export const holdSignal = wf.defineSignal('hold');
export const unholdSignal = wf.defineSignal('unhold');
/** Stop now, fail waiting acquires; only demand after this starts it again. */
export const shutdownNowSignal = wf.defineSignal<[reason?: string]>('shutdownNow');
/** Returns the ready endpoint, starting the instance and waiting while it starts. */
export const acquireUpdate = wf.defineUpdate<AcquireResult, [request: AcquireRequest]>('acquire');
export const statusQuery = wf.defineQuery<LlmBurstStatus>('status');

// ------------------------------------------------------------------ addresses

export interface HostPort {
  host: string;
  port: number;
}

export type AddressResolver = (host: string, port: number) => HostPort;

/**
 * Parses `LABWRIGHT_EC2_ADDRESS_MAP`: comma-separated `from=host:port` rules, where `from` is an
 * instance address, `addr:port`, or `*`. The simulated lab and tests map moto's private addresses
 * to fake model servers on loopback. With a map, an address no rule covers is refused, so a
 * misconfigured test never reaches a private range.
 */
export function parseAddressMap(text: string): AddressResolver {
  const rules = text
    .split(',')
    .map((r) => r.trim())
    .filter(Boolean)
    .map((rule) => {
      const [from, to] = rule.split('=');
      const m = /^([^:]+):(\d+)$/.exec(to ?? '');
      if (!from || !m) throw new Error(`address map rule ${JSON.stringify(rule)} is not from=host:port`);
      return { from, host: m[1]!, port: Number(m[2]) };
    });
  return (host, port) => {
    const rule =
      rules.find((r) => r.from === `${host}:${port}` || r.from === host) ?? rules.find((r) => r.from === '*');
    if (!rule) throw new Error(`address map has no rule for ${host}:${port}`);
    return { host: rule.host, port: rule.port };
  };
}

export const identityResolver: AddressResolver = (host, port) => ({ host, port });

/** Rewrites an http URL's host and port through a resolver. */
export function resolveUrl(url: string, resolve: AddressResolver): string {
  const u = new URL(url);
  const target = resolve(u.hostname, Number(u.port || (u.protocol === 'https:' ? 443 : 80)));
  u.hostname = target.host;
  u.port = String(target.port);
  return u.toString();
}

/** The pool's tags on every instance it launches: how the activities find it again. */
export const TAG_POOL = 'labwright:pool';
export const TAG_LAUNCH_TOKEN = 'labwright:launch-token';
export const TAG_MANAGED_BY = 'labwright:managed-by';
