import path from 'node:path';
import { describe, expect, inject, it } from 'vitest';
import { freePort } from '../lib/processes.js';
import { projectRoot } from '../lib/paths.js';
import { loadInventory } from '../hardware/load.js';
import { SecretStore } from '../lib/secrets.js';
import { createLabActivities, mergeActivities } from '../workers/activities.js';
import { createDemoActivities } from './fixtures/demo-activities.js';
import { TEST_CODEC_KEY_FILE, runTs, startWorkerProcess, untilWorkerStarted } from './harness/processes.js';
import { startTestWorker, temporalAddress, testClient, uniqueName } from './harness/temporal.js';

const inventory = path.join(projectRoot, 'hardware', 'lab.example.yaml');

describe('the worker process', () => {
  it('refuses to start without a payload codec key unless plaintext is chosen', async () => {
    const result = await runTs('workers/main.ts', [], {
      TEMPORAL_ADDRESS: temporalAddress(),
      LABWRIGHT_INVENTORY: inventory,
      LABWRIGHT_CODEC_KEY: '',
      LABWRIGHT_CODEC_KEY_FILE: '',
      LABWRIGHT_STATE_DIR: path.join(projectRoot, '.cache', 'no-state'),
      LABWRIGHT_METRICS_ADDRESS: 'off',
    });
    expect(result.code).toBe(1);
    expect(result.stdout).toContain('no payload codec key');
    const logLine = JSON.parse(result.stdout.trim().split('\n').at(-1) ?? '{}') as { level?: string };
    expect(logLine.level).toBe('error');
  });

  it('polls its task queue, serves Prometheus metrics, logs JSON and stops cleanly on SIGTERM', async () => {
    const metricsPort = await freePort();
    const worker = startWorkerProcess({
      TEMPORAL_ADDRESS: temporalAddress(),
      LABWRIGHT_INVENTORY: inventory,
      LABWRIGHT_CODEC_KEY_FILE: TEST_CODEC_KEY_FILE,
      LABWRIGHT_TASK_QUEUE: uniqueName('worker-proc'),
      LABWRIGHT_METRICS_ADDRESS: `127.0.0.1:${metricsPort}`,
      // What the image runs: the workflows bundled once, at build time.
      LABWRIGHT_WORKFLOW_BUNDLE: inject('workflowBundlePath'),
    });
    const { child, output, exited } = worker;
    await untilWorkerStarted(worker);
    const metrics = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
    expect(metrics).toContain('temporal_');

    child.kill('SIGTERM');
    expect(await exited).toBe(0);
    const lines = output().trim().split('\n');
    for (const line of lines) expect(() => JSON.parse(line) as unknown, line).not.toThrow();
    expect(output()).toContain('"msg":"worker stopped"');
  });

  it('registers the activities of every system under distinct names', async () => {
    const lab = await loadInventory(inventory);
    const activities = await createLabActivities({ inventory: lab, secrets: new SecretStore('/nonexistent'), env: {} });
    for (const name of ['pveClone', 'ec2FindPoolInstances', 'k8sApply', 'talosBootstrap']) {
      expect(Object.keys(activities)).toContain(name);
    }
    const step = async (): Promise<void> => undefined;
    expect(() => mergeActivities([{ step }, { step }])).toThrow('activity step is defined by two factories');
  });

  it('lets an in-flight activity finish when it is shut down', async () => {
    const calls: string[] = [];
    let markStarted = (): void => undefined;
    const started = new Promise<void>((resolve) => (markStarted = resolve));
    const slow = {
      async performStep(name: string, step: string): Promise<string> {
        markStarted();
        await new Promise((r) => setTimeout(r, 1500));
        return createDemoActivities(calls).performStep(name, step);
      },
    };
    const w = await startTestWorker({ activities: slow, shutdownGraceTime: '10 seconds' });
    const client = await testClient();
    const handle = await client.workflow.start('stepsDemo', {
      taskQueue: w.taskQueue,
      workflowId: uniqueName('grace'),
      args: [{ name: 'pve2', steps: ['drain'] }],
    });
    await started;
    await w.stop();
    expect(calls).toEqual(['drain']);

    const again = await startTestWorker({ activities: createDemoActivities(), taskQueue: w.taskQueue });
    try {
      expect(await handle.result()).toEqual(['drain:pve2']);
    } finally {
      await again.stop();
    }
  });
});
