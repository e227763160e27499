import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { ensureTool } from '../lib/processes.js';
import { createDemoActivities } from './fixtures/demo-activities.js';
import { TEST_CODEC_KEY_FILE, runTs } from './harness/processes.js';
import { temporalAddress, testClient, uniqueName, withWorker } from './harness/temporal.js';

function labwright(args: string[]) {
  return runTs('clients/labwright.ts', args, {
    TEMPORAL_ADDRESS: temporalAddress(),
    LABWRIGHT_CODEC_KEY_FILE: TEST_CODEC_KEY_FILE,
  });
}

async function inputFile(value: unknown): Promise<string> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'labwright-cli-'));
  const file = path.join(dir, 'input.json');
  await fs.writeFile(file, JSON.stringify(value));
  return file;
}

describe('the labwright command', () => {
  it('starts a workflow, shows its steps while it runs, and watches it to the end', async () => {
    const workflowId = uniqueName('cli-demo');
    const input = await inputFile({ name: 'pve1', steps: ['clone', 'boot'], holdAfterFirst: true });
    await withWorker({ activities: createDemoActivities() }, async ({ taskQueue }) => {
      const started = await labwright([
        'start',
        'stepsDemo',
        '--input',
        input,
        '--id',
        workflowId,
        '--task-queue',
        taskQueue,
      ]);
      expect(started.stderr).toBe('');
      expect(started.stdout).toContain(`started stepsDemo as ${workflowId}`);

      const client = await testClient();
      const handle = client.workflow.getHandle(workflowId);
      await expect
        .poll(async () => (await handle.query<{ steps: { status: string }[] }>('progress')).steps[0]?.status)
        .toBe('done');
      const status = await labwright(['status', workflowId]);
      expect(status.stdout).toContain(`stepsDemo ${workflowId}: RUNNING`);
      expect(status.stdout).toMatch(/\[ok\] clone: clone:pve1/);
      expect(status.stdout).toMatch(/\[ {2}\] boot/);

      await handle.signal('proceed');
      const watched = await labwright(['watch', workflowId, '--interval', '0.2']);
      expect(watched.code).toBe(0);
      expect(watched.stdout).toContain('COMPLETED');
      expect(watched.stdout).toContain('=> 2 steps done for pve1');
      expect(watched.stdout).toContain('completed: ["clone:pve1","boot:pve1"]');
    });
  });

  it('reports a failed workflow with its reason and a non-zero exit', async () => {
    const workflowId = uniqueName('cli-bad');
    const input = await inputFile({ name: 'pve1', steps: [] });
    await withWorker({ activities: createDemoActivities() }, async ({ taskQueue }) => {
      await labwright(['start', 'stepsDemo', '--input', input, '--id', workflowId, '--task-queue', taskQueue]);
      const watched = await labwright(['watch', workflowId, '--interval', '0.2']);
      expect(watched.code).toBe(1);
      expect(watched.stdout).toContain('failed: invalid stepsDemo input: steps: Too small');
    });
  });

  it('works alongside the plain `temporal workflow start`, whose unencrypted input the worker accepts', async () => {
    const workflowId = uniqueName('cli-temporal');
    const input = await inputFile({ name: 'pve2', steps: ['snapshot'] });
    const temporal = ensureTool('ensure-temporal.sh');
    await withWorker({ activities: createDemoActivities() }, async ({ taskQueue }) => {
      await promisify(execFile)(temporal, [
        'workflow',
        'start',
        '--address',
        temporalAddress(),
        '--task-queue',
        taskQueue,
        '--type',
        'stepsDemo',
        '--workflow-id',
        workflowId,
        '--input-file',
        input,
      ]);
      const watched = await labwright(['watch', workflowId, '--interval', '0.2']);
      expect(watched.stdout).toContain('completed: ["snapshot:pve2"]');
    });
  });

  it('needs a workflow ID for a workflow outside the catalog, and changes nothing without one', async () => {
    const input = await inputFile({ name: 'pve1', steps: ['clone'] });
    const result = await labwright(['start', 'stepsDemo', '--input', input]);
    expect(result.code).toBe(1);
    expect(result.stderr).toContain('stepsDemo is not a catalogued workflow: give its workflow ID (--id)');
  });
});
