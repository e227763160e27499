// fluxBootstrap and drRestore in the simulated lab `npm start` runs (its Proxmox and Kubernetes
// peers and sim/flux-dr.ts), with the worker's own activity registry and the example inputs of
// docs/examples; and the `labwright schedule-drill` command run twice.
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { WorkflowFailedError } from '@temporalio/client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DrReport } from '../common/dr-restore.js';
import type { FluxBootstrapResult } from '../common/flux-bootstrap.js';
import { projectRoot } from '../lib/paths.js';
import { SecretStore } from '../lib/secrets.js';
import { SIM_REVISION, fluxDrSimPeer } from '../sim/flux-dr.js';
import { startSimulatedLab, type SimulatedLab } from '../sim/index.js';
import { kubeSimPeer } from '../sim/kube.js';
import { proxmoxPeer } from '../sim/proxmox.js';
import { createLabActivities } from '../workers/activities.js';
import { TEST_CODEC_KEY_FILE, runTs } from './harness/processes.js';
import { temporalAddress, testClient, uniqueName, withWorker } from './harness/temporal.js';

let dir: string;
let lab: SimulatedLab;
let activities: Record<string, (...args: never[]) => Promise<unknown>>;

beforeAll(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'labwright-sim-dr-'));
  lab = await startSimulatedLab(path.join(dir, 'sim'), [proxmoxPeer, kubeSimPeer, fluxDrSimPeer]);
  const env = { ...process.env, ...lab.env, LABWRIGHT_DR_REPORTS_DIR: path.join(dir, 'reports') };
  activities = await createLabActivities({
    inventory: lab.inventory,
    secrets: new SecretStore(lab.env.LABWRIGHT_SECRETS_DIR!),
    env,
  });
});
afterAll(async () => {
  await lab?.stop();
  await fs.rm(dir, { recursive: true, force: true });
});

const example = async (name: string) =>
  JSON.parse(await fs.readFile(path.join(projectRoot, 'docs', 'examples', name), 'utf8')) as Record<string, unknown>;

describe('the simulated lab', () => {
  it('bootstraps Flux and runs a DR drill from the example inputs, with the worker activities', async () => {
    const client = await testClient();
    await withWorker({ activities }, async ({ taskQueue }) => {
      const flux = (await client.workflow.execute('fluxBootstrap', {
        taskQueue,
        workflowId: `flux-bootstrap/home-${uniqueName('sim')}`,
        args: [{ ...(await example('flux-bootstrap.json')), pollSeconds: 0.5 }],
      })) as FluxBootstrapResult;
      expect(flux.revision).toBe(SIM_REVISION);
      expect(flux.changed).toContain('Secret flux-system/sops-age created');

      const drill = (await client.workflow.execute('drRestore', {
        taskQueue,
        workflowId: `dr-drill/home-${uniqueName('sim')}`,
        args: [{ ...(await example('dr-drill.json')), pollSeconds: 0.5 }],
      })) as DrReport;
      expect(drill.ok).toBe(true);
      expect(drill.targets.map((t) => t.target)).toEqual(['pvc home-automation/zigbee2mqtt', 'vm hass (150)']);
      expect(drill.cleanedUp.filter((c) => c.startsWith('LEFT'))).toEqual([]);
      expect(drill.targets[0]!.verification).toMatch(/^sentinel \.labwright-sentinel sha256 ok \(Job /);

      // The example's checksum is that of the bytes restic restored: one digit off, the drill fails.
      const input = await example('dr-drill.json');
      const pvc = (input.targets as Array<{ kind: string; sentinel?: { path: string; sha256: string } }>)[0]!;
      const sha = pvc.sentinel!.sha256;
      const wrong = `${sha.slice(0, -1)}${sha.endsWith('0') ? '1' : '0'}`;
      const failed = await client.workflow
        .execute('drRestore', {
          taskQueue,
          workflowId: `dr-drill/home-${uniqueName('sim')}`,
          args: [{ ...input, targets: [{ ...pvc, sentinel: { ...pvc.sentinel, sha256: wrong } }], pollSeconds: 0.5 }],
        })
        .catch((e: unknown) => e);
      expect(((failed as WorkflowFailedError).cause as Error).message).toMatch(
        /^drill home FAILED: pvc home-automation\/zigbee2mqtt: verification of home-automation\/zigbee2mqtt failed: Job \S+ failed/,
      );
    });
  });

  it('labwright schedule-drill creates the weekly drill, and updates it when run again', async () => {
    const client = await testClient();
    const plan = uniqueName('sim');
    const file = path.join(dir, 'plan.json');
    await fs.writeFile(file, JSON.stringify({ ...(await example('dr-drill.json')), plan }));
    const env = { TEMPORAL_ADDRESS: temporalAddress(), LABWRIGHT_CODEC_KEY_FILE: TEST_CODEC_KEY_FILE };
    const first = await runTs(
      'clients/labwright.ts',
      ['schedule-drill', '--input', file, '--task-queue', 'nowhere'],
      env,
    );
    const second = await runTs('clients/labwright.ts', ['schedule-drill', '--input', file, '--cron', '0 4 * * 1'], env);
    expect(first.stdout).toContain(`created schedule dr-drill/${plan}`);
    expect(second.stdout).toContain(`updated schedule dr-drill/${plan}`);
    const handle = client.schedule.getHandle(`dr-drill/${plan}`);
    const described = await handle.describe();
    expect(described.spec.calendars?.[0]?.dayOfWeek).toEqual([{ start: 'MONDAY', end: 'MONDAY', step: 1 }]);
    await handle.delete();
  });
});
