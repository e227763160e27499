/**
 * Starts the peers every test shares: one real Temporal dev server on loopback (in memory,
 * headless, with the project's search attributes) and the workflow bundle, built once.
 * A peer that cannot start fails the whole run with its log; nothing is skipped.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { bundleWorkflowCode } from '@temporalio/worker';
import type { TestProject } from 'vitest/node';
import { startDevServer } from '../../sim/dev-server.js';
import { startKube } from '../../sim/kube-apiserver.js';
import { quietLogger } from '../../lib/log.js';
import { cacheDir, projectRoot } from '../../lib/paths.js';
import { testLogDir } from './logs.js';

declare module 'vitest' {
  export interface ProvidedContext {
    temporalAddress: string;
    workflowBundlePath: string;
  }
}

export const TEST_WORKFLOWS = path.join(projectRoot, 'test', 'fixtures', 'workflows', 'index.ts');

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const logDir = testLogDir;
  // The shared kube-apiserver (test/harness/kube.ts sharedKube()) starts alongside Temporal.
  const kubeStart = startKube({ logDir: path.join(logDir, 'kube') });
  kubeStart.catch(() => undefined); // awaited below; no unhandled rejection meanwhile
  const stopKube = () =>
    kubeStart.then(
      (k) => k.stop(),
      () => undefined,
    );
  const server = await startDevServer({ logFile: path.join(logDir, 'temporal.log') }).catch(async (err: unknown) => {
    await stopKube();
    throw err;
  });
  try {
    const bundle = await bundleWorkflowCode({ workflowsPath: TEST_WORKFLOWS, logger: quietLogger(['warn', 'error']) });
    const bundlePath = path.join(cacheDir, 'test-bundle', `workflows-${process.pid}.js`);
    await fs.mkdir(path.dirname(bundlePath), { recursive: true });
    await fs.writeFile(bundlePath, bundle.code);
    project.provide('temporalAddress', server.address);
    project.provide('workflowBundlePath', bundlePath);
    project.provide('kubeconfigPath', (await kubeStart).kubeconfigPath);
    return async () => {
      await server.stop();
      await stopKube();
      await fs.rm(bundlePath, { force: true });
    };
  } catch (err) {
    await server.stop();
    await stopKube();
    throw err;
  }
}
