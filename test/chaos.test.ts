/**
 * The CI slice of the fault matrix (chaos/, `npm run chaos` runs all of it): on the simulated
 * lab, with workers as processes and a dev server on SQLite, a few workflows chosen by a seed
 * that changes from run to run each run clean, then under one fault of their full plan picked
 * by the same seed (a SIGKILL to the worker or server at an activity boundary, a peer's fault,
 * a duplicate start). LABWRIGHT_CHAOS_SEED=<the printed seed> reproduces a run.
 */
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { startChaosLab, type ChaosLab } from '../chaos/lab.js';
import { seeded, slicePlan } from '../chaos/plan.js';
import { runScenario, seedFromEnv } from '../chaos/runner.js';
import { SCENARIOS } from '../chaos/scenarios.js';

const seed = seedFromEnv();
console.log(`chaos slice: LABWRIGHT_CHAOS_SEED=${seed}`);
/**
 * The slice must stay within a few minutes of the suite on a loaded 2-core machine (a clean run
 * of a workflow takes 30-60 s there, a killed one up to two minutes): one workflow per run, a
 * clean run and two faults. Over many runs the seed covers every workflow.
 */
const WORKFLOWS_PER_RUN = 1;
const FAULTS = 2;
const chosen = slicePlan([...SCENARIOS], WORKFLOWS_PER_RUN, seeded(seed));

let lab: ChaosLab;
beforeAll(async () => {
  lab = await startChaosLab({ workflowBundlePath: inject('workflowBundlePath') });
}, 300_000);
afterAll(async () => {
  await lab?.stop();
});

describe(`fault matrix slice (seed ${seed})`, () => {
  for (const scenario of chosen) {
    it(`${scenario.name}: a clean run, then ${FAULTS} faults picked by the seed; correct, nothing leaked or duplicated`, async () => {
      if (scenario.workflow === 'gpuNodeJoin') {
        // Its cluster first.
        const talos = SCENARIOS.find((s) => s.workflow === 'talosBootstrap')!;
        const [made] = await runScenario(lab, talos, { slice: 0, cleanRuns: 1, seed, log: (l) => console.log(l) });
        expect(made?.correct).toBe(true);
      }
      const outcomes = await runScenario(lab, scenario, {
        slice: FAULTS,
        cleanRuns: 1,
        seed,
        log: (l) => console.log(l),
      });
      expect(outcomes).toHaveLength(1 + FAULTS);
      for (const o of outcomes) {
        expect({
          fault: o.fault,
          boundary: o.boundary,
          correct: o.correct,
          problem: o.problem,
          leaked: o.leaked,
          duplicated: o.duplicated,
        }).toEqual({
          fault: o.fault,
          boundary: o.boundary,
          correct: true,
          problem: undefined,
          leaked: [],
          duplicated: [],
        });
      }
    }, 600_000);
  }
});
