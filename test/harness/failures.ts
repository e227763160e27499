/** What a test expects a promise to reject with. */
import { WorkflowFailedError } from '@temporalio/client';
import { ApplicationFailure } from '@temporalio/common';
import { expect } from 'vitest';

/** The error `p` rejects with, expected to be a `type`. */
export async function rejectionOf<T>(p: Promise<unknown>, type: abstract new (...args: never[]) => T): Promise<T> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(type);
  return err as T;
}

/** What an activity threw, as the ApplicationFailure Temporal would see. */
export const activityFailure = (p: Promise<unknown>): Promise<ApplicationFailure> => rejectionOf(p, ApplicationFailure);

/** How a workflow run failed. */
export const workflowFailure = (run: Promise<unknown>): Promise<WorkflowFailedError> =>
  rejectionOf(run, WorkflowFailedError);
