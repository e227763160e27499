/**
 * Default timeouts and retry policies, one per kind of activity. Workflows pick a profile
 * instead of inventing numbers, so every API call backs off the same way.
 */
import type { ActivityOptions, LocalActivityOptions } from '@temporalio/common';
import { NON_RETRYABLE_ERROR_TYPES } from './errors.js';

/** One short call to an external API (PVE, EC2, Kubernetes). */
export const apiCall: ActivityOptions = {
  startToCloseTimeout: '60 seconds',
  retry: {
    initialInterval: '1 second',
    backoffCoefficient: 2,
    maximumInterval: '30 seconds',
    maximumAttempts: 10,
    nonRetryableErrorTypes: NON_RETRYABLE_ERROR_TYPES,
  },
};

/**
 * One look (a single short request) on a latency-critical path, run as a local activity: in the
 * worker, inside the workflow task, with no round trip through the server (its result is recorded
 * as a marker). One attempt and a short timeout, because a local activity holds the workflow's
 * handlers until it ends; the caller falls back to a regular activity when the look fails.
 */
export const quickLook: LocalActivityOptions = {
  startToCloseTimeout: '5 seconds',
  retry: { maximumAttempts: 1 },
};

/** Polls until something external is reached; heartbeats so a dead worker is noticed quickly. */
export const waitFor: ActivityOptions = {
  startToCloseTimeout: '30 minutes',
  heartbeatTimeout: '30 seconds',
  retry: {
    initialInterval: '2 seconds',
    backoffCoefficient: 2,
    maximumInterval: '1 minute',
    maximumAttempts: 5,
    nonRetryableErrorTypes: NON_RETRYABLE_ERROR_TYPES,
  },
};

/** A long external program (packer, talosctl) that reports progress through heartbeats. */
export const longProgram: ActivityOptions = {
  startToCloseTimeout: '2 hours',
  heartbeatTimeout: '1 minute',
  cancellationType: 'WAIT_CANCELLATION_COMPLETED',
  retry: {
    initialInterval: '10 seconds',
    backoffCoefficient: 2,
    maximumInterval: '5 minutes',
    maximumAttempts: 3,
    nonRetryableErrorTypes: NON_RETRYABLE_ERROR_TYPES,
  },
};

/**
 * A one-shot step (etcd bootstrap, a restore): its guard makes a retry safe, but never loops. It
 * heartbeats: a call lost with its worker or its Temporal server (an activity task the server
 * handed out as it died) is retried after the heartbeat timeout, not after start-to-close.
 */
export const oneShot: ActivityOptions = {
  startToCloseTimeout: '10 minutes',
  heartbeatTimeout: '30 seconds',
  retry: {
    initialInterval: '5 seconds',
    backoffCoefficient: 2,
    maximumInterval: '1 minute',
    maximumAttempts: 3,
    nonRetryableErrorTypes: NON_RETRYABLE_ERROR_TYPES,
  },
};

/**
 * `profile` with a heartbeat timeout of `seconds`, for activities that heartbeat while they run
 * (talosctl calls, waits): a call in flight on a worker that died is retried on another after
 * `seconds` instead of after the profile's start-to-close timeout. `undefined`: the profile as is.
 */
export function withHeartbeat(profile: ActivityOptions, seconds: number | undefined): ActivityOptions {
  return seconds === undefined ? profile : { ...profile, heartbeatTimeout: `${seconds} seconds` };
}
