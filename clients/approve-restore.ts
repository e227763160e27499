/**
 * Approving (or rejecting) a DR restore's plan: the `approve` update. The workflow's validator
 * refuses a wrong or stale digest at once, with the reason, as the update's failure; who approved
 * is this client's Temporal identity, as the server records it.
 */
import type { Client } from '@temporalio/client';
import { approveUpdate, type ApproveRequest, type ApproveResult } from '../common/dr-restore.js';

export async function approveRestore(client: Client, workflowId: string, req: ApproveRequest): Promise<ApproveResult> {
  return client.workflow.getHandle(workflowId).executeUpdate(approveUpdate, { args: [req] });
}
