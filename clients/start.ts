/**
 * Typed helpers to start labwright's workflows from any program: the input is checked against the
 * workflow's schema first, and the workflow ID is the resource's deterministic one.
 */
import type { Client, WorkflowHandleWithFirstExecutionRunId } from '@temporalio/client';
import { RESOURCE_KEY } from '../common/search-attributes.js';
import { describeIssues } from '../common/validation.js';
import { taskQueue as defaultTaskQueue } from '../lib/temporal.js';
import { CATALOG } from './catalog.js';

export class InputError extends Error {
  constructor(
    readonly workflow: string,
    readonly problems: string[],
  ) {
    super(`invalid ${workflow} input:\n${problems.map((p) => `  - ${p}`).join('\n')}`);
    this.name = 'InputError';
  }
}

export interface StartOptions {
  taskQueue?: string;
  /** Required for workflows outside the catalog; overrides the derived ID otherwise. */
  workflowId?: string;
}

export function workflowIdFor(workflow: string, input: unknown): string {
  const entry = CATALOG[workflow];
  if (!entry) throw new Error(`unknown workflow ${workflow}; known: ${Object.keys(CATALOG).join(', ') || 'none'}`);
  const parsed = entry.input.safeParse(input);
  if (!parsed.success) throw new InputError(workflow, describeIssues(parsed.error));
  return entry.workflowId(parsed.data);
}

export async function startWorkflow(
  client: Client,
  workflow: string,
  input: unknown,
  opts: StartOptions = {},
): Promise<WorkflowHandleWithFirstExecutionRunId> {
  // Validates catalogued workflows' input even when the caller names the ID.
  const derivedId = CATALOG[workflow] ? workflowIdFor(workflow, input) : undefined;
  const workflowId = opts.workflowId ?? derivedId;
  if (!workflowId) throw new Error(`${workflow} is not a catalogued workflow: give its workflow ID (--id)`);
  const resource = workflowId.split('/').slice(1).join('/') || workflowId;
  return client.workflow.start(workflow, {
    taskQueue: opts.taskQueue ?? defaultTaskQueue(),
    workflowId,
    args: [input],
    typedSearchAttributes: [{ key: RESOURCE_KEY, value: resource }],
  });
}
