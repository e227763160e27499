/**
 * `npm run bench`: runs every benchmark (each starts its own peers, prints p50, p99 and the ratio
 * to its baseline, and rewrites its section of docs/performance.md). Benchmarks measure; they
 * never pass or fail on a number.
 *
 *   npm run bench                          all of them, default sizes
 *   npm run bench -- talos                 the benches whose name contains `talos`
 *   npm run bench -- talos --nodes 3,10    …with options for it (each bench's header lists its own)
 */
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { projectRoot } from '../lib/paths.js';

const BENCHES = ['llm-burst.ts', 'talos-fanout.ts', 'burst-scale.ts', 'worker-startup.ts'];

const [first, ...rest] = process.argv.slice(2);
const only = first && !first.startsWith('-') ? first : undefined;
const options = only ? rest : process.argv.slice(2);
const chosen = BENCHES.filter((f) => !only || f.includes(only));
if (chosen.length === 0) {
  console.error(`no bench matches ${only}; there are ${BENCHES.join(', ')}`);
  process.exit(2);
}
let failed = 0;
for (const file of chosen) {
  console.log(`\n== ${file}`);
  const tsx = path.join(projectRoot, 'node_modules', 'tsx', 'dist', 'cli.mjs');
  const result = spawnSync(process.execPath, [tsx, path.join('bench', file), ...options], {
    cwd: projectRoot,
    stdio: 'inherit',
  });
  if (result.status !== 0) failed++;
}
process.exit(failed === 0 ? 0 : 1);
