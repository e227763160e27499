/**
 * Bench: the worker's start-up and idle memory, with the prebuilt workflow bundle
 * (LABWRIGHT_WORKFLOW_BUNDLE), against a bare Temporal worker of the same SDK (one no-op
 * workflow, one no-op activity) started the same way:
 *
 *   start → first poll: from spawning the process until the server lists it as a poller of its
 *                       task queue (DescribeTaskQueue, asked every 10 ms);
 *   idle RSS:           the resident memory of the process and its children, `--idle` seconds
 *                       after its first poll with nothing to do.
 *
 * Run: npx tsx bench/worker-startup.ts [--starts 5] [--idle 5]
 * Not a test: numbers depend on the machine; nothing is asserted.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { Connection } from '@temporalio/client';
import proto from '@temporalio/proto';
import { bundleWorkflowCode } from '@temporalio/worker';
import { quietLogger } from '../lib/log.js';
import { cacheDir, projectRoot } from '../lib/paths.js';
import { stopProcess } from '../lib/processes.js';
import { startDevServer } from '../sim/dev-server.js';
import { COMPILED_WORKER_FILE, buildWorkflowBundle, compileWorker } from '../workers/build.js';
import { treeRssMiB } from './proc.js';
import { publish, runBench, type Row } from './report.js';

const { values } = parseArgs({ options: { starts: { type: 'string' }, idle: { type: 'string' } } });
const STARTS = Number(values.starts ?? 5);
const IDLE_MS = Number(values.idle ?? 5) * 1000;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const cleanups: Array<() => Promise<unknown>> = [];

interface Variant {
  name: string;
  /** The command after `node`. */
  args: string[];
  env: NodeJS.ProcessEnv;
}

async function main(): Promise<void> {
  const work = await fs.mkdtemp(path.join(os.tmpdir(), 'labwright-bench-worker-'));
  cleanups.push(() => fs.rm(work, { recursive: true, force: true }));
  const server = await startDevServer({ logFile: path.join(cacheDir, 'bench-logs', 'worker-startup-temporal.log') });
  cleanups.push(() => server.stop());
  const connection = await Connection.connect({ address: server.address });
  cleanups.unshift(() => connection.close());

  const bundlePath = path.join(work, 'workflows.js');
  await buildWorkflowBundle(bundlePath);
  const bareBundlePath = path.join(work, 'bare-workflows.js');
  const bare = await bundleWorkflowCode({
    workflowsPath: path.join(projectRoot, 'bench', 'bare-worker-workflow.ts'),
    logger: quietLogger(['error']),
  });
  await fs.writeFile(bareBundlePath, bare.code);

  // What the image runs (Dockerfile): the worker compiled by its build, in this checkout's dist/.
  const compiledWorker = path.join(projectRoot, 'dist', COMPILED_WORKER_FILE);
  await compileWorker(compiledWorker);
  const bareSource = path.join(projectRoot, 'bench', 'bare-worker.ts');
  const compiledBare = path.join(projectRoot, 'dist', 'bench-bare-worker.mjs');
  await compileWorker(compiledBare, bareSource);
  const common = { TEMPORAL_ADDRESS: server.address, LABWRIGHT_LOG_LEVEL: 'WARN' };
  const labEnv = {
    ...common,
    LABWRIGHT_INVENTORY: path.join(projectRoot, 'hardware', 'lab.example.yaml'),
    LABWRIGHT_CODEC_KEY_FILE: path.join(projectRoot, 'test', 'fixtures', 'codec-test.key'),
    LABWRIGHT_SECRETS_DIR: path.join(work, 'secrets'),
    LABWRIGHT_METRICS_ADDRESS: 'off',
    LABWRIGHT_WORKFLOW_BUNDLE: bundlePath,
  };
  const compiled: Variant = { name: 'labwright worker, compiled', args: [compiledWorker], env: labEnv };
  const fromSource: Variant = {
    name: 'labwright worker, from source',
    args: ['--import', 'tsx', path.join(projectRoot, 'workers', 'main.ts')],
    env: labEnv,
  };
  const bareEnv = { ...common, LABWRIGHT_WORKFLOW_BUNDLE: bareBundlePath };
  const bareCompiled: Variant = { name: 'bare SDK worker, compiled', args: [compiledBare], env: bareEnv };
  const bareFromSource: Variant = {
    name: 'bare SDK worker, from source',
    args: ['--import', 'tsx', bareSource],
    env: bareEnv,
  };
  /** Each labwright variant beside the bare worker started the same way. */
  const pairs: Array<[Variant, Variant]> = [
    [compiled, bareCompiled],
    [fromSource, bareFromSource],
  ];

  async function startOnce(v: Variant, i: number): Promise<{ firstPollMs: number; idleMiB: number }> {
    const taskQueue = `bench-startup-${v.name.replace(/\W+/g, '-')}-${i}`;
    const t0 = performance.now();
    const child: ChildProcess = spawn(process.execPath, v.args, {
      cwd: projectRoot,
      env: { ...process.env, ...v.env, LABWRIGHT_TASK_QUEUE: taskQueue },
      stdio: ['ignore', 'ignore', 'inherit'],
    });
    const exited = new Promise<never>((_, reject) =>
      child.once('exit', (code) => reject(new Error(`${v.name} exited (${code}) before it polled`))),
    );
    exited.catch(() => undefined);
    try {
      let firstPollMs = NaN;
      while (Number.isNaN(firstPollMs)) {
        const d = await Promise.race([
          connection.workflowService.describeTaskQueue({
            namespace: 'default',
            taskQueue: { name: taskQueue, kind: proto.temporal.api.enums.v1.TaskQueueKind.TASK_QUEUE_KIND_NORMAL },
            taskQueueType: proto.temporal.api.enums.v1.TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
          }),
          exited,
        ]);
        if ((d.pollers ?? []).length > 0) firstPollMs = performance.now() - t0;
        else await sleep(10);
      }
      await sleep(IDLE_MS);
      return { firstPollMs, idleMiB: treeRssMiB(child.pid!) };
    } finally {
      await stopProcess(child, 5000);
    }
  }

  const variants = pairs.flat();
  const results = new Map(variants.map((v) => [v, { poll: [] as number[], rss: [] as number[] }]));
  for (let i = 0; i < STARTS; i++) {
    // Interleaved, so that the machine's load at the time weighs on every variant alike.
    for (const v of variants) {
      const r = await startOnce(v, i);
      results.get(v)!.poll.push(r.firstPollMs);
      results.get(v)!.rss.push(r.idleMiB);
    }
  }
  const rows: Row[] = [];
  for (const [v, baseline] of pairs) {
    const r = results.get(v)!;
    const base = results.get(baseline)!;
    const baselineIs = 'a bare worker of the same SDK (one no-op workflow and activity), started the same way';
    rows.push({
      name: `${v.name}: start → first poll`,
      unit: 'ms',
      ours: r.poll,
      baseline: base.poll,
      baselineIs,
      ...(v === compiled ? { target: { below: 3000 } } : {}),
    });
    rows.push({
      name: `${v.name}: idle RSS`,
      unit: 'MiB',
      ours: r.rss,
      baseline: base.rss,
      baselineIs,
      ...(v === compiled ? { target: { below: 250 } } : {}),
    });
  }
  const title = `worker start-up (${STARTS} starts each, prebuilt bundle, idle RSS after ${IDLE_MS / 1000} s)`;
  const notes = [
    "`compiled` is what the worker image runs, `node dist/worker.mjs` (workers/build.ts: the project's modules in one file, the packages from node_modules); `from source` is what `npm start` runs, `node --import tsx workers/main.ts`, which transpiles each of the project's modules as it loads it. Each is compared with the bare worker started the same way. The targets are the deployed worker's, so the compiled one's.",
  ];
  await publish('worker-startup', title, rows, notes);
}

runBench(main, cleanups);
