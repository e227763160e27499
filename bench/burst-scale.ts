/**
 * Bench: many burst pools on one worker. `--pools` llmBurst workflows (500 by default), each with
 * its own instance in moto, all on one worker process (the EC2 activities, the prebuilt bundle):
 *
 *   idle stop lateness:  how long after its idle deadline (the workflow's own `idleDeadline`)
 *                        each pool's StopInstances reached EC2; target: within 2 s for all,
 *                        against in-memory timers in one process (a proxy's idle timers) for as
 *                        many pools;
 *   worker CPU and RSS:  the worker process's CPU (% of one core) and resident memory over a
 *                        window, while all pools idle and under a demand storm (every pool
 *                        signalled `demand` every `--storm-interval` ms), against the same worker
 *                        before any workflow ran.
 *
 * On the dev server (SQLite, one history shard: what `npm start` runs) by default; `--server
 * production` runs the same on the production topology (temporal-server on PostgreSQL with
 * deploy/temporal's settings, as docker-compose.yml runs it), in a section of its own.
 *
 * Run: npx tsx bench/burst-scale.ts [--pools 500] [--idle 60] [--window 10] [--storm-interval 1000] [--acquirers 10]
 *      [--server dev|production]
 * Not a test: numbers depend on the machine; nothing is asserted.
 */
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import type { WorkflowHandle } from '@temporalio/client';
import { tsToMs } from '@temporalio/common/lib/time.js';
import { BurstUnavailableError, LlmBurstClient } from '../clients/llm-burst-client.js';
import {
  demandSignal,
  holdSignal,
  LLM_BURST_WORKFLOW,
  statusQuery,
  unholdSignal,
  type LlmBurstInput,
} from '../common/llm-burst.js';
import { EC2_DESCRIBE_RATE } from '../test/harness/fault-proxy.js';
import { cpuSeconds, threadCpuSeconds, treeCpuSeconds, treeRssMiB } from './proc.js';
import { startBurstLab, type ServerKind } from './burst-lab.js';
import { publish, runBench, type Row } from './report.js';

const { values } = parseArgs({
  options: {
    pools: { type: 'string' },
    idle: { type: 'string' },
    window: { type: 'string' },
    'storm-interval': { type: 'string' },
    acquirers: { type: 'string' },
    server: { type: 'string' },
  },
});
const POOLS = Number(values.pools ?? 500);
const IDLE_S = Number(values.idle ?? 60);
const WINDOW_MS = Number(values.window ?? 10) * 1000;
const STORM_INTERVAL_MS = Number(values['storm-interval'] ?? 1000);
/** Pools acquired at once while they start (the proxy's cold requests in flight). */
const ACQUIRERS = Number(values.acquirers ?? 10);
const SERVER = (values.server ?? 'dev') as ServerKind;
if (SERVER !== 'dev' && SERVER !== 'production') throw new Error(`--server: dev or production, not ${SERVER}`);
const TASK_QUEUE = 'bench-burst-scale';
const REGION = 'us-east-1';
const cleanups: Array<() => Promise<unknown>> = [];
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** CPU (% of one core, one sample per second) and RSS (MiB, one per second) of `pid` while `during` runs. */
async function sample(pid: number, during: Promise<unknown> | undefined): Promise<{ cpu: number[]; rss: number[] }> {
  const cpu: number[] = [];
  const rss: number[] = [];
  const end = performance.now() + WINDOW_MS;
  let [c0, t0] = [cpuSeconds(pid), performance.now()];
  while (performance.now() < end) {
    await sleep(1000);
    const [c1, t1] = [cpuSeconds(pid), performance.now()];
    cpu.push(((c1 - c0) / ((t1 - t0) / 1000)) * 100);
    rss.push(treeRssMiB(pid));
    [c0, t0] = [c1, t1];
  }
  await during;
  return { cpu, rss };
}

/** Runs `fn` over `items`, at most `limit` at a time. */
async function pooled<T>(items: T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  const queue = [...items];
  await Promise.all(
    Array.from({ length: limit }, async () => {
      for (let item = queue.shift(); item !== undefined; item = queue.shift()) await fn(item);
    }),
  );
}

/**
 * Where each pool's idle stop spent its lateness, from its history: the server firing the idle
 * timer, the workflow task it scheduled reaching the worker, that task scheduling the stop, the
 * activity reaching a worker slot, and the activity reaching EC2 (its look first, then StopInstances).
 */
async function stopStages(
  handles: WorkflowHandle[],
  deadlines: Map<string, number>,
  stopAt: Map<string, number>,
): Promise<Row[]> {
  const stage = {
    timer: [] as number[],
    queued: [] as number[],
    schedule: [] as number[],
    slot: [] as number[],
    ec2: [] as number[],
  };
  await pooled(handles, 25, async (h) => {
    const pool = h.workflowId.replace('llm-burst/', '');
    const [deadline, stoppedAt] = [deadlines.get(pool), stopAt.get(pool)];
    if (deadline === undefined || stoppedAt === undefined) return;
    const events = (await h.fetchHistory()).events ?? [];
    const at = (e: (typeof events)[number]) => tsToMs(e.eventTime);
    const scheduled = events.findLastIndex(
      (e) => e.activityTaskScheduledEventAttributes?.activityType?.name === 'ec2StopInstance',
    );
    const fired = events.slice(0, scheduled).findLastIndex((e) => e.timerFiredEventAttributes);
    const started = events.findIndex(
      (e) =>
        e.activityTaskStartedEventAttributes?.scheduledEventId?.toString() === events[scheduled]?.eventId?.toString(),
    );
    const taskStarted = events.findIndex((e, i) => i > fired && e.workflowTaskStartedEventAttributes);
    if (scheduled < 0 || fired < 0 || started < 0 || taskStarted < 0) return;
    stage.timer.push(at(events[fired]!) - deadline);
    stage.queued.push(at(events[taskStarted]!) - at(events[fired]!));
    stage.schedule.push(at(events[scheduled]!) - at(events[taskStarted]!));
    stage.slot.push(at(events[started]!) - at(events[scheduled]!));
    stage.ec2.push(stoppedAt - at(events[started]!));
  });
  const row = (name: string, ours: number[]): Row => ({ name: `  of which ${name}`, unit: 'ms', ours, baseline: [] });
  return [
    row('idle timer fired (server)', stage.timer),
    row('its workflow task reached the worker', stage.queued),
    row('stop scheduled (workflow task)', stage.schedule),
    row('stop activity started (worker slot)', stage.slot),
    row('StopInstances at EC2 (activity)', stage.ec2),
  ];
}

async function main(): Promise<void> {
  const { client, server, faults, worker } = await startBurstLab(cleanups, {
    taskQueue: TASK_QUEUE,
    region: REGION,
    pollMs: 1000,
    server: SERVER,
  });
  const pid = worker.pid!;
  // As strict as EC2: hundreds of pools on one account share its DescribeInstances rate.
  faults.setRequestRate('DescribeInstances', EC2_DESCRIBE_RATE);
  const names = Array.from({ length: POOLS }, (_, i) => `scale-${String(i).padStart(3, '0')}`);
  const inputOf = (name: string): LlmBurstInput => ({
    pool: {
      name,
      region: REGION,
      instanceTypes: ['g5.xlarge'],
      market: 'on-demand',
      launchTemplate: { name: 'llm-gpu-worker' },
      hourlyPriceUsd: 1.006,
    },
    idleTimeout: `${IDLE_S}s`,
    reconcileEvery: '1h',
  });
  const handles = names.map((n) => client.workflow.getHandle(`llm-burst/${n}`));
  cleanups.unshift(() => Promise.all(handles.map((h) => h.terminate('bench over').catch(() => undefined))));

  console.log('worker with no workflows…');
  const empty = await sample(pid, undefined);

  console.log(`acquiring ${POOLS} pools…`);
  const t0 = performance.now();
  const instanceOf = new Map<string, string>();
  const burst = new LlmBurstClient({
    client,
    taskQueue: TASK_QUEUE,
    pools: Object.fromEntries(names.map((n) => [n, inputOf(n)])),
  });
  // The workflows first, then one acquire each (the proxy's cold path): on a loaded server an
  // update-with-start that times out is retried by the SDK and refused (StartDeduped).
  await pooled(names, 10, async (name) => {
    await client.workflow.start(LLM_BURST_WORKFLOW, {
      workflowId: `llm-burst/${name}`,
      taskQueue: TASK_QUEUE,
      args: [inputOf(name)],
      workflowIdConflictPolicy: 'USE_EXISTING',
    });
  });
  let refusals = 0;
  await pooled(names, ACQUIRERS, async (name) => {
    for (;;) {
      try {
        const r = await burst.endpoint(name);
        // Held up until every pool is: starting them all takes longer than an idle timeout.
        await client.workflow.getHandle(`llm-burst/${name}`).signal(holdSignal);
        instanceOf.set(r.instanceId, name);
        if (instanceOf.size % 50 === 0) {
          console.log(`  ${instanceOf.size} ready after ${((performance.now() - t0) / 1000).toFixed(1)} s`);
        }
        return;
      } catch (err) {
        if (!(err instanceof BurstUnavailableError) || ++refusals > POOLS) throw err;
        await sleep(5000); // the client's failure cache
      }
    }
  });
  const acquireS = (performance.now() - t0) / 1000;
  console.log(`${POOLS} pools ready in ${acquireS.toFixed(1)} s`);
  await pooled(handles, 25, (h) => h.signal(unholdSignal));

  console.log('all idle…');
  const idle = await sample(pid, undefined);

  console.log(`demand storm: every pool signalled every ${STORM_INTERVAL_MS} ms…`);
  let storming = true;
  let signals = 0;
  const storm = Promise.all(
    handles.map(async (h, i) => {
      await sleep((i * STORM_INTERVAL_MS) / POOLS); // spread evenly over the interval
      while (storming) {
        const next = performance.now() + STORM_INTERVAL_MS;
        await h.signal(demandSignal);
        signals++;
        await sleep(Math.max(0, next - performance.now()));
      }
    }),
  );
  const stormWindow = sample(pid, undefined);
  const storm1 = await stormWindow;
  storming = false;
  await storm;
  const stormOver = performance.now();
  console.log(`${signals} demand signals in the storm`);

  // Each pool's idle deadline after the storm's last signal, then its StopInstances at EC2.
  const deadlines = new Map<string, number>();
  await pooled(handles, 25, async (h) => {
    const s = await h.query(statusQuery);
    if (s.idleDeadline) deadlines.set(h.workflowId.replace('llm-burst/', ''), Date.parse(s.idleDeadline));
  });
  // Baseline: the same deadlines kept by in-memory timers in this process.
  const timerLateness: number[] = [];
  const timers = [...deadlines.values()].map(
    (d) =>
      new Promise<void>((resolve) =>
        setTimeout(
          () => {
            timerLateness.push(Date.now() - d);
            resolve();
          },
          Math.max(0, d - Date.now()),
        ),
      ),
  );
  const last = Math.max(...deadlines.values());
  console.log(
    `waiting for ${deadlines.size} idle stops (the last due in ${((last - Date.now()) / 1000).toFixed(0)} s)…`,
  );
  await sleep(Math.max(0, Math.min(...deadlines.values()) - Date.now()));
  const busySince = performance.now();
  const busy0 = [pid, ...server.processes.map((p) => p.pid)].map(treeCpuSeconds);
  const threads0 = threadCpuSeconds(pid);
  const stopAt = new Map<string, number>();
  while (Date.now() < last + 30_000 && stopAt.size < deadlines.size) {
    for (const c of faults.calls) {
      if (c.action !== 'StopInstances' || c.startedAt < stormOver) continue;
      for (const [key, id] of c.params) {
        const pool = key.startsWith('InstanceId.') ? instanceOf.get(id) : undefined;
        if (pool && !stopAt.has(pool)) stopAt.set(pool, performance.timeOrigin + c.startedAt);
      }
    }
    await sleep(500);
  }
  const busyS = (performance.now() - busySince) / 1000;
  const [workerCpu, ...serverCpu] = [pid, ...server.processes.map((p) => p.pid)].map(
    (p, i) => ((treeCpuSeconds(p) - busy0[i]!) / busyS) * 100,
  );
  // A thread at 100 % is a limit the process's average hides (the worker runs workflow code on one).
  const busiestThreads = [...threadCpuSeconds(pid)]
    .map(([tid, t]) => ({ name: t.name, percent: ((t.seconds - (threads0.get(tid)?.seconds ?? 0)) / busyS) * 100 }))
    .sort((a, b) => b.percent - a.percent)
    .slice(0, 4);
  await Promise.all(timers);
  const lateness = [...deadlines].map(([pool, d]) => (stopAt.has(pool) ? stopAt.get(pool)! - d : NaN));
  const missing = lateness.filter(Number.isNaN).length;
  const stages = await stopStages(handles, deadlines, stopAt);

  const rows: Row[] = [
    {
      name: `idle stop lateness, ${deadlines.size} pools`,
      unit: 'ms',
      ours: lateness.filter((l) => !Number.isNaN(l)),
      baseline: timerLateness,
      baselineIs: `${deadlines.size} in-memory timers in one Node process (a proxy's idle timers)`,
      target: { below: 2000 },
    },
    ...stages,
    {
      name: 'worker CPU, all idle',
      unit: '%',
      ours: idle.cpu,
      baseline: empty.cpu,
      baselineIs: 'the same worker before any workflow ran (per-second samples)',
    },
    { name: 'worker CPU, demand storm', unit: '%', ours: storm1.cpu, baseline: empty.cpu },
    { name: 'worker RSS, all idle', unit: 'MiB', ours: idle.rss, baseline: empty.rss },
    { name: 'worker RSS, demand storm', unit: 'MiB', ours: storm1.rss, baseline: empty.rss },
  ];
  const on = SERVER === 'dev' ? '' : ', production Temporal server on PostgreSQL';
  const title = `burst pools at scale (${POOLS} llmBurst workflows on one worker${on}, idleTimeout ${IDLE_S} s, ${WINDOW_MS / 1000} s windows)`;
  const byAction = new Map<string, { calls: number; overRate: number }>();
  for (const c of faults.calls) {
    const a = byAction.get(c.action) ?? { calls: 0, overRate: 0 };
    a.calls++;
    if (c.rateLimited) a.overRate++;
    byAction.set(c.action, a);
  }
  const notes = [
    `${POOLS} pools acquired (started, running, model server up) in ${acquireS.toFixed(0)} s, ${ACQUIRERS} at a time`,
    `${refusals} acquires refused and retried while the pools started`,
    `EC2 calls, at EC2's DescribeInstances rate (${EC2_DESCRIBE_RATE.bucket} at once, ${EC2_DESCRIBE_RATE.refillPerSecond}/s): ${[
      ...byAction,
    ]
      .map(([action, a]) => `${action} ${a.calls}${a.overRate ? ` (${a.overRate} over the rate, retried)` : ''}`)
      .join(', ')}`,
    `${signals} demand signals in the storm (${((signals / WINDOW_MS) * 1000).toFixed(0)}/s)`,
    `from the first idle deadline to the last stop: worker ${workerCpu!.toFixed(0)} % of a core, ${server.processes
      .map((p, i) => `${p.name} ${serverCpu[i]!.toFixed(0)} %`)
      .join(', ')}; the worker's busiest threads ${busiestThreads
      .map((t) => `${t.name} ${t.percent.toFixed(0)} %`)
      .join(', ')}`,
    `${POOLS - missing} of ${deadlines.size} pools stopped within 30 s after the last deadline${missing ? `; ${missing} did not` : ''}`,
  ];
  await publish(SERVER === 'dev' ? 'burst-scale' : 'burst-scale-production', title, rows, notes);
}

runBench(main, cleanups);
