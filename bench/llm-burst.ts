/**
 * Bench: what the durable burst pool costs over a proxy that drives EC2 itself with an in-memory
 * idle timer. Starts its own peers (Temporal dev server, moto behind the recording proxy, a fake
 * model server, a worker in a child process) and prints p50, p99 and the ratio to the baseline for
 *
 *   cold → StartInstances: first request until the StartInstances call reaches EC2,
 *   cold → ready:          first request until the endpoint is handed out,
 *      both less the time EC2 itself (moto) spent answering, i.e. orchestration overhead;
 *   warm:                  per-request overhead of the client once the endpoint is cached.
 *
 * Run: npx tsx bench/llm-burst.ts [--cold 20] [--warm 20000]
 * Not a test: numbers depend on the machine; nothing is asserted.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import {
  DescribeInstanceStatusCommand,
  DescribeInstancesCommand,
  EC2Client,
  StartInstancesCommand,
  StopInstancesCommand,
  RunInstancesCommand,
} from '@aws-sdk/client-ec2';
import { Client, Connection } from '@temporalio/client';
import { bundleWorkflowCode } from '@temporalio/worker';
import { LlmBurstClient } from '../clients/llm-burst-client.js';
import { shutdownNowSignal, statusQuery, TAG_POOL, type LlmBurstInput } from '../common/llm-burst.js';
import { AesGcmCodec, keyIdOf, parseKey } from '../lib/codec.js';
import { startDevServer } from '../sim/dev-server.js';
import { quietLogger } from '../lib/log.js';
import { cacheDir, projectRoot } from '../lib/paths.js';
import { stopProcess } from '../lib/processes.js';
import { ec2Env, MOTO_CREDENTIALS, prepareBurstPool, startFakeModelServer, startMotoServer } from '../sim/ec2.js';
import { startFaultProxy, type FaultProxy } from '../test/harness/fault-proxy.js';

process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED = 'true';

const { values } = parseArgs({ options: { cold: { type: 'string' }, warm: { type: 'string' } } });
const COLD_RUNS = Number(values.cold ?? 20);
const WARM_CALLS = Number(values.warm ?? 20_000);
const TASK_QUEUE = 'bench-llm-burst';
const REGION = 'us-east-1';

const cleanups: Array<() => Promise<unknown>> = [];
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function pct(samples: number[], p: number): number {
  const sorted = [...samples].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))] ?? NaN;
}

/** EC2's own time between two instants: the recording proxy's time for each call that began in it. */
function ec2Time(faults: FaultProxy, from: number, to: number): number {
  return faults.calls
    .filter((c) => c.startedAt >= from && c.startedAt < to)
    .reduce((sum, c) => sum + Math.min(c.endedAt, to) - c.startedAt, 0);
}

function startInstancesAt(faults: FaultProxy, from: number): number {
  const call = faults.calls.find((c) => c.action === 'StartInstances' && c.startedAt >= from);
  if (!call) throw new Error('no StartInstances call recorded');
  return call.startedAt;
}

interface ColdSample {
  toStart: number;
  toReady: number;
}

/** The baseline: a proxy that calls EC2 itself and keeps its idle timer in memory. */
function baselineProxy(endpoint: string, pool: string, modelUrl: string) {
  const ec2 = new EC2Client({ region: REGION, endpoint, credentials: MOTO_CREDENTIALS, maxAttempts: 1 });
  let ready: { endpoint: string; instanceId: string } | undefined;
  let idleTimer: NodeJS.Timeout | undefined;
  const touch = (): void => {
    clearTimeout(idleTimer);
    idleTimer = setTimeout(() => void stop(), 15 * 60_000);
  };
  async function find() {
    const out = await ec2.send(
      new DescribeInstancesCommand({
        Filters: [
          { Name: `tag:${TAG_POOL}`, Values: [pool] },
          { Name: 'instance-state-name', Values: ['pending', 'running', 'stopping', 'stopped'] },
        ],
      }),
    );
    return out.Reservations?.flatMap((r) => r.Instances ?? [])[0];
  }
  async function stop(): Promise<void> {
    clearTimeout(idleTimer);
    if (ready) await ec2.send(new StopInstancesCommand({ InstanceIds: [ready.instanceId] }));
    ready = undefined;
  }
  return {
    ec2,
    stop,
    async endpoint(): Promise<string> {
      if (ready) {
        touch();
        return ready.endpoint;
      }
      let instance = await find();
      if (!instance) {
        const out = await ec2.send(
          new RunInstancesCommand({
            MinCount: 1,
            MaxCount: 1,
            LaunchTemplate: { LaunchTemplateName: 'llm-gpu-worker', Version: '$Latest' },
            TagSpecifications: [{ ResourceType: 'instance', Tags: [{ Key: TAG_POOL, Value: pool }] }],
          }),
        );
        instance = out.Instances![0]!;
      } else if (instance.State?.Name === 'stopped') {
        await ec2.send(new StartInstancesCommand({ InstanceIds: [instance.InstanceId!] }));
      }
      const id = instance.InstanceId!;
      for (;;) {
        const d = await ec2.send(new DescribeInstancesCommand({ InstanceIds: [id] }));
        const i = d.Reservations?.[0]?.Instances?.[0];
        if (i?.State?.Name === 'running') {
          const s = await ec2.send(new DescribeInstanceStatusCommand({ InstanceIds: [id], IncludeAllInstances: true }));
          const st = s.InstanceStatuses?.[0];
          if (st?.InstanceStatus?.Status === 'ok' && st.SystemStatus?.Status === 'ok') {
            const health = await fetch(`${modelUrl}/api/tags`);
            await health.body?.cancel();
            if (health.ok) {
              ready = { endpoint: `http://${i.PrivateIpAddress}:11434`, instanceId: id };
              touch();
              return ready.endpoint;
            }
          }
        }
        await sleep(100);
      }
    },
  };
}

async function main(): Promise<void> {
  const work = await fs.mkdtemp(path.join(os.tmpdir(), 'labwright-bench-'));
  cleanups.push(() => fs.rm(work, { recursive: true, force: true }));
  console.log('starting peers: Temporal dev server, moto, fake model server, worker…');
  const server = await startDevServer({ logFile: path.join(cacheDir, 'bench-logs', 'temporal.log') });
  cleanups.push(() => server.stop());
  const moto = await startMotoServer({ logFile: path.join(cacheDir, 'bench-logs', 'moto.log') });
  cleanups.push(() => moto.stop());
  const faults = await startFaultProxy(moto.endpoint);
  cleanups.push(() => faults.stop());
  const model = await startFakeModelServer({ name: 'bench' });
  cleanups.push(() => model.stop());
  await prepareBurstPool(moto.endpoint, {
    region: REGION,
    instanceTypes: ['g5.xlarge'],
    launchTemplate: { name: 'llm-gpu-worker' },
  });

  const bundle = await bundleWorkflowCode({
    workflowsPath: path.join(projectRoot, 'workflows', 'index.ts'),
    logger: quietLogger(['error']),
  });
  const bundlePath = path.join(work, 'workflows.js');
  await fs.writeFile(bundlePath, bundle.code);
  const worker: ChildProcess = spawn(
    process.execPath,
    ['--import', 'tsx', path.join(projectRoot, 'test', 'harness', 'ec2-worker.ts')],
    {
      cwd: projectRoot,
      env: {
        ...process.env,
        ...ec2Env(faults.url, model.port),
        TEMPORAL_ADDRESS: server.address,
        LABWRIGHT_TASK_QUEUE: TASK_QUEUE,
        LABWRIGHT_WORKFLOW_BUNDLE: bundlePath,
        LABWRIGHT_EC2_POLL_MS: '100',
      },
      stdio: ['ignore', 'pipe', 'inherit'],
    },
  );
  cleanups.unshift(() => stopProcess(worker, 3000));
  await new Promise<void>((resolve, reject) => {
    worker.stdout!.on('data', (d: Buffer) => d.toString().includes('worker ready') && resolve());
    worker.once('exit', (code) => reject(new Error(`worker exited (${code})`)));
  });

  const key = parseKey(await fs.readFile(path.join(projectRoot, 'test', 'fixtures', 'codec-test.key'), 'utf8'), 'key');
  const connection = await Connection.connect({ address: server.address });
  cleanups.unshift(() => connection.close());
  const client = new Client({
    connection,
    dataConverter: { payloadCodecs: [new AesGcmCodec(new Map([[keyIdOf(key), key]]))] },
  });

  const poolName = 'g5-llm';
  const input: LlmBurstInput = {
    pool: {
      name: poolName,
      region: REGION,
      instanceTypes: ['g5.xlarge'],
      market: 'on-demand',
      launchTemplate: { name: 'llm-gpu-worker' },
      hourlyPriceUsd: 1.006,
    },
    idleTimeout: '15m',
  };
  const burst = new LlmBurstClient({ client, taskQueue: TASK_QUEUE, pools: { [poolName]: input } });
  const handle = client.workflow.getHandle(`llm-burst/${poolName}`);
  cleanups.unshift(() => handle.terminate('bench over').catch(() => undefined));

  // ---------------------------------------------------------------- cold path, labwright
  await burst.endpoint(poolName); // launches the instance once; every run below starts it from stopped
  const cold: ColdSample[] = [];
  for (let i = 0; i < COLD_RUNS; i++) {
    await handle.signal(shutdownNowSignal, 'bench');
    for (;;) {
      if ((await handle.query(statusQuery)).state === 'stopped') break;
      await sleep(20);
    }
    burst.invalidate(poolName);
    const t0 = performance.now();
    await burst.endpoint(poolName);
    const t2 = performance.now();
    const t1 = startInstancesAt(faults, t0);
    cold.push({ toStart: t1 - t0 - ec2Time(faults, t0, t1), toReady: t2 - t0 - ec2Time(faults, t0, t2) });
  }

  // ---------------------------------------------------------------- cold path, baseline
  const basePool = 'baseline';
  const base = baselineProxy(faults.url, basePool, model.url);
  await base.endpoint();
  const baseCold: ColdSample[] = [];
  for (let i = 0; i < COLD_RUNS; i++) {
    await base.stop();
    const t0 = performance.now();
    await base.endpoint();
    const t2 = performance.now();
    const t1 = startInstancesAt(faults, t0);
    baseCold.push({ toStart: t1 - t0 - ec2Time(faults, t0, t1), toReady: t2 - t0 - ec2Time(faults, t0, t2) });
  }

  // ---------------------------------------------------------------- warm path
  await burst.endpoint(poolName);
  const warm: number[] = [];
  const baseWarm: number[] = [];
  for (let i = 0; i < WARM_CALLS; i++) {
    let t = performance.now();
    await burst.endpoint(poolName);
    warm.push((performance.now() - t) * 1000);
    t = performance.now();
    await base.endpoint();
    baseWarm.push((performance.now() - t) * 1000);
  }
  const stats = burst.stats(poolName);

  const row = (name: string, unit: string, ours: number[], theirs: number[]): string => {
    const [o50, o99, b50, b99] = [pct(ours, 50), pct(ours, 99), pct(theirs, 50), pct(theirs, 99)];
    const f = (n: number) => n.toFixed(unit === 'ms' ? 1 : 2).padStart(9);
    return `${name.padEnd(26)} ${f(o50)} ${f(o99)}   ${f(b50)} ${f(b99)}   ${(o50 / b50).toFixed(1).padStart(6)}x ${(o99 / b99).toFixed(1).padStart(6)}x  ${unit}`;
  };
  console.log(`
llm-burst bench (${COLD_RUNS} cold starts from stopped, ${WARM_CALLS} warm calls; moto's own time subtracted)
${''.padEnd(26)} ${'labwright'.padStart(19)}   ${'baseline'.padStart(19)}   ${'ratio'.padStart(14)}
${'path'.padEnd(26)} ${'p50'.padStart(9)} ${'p99'.padStart(9)}   ${'p50'.padStart(9)} ${'p99'.padStart(9)}   ${'p50'.padStart(7)} ${'p99'.padStart(7)}
${row(
  'cold → StartInstances',
  'ms',
  cold.map((c) => c.toStart),
  baseCold.map((c) => c.toStart),
)}
${row(
  'cold → ready',
  'ms',
  cold.map((c) => c.toReady),
  baseCold.map((c) => c.toReady),
)}
${row('warm, per request', 'µs', warm, baseWarm)}
warm path: ${stats.warmHits} cache hits, ${stats.demandSignals} demand signals, ${stats.acquires} acquires in all`);
  base.ec2.destroy();
}

main()
  .catch((err: unknown) => {
    console.error(err);
    process.exitCode = 1;
  })
  .finally(async () => {
    for (const c of cleanups) await c().catch(() => undefined);
  });
