/** Runs a workflow's rows of the matrix on a chaos lab, and prints the table. */
import type { ChaosLab } from './lab.js';
import { faultLabel, runCell, type Fault, type RunOutcome } from './matrix.js';
import { peerFaults } from './peer-faults.js';
import { fullPlan, seeded, slicePlan } from './plan.js';
import type { Scenario } from './scenarios.js';
import type { Effect } from './state.js';

/** LABWRIGHT_CHAOS_SEED, or a new seed every run. */
export function seedFromEnv(): number {
  const env = process.env.LABWRIGHT_CHAOS_SEED;
  return env ? Number(env) : Math.floor(Math.random() * 2 ** 31);
}

export interface ScenarioOptions {
  /** Cells per workflow picked by `seed` (the CI slice); the full plan when left out. */
  slice?: number;
  seed: number;
  /**
   * Clean runs first (default 2): the last one's effect is what every faulted run must match;
   * a first run may set up what later runs find (secrets, a namespace).
   */
  cleanRuns?: number;
  /** Kills at this many activity boundaries, evenly spread (default: at every one). */
  boundaries?: number;
  /** Only the cells whose fault is named by one of these (`re-run`, `server SIGKILL`, `PVE 5xx`). */
  faults?: string[];
  log(line: string): void;
}

let runCounter = 0;

/** Clean runs, then the planned cells. */
export async function runScenario(lab: ChaosLab, scenario: Scenario, opts: ScenarioOptions): Promise<RunOutcome[]> {
  const outcomes: RunOutcome[] = [];
  const cell = async (fault: Fault, clean: Effect | undefined) => {
    const { outcome, effect } = await runCell(lab, scenario, ++runCounter, fault, clean);
    outcomes.push(outcome);
    opts.log(describe(outcome));
    return effect;
  };
  let clean = await cell({ kind: 'none' }, undefined);
  for (let i = 1; i < (opts.cleanRuns ?? 2); i++) clean = await cell({ kind: 'none' }, undefined);
  const cleanRun = outcomes[0]!;
  const peers = (await peerFaults(lab)).filter((p) => scenario.systems.includes(p.system));
  const all = fullPlan(cleanRun.activities, peers, opts.boundaries, scenario.rerun);
  const random = seeded(opts.seed + [...scenario.name].reduce((h, c) => h * 31 + c.charCodeAt(0), 0));
  const named = opts.faults ? all.filter((f) => opts.faults!.some((name) => faultLabel(f).includes(name))) : all;
  const plan = opts.slice === undefined ? named : slicePlan(named, opts.slice, random);
  for (const fault of plan) await cell(fault, clean);
  return outcomes;
}

function describe(o: RunOutcome): string {
  const verdict = o.correct
    ? o.failedCleanly
      ? `failed cleanly: ${o.failedCleanly}`
      : 'correct'
    : `WRONG: ${o.problem}`;
  const extra = [
    o.leaked.length ? `leaked ${o.leaked.join(', ')}` : '',
    o.duplicated.length ? `duplicated ${o.duplicated.join(', ')}` : '',
  ].filter(Boolean);
  return `${o.scenario} | ${o.fault}${o.boundary ? ` at ${o.boundary}` : ''} | ${verdict}${extra.length ? ` | ${extra.join('; ')}` : ''} (${o.seconds}s)`;
}

/**
 * workflow × fault → runs, correct, leaked, duplicated, and `no kill`: kill cells whose boundary
 * never came (that run took another path than the clean run the plan came from), so nothing was
 * killed in them.
 */
export function table(outcomes: RunOutcome[]): string {
  const rows = new Map<string, { runs: number; correct: number; leaked: number; duplicated: number; noKill: number }>();
  for (const o of outcomes) {
    const key = `${o.scenario}\t${o.fault}`;
    const r = rows.get(key) ?? { runs: 0, correct: 0, leaked: 0, duplicated: 0, noKill: 0 };
    r.runs++;
    if (o.correct) r.correct++;
    if (o.leaked.length) r.leaked++;
    if (o.duplicated.length) r.duplicated++;
    if (/SIGKILL/.test(o.fault) && !o.boundary) r.noKill++;
    rows.set(key, r);
  }
  const lines = [['workflow', 'fault', 'runs', 'correct', 'leaked', 'duplicated', 'no kill']];
  for (const [key, r] of rows)
    lines.push([...key.split('\t'), ...[r.runs, r.correct, r.leaked, r.duplicated, r.noKill].map(String)]);
  const widths = lines[0]!.map((_, i) => Math.max(...lines.map((l) => l[i]!.length)));
  return lines
    .map((l) => l.map((c, i) => (i < 2 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  '))
    .join('\n');
}
