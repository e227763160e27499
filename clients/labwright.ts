#!/usr/bin/env -S npx tsx
/**
 * The `labwright` command for people:
 *   labwright start <workflow> --input file.json [--id ID] [--task-queue Q]
 *   labwright status <workflow-id>
 *   labwright watch <workflow-id>
 *   labwright workflows
 *   labwright schedule-drill --input plan.json [--cron '0 3 * * 0'] [--task-queue Q]
 * Connection and codec settings come from the environment, as for the worker.
 */
import { promises as fs } from 'node:fs';
import { parseArgs } from 'node:util';
import { WorkflowExecutionAlreadyStartedError, WorkflowFailedError, type Client } from '@temporalio/client';
import type { Progress } from '../common/progress.js';
import { connectClient } from '../lib/temporal.js';
import { CATALOG } from './catalog.js';
import { renderProgress } from './render.js';
import { ensureDrillSchedule } from './schedules.js';
import { InputError, startWorkflow } from './start.js';

const USAGE = `usage:
  labwright start <workflow> --input file.json [--id workflow-id] [--task-queue queue]
  labwright status <workflow-id>
  labwright watch <workflow-id>
  labwright workflows
  labwright schedule-drill --input plan.json [--cron '0 3 * * 0'] [--task-queue queue]`;

async function main(argv: string[]): Promise<number> {
  const { positionals, values } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      input: { type: 'string', short: 'i' },
      id: { type: 'string' },
      'task-queue': { type: 'string' },
      interval: { type: 'string', default: '1' },
      cron: { type: 'string' },
    },
  });
  const [command, target] = positionals;
  if (command === 'workflows') {
    for (const [name, entry] of Object.entries(CATALOG)) console.log(`${name.padEnd(20)} ${entry.description}`);
    return 0;
  }
  if (command === 'schedule-drill') {
    // (issue 7) The weekly DR drill of a plan, created or updated: see clients/schedules.ts.
    if (!values.input) {
      console.error('labwright schedule-drill needs --input plan.json');
      return 2;
    }
    const plan: unknown = JSON.parse(await fs.readFile(values.input, 'utf8'));
    const client = await connectClient();
    try {
      const r = await ensureDrillSchedule(client, plan, { cron: values.cron, taskQueue: values['task-queue'] });
      console.log(`${r.outcome} schedule ${r.scheduleId}`);
      console.log(`see it with: temporal schedule describe --schedule-id ${r.scheduleId}`);
      return 0;
    } finally {
      await client.connection.close();
    }
  }
  if (!command || !target || !['start', 'status', 'watch'].includes(command)) {
    console.error(USAGE);
    return 2;
  }
  const client = await connectClient();
  try {
    if (command === 'start') {
      if (!values.input) {
        console.error('labwright start needs --input file.json');
        return 2;
      }
      const input: unknown = JSON.parse(await fs.readFile(values.input, 'utf8'));
      const handle = await startWorkflow(client, target, input, {
        workflowId: values.id,
        taskQueue: values['task-queue'],
      });
      console.log(`started ${target} as ${handle.workflowId} (run ${handle.firstExecutionRunId})`);
      console.log(`follow it with: labwright watch ${handle.workflowId}`);
      return 0;
    }
    if (command === 'status') return await status(client, target);
    return await watch(client, target, Number(values.interval) * 1000);
  } finally {
    await client.connection.close();
  }
}

async function status(client: Client, workflowId: string): Promise<number> {
  const handle = client.workflow.getHandle(workflowId);
  const info = await handle.describe();
  console.log(`${info.type} ${workflowId}: ${info.status.name} (started ${info.startTime.toISOString()})`);
  const progress = await handle.query<Progress>('progress').catch(() => undefined);
  if (progress) console.log(renderProgress(progress));
  return 0;
}

async function watch(client: Client, workflowId: string, intervalMs: number): Promise<number> {
  const handle = client.workflow.getHandle(workflowId);
  let last = '';
  for (;;) {
    const info = await handle.describe();
    const progress = await handle.query<Progress>('progress').catch(() => undefined);
    const view = progress ? renderProgress(progress) : '';
    if (view !== last) {
      console.log(`${new Date().toISOString()} ${info.status.name}\n${view}`);
      last = view;
    }
    if (info.status.name !== 'RUNNING') break;
    await new Promise((r) => setTimeout(r, intervalMs));
  }
  try {
    const result: unknown = await handle.result();
    console.log(`completed: ${JSON.stringify(result)}`);
    return 0;
  } catch (err) {
    const cause = err instanceof WorkflowFailedError ? (err.cause ?? err) : err;
    console.log(`failed: ${(cause as Error).message}`);
    return 1;
  }
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err: unknown) => {
    if (err instanceof InputError) console.error(err.message);
    else if (err instanceof WorkflowExecutionAlreadyStartedError) {
      console.error(`already running: ${err.workflowId}; follow it with: labwright watch ${err.workflowId}`);
    } else console.error(`labwright: ${(err as Error).message}`);
    process.exit(1);
  },
);
