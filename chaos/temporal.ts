/** Client calls that outlive a Temporal server restart: retried on a fresh connection until they answer. */
import type { Client } from '@temporalio/client';
import { WorkflowFailedError } from '@temporalio/client';
import { ApplicationFailure } from '@temporalio/common';
import type { ChaosLab } from './lab.js';

/** How long a call keeps retrying across outages before the matrix gives up on the run. */
const OUTAGE_LIMIT_MS = 15 * 60_000;

/**
 * Runs `call` until it answers: connection and server errors (the server is being restarted)
 * are retried on a new connection; a workflow's failure or an update's refusal is an answer.
 */
export async function retrying<T>(lab: ChaosLab, call: (client: Client) => Promise<T>): Promise<T> {
  const deadline = Date.now() + OUTAGE_LIMIT_MS;
  for (;;) {
    try {
      return await call(await lab.client());
    } catch (err) {
      if (err instanceof WorkflowFailedError || err instanceof ApplicationFailure || Date.now() > deadline) throw err;
      if ((err as Error).name === 'WorkflowUpdateFailedError') throw err;
      await new Promise((r) => setTimeout(r, 500));
    }
  }
}
