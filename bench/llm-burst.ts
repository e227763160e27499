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
import { LlmBurstClient } from '../clients/llm-burst-client.js';
import { shutdownNowSignal, statusQuery, TAG_POOL, type LlmBurstInput } from '../common/llm-burst.js';
import { MOTO_CREDENTIALS } from '../sim/ec2.js';
import type { FaultProxy } from '../test/harness/fault-proxy.js';
import { startBurstLab } from './burst-lab.js';
import { publish, runBench, type Row } from './report.js';

process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED = 'true';

const { values } = parseArgs({ options: { cold: { type: 'string' }, warm: { type: 'string' } } });
const COLD_RUNS = Number(values.cold ?? 20);
const WARM_CALLS = Number(values.warm ?? 20_000);
const TASK_QUEUE = 'bench-llm-burst';
const REGION = 'us-east-1';

const cleanups: Array<() => Promise<unknown>> = [];
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

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
  const { client, faults, model } = await startBurstLab(cleanups, {
    taskQueue: TASK_QUEUE,
    region: REGION,
    pollMs: 100,
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

  const baselineIs = 'a proxy that calls EC2 itself and keeps its idle timer in memory (same moto, same proxy)';
  const rows: Row[] = [
    {
      name: 'cold → StartInstances',
      unit: 'ms',
      ours: cold.map((c) => c.toStart),
      baseline: baseCold.map((c) => c.toStart),
      baselineIs,
      target: { below: 100 },
    },
    {
      name: 'cold → ready',
      unit: 'ms',
      ours: cold.map((c) => c.toReady),
      baseline: baseCold.map((c) => c.toReady),
      baselineIs,
      target: { below: 150 },
    },
    { name: 'warm, per request', unit: 'µs', ours: warm, baseline: baseWarm, baselineIs },
  ];
  const title = `llm-burst (${COLD_RUNS} cold starts from stopped, ${WARM_CALLS} warm calls; moto's own time subtracted)`;
  const notes = [
    `warm path: ${stats.warmHits} cache hits, ${stats.demandSignals} demand signals, ${stats.acquires} acquires in all`,
  ];
  await publish('llm-burst', title, rows, notes);
  base.ec2.destroy();
}

runBench(main, cleanups);
