import { WorkflowFailedError } from '@temporalio/client';
import { ApplicationFailure } from '@temporalio/common';
import { describe, expect, it } from 'vitest';
import type { Progress } from '../common/progress.js';
import { createDemoActivities } from './fixtures/demo-activities.js';
import { recordHistory } from './harness/histories.js';
import { testClient, uniqueName, withWorker } from './harness/temporal.js';

describe('a workflow on the real dev server', () => {
  it('runs every step through its activity and reports progress as it goes', async () => {
    const client = await testClient();
    const calls: string[] = [];
    await withWorker({ activities: createDemoActivities(calls) }, async ({ taskQueue }) => {
      const handle = await client.workflow.start('stepsDemo', {
        taskQueue,
        workflowId: uniqueName('steps-demo'),
        args: [{ name: 'pve1', steps: ['clone', 'configure', 'boot'], holdAfterFirst: true }],
      });
      await expect.poll(async () => (await handle.query<Progress>('progress')).steps[0]?.status).toBe('done');
      const midway = await handle.query<Progress>('progress');
      expect(midway.steps.map((s) => s.status)).toEqual(['done', 'pending', 'pending']);
      const described = await handle.describe();
      expect(described.searchAttributes).toBeDefined();

      await handle.signal('proceed');
      expect(await handle.result()).toEqual(['clone:pve1', 'configure:pve1', 'boot:pve1']);
      const final = await handle.query<Progress>('progress');
      expect(final.steps.map((s) => s.status)).toEqual(['done', 'done', 'done']);
      expect(final.result).toBe('3 steps done for pve1');
      expect(calls).toEqual(['clone', 'configure', 'boot']);
      await recordHistory(handle, 'steps-demo');
    });
  });

  it('fails at once on invalid input, naming the field, and calls no activity', async () => {
    const client = await testClient();
    const calls: string[] = [];
    await withWorker({ activities: createDemoActivities(calls) }, async ({ taskQueue }) => {
      const run = client.workflow.execute('stepsDemo', {
        taskQueue,
        workflowId: uniqueName('steps-demo-bad'),
        args: [{ name: 'pve1', steps: ['Clone VM'] }],
      });
      const err = await run.catch((e: unknown) => e);
      expect(err).toBeInstanceOf(WorkflowFailedError);
      const cause = (err as WorkflowFailedError).cause;
      expect(cause).toBeInstanceOf(ApplicationFailure);
      expect((cause as ApplicationFailure).type).toBe('ValidationError');
      expect((cause as ApplicationFailure).nonRetryable).toBe(true);
      expect(cause?.message).toContain('steps[0]: expected lowercase words');
      expect(calls).toEqual([]);
    });
  });
});
