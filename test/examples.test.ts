// Every input in docs/examples/, as-is, against the simulated lab `npm start` runs (sim/index.ts
// with all its peers) and the worker's own activity registry: each run completes, or reaches the
// state it is meant to wait in (a restore waits for approval; the burst pool hands out an
// endpoint). They run in the order a newcomer would: the cluster before its GPU worker, on a
// Temporal dev server of their own, so each runs under the very workflow ID `labwright start`
// derives (talosBootstrap runs only as talos-bootstrap/<cluster>, which other tests use too).
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { WorkflowHandle } from '@temporalio/client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { workflowIdFor } from '../clients/start.js';
import type { DrReport, DrStatus } from '../common/dr-restore.js';
import type { FluxBootstrapResult } from '../common/flux-bootstrap.js';
import type { GpuNodeJoinResult } from '../common/gpu-node-join.js';
import { acquireUpdate } from '../common/llm-burst.js';
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
import { testClient, withWorker } from './harness/temporal.js';

const EXAMPLES = path.join(projectRoot, 'docs', 'examples');

let dir: string;
let server: DevServer;
let lab: SimulatedLab;
let activities: Record<string, (...args: never[]) => Promise<unknown>>;

beforeAll(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'labwright-examples-'));
  server = await startDevServer({ logFile: testLog(`temporal-examples-${process.pid}.log`) });
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
