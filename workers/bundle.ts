/**
 * Writes the workflow bundle the worker image loads at start (LABWRIGHT_WORKFLOW_BUNDLE), so that
 * a worker never bundles the workflows from source as it starts: `tsx workers/bundle.ts <out.js>`.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { bundleWorkflowCode } from '@temporalio/worker';
import { quietLogger } from '../lib/log.js';
import { WORKFLOWS_PATH } from './worker.js';

const out = process.argv[2];
if (!out) {
  console.error('usage: tsx workers/bundle.ts <bundle.js>');
  process.exit(2);
}
const { code } = await bundleWorkflowCode({ workflowsPath: WORKFLOWS_PATH, logger: quietLogger(['warn', 'error']) });
await fs.mkdir(path.dirname(path.resolve(out)), { recursive: true });
await fs.writeFile(out, code);
console.log(`workflow bundle: ${out} (${Math.round(code.length / 1024)} KiB)`);
