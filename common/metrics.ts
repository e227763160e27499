/**
 * Metrics of the lab's own outcomes, through the SDK's metric meter (the workflow's `metricMeter`
 * records nothing while replaying, so a replayed history never counts twice). The worker's
 * Prometheus endpoint exports them beside the Temporal runtime's own metrics; the workflow
 * meter adds `namespace`, `taskQueue` and `workflowType` to every series (the SDK's names; the
 * runtime's own `temporal_*` metrics say `task_queue` and `workflow_type`).
 *
 * The names are the contract of the Grafana dashboard (deploy/monitoring/grafana/dashboards/),
 * checked against a real scrape by test/examples.test.ts.
 */
import * as wf from '@temporalio/workflow';
import { BURST_STATES, type BurstState } from './llm-burst.js';

export const METRICS = {
  stepDuration: 'labwright_step_duration_seconds',
  drBackupAge: 'labwright_dr_backup_age_seconds',
  drTargetRto: 'labwright_dr_rto_seconds',
  drTargetRpo: 'labwright_dr_rpo_seconds',
  drRunRto: 'labwright_dr_run_rto_seconds',
  drRunRpo: 'labwright_dr_run_rpo_seconds',
  drRuns: 'labwright_dr_runs_total',
  drLastRun: 'labwright_dr_last_run_timestamp_seconds',
  burstState: 'labwright_burst_pool_state',
  burstRunning: 'labwright_burst_running_seconds',
  burstCost: 'labwright_burst_cost_usd',
  burstColdStart: 'labwright_burst_cold_start_seconds',
  burstRefusals: 'labwright_burst_refusals_total',
  activityFailures: 'labwright_activity_failures_total',
} as const;

/** Buckets (seconds) of the duration histograms: steps and starts take seconds to hours. */
const DURATION_BUCKETS = [1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200];

/** The runtime's `histogramBucketOverrides` (its defaults are milliseconds, up to 10 000). */
export const HISTOGRAM_BUCKETS: Record<string, number[]> = {
  [METRICS.stepDuration]: DURATION_BUCKETS,
  [METRICS.burstColdStart]: DURATION_BUCKETS,
};

const seconds = (ms: number): number => Math.max(0, ms) / 1000;

/** A step of any workflow ended (`done` or `failed`) after `ms`. */
export function recordStep(step: string, outcome: 'done' | 'failed', ms: number): void {
  wf.metricMeter
    .createHistogram(METRICS.stepDuration, 'float', 's', 'Duration of a workflow step, by step and outcome.')
    .record(seconds(ms), { step, outcome });
}

// ------------------------------------------------------------------ DR restores and drills

export interface DrLabels {
  plan: string;
  mode: string;
}

/** The age of a target's backup when the run checked it. */
export function recordBackupAge(l: DrLabels, target: string, kind: string, ageMs: number): void {
  wf.metricMeter
    .createGauge(METRICS.drBackupAge, 'float', 's', 'Age of the backup a DR run checked, per plan and target.')
    .set(seconds(ageMs), { ...l, target, kind });
}

export interface DrOutcome {
  verdict: 'ok' | 'failed' | 'refused';
  totalRtoMs?: number;
  maxRpoMs?: number;
  targets?: Array<{ target: string; kind: string; rtoMs?: number; rpoMs: number }>;
}

/** A DR run's verdict (refused: its checks stopped it before anything was touched) and its RTO/RPO. */
export function recordDrOutcome(l: DrLabels, o: DrOutcome): void {
  const m = wf.metricMeter;
  m.createCounter(METRICS.drRuns, undefined, 'DR runs by plan, mode and verdict (ok, failed, refused).').add(1, {
    ...l,
    verdict: o.verdict,
  });
  m.createGauge(METRICS.drLastRun, 'float', 's', 'When a DR run of the plan last ended (Unix time), by verdict.').set(
    Date.now() / 1000,
    { ...l, verdict: o.verdict },
  );
  for (const t of o.targets ?? []) {
    const labels = { ...l, target: t.target, kind: t.kind };
    if (t.rtoMs !== undefined) {
      m.createGauge(METRICS.drTargetRto, 'float', 's', 'Measured RTO of the last DR run, per target.').set(
        seconds(t.rtoMs),
        labels,
      );
    }
    m.createGauge(
      METRICS.drTargetRpo,
      'float',
      's',
      'RPO (age of the backup used) of the last DR run, per target.',
    ).set(seconds(t.rpoMs), labels);
  }
  if (o.totalRtoMs !== undefined) {
    m.createGauge(METRICS.drRunRto, 'float', 's', 'Measured RTO of the last DR run of the plan.').set(
      seconds(o.totalRtoMs),
      { ...l },
    );
  }
  if (o.maxRpoMs !== undefined) {
    m.createGauge(METRICS.drRunRpo, 'float', 's', 'Worst RPO over the targets of the last DR run of the plan.').set(
      seconds(o.maxRpoMs),
      { ...l },
    );
  }
}

// ------------------------------------------------------------------ the LLM burst pool

/** The pool's state: 1 for the one it is in, 0 for the others. */
export function recordBurstState(pool: string, state: BurstState): void {
  const g = wf.metricMeter.createGauge(METRICS.burstState, 'int', undefined, 'Burst pool state (1 = current).');
  for (const s of BURST_STATES) g.set(s === state ? 1 : 0, { pool, state: s });
}

export interface BurstLedger {
  runSeconds: number;
  runUsd: number;
  today: { seconds: number; usd: number };
  totalSeconds: number;
  totalUsd: number;
}

/** Running time and cost: the current run, today (UTC) and in total. */
export function recordBurstLedger(pool: string, s: BurstLedger): void {
  const running = wf.metricMeter.createGauge(METRICS.burstRunning, 'float', 's', 'Burst instance running seconds.');
  const cost = wf.metricMeter.createGauge(METRICS.burstCost, 'float', 'USD', 'Burst instance cost in USD.');
  for (const [period, secs, usd] of [
    ['run', s.runSeconds, s.runUsd],
    ['today', s.today.seconds, s.today.usd],
    ['total', s.totalSeconds, s.totalUsd],
  ] as const) {
    running.set(secs, { pool, period });
    cost.set(usd, { pool, period });
  }
}

/** A start from demand to serving (`ready`), or until it failed or was cancelled. */
export function recordBurstColdStart(pool: string, outcome: 'ready' | 'failed' | 'cancelled', ms: number): void {
  wf.metricMeter
    .createHistogram(METRICS.burstColdStart, 'float', 's', 'Burst pool cold start: from starting to serving.')
    .record(seconds(ms), { pool, outcome });
}

export type RefusalReason = 'budget' | 'shutdown' | 'start-failed' | 'deadline';

/** An acquire the pool refused, by why. */
export function recordBurstRefusal(pool: string, reason: RefusalReason): void {
  wf.metricMeter
    .createCounter(METRICS.burstRefusals, undefined, 'Acquires the burst pool refused, by reason.')
    .add(1, { pool, reason });
}
