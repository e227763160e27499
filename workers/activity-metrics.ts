/**
 * Failed activity attempts by error class (`labwright_activity_failures_total`): the retries an
 * operator sees as slow steps, by what went wrong (common/errors.ts types: ServerError,
 * ThrottledError, ConnectionError, … and whether Temporal will try again). The activity's meter
 * adds `activityType`, `namespace` and `taskQueue`.
 */
import type { Context } from '@temporalio/activity';
import { ApplicationFailure } from '@temporalio/common';
import type { ActivityInterceptorsFactory } from '@temporalio/worker';
import { NON_RETRYABLE_ERROR_TYPES } from '../common/errors.js';
import { METRICS } from '../common/metrics.js';

/** The failure's type as Temporal matches it against a retry policy, and whether it is retryable. */
export function errorClass(err: unknown): { errorType: string; retryable: boolean } {
  if (err instanceof ApplicationFailure) {
    const errorType = err.type ?? 'Error';
    return { errorType, retryable: !err.nonRetryable && !NON_RETRYABLE_ERROR_TYPES.includes(errorType) };
  }
  return { errorType: err instanceof Error ? err.name : 'Error', retryable: true };
}

function countFailures(ctx: Context) {
  const failures = ctx.metricMeter.createCounter(
    METRICS.activityFailures,
    undefined,
    'Failed activity attempts, by error type and whether Temporal retries them.',
  );
  return {
    async execute(input: unknown, next: (input: never) => Promise<unknown>): Promise<unknown> {
      try {
        return await next(input as never);
      } catch (err) {
        // A cancelled attempt (the workflow's decision, a worker shutting down) is no failure.
        if (!ctx.cancellationSignal.aborted) {
          const { errorType, retryable } = errorClass(err);
          failures.add(1, { errorType, retryable: String(retryable) });
        }
        throw err;
      }
    },
  };
}

export const activityFailureMetrics: ActivityInterceptorsFactory = (ctx) => ({ inbound: countFailures(ctx) });
