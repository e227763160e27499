/**
 * `npm run chaos`: the fault matrix over every workflow on the simulated lab, with a table
 * workflow × fault → runs, correct, leaked, duplicated.
 *
 *   npm run chaos                                  the full matrix
 *   npm run chaos -- --workflow packerImageBuild   one workflow's rows (repeatable; a row's name or its workflow)
 *   npm run chaos -- --slice 2                     2 cells per workflow, picked by LABWRIGHT_CHAOS_SEED (printed)
 *   npm run chaos -- --boundaries 3                kills at 3 boundaries per workflow, evenly spread
 *   npm run chaos -- --fault re-run                only the cells of faults so named (repeatable)
 *   npm run chaos -- --json out.json               every run's outcome, for a closer look
 *
 * Exits 1 when a cell is not all correct, or leaked or duplicated something.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { bundleWorkflowCode } from '@temporalio/worker';
import { quietLogger } from '../lib/log.js';
import { cacheDir, projectRoot } from '../lib/paths.js';
import { runScenario, seedFromEnv, table } from './runner.js';
import { startChaosLab } from './lab.js';
import { SCENARIOS } from './scenarios.js';

const { values } = parseArgs({
  options: {
    workflow: { type: 'string', multiple: true },
    slice: { type: 'string' },
    boundaries: { type: 'string' },
    fault: { type: 'string', multiple: true },
    json: { type: 'string' },
  },
});
const chosen = SCENARIOS.filter(
  (s) => !values.workflow || values.workflow.some((w) => s.name === w || s.workflow === w),
);
if (chosen.length === 0) throw new Error(`no workflow named ${values.workflow?.join(', ')}`);
// gpuNodeJoin needs the cluster talosBootstrap makes: without talosBootstrap's rows, one clean run of it first.
const prerequisite =
  chosen.some((s) => s.workflow === 'gpuNodeJoin') && !chosen.some((s) => s.workflow === 'talosBootstrap')
    ? SCENARIOS.find((s) => s.workflow === 'talosBootstrap')
    : undefined;
if (prerequisite) chosen.unshift(prerequisite);
const seed = seedFromEnv();
console.log(
  `chaos: LABWRIGHT_CHAOS_SEED=${seed}` +
    (values.slice
      ? ` (slice of ${values.slice} per workflow)`
      : values.boundaries
        ? ` (kills at ${values.boundaries} activity boundaries per workflow, evenly spread, and at the one-shot steps)`
        : ' (full matrix)'),
);

const bundle = await bundleWorkflowCode({
  workflowsPath: path.join(projectRoot, 'workflows', 'index.ts'),
  logger: quietLogger(['warn', 'error']),
});
const bundlePath = path.join(cacheDir, 'chaos', `workflows-${process.pid}.js`);
await fs.mkdir(path.dirname(bundlePath), { recursive: true });
await fs.writeFile(bundlePath, bundle.code);
const lab = await startChaosLab({ workflowBundlePath: bundlePath });
const outcomes = [];
try {
  for (const scenario of chosen) {
    outcomes.push(
      ...(await runScenario(lab, scenario, {
        ...(scenario === prerequisite ? { cleanRuns: 1 } : {}),
        slice: scenario === prerequisite ? 0 : values.slice ? Number(values.slice) : undefined,
        boundaries: values.boundaries ? Number(values.boundaries) : undefined,
        ...(values.fault && scenario !== prerequisite ? { faults: values.fault } : {}),
        seed,
        log: (line) => console.log(line),
      })),
    );
  }
} finally {
  await lab.stop();
  await fs.rm(bundlePath, { force: true });
}
console.log(`\n${table(outcomes)}`);
if (values.json) await fs.writeFile(values.json, JSON.stringify(outcomes, null, 2));
const bad = outcomes.filter((o) => !o.correct || o.leaked.length > 0 || o.duplicated.length > 0);
process.exitCode = bad.length > 0 ? 1 : 0;
