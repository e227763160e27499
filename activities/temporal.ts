/**
 * Temporal itself as an external system: what the server recorded about a workflow, read by the
 * workflow through an activity (the workflow API does not expose it).
 */
import { Context } from '@temporalio/activity';
import { nonRetryable } from '../common/errors.js';

export function createTemporalActivities() {
  return {
    /** The running executions of `workflowType` whose LabwrightResource is `resource` (visibility). */
    async temporalRunningWorkflows(args: {
      workflowType: string;
      resource: string;
    }): Promise<Array<{ workflowId: string; runId: string; startTime: string }>> {
      if (!/^[a-zA-Z0-9._/-]+$/.test(args.workflowType + args.resource)) {
        throw nonRetryable(
          'validation',
          `workflow type ${args.workflowType} or resource ${args.resource}: unexpected characters`,
        );
      }
      const query = `WorkflowType = '${args.workflowType}' AND ExecutionStatus = 'Running' AND LabwrightResource = '${args.resource}'`;
      const out: Array<{ workflowId: string; runId: string; startTime: string }> = [];
      for await (const w of Context.current().client.workflow.list({ query })) {
        out.push({ workflowId: w.workflowId, runId: w.runId, startTime: w.startTime.toISOString() });
      }
      return out;
    },

    /**
     * The identity of the client that sent update `updateId` to this activity's workflow, as the
     * server recorded it when it accepted the update (acceptedRequest.meta.identity).
     */
    async temporalUpdateCaller(args: { updateId: string }): Promise<{ identity: string }> {
      const ctx = Context.current();
      const { workflowExecution, workflowNamespace } = ctx.info;
      if (!workflowExecution) throw nonRetryable('validation', 'temporalUpdateCaller runs only for a workflow');
      let nextPageToken: Uint8Array | undefined;
      do {
        const page = await ctx.client.workflowService.getWorkflowExecutionHistory({
          namespace: workflowNamespace,
          execution: workflowExecution,
          ...(nextPageToken ? { nextPageToken } : {}),
        });
        for (const e of page.history?.events ?? []) {
          const meta = e.workflowExecutionUpdateAcceptedEventAttributes?.acceptedRequest?.meta;
          if (meta?.updateId === args.updateId) return { identity: meta.identity || 'unknown client' };
        }
        nextPageToken = page.nextPageToken?.length ? page.nextPageToken : undefined;
      } while (nextPageToken);
      throw nonRetryable(
        'notFound',
        `update ${args.updateId} is not in the history of ${workflowExecution.workflowId}`,
      );
    },
  };
}

export type TemporalActivities = ReturnType<typeof createTemporalActivities>;
