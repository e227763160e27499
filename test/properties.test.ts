/**
 * Property tests of the boundary: mutations of the example inventory and of every workflow's
 * example input are either valid or rejected with problems that each name a field; a workflow
 * rejects before its first activity, as its history on the real dev server shows.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { WorkflowFailedError, type Client } from '@temporalio/client';
import { ApplicationFailure } from '@temporalio/common';
import { temporal } from '@temporalio/proto';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse as parseYaml } from 'yaml';
import { talosBootstrapWorkflowId } from '../common/talos.js';
import { describeIssues } from '../common/validation.js';
import { labInventorySchema } from '../hardware/lab-rules.js';
import { projectRoot } from '../lib/paths.js';
import { NAMESPACE, startTestWorker, testClient, uniqueName, type TestWorker } from './harness/temporal.js';

const EventType = temporal.api.enums.v1.EventType;
type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
type Key = string | number;

/**
 * Runs per workflow: 1000 under `npm run test:properties`; `npm test` runs fewer, so that the
 * suite stays within its time on a shared 2-core machine (a run's workflow task takes seconds there).
 */
const RUNS_PER_WORKFLOW = Number(process.env.LABWRIGHT_PROPERTY_RUNS ?? 60);
const INVENTORY_RUNS = 1000;

const example = parseYaml(await fs.readFile(path.join(projectRoot, 'hardware', 'lab.example.yaml'), 'utf8')) as Json;
const exampleInput = async (name: string): Promise<Json> =>
  JSON.parse(await fs.readFile(path.join(projectRoot, 'docs', 'examples', `${name}.json`), 'utf8')) as Json;

/** Every path into a value (containers and leaves), for picking what to mutate. */
function paths(value: Json, at: Key[] = []): Key[][] {
  const out: Key[][] = [at];
  if (Array.isArray(value)) value.forEach((v, i) => out.push(...paths(v, [...at, i])));
  else if (value !== null && typeof value === 'object') {
    for (const [k, v] of Object.entries(value)) out.push(...paths(v, [...at, k]));
  }
  return out;
}

function leaves(value: Json): Json[] {
  if (Array.isArray(value)) return value.flatMap(leaves);
  if (value !== null && typeof value === 'object') return Object.values(value).flatMap(leaves);
  return [value];
}

type Mutation =
  | { op: 'set'; path: Key[]; value: Json }
  | { op: 'delete'; path: Key[] }
  | { op: 'unknown-key'; path: Key[]; key: string }
  | { op: 'duplicate'; path: Key[] };

/**
 * One to three edits an operator makes by mistake: a value of the wrong kind or a near miss (a
 * value from elsewhere in the file, an edge number, a string with one character changed), a field
 * removed, a field the schema does not know, an array entry copied (duplicate names, VMIDs, ...).
 */
function mutationArb(base: Json): fc.Arbitrary<Mutation[]> {
  const all = paths(base).filter((p) => p.length > 0);
  const samples = [...new Set(leaves(base))];
  const value: fc.Arbitrary<Json> = fc.oneof(
    fc.constantFrom(...samples),
    fc.string({ maxLength: 12 }),
    fc.constantFrom(
      '',
      'x',
      '-',
      'UPPER',
      'a'.repeat(64),
      '10.244.0.5',
      '192.168.1.1',
      '192.168.1.255',
      '0000:01:00.1',
    ),
    fc.integer({ min: -2, max: 1_000_000_001 }),
    fc.constantFrom(0, 1, 2, 99, 100, 4094, 4095, 65536, 1.5, -1),
    fc.boolean(),
    fc.constant(null),
    fc.constant([] as Json),
    fc.constant({} as Json),
  );
  const one: fc.Arbitrary<Mutation> = fc.oneof(
    { weight: 5, arbitrary: fc.record({ op: fc.constant('set' as const), path: fc.constantFrom(...all), value }) },
    { weight: 2, arbitrary: fc.record({ op: fc.constant('delete' as const), path: fc.constantFrom(...all) }) },
    {
      weight: 1,
      arbitrary: fc.record({
        op: fc.constant('unknown-key' as const),
        path: fc.constantFrom([], ...all),
        key: fc.constantFrom('extra', 'vmId', 'nodes_', 'Name'),
      }),
    },
    { weight: 2, arbitrary: fc.record({ op: fc.constant('duplicate' as const), path: fc.constantFrom(...all) }) },
  );
  return fc.array(one, { minLength: 1, maxLength: 3 });
}

function apply(base: Json, mutations: Mutation[]): Json {
  const doc = structuredClone(base);
  for (const m of mutations) {
    const parent = m.path
      .slice(0, -1)
      .reduce<Json | undefined>(
        (v, k) => (v !== null && typeof v === 'object' ? (v as Record<Key, Json>)[k] : undefined),
        doc,
      );
    const last = m.path[m.path.length - 1];
    if (parent === null || typeof parent !== 'object' || last === undefined) continue;
    const target = parent as Record<Key, Json>;
    if (!(last in target)) continue;
    if (m.op === 'set') target[last] = m.value;
    else if (m.op === 'delete') {
      if (Array.isArray(parent)) parent.splice(Number(last), 1);
      else delete target[last];
    } else if (m.op === 'unknown-key') {
      const obj = target[last];
      if (obj !== null && typeof obj === 'object' && !Array.isArray(obj)) obj[m.key] = 1;
    } else if (Array.isArray(parent)) parent.push(structuredClone(parent[Number(last)]!));
  }
  return doc;
}

/**
 * `clusters.home.workers[3].gpu` → `clusters.*.workers[].gpu`, `prices["g5.xlarge"]` → `prices[*]`:
 * a field, not one entry of it.
 */
function fieldOf(problemPath: string): string {
  return problemPath
    .replace(/\[\d+\]/g, '[]')
    .replace(/\["(?:[^"\\]|\\.)*"\]/g, '[*]')
    .replace(/^clusters(\.[^.[]+|\[\*\])/, 'clusters.*');
}

/**
 * A problem line is `path: what is allowed`, with a path that is not the root: plain keys after
 * dots, indexes, and quoted keys (`["node-role.kubernetes.io/edge"]`), so the path ends unambiguously.
 */
const PROBLEM = /^((?:[A-Za-z_$][\w$-]*)(?:\.[A-Za-z_$][\w$-]*|\[\d+\]|\["(?:[^"\\]|\\.)*"\])*): (.+)$/;

function tally(counts: Map<string, number>, key: string): void {
  counts.set(key, (counts.get(key) ?? 0) + 1);
}

function printCounts(title: string, valid: number, rejected: number, fields: Map<string, number>): void {
  const top = [...fields.entries()].sort((a, b) => b[1] - a[1]);
  console.log(
    `${title}: ${valid + rejected} mutations, ${valid} valid, ${rejected} rejected; problems per field:\n` +
      top.map(([f, n]) => `  ${String(n).padStart(5)}  ${f}`).join('\n'),
  );
}

describe('mutated inventories', () => {
  it(`are valid or rejected naming a field (${INVENTORY_RUNS} mutations of the example)`, () => {
    let valid = 0;
    let rejected = 0;
    const fields = new Map<string, number>();
    fc.assert(
      fc.property(mutationArb(example), (mutations) => {
        const result = labInventorySchema.safeParse(apply(example, mutations));
        if (result.success) {
          valid++;
          return;
        }
        rejected++;
        const problems = describeIssues(result.error);
        expect(problems.length).toBeGreaterThan(0);
        for (const p of problems) {
          const m = PROBLEM.exec(p);
          expect(m, `a problem that names no field: ${p}`).not.toBeNull();
          expect(m![1]).not.toBe('(root)');
          tally(fields, fieldOf(m![1]!));
        }
      }),
      { numRuns: INVENTORY_RUNS, seed: 16 },
    );
    printCounts('inventory', valid, rejected, fields);
    expect(valid + rejected).toBe(INVENTORY_RUNS);
    expect(rejected).toBeGreaterThan(INVENTORY_RUNS / 4);
    expect(valid).toBeGreaterThan(0);
  });
});

interface Outcome {
  kind: 'valid' | 'rejected';
  problems: string[];
  /** Event types of the history up to the first workflow task's outcome. */
  events: string[];
}

/**
 * Reads the run's history (long-polling) up to its first workflow task's outcome: the workflow
 * failed there (rejected; no activity may have been scheduled) or went on to its first activity
 * or timer (valid). The history is the evidence, not the client's view.
 */
async function outcomeOf(client: Client, workflowId: string, runId: string): Promise<Outcome> {
  const events: temporal.api.history.v1.IHistoryEvent[] = [];
  let nextPageToken: Uint8Array | undefined;
  for (;;) {
    const page = await client.workflowService.getWorkflowExecutionHistory({
      namespace: NAMESPACE,
      execution: { workflowId, runId },
      waitNewEvent: true,
      nextPageToken,
    });
    events.push(...(page.history?.events ?? []));
    const types = events.map((e) => e.eventType);
    const failed = types.includes(EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED);
    const stepped =
      types.includes(EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED) ||
      types.includes(EventType.EVENT_TYPE_TIMER_STARTED);
    const names = types.map((t) => EventType[t ?? 0] ?? String(t));
    if (failed) {
      expect(types, `${workflowId}: rejected after an activity was scheduled`).not.toContain(
        EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED,
      );
      const err = await client.workflow
        .getHandle(workflowId, runId)
        .result()
        .catch((e: unknown) => e);
      expect(err).toBeInstanceOf(WorkflowFailedError);
      const cause = (err as WorkflowFailedError).cause as ApplicationFailure;
      expect(cause, `${workflowId}: ${String(cause)}`).toBeInstanceOf(ApplicationFailure);
      expect(cause.type, cause.message).toBe('ValidationError');
      expect(cause.nonRetryable).toBe(true);
      const details = cause.details?.[0] as { problems?: string[] } | undefined;
      return {
        kind: 'rejected',
        problems: details?.problems ?? [cause.message.replace(/^invalid [^:]+: /, '')],
        events: names,
      };
    }
    if (stepped) return { kind: 'valid', problems: [], events: names };
    const closed = types.some(
      (t) =>
        t === EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED ||
        t === EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TERMINATED ||
        t === EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TIMED_OUT ||
        t === EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED,
    );
    if (closed) throw new Error(`${workflowId}: neither rejected nor started: ${names.join(', ')}`);
    nextPageToken = page.nextPageToken?.length ? page.nextPageToken : undefined;
  }
}

/** Runs `tasks` at most `limit` at a time. */
async function pool<T>(limit: number, tasks: Array<() => Promise<T>>): Promise<T[]> {
  const out: T[] = new Array<T>(tasks.length);
  let next = 0;
  await Promise.all(
    Array.from({ length: limit }, async () => {
      while (next < tasks.length) {
        const i = next++;
        out[i] = await tasks[i]!();
      }
    }),
  );
  return out;
}

interface WorkflowCase {
  type: string;
  base: Json;
}

describe('mutated workflow inputs on the dev server', () => {
  let client: Client;
  let worker: TestWorker;
  const cases: WorkflowCase[] = [];

  beforeAll(async () => {
    client = await testClient();
    // No activities: a valid run waits at its first activity, which is all that is looked at.
    worker = await startTestWorker({});
    const withInventory = async (name: string): Promise<Json> => ({
      ...((await exampleInput(name)) as Record<string, Json>),
      inventory: example,
    });
    cases.push(
      { type: 'talosBootstrap', base: await withInventory('talos-bootstrap') },
      { type: 'gpuNodeJoin', base: await withInventory('gpu-node-join') },
      { type: 'fluxBootstrap', base: await withInventory('flux-bootstrap') },
      { type: 'drRestore', base: await withInventory('dr-drill') },
      { type: 'packerImageBuild', base: await exampleInput('packer-image-build') },
      { type: 'llmBurst', base: await exampleInput('llm-burst') },
    );
  });

  afterAll(async () => {
    await worker?.stop();
    await client?.connection.close();
  });

  it(
    `are valid or rejected naming a field before any activity runs (${RUNS_PER_WORKFLOW} per workflow)`,
    async () => {
      const started = Date.now();
      const jobs = cases.flatMap((c) => {
        const samples = fc.sample(mutationArb(c.base), { numRuns: RUNS_PER_WORKFLOW, seed: 16 });
        return samples.map((mutations) => async () => {
          let input = apply(c.base, mutations);
          let workflowId = uniqueName(`pt-${c.type}`);
          if (c.type === 'talosBootstrap') {
            // It runs only as talos-bootstrap/<cluster>: each run gets a cluster of its own, or
            // (its cluster mutated) an ID of its own, which it must refuse.
            const raw = input as { cluster?: unknown; inventory?: { clusters?: Record<string, Json> } };
            const home = raw.cluster === 'home' ? raw.inventory?.clusters?.home : undefined;
            const own = uniqueName('pt');
            if (home !== undefined) {
              input = {
                ...(input as Record<string, Json>),
                cluster: own,
                inventory: { ...raw.inventory, clusters: { [own]: home } },
              } as Json;
            }
            workflowId = talosBootstrapWorkflowId(home !== undefined ? own : `mutated-${own}`);
          }
          const handle = await client.workflow.start(c.type, {
            taskQueue: worker.taskQueue,
            workflowId,
            args: [input],
          });
          const outcome = await outcomeOf(client, workflowId, handle.firstExecutionRunId);
          if (outcome.kind === 'valid') await handle.terminate('property test: validation passed');
          return { type: c.type, outcome };
        });
      });
      const results = await pool(16, jobs);
      const seconds = (Date.now() - started) / 1000;

      for (const c of cases) {
        const mine = results.filter((r) => r.type === c.type);
        const fields = new Map<string, number>();
        let valid = 0;
        for (const { outcome } of mine) {
          if (outcome.kind === 'valid') {
            valid++;
            continue;
          }
          expect(outcome.problems.length).toBeGreaterThan(0);
          for (const p of outcome.problems) {
            const m = PROBLEM.exec(p);
            expect(m, `${c.type}: a problem that names no field: ${p}`).not.toBeNull();
            expect(m![1]).not.toBe('(root)');
            tally(fields, fieldOf(m![1]!));
          }
        }
        printCounts(c.type, valid, mine.length - valid, fields);
        expect(mine).toHaveLength(RUNS_PER_WORKFLOW);
        expect(mine.length - valid).toBeGreaterThan(RUNS_PER_WORKFLOW / 4);
      }
      console.log(`${results.length} workflow runs in ${seconds.toFixed(1)} s`);
    },
    RUNS_PER_WORKFLOW * 6 * 1000,
  );
});
