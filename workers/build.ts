/**
 * What the worker image builds once so that a worker starts with nothing to compile: the workflow
 * bundle (LABWRIGHT_WORKFLOW_BUNDLE) and the worker itself as one JavaScript file. Run from source,
 * the worker transpiles every module of its own through tsx as it loads them; compiled, it starts
 * sooner and holds less (bench/worker-startup.ts measures both).
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { build } from 'esbuild';
import { bundleWorkflowCode } from '@temporalio/worker';
import { quietLogger } from '../lib/log.js';
import { projectRoot } from '../lib/paths.js';
import { WORKFLOWS_PATH } from './worker.js';

export const WORKFLOW_BUNDLE_FILE = 'workflows.js';
export const COMPILED_WORKER_FILE = 'worker.mjs';

/** Written beside and renamed into place, so that a reader never sees half a file. */
async function writeWhole(file: string, contents: string): Promise<void> {
  await fs.mkdir(path.dirname(file), { recursive: true });
  const partial = `${file}.${process.pid}.partial`;
  await fs.writeFile(partial, contents);
  await fs.rename(partial, file);
}

export async function buildWorkflowBundle(file: string): Promise<number> {
  const { code } = await bundleWorkflowCode({ workflowsPath: WORKFLOWS_PATH, logger: quietLogger(['warn', 'error']) });
  await writeWhole(file, code);
  return code.length;
}

/**
 * workers/main.ts (or another entry point) and the project's modules it imports, as one ES module;
 * the packages stay in node_modules (their native parts and the SDK's workflow bundler need them
 * there). The file must lie inside the project, below its package.json: lib/paths.ts finds the
 * project from it.
 */
export async function compileWorker(
  file: string,
  entry = path.join(projectRoot, 'workers', 'main.ts'),
): Promise<number> {
  const result = await build({
    entryPoints: [entry],
    bundle: true,
    packages: 'external',
    platform: 'node',
    format: 'esm',
    target: 'node20',
    write: false,
    logLevel: 'warning',
  });
  const code = result.outputFiles[0]!.text;
  await writeWhole(file, code);
  return code.length;
}
