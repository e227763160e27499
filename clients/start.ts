/**
 * Typed helpers to start labwright's workflows from any program: only the workflows the worker
 * registers (the catalog), the input checked against the workflow's schema first, and the workflow
 * ID the resource's deterministic one. Both checks run before anything is started.
 */
import type { Client, WorkflowHandleWithFirstExecutionRunId } from '@temporalio/client';
import { RESOURCE_KEY } from '../common/search-attributes.js';
import { describeIssues } from '../common/validation.js';
import { taskQueue as defaultTaskQueue } from '../lib/temporal.js';
import { CATALOG, type CatalogEntry } from './catalog.js';

export class InputError extends Error {
  constructor(
    readonly workflow: string,
    readonly problems: string[],
    /** The file the input came from, named in the message. */
    readonly file?: string,
  ) {
    super(`invalid ${workflow} input${file ? ` in ${file}` : ''}:\n${problems.map((p) => `  - ${p}`).join('\n')}`);
    this.name = 'InputError';
  }
}

export class UnknownWorkflowError extends Error {
  constructor(readonly workflow: string) {
    super(
      `unknown workflow ${workflow}: the labwright worker registers ${Object.keys(CATALOG).join(', ')}; nothing was started`,
    );
    this.name = 'UnknownWorkflowError';
  }
}

export interface StartOptions {
  taskQueue?: string;
  /** Overrides the derived workflow ID. */
  workflowId?: string;
  /** Where the input came from, for error messages. */
  inputFile?: string;
}

export function findWorkflow(workflow: string): CatalogEntry {
  const entry = Object.hasOwn(CATALOG, workflow) ? CATALOG[workflow] : undefined;
  if (!entry) throw new UnknownWorkflowError(workflow);
  return entry;
}

export function workflowIdFor(workflow: string, input: unknown, inputFile?: string): string {
  const entry = findWorkflow(workflow);
  const parsed = entry.input.safeParse(input);
  if (!parsed.success) throw new InputError(workflow, describeIssues(parsed.error), inputFile);
  return entry.workflowId(parsed.data);
}

export async function startWorkflow(
  client: Client,
  workflow: string,
  input: unknown,
  opts: StartOptions = {},
): Promise<WorkflowHandleWithFirstExecutionRunId> {
  // Validates the input even when the caller names the ID.
  const derivedId = workflowIdFor(workflow, input, opts.inputFile);
  const workflowId = opts.workflowId ?? derivedId;
  const resource = workflowId.split('/').slice(1).join('/') || workflowId;
  return client.workflow.start(workflow, {
    taskQueue: opts.taskQueue ?? defaultTaskQueue(),
    workflowId,
    args: [input],
    typedSearchAttributes: [{ key: RESOURCE_KEY, value: resource }],
  });
}
