/**
 * The reference LLM proxy and the burst client end to end: a local fake model server, the burst
 * pool's workflow on the real dev server, moto behind the fault proxy, and the instances' fake
 * model server on loopback.
 */
import http from 'node:http';
import type { Client, WorkflowHandle } from '@temporalio/client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LlmBurstClient } from '../clients/llm-burst-client.js';
import { startLlmProxy, type LlmProxy } from '../clients/llm-proxy.js';
import { llmBurstWorkflowId, statusQuery, type LlmBurstInput, type LlmBurstStatus } from '../common/llm-burst.js';
import { startFakeModelServer, type FakeModelServer } from '../sim/ec2.js';
import { startEc2Peers, testPool, type Ec2Peers } from './harness/ec2.js';
import { testClient, uniqueName, withWorker } from './harness/temporal.js';

let peers: Ec2Peers;
let client: Client;
let local: FakeModelServer;

beforeAll(async () => {
  peers = await startEc2Peers();
  client = await testClient();
  local = await startFakeModelServer({ name: 'local' });
});
afterAll(async () => {
  await local?.stop();
  await peers?.stop();
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Answer {
  status: number;
  servedBy?: string;
  /** Body pieces as they arrived. */
  pieces: string[];
  body: string;
}

const agent = new http.Agent({ keepAlive: true, maxSockets: 100 });

function generate(proxy: LlmProxy, prompt = 'hello'): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = http.request(
      `${proxy.url}/api/generate`,
      { method: 'POST', agent, headers: { 'content-type': 'application/json' } },
      (res) => {
        const pieces: string[] = [];
        res.setEncoding('utf8');
        res.on('data', (d: string) => pieces.push(d));
        res.on('end', () =>
          resolve({
            status: res.statusCode ?? 0,
            servedBy: res.headers['x-labwright-served-by'] as string | undefined,
            pieces,
            body: pieces.join(''),
          }),
        );
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(JSON.stringify({ model: 'llama3.1:8b', prompt }));
  });
}

interface Setup {
  pool: string;
  burst: LlmBurstClient;
  proxy: LlmProxy;
  handle: WorkflowHandle;
}

async function withProxy(taskQueue: string, input: LlmBurstInput, body: (s: Setup) => Promise<void>): Promise<void> {
  const pool = input.pool.name;
  const workflowId = (name: string) => `${llmBurstWorkflowId(name)}-${taskQueue}`;
  const burst = new LlmBurstClient({
    client,
    taskQueue,
    pools: { [pool]: input },
    workflowId,
    acquireDeadlineSeconds: 60,
  });
  const proxy = await startLlmProxy({
    localUrl: local.url,
    pool,
    burst,
    resolveAddress: peers.resolve,
    localHealthTtlMs: 200,
  });
  const handle = client.workflow.getHandle(workflowId(pool));
  try {
    await body({ pool, burst, proxy, handle });
  } finally {
    await proxy.stop();
    await handle.terminate('test over').catch(() => undefined);
  }
}

async function historyCounts(handle: WorkflowHandle): Promise<{ signals: number; updates: number }> {
  const events = (await handle.fetchHistory()).events ?? [];
  return {
    signals: events.filter((e) => e.workflowExecutionSignaledEventAttributes).length,
    updates: events.filter((e) => e.workflowExecutionUpdateAcceptedEventAttributes).length,
  };
}

const states = async (pool: string) => (await peers.instances(pool)).map((i) => i.State?.Name);
const status = (h: WorkflowHandle): Promise<LlmBurstStatus> => h.query(statusQuery);

describe('the LLM proxy with a burst pool', () => {
  it('serves locally while the local GPU is healthy, and a cold request otherwise starts one instance and streams from it', async () => {
    const pool = uniqueName('proxy');
    await withWorker({ activities: peers.activities() }, async ({ taskQueue }) => {
      await withProxy(taskQueue, { pool: testPool(pool), idleTimeout: '5s', reconcileEvery: '2s' }, async (s) => {
        local.healthy = true;
        const atHome = await generate(s.proxy);
        expect(atHome.status).toBe(200);
        expect(atHome.servedBy).toBe('local');
        expect(atHome.body).toContain('"served_by":"local"');
        expect(await states(pool)).toEqual([]); // nothing started

        local.healthy = false;
        await sleep(250);
        const cold = await generate(s.proxy);
        expect(cold.status).toBe(200);
        expect(cold.servedBy).toMatch(/^burst:i-/);
        const lines = cold.body
          .trim()
          .split('\n')
          .map((l) => JSON.parse(l) as { served_by: string; done: boolean });
        expect(lines.map((l) => l.served_by)).toEqual(Array(lines.length).fill('burst'));
        expect(lines.at(-1)?.done).toBe(true);
        expect(cold.pieces.length).toBeGreaterThan(1); // streamed, not buffered
        expect(await states(pool)).toEqual(['running']);
        expect(peers.faults.count('RunInstances', (p) => [...p.values()].includes(pool))).toBe(1);

        // Warm: more requests, no second instance, no further acquire.
        for (let i = 0; i < 5; i++) expect((await generate(s.proxy)).servedBy).toBe(cold.servedBy);
        expect(s.burst.stats(pool).acquires).toBe(1);
        expect(s.burst.stats(pool).warmHits).toBe(5);
        expect((await states(pool)).length).toBe(1);

        // The local GPU is back: it serves again, and the idle burst instance stops.
        local.healthy = true;
        await sleep(250);
        expect((await generate(s.proxy)).servedBy).toBe('local');
        await expect.poll(() => states(pool), { timeout: 12_000, interval: 250 }).toEqual(['stopped']);
        await expect.poll(async () => (await status(s.handle)).state, { timeout: 5000 }).toBe('stopped');
        expect((await status(s.handle)).reason).toBe('idle for 5s');
      });
    });
  });

  it('a thousand requests in a burst send one acquire and no more than a handful of signals', async () => {
    const pool = uniqueName('burst');
    local.healthy = false;
    await withWorker({ activities: peers.activities() }, async ({ taskQueue }) => {
      await withProxy(taskQueue, { pool: testPool(pool), idleTimeout: '5s' }, async (s) => {
        // All thousand arrive while the pool is cold, 100 at a time, so they share one acquire.
        const answers: Answer[] = [];
        const queue = Array.from({ length: 1000 }, (_, i) => i);
        await Promise.all(
          Array.from({ length: 100 }, async () => {
            while (queue.shift() !== undefined) answers.push(await generate(s.proxy));
          }),
        );
        expect(answers).toHaveLength(1000);
        expect(answers.filter((a) => a.status === 200 && a.servedBy?.startsWith('burst:'))).toHaveLength(1000);
        const counts = await historyCounts(s.handle);
        expect(counts.updates).toBe(1);
        expect(counts.signals).toBeLessThanOrEqual(5);
        expect(s.burst.stats(pool).demandSignals).toBe(counts.signals);
        expect(await states(pool)).toEqual(['running']);
      });
    });
  });

  it('notices an instance stopped from outside and starts it again while demand goes on', async () => {
    const pool = uniqueName('outside');
    local.healthy = false;
    await withWorker({ activities: peers.activities() }, async ({ taskQueue }) => {
      await withProxy(taskQueue, { pool: testPool(pool), idleTimeout: '6s', reconcileEvery: '1s' }, async (s) => {
        const first = await generate(s.proxy);
        expect(first.status).toBe(200);
        const [instance] = await peers.instances(pool);
        await peers.stopOutside(instance!.InstanceId!);
        expect(await states(pool)).toEqual(['stopped']);

        // Traffic goes on (one request every 300 ms); reconciliation notices and restarts it.
        let recovered = false;
        for (let i = 0; i < 30 && !recovered; i++) {
          expect((await generate(s.proxy)).status).toBe(200);
          await sleep(300);
          recovered = (await states(pool))[0] === 'running' && (await status(s.handle)).state === 'ready';
        }
        expect(recovered).toBe(true);
        const st = await status(s.handle);
        expect(st.instanceId).toBe(instance!.InstanceId);
        const events = st.events.map((e) => e.what).join('\n');
        expect(events).toContain(`reconcile: ${instance!.InstanceId} found stopped`);
        expect(events).toContain(`started ${instance!.InstanceId}`);
        expect(peers.faults.count('StartInstances', (p) => p.get('InstanceId.1') === instance!.InstanceId)).toBe(1);
        expect((await peers.instances(pool)).length).toBe(1);
      });
    });
  });
});
