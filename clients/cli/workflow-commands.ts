/** `labwright start | status | watch | list | cancel | workflows`: any labwright workflow run. */
import { WorkflowFailedError, type Client } from '@temporalio/client';
import type { Command } from 'commander';
import { RESOURCE_KEY, STEP_KEY } from '../../common/search-attributes.js';
import { CATALOG } from '../catalog.js';
import { findWorkflow, startWorkflow, workflowIdFor } from '../start.js';
import { emit, readJsonFile, sleep, withClient, withOutput, type Format } from './io.js';
import { readRun, renderRun, type RunView } from './run-view.js';

export function registerWorkflowCommands(program: Command): void {
  withOutput(
    program
      .command('start')
      .description('validate a workflow input, derive the workflow ID and start the workflow')
      .argument('<workflow>', `a registered workflow: ${Object.keys(CATALOG).join(', ')}`)
      .requiredOption('-i, --input <file>', 'the input as a JSON file')
      .option('--id <workflow-id>', 'a workflow ID instead of the derived one')
      .option('--task-queue <queue>', 'the task queue the worker polls (default LABWRIGHT_TASK_QUEUE or labwright)'),
  ).action(async (workflow: string, opts: { input: string; id?: string; taskQueue?: string; output: Format }) => {
    findWorkflow(workflow); // an unregistered type is refused before the input is even read
    const input = await readJsonFile(opts.input);
    workflowIdFor(workflow, input, opts.input); // and bad input before Temporal is contacted
    const handle = await withClient((client) =>
      startWorkflow(client, workflow, input, { workflowId: opts.id, taskQueue: opts.taskQueue, inputFile: opts.input }),
    );
    emit(opts.output, { workflow, workflowId: handle.workflowId, runId: handle.firstExecutionRunId }, () =>
      [
        `started ${workflow} as ${handle.workflowId} (run ${handle.firstExecutionRunId})`,
        `follow it with: labwright watch ${handle.workflowId}`,
      ].join('\n'),
    );
  });

  withOutput(
    program
      .command('status')
      .description("a run's state, its steps so far and its pending activities")
      .argument('<workflow-id>'),
  ).action(async (workflowId: string, opts: { output: Format }) => {
    const view = await withClient((client) => readRun(client, workflowId));
    emit(opts.output, view, () => renderRun(view));
  });

  withOutput(
    program
      .command('watch')
      .description(
        'follow a run to its end: redraws in place on a terminal, prints changes otherwise; exit 1 if it fails',
      )
      .argument('<workflow-id>')
      .option('--interval <seconds>', 'how often to look', '1'),
  ).action(async (workflowId: string, opts: { interval: string; output: Format }) => {
    process.exitCode = await withClient((client) =>
      watch(client, workflowId, Number(opts.interval) * 1000, opts.output),
    );
  });

  withOutput(
    program
      .command('list')
      .description('recent labwright runs, newest first, with the step each is on')
      .option('--type <workflow>', 'only this workflow type')
      .option(
        '--status <status>',
        'only runs in this state (Running, Completed, Failed, Canceled, Terminated, TimedOut)',
      )
      .option('--query <list-filter>', 'a Temporal list filter, e.g. "LabwrightResource = \'home\'"')
      .option('--limit <n>', 'at most this many', '20'),
  ).action(async (opts: { type?: string; status?: string; query?: string; limit: string; output: Format }) => {
    const filters = [
      opts.type && `WorkflowType = ${quote(opts.type)}`,
      opts.status && `ExecutionStatus = ${quote(opts.status)}`,
      opts.query && `(${opts.query})`,
    ].filter(Boolean);
    const limit = Number(opts.limit);
    const runs = await withClient(async (client) => {
      const found = [];
      for await (const w of client.workflow.list({ query: filters.join(' AND ') || undefined, pageSize: limit })) {
        found.push({
          workflowId: w.workflowId,
          runId: w.runId,
          type: w.type,
          status: w.status.name,
          startTime: w.startTime.toISOString(),
          closeTime: w.closeTime?.toISOString(),
          resource: w.typedSearchAttributes.get(RESOURCE_KEY),
          step: w.typedSearchAttributes.get(STEP_KEY),
        });
        if (found.length >= limit) break;
      }
      return found;
    });
    emit(opts.output, runs, () =>
      runs.length === 0
        ? 'no runs'
        : runs
            .map(
              (r) =>
                `${r.workflowId.padEnd(36)} ${r.type.padEnd(18)} ${r.status.padEnd(11)} ${r.startTime} ${r.step ?? ''}`,
            )
            .join('\n'),
    );
  });

  withOutput(
    program
      .command('cancel')
      .description('ask a run to cancel: it cleans up what it made and ends as cancelled')
      .argument('<workflow-id>'),
  ).action(async (workflowId: string, opts: { output: Format }) => {
    await withClient((client) => client.workflow.getHandle(workflowId).cancel());
    emit(opts.output, { workflowId, cancelRequested: true }, () =>
      [`cancellation of ${workflowId} requested`, `follow its cleanup with: labwright watch ${workflowId}`].join('\n'),
    );
  });

  withOutput(program.command('workflows').description('the workflows the labwright worker registers')).action(
    (opts: { output: Format }) => {
      const list = Object.entries(CATALOG).map(([name, entry]) => ({ name, description: entry.description }));
      emit(opts.output, list, () => list.map((w) => `${w.name.padEnd(20)} ${w.description}`).join('\n'));
    },
  );
}

function quote(value: string): string {
  return `'${value.replace(/'/g, "\\'")}'`;
}

/** Follows a run to its end; 0 when it completed. */
async function watch(client: Client, workflowId: string, intervalMs: number, format: Format): Promise<number> {
  const tty = format === 'text' && process.stdout.isTTY === true;
  let last = '';
  let drawnLines = 0;
  for (;;) {
    const view = await readRun(client, workflowId);
    if (format === 'json') {
      const text = JSON.stringify(view);
      if (text !== last) console.log(text);
      last = text;
    } else if (tty) {
      // Redrawn every time, so the heartbeat's age keeps moving.
      const frame = renderRun(view);
      if (drawnLines > 0) {
        process.stdout.moveCursor(0, -drawnLines);
        process.stdout.cursorTo(0);
        process.stdout.clearScreenDown();
      }
      process.stdout.write(`${frame}\n`);
      drawnLines = frame.split('\n').length;
    } else {
      const frame = renderRun(withoutHeartbeatTimes(view));
      if (frame !== last) console.log(`${new Date().toISOString()}\n${frame}`);
      last = frame;
    }
    if (view.status !== 'RUNNING') break;
    await sleep(intervalMs);
  }
  return outcome(client, workflowId, format);
}

/** Without the heartbeat times, a plain log gets a new entry only when something it shows changed. */
function withoutHeartbeatTimes(view: RunView): RunView {
  return { ...view, pendingActivities: view.pendingActivities.map((a) => ({ ...a, lastHeartbeatAt: undefined })) };
}

/** The end of a watch: one more line (JSON lines with -o json). */
async function outcome(client: Client, workflowId: string, format: Format): Promise<number> {
  const say = (value: object, text: string): void => console.log(format === 'json' ? JSON.stringify(value) : text);
  try {
    const result: unknown = await client.workflow.getHandle(workflowId).result();
    say({ workflowId, outcome: 'completed', result }, `completed: ${JSON.stringify(result)}`);
    return 0;
  } catch (err) {
    const cause = err instanceof WorkflowFailedError ? (err.cause ?? err) : err;
    const message = (cause as Error).message;
    say({ workflowId, outcome: 'failed', error: message }, `failed: ${message}`);
    return 1;
  }
}
