// Every input in docs/examples/, as-is, against the simulated lab `npm start` runs (sim/index.ts
// with all its peers) and the worker's own activity registry: each run completes, or reaches the
// state it is meant to wait in (a restore waits for approval; the burst pool hands out an
// endpoint). They run in the order a newcomer would: the cluster before its GPU worker, on a
// Temporal dev server of their own, so each runs under the very workflow ID `labwright start`
// derives (talosBootstrap runs only as talos-bootstrap/<cluster>, which other tests use too).
// The worker exports Prometheus metrics as workers/main.ts sets it up: after the runs, the Grafana
// dashboard's queries are checked against what it (and the LLM proxy) really export.
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { WorkflowFailedError, type WorkflowHandle } from '@temporalio/client';
import { NativeConnection } from '@temporalio/worker';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { workflowIdFor } from '../clients/start.js';
import type { DrReport, DrStatus } from '../common/dr-restore.js';
import type { FluxBootstrapResult } from '../common/flux-bootstrap.js';
import type { GpuNodeJoinResult } from '../common/gpu-node-join.js';
import { acquireUpdate, parseAddressMap, type LlmBurstInput } from '../common/llm-burst.js';
import { dayOf } from '../common/llm-burst-pool.js';
import { METRICS } from '../common/metrics.js';
import { LlmBurstClient } from '../clients/llm-burst-client.js';
import { startLlmProxy } from '../clients/llm-proxy.js';
import { freePort } from '../lib/processes.js';
import type { PackerImageBuildResult } from '../common/packer-image-build.js';
import type { TalosBootstrapResult } from '../common/talos.js';
import { startDevServer, type DevServer } from '../sim/dev-server.js';
import { projectRoot } from '../lib/paths.js';
import { testLog } from './harness/logs.js';
import { SecretStore } from '../lib/secrets.js';
import { SIM_REVISION } from '../sim/flux-dr.js';
import { startSimulatedLab, type SimulatedLab } from '../sim/index.js';
import { SIMULATED_PEERS } from '../sim/peers.js';
import { createLabActivities } from '../workers/activities.js';
import { dashboardExprs, labelsOf, metricNamesOf, readDashboard, sampledNames, samples } from './harness/metrics.js';
import { installMetricsRuntime, testClient, withWorker } from './harness/temporal.js';

const EXAMPLES = path.join(projectRoot, 'docs', 'examples');

let dir: string;
let server: DevServer;
let lab: SimulatedLab;
let activities: Record<string, (...args: never[]) => Promise<unknown>>;
let metricsUrl: string;
/** Keeps the runtime (and so its metrics) alive between the tests' workers. */
let runtimeHold: NativeConnection | undefined;

beforeAll(async () => {
  const metricsAddress = `127.0.0.1:${await freePort()}`;
  installMetricsRuntime(metricsAddress);
  metricsUrl = `http://${metricsAddress}/metrics`;
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'labwright-examples-'));
  server = await startDevServer({ logFile: testLog(`temporal-examples-${process.pid}.log`) });
  runtimeHold = await NativeConnection.connect({ address: server.address });
  lab = await startSimulatedLab(path.join(dir, 'sim'), SIMULATED_PEERS);
  const env = {
    ...process.env,
    ...lab.env,
    LABWRIGHT_DR_REPORTS_DIR: path.join(dir, 'reports'),
    LABWRIGHT_PACKER_WORKDIR: path.join(dir, 'packer'),
  };
  activities = await createLabActivities({
    inventory: lab.inventory,
    secrets: new SecretStore(lab.env.LABWRIGHT_SECRETS_DIR!),
    env,
  });
}, 300_000);
afterAll(async () => {
  await runtimeHold?.close();
  await lab?.stop();
  await server?.stop();
  await fs.rm(dir, { recursive: true, force: true });
});

const example = async (file: string): Promise<unknown> =>
  JSON.parse(await fs.readFile(path.join(EXAMPLES, file), 'utf8')) as unknown;

/** Starts `type` with the example's input as-is, under the ID `labwright start` derives. */
async function start(type: string, file: string, taskQueue: string): Promise<WorkflowHandle> {
  const input = await example(file);
  const client = await testClient(undefined, server.address);
  return client.workflow.start(type, {
    taskQueue,
    workflowId: workflowIdFor(type, input),
    args: [input],
  });
}

describe('docs/examples against the simulated lab', () => {
  it('holds an input for every workflow the worker runs', async () => {
    const files = (await fs.readdir(EXAMPLES)).filter((f) => f.endsWith('.json')).sort();
    expect(files).toEqual([
      'dr-drill.json',
      'dr-restore.json',
      'flux-bootstrap.json',
      'gpu-node-join.json',
      'llm-burst.json',
      'packer-image-build.json',
      'talos-bootstrap.json',
    ]);
  });

  it('runs every example: each completes, the restore waits for approval, the burst pool acquires', async () => {
    await withWorker({ activities, address: server.address }, async ({ taskQueue }) => {
      const talos = (await (
        await start('talosBootstrap', 'talos-bootstrap.json', taskQueue)
      ).result()) as TalosBootstrapResult;
      expect(talos.summary).toMatch(/^cluster home is healthy/);

      const gpu = (await (await start('gpuNodeJoin', 'gpu-node-join.json', taskQueue)).result()) as GpuNodeJoinResult;
      expect(gpu.node).toBe('talos-gpu-a5000');

      const packer = (await (
        await start('packerImageBuild', 'packer-image-build.json', taskQueue)
      ).result()) as PackerImageBuildResult;
      expect(packer.built).toBe(true);
      expect(packer.canary?.vmid).toBeDefined();

      const flux = (await (
        await start('fluxBootstrap', 'flux-bootstrap.json', taskQueue)
      ).result()) as FluxBootstrapResult;
      expect(flux.revision).toBe(SIM_REVISION);

      const drill = (await (await start('drRestore', 'dr-drill.json', taskQueue)).result()) as DrReport;
      expect(drill.ok).toBe(true);

      const restore = await start('drRestore', 'dr-restore.json', taskQueue);
      await expect
        .poll(async () => (await restore.query<DrStatus>('drStatus')).phase, { timeout: 60_000, interval: 500 })
        .toBe('awaiting-approval');
      await restore.terminate('example test: the approval is the operator’s');

      const burst = await start('llmBurst', 'llm-burst.json', taskQueue);
      const acquired = await burst.executeUpdate(acquireUpdate, { args: [{ deadlineSeconds: 120 }] });
      expect(acquired.pool).toBe('g5-llm');
      expect(acquired.endpoint).toMatch(/^http:\/\//);
      await burst.terminate('example test done');
    });
  }, 600_000);
});

describe('the Grafana dashboard (deploy/monitoring/grafana/dashboards/labwright.json)', () => {
  it('queries only metrics the worker and the LLM proxy export after real runs, with the labels it filters by', async () => {
    const client = await testClient(undefined, server.address);
    const input = (await example('llm-burst.json')) as LlmBurstInput;
    const pool = input.pool.name;
    let exported = '';
    await withWorker({ activities, address: server.address }, async ({ taskQueue }) => {
      // The proxy's cold path: the local server is down, so the request starts the pool and waits.
      const burst = new LlmBurstClient({ client, taskQueue, pools: { [pool]: input }, acquireDeadlineSeconds: 120 });
      const proxy = await startLlmProxy({
        localUrl: `http://127.0.0.1:${await freePort()}`,
        pool,
        burst,
        resolveAddress: parseAddressMap(lab.env.LABWRIGHT_EC2_ADDRESS_MAP!),
      });
      try {
        const answer = await fetch(`${proxy.url}/api/generate`, {
          method: 'POST',
          body: JSON.stringify({ model: 'llama3.1:8b', prompt: 'hi', stream: false }),
        });
        expect(answer.status).toBe(200);
        proxyMetrics = await (await fetch(`${proxy.url}/metrics`)).text();
      } finally {
        await proxy.stop();
        await client.workflow.getHandle(`llm-burst/${pool}`).terminate('dashboard test done');
      }

      // A pool that spent its daily budget today refuses an acquire.
      const spent = { ...input.pool, name: `${pool}-spent` };
      const now = Date.now();
      const carried = {
        ...{ state: 'stopped', since: now, held: false, runSeconds: 0, totalSeconds: 36_000, launches: 1, events: [] },
        today: { day: dayOf(now), seconds: 36_000, usd: spent.dailyBudgetUsd! },
      };
      const refusing = await client.workflow.start('llmBurst', {
        taskQueue,
        workflowId: `llm-burst/${spent.name}`,
        args: [{ ...input, pool: spent, carried }],
      });
      await expect(refusing.executeUpdate(acquireUpdate, { args: [{}] })).rejects.toMatchObject({
        cause: { message: expect.stringMatching(/refuses to start: daily budget/) },
      });
      await refusing.terminate('dashboard test done');

      // A Flux bootstrap whose components manifest is missing fails its first step on NotFoundError.
      const flux = await client.workflow.start('fluxBootstrap', {
        taskQueue,
        workflowId: workflowIdFor('fluxBootstrap', await example('flux-bootstrap.json')),
        args: [{ ...((await example('flux-bootstrap.json')) as object), labRepoDir: path.join(dir, 'no-such-repo') }],
      });
      await expect(flux.result()).rejects.toBeInstanceOf(WorkflowFailedError);
      exported = await (await fetch(metricsUrl)).text();
      await fs.writeFile(testLog('worker-metrics.txt'), exported);
    });

    const names = new Set([...sampledNames(exported), ...declaredNames(proxyMetrics)]);
    const dashboard = await readDashboard();
    const exprs = dashboardExprs(dashboard);
    const queried = [...new Set(exprs.flatMap((e) => metricNamesOf(e.expr)))].sort();
    expect(queried.length).toBeGreaterThan(20);
    expect(queried.filter((n) => !names.has(n))).toEqual([]);
    // ... and every label a panel selects or groups by is on the series it reads.
    const exposition = `${exported}\n${proxyMetrics}`;
    const missingLabels = exprs.flatMap(({ panel, expr }) =>
      labelsOf(expr)
        .filter(({ metrics, label }) => !metrics.some((m) => samples(exposition, m).some((s) => label in s.labels)))
        .map(({ label }) => `${panel}: ${label}`),
    );
    expect(missingLabels).toEqual([]);
    // Every lab metric the worker defines is on the dashboard.
    const onDashboard = new Set(queried.map((n) => n.replace(/_(bucket|sum|count)$/, '')));
    expect(Object.values(METRICS).filter((n) => !onDashboard.has(n))).toEqual([]);

    // The runs above are in the figures, with the labels the panels filter by.
    const drill = samples(exported, METRICS.drRunRto).find(
      (s) => s.labels.plan === 'home' && s.labels.mode === 'drill',
    );
    expect(drill?.value).toBeGreaterThan(0);
    expect(samples(exported, METRICS.drTargetRpo).map((s) => s.labels.target)).toEqual(
      expect.arrayContaining(['pvc home-automation/zigbee2mqtt', 'vm hass (150)']),
    );
    expect(samples(exported, METRICS.drRuns)).toContainEqual(
      expect.objectContaining({ labels: expect.objectContaining({ plan: 'home', verdict: 'ok' }), value: 1 }),
    );
    const steps = samples(exported, `${METRICS.stepDuration}_count`);
    for (const type of [
      'talosBootstrap',
      'gpuNodeJoin',
      'packerImageBuild',
      'fluxBootstrap',
      'drRestore',
      'llmBurst',
    ]) {
      expect(
        steps.some((s) => s.labels.workflowType === type && s.labels.outcome === 'done'),
        type,
      ).toBe(true);
    }
    expect(steps).toContainEqual(
      expect.objectContaining({
        labels: expect.objectContaining({ workflowType: 'fluxBootstrap', step: 'validate', outcome: 'failed' }),
      }),
    );
    expect(samples(exported, METRICS.activityFailures)).toContainEqual(
      expect.objectContaining({
        labels: expect.objectContaining({
          activityType: 'drFileFacts',
          errorType: 'NotFoundError',
          retryable: 'false',
        }),
      }),
    );
    expect(samples(exported, METRICS.burstRefusals)).toContainEqual({
      labels: expect.objectContaining({ pool: `${pool}-spent`, reason: 'budget' }),
      value: 1,
    });
    expect(samples(exported, METRICS.burstState)).toContainEqual({
      labels: expect.objectContaining({ pool, state: 'ready' }),
      value: 1,
    });
    expect(samples(exported, `${METRICS.burstColdStart}_count`).some((s) => s.labels.pool === pool)).toBe(true);
    expect(samples(exported, METRICS.burstCost).some((s) => s.labels.period === 'total' && s.value > 0)).toBe(true);
    expect(samples(proxyMetrics, 'labwright_proxy_requests_total').length).toBeGreaterThan(0);
  }, 300_000);
});

let proxyMetrics = '';

/** Names the proxy's exposition declares (`# TYPE`), with a histogram's sample names. */
function declaredNames(exposition: string): string[] {
  return [...exposition.matchAll(/^# TYPE (\S+) (\w+)$/gm)].flatMap(([, name, type]) =>
    type === 'histogram' ? [`${name}_bucket`, `${name}_sum`, `${name}_count`] : [name!],
  );
}
