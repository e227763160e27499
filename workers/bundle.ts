/**
 * Writes what the worker image runs (workers/build.ts) into one folder inside the project:
 * `tsx workers/bundle.ts <dir>` gives <dir>/workflows.js and <dir>/worker.mjs.
 */
import path from 'node:path';
import { COMPILED_WORKER_FILE, WORKFLOW_BUNDLE_FILE, buildWorkflowBundle, compileWorker } from './build.js';

const out = process.argv[2];
if (!out) {
  console.error('usage: tsx workers/bundle.ts <dir>');
  process.exit(2);
}
const kib = (n: number) => `${Math.round(n / 1024)} KiB`;
const bundle = path.join(out, WORKFLOW_BUNDLE_FILE);
const worker = path.join(out, COMPILED_WORKER_FILE);
console.log(`workflow bundle: ${bundle} (${kib(await buildWorkflowBundle(bundle))})`);
console.log(`worker: ${worker} (${kib(await compileWorker(path.resolve(worker)))})`);
