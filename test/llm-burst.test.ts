/**
 * The llmBurst workflow on the real dev server against moto (through the fault proxy): the idle
 * lifecycle, limits, reconciliation, lost responses, spot fallback and continue-as-new.
 */
import { WorkflowFailedError, type WorkflowHandle } from '@temporalio/client';
import { ApplicationFailure } from '@temporalio/common';
import { describe, expect, it } from 'vitest';
import {
  acquireUpdate,
  demandSignal,
  statusQuery,
  type AcquireResult,
  type LlmBurstInput,
  type LlmBurstStatus,
} from '../common/llm-burst.js';
import type { Progress } from '../common/progress.js';
import { acquireBurst, burstWorkflowId, testPool, useBurstLab } from './harness/ec2.js';
import { recordHistory } from './harness/histories.js';
import { uniqueName, withWorker } from './harness/temporal.js';

const lab = useBurstLab();

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const acquire = (taskQueue: string, input: LlmBurstInput, deadlineSeconds?: number): Promise<AcquireResult> =>
  acquireBurst(lab.client, taskQueue, input, deadlineSeconds);

function handleFor(taskQueue: string, pool: string): WorkflowHandle {
  return lab.client.workflow.getHandle(burstWorkflowId(taskQueue, pool));
}

async function status(handle: WorkflowHandle): Promise<LlmBurstStatus> {
  return handle.query(statusQuery);
}

async function instanceState(pool: string): Promise<string[]> {
  return (await lab.peers.instances(pool)).map((i) => i.State?.Name ?? '?');
}

describe('llmBurst on moto', () => {
  it('starts one instance on a cold acquire, keeps it up while demand goes on, and stops it after idleTimeout', async () => {
    const pool = uniqueName('pool');
    await withWorker({ activities: lab.peers.activities() }, async ({ taskQueue }) => {
      const input: LlmBurstInput = { pool: testPool(pool), idleTimeout: '4s', reconcileEvery: '2s' };
      const before = lab.peers.faults.count('RunInstances');
      const result = await acquire(taskQueue, input);
      expect(result.endpoint).toMatch(/^http:\/\/10\.\d+\.\d+\.\d+:11434$/);
      expect(result.idleTimeoutMs).toBe(4000);
      expect(await instanceState(pool)).toEqual(['running']);
      expect(lab.peers.faults.count('RunInstances') - before).toBe(1);

      const handle = handleFor(taskQueue, pool);
      const ready = await status(handle);
      expect(ready.state).toBe('ready');
      expect(ready.instanceId).toBe(result.instanceId);
      expect(ready.endpoint).toBe(result.endpoint);
      expect(ready.idleDeadline).toBeDefined();
      expect((await handle.query<Progress>('progress')).current).toBe('serve');

      // Demand every second for 8 s (twice the idle timeout): it stays up, no second start.
      for (let i = 0; i < 8; i++) {
        await handle.signal(demandSignal);
        await sleep(1000);
        expect(await instanceState(pool)).toEqual(['running']);
      }
      const kept = await status(handle);
      expect(kept.state).toBe('ready');
      expect(kept.runningSeconds).toBeGreaterThan(6);
      expect(kept.costUsd).toBeGreaterThan(0);
      expect(lab.peers.faults.count('RunInstances') - before).toBe(1);
      expect(lab.peers.faults.count('StartInstances')).toBe(0);

      // Silence: stopped (not terminated) within idleTimeout plus a few seconds of the last demand.
      const lastDemand = Date.parse(kept.lastDemandAt!);
      await expect.poll(() => instanceState(pool), { timeout: 12_000, interval: 250 }).toEqual(['stopped']);
      const stoppedAfter = Date.now() - lastDemand;
      await expect.poll(async () => (await status(handle)).state, { timeout: 5000, interval: 100 }).toBe('stopped');
      expect(stoppedAfter).toBeGreaterThanOrEqual(4000);
      expect(stoppedAfter).toBeLessThan(4000 + 4000);
      const stopped = await status(handle);
      expect(stopped.state).toBe('stopped');
      expect(stopped.reason).toBe('idle for 4s');
      expect(stopped.instanceId).toBe(result.instanceId);
      expect(stopped.endpoint).toBeUndefined();
      expect(stopped.total.runningSeconds).toBeGreaterThan(10);

      // A new cold acquire starts the same stopped instance (its EBS keeps the models).
      const again = await acquire(taskQueue, input);
      expect(again.instanceId).toBe(result.instanceId);
      expect(lab.peers.faults.count('StartInstances')).toBe(1);
      expect(lab.peers.faults.count('RunInstances') - before).toBe(1);

      // Cancelling retires the pool: stopped, nothing billing; its history is kept for replay.
      await handle.cancel();
      const final = (await handle.result()) as LlmBurstStatus;
      expect(final.state).toBe('stopped');
      expect(await instanceState(pool)).toEqual(['stopped']);
      // llm-burst.json predates the cold path's local look (patches burst-local-cold-path and
      // burst-one-local-look); this one has it, so both ways replay.
      await recordHistory(handle, 'llm-burst');
      await recordHistory(handle, 'llm-burst-local-look');
    });
  });

  it('checks with EC2 at once when a caller reports the endpoint unreachable, and restarts the instance', async () => {
    const pool = uniqueName('unreach');
    await withWorker({ activities: lab.peers.activities() }, async ({ taskQueue }) => {
      // Reconciliation every hour: only the caller's report can reveal the stop below.
      const input: LlmBurstInput = { pool: testPool(pool), idleTimeout: '1m', reconcileEvery: '1h' };
      const first = await acquire(taskQueue, input);
      await lab.peers.stopOutside(first.instanceId);
      const handle = handleFor(taskQueue, pool);
      await sleep(300);
      expect((await status(handle)).state).toBe('ready'); // not noticed yet

      const again = await handle.executeUpdate(acquireUpdate, {
        args: [{ deadlineSeconds: 30, unreachable: first.endpoint }],
      });
      expect(again.instanceId).toBe(first.instanceId);
      expect(await instanceState(pool)).toEqual(['running']);
      const s = await status(handle);
      expect(s.events.map((e) => e.what)).toEqual(
        expect.arrayContaining([
          expect.stringMatching(new RegExp(`^reconcile: ${first.instanceId} found stopped`)),
          `started ${first.instanceId}`,
        ]),
      );
      expect(lab.peers.faults.count('StartInstances', (p) => p.get('InstanceId.1') === first.instanceId)).toBe(1);
      await handle.terminate('test over');
    });
  });

  it('terminates an instance stopped for longer than terminateAfter, and launches a new one on demand', async () => {
    const pool = uniqueName('term');
    await withWorker({ activities: lab.peers.activities() }, async ({ taskQueue }) => {
      const input: LlmBurstInput = { pool: testPool(pool), idleTimeout: '1s', terminateAfter: '2s' };
      const first = await acquire(taskQueue, input);
      const handle = handleFor(taskQueue, pool);
      await expect.poll(() => instanceState(pool), { timeout: 8000, interval: 200 }).toEqual(['stopped']);
      await expect.poll(() => instanceState(pool), { timeout: 8000, interval: 200 }).toEqual([]); // terminated
      await expect.poll(async () => (await status(handle)).instanceId, { timeout: 5000 }).toBeUndefined();
      expect((await status(handle)).reason).toBe(`terminated ${first.instanceId} after 2s stopped`);
      const second = await acquire(taskQueue, input);
      expect(second.instanceId).not.toBe(first.instanceId);
      expect(await instanceState(pool)).toEqual(['running']);
      await handle.terminate('test over');
    });
  });

  it('fails at once on a bad pool definition, naming the fields, with no EC2 call', async () => {
    const pool = uniqueName('badpool');
    await withWorker({ activities: lab.peers.activities() }, async ({ taskQueue }) => {
      const calls = lab.peers.faults.calls.length;
      const input = {
        pool: { ...testPool(pool), region: 'mars', launchTemplate: undefined, instanceTypes: [] },
        idleTimeout: 'soon',
      };
      const err = await lab.client.workflow
        .execute('llmBurst', { taskQueue, workflowId: burstWorkflowId(taskQueue, pool), args: [input] })
        .catch((e: unknown) => e);
      expect(err).toBeInstanceOf(WorkflowFailedError);
      const cause = (err as WorkflowFailedError).cause as ApplicationFailure;
      expect(cause).toBeInstanceOf(ApplicationFailure);
      expect(cause.type).toBe('ValidationError');
      expect(cause.nonRetryable).toBe(true);
      expect(cause.message).toContain('pool.region: expected an AWS region like us-east-1');
      expect(cause.message).toContain('pool.instanceTypes');
      expect(cause.message).toContain('pool.ami: a burst pool needs a launchTemplate or an ami');
      expect(cause.message).toContain('idleTimeout: expected a positive duration');
      expect(lab.peers.faults.calls.length).toBe(calls);
    });
  });
});
