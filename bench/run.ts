/**
 * `npm run bench`: runs every benchmark script in bench/ (each starts its own peers and prints its
 * numbers beside a baseline). Benchmarks measure; they never pass or fail on a number.
 */
import { spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import path from 'node:path';
import { projectRoot } from '../lib/paths.js';

const only = process.argv[2];
const benches = readdirSync(path.join(projectRoot, 'bench'))
  .filter((f) => f.endsWith('.ts') && f !== 'run.ts')
  .filter((f) => !only || f.includes(only));
let failed = 0;
for (const file of benches) {
  console.log(`\n== ${file}`);
  const tsx = path.join(projectRoot, 'node_modules', 'tsx', 'dist', 'cli.mjs');
  const result = spawnSync(process.execPath, [tsx, path.join('bench', file)], { cwd: projectRoot, stdio: 'inherit' });
  if (result.status !== 0) failed++;
}
process.exit(failed === 0 ? 0 : 1);
