/**
 * The error taxonomy every activity and workflow uses. Temporal decides whether to retry from
 * the failure's `type` and `nonRetryable` flag, so each kind maps to one stable type name.
 */
import { ApplicationFailure } from '@temporalio/common';

/** Failures that retrying cannot fix: bad input, 4xx, conflicts, missing things. */
export const NON_RETRYABLE = {
  validation: 'ValidationError',
  client: 'ClientError',
  notFound: 'NotFoundError',
  conflict: 'ConflictError',
  precondition: 'PreconditionFailed',
} as const;

/** Failures that are worth another try with backoff: 5xx, throttling, timeouts, dropped connections. */
export const RETRYABLE = {
  server: 'ServerError',
  throttled: 'ThrottledError',
  timeout: 'TimeoutError',
  connection: 'ConnectionError',
} as const;

export type NonRetryableKind = keyof typeof NON_RETRYABLE;
export type RetryableKind = keyof typeof RETRYABLE;

/** Error types listed in every retry policy so that Temporal stops at once on them. */
export const NON_RETRYABLE_ERROR_TYPES: string[] = Object.values(NON_RETRYABLE);

export function nonRetryable(kind: NonRetryableKind, message: string, details?: unknown): ApplicationFailure {
  return ApplicationFailure.create({
    type: NON_RETRYABLE[kind],
    message,
    nonRetryable: true,
    details: details === undefined ? undefined : [details],
  });
}

export function retryable(kind: RetryableKind, message: string, details?: unknown): ApplicationFailure {
  return ApplicationFailure.create({
    type: RETRYABLE[kind],
    message,
    nonRetryable: false,
    details: details === undefined ? undefined : [details],
  });
}

/**
 * Classifies an HTTP answer from any API (PVE, Kubernetes, EC2 over its SDK's status code).
 * 408 and 429 are the only 4xx that a later try can cure.
 */
export function failureForHttpStatus(status: number, message: string, details?: unknown): ApplicationFailure {
  if (status === 429) return retryable('throttled', message, details);
  if (status === 408) return retryable('timeout', message, details);
  if (status >= 500) return retryable('server', message, details);
  if (status === 404) return nonRetryable('notFound', message, details);
  if (status === 409) return nonRetryable('conflict', message, details);
  if (status === 412) return nonRetryable('precondition', message, details);
  return nonRetryable('client', message, details);
}

const CONNECTION_CODES = new Set([
  'ECONNRESET',
  'ECONNREFUSED',
  'ECONNABORTED',
  'EPIPE',
  'ETIMEDOUT',
  'EAI_AGAIN',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'UND_ERR_SOCKET',
  'UND_ERR_CONNECT_TIMEOUT',
  'UND_ERR_HEADERS_TIMEOUT',
  'UND_ERR_BODY_TIMEOUT',
]);

function errorCode(err: unknown): string | undefined {
  if (typeof err !== 'object' || err === null) return undefined;
  const record = err as { code?: unknown; cause?: unknown };
  if (typeof record.code === 'string') return record.code;
  return errorCode(record.cause);
}

/** True for errors a dropped or refused connection produces, at any depth of `cause`. */
export function isConnectionError(err: unknown): boolean {
  const code = errorCode(err);
  if (code !== undefined && CONNECTION_CODES.has(code)) return true;
  const message = err instanceof Error ? err.message : String(err);
  return /socket hang up|fetch failed|other side closed|network socket disconnected/i.test(message);
}

/**
 * Wraps anything an activity caught into a classified failure. Already-classified failures pass
 * through; unknown errors retry, because a bug shows up as repeated attempts in the UI rather
 * than a silently dropped step.
 */
export function classifyUnknown(err: unknown, what: string): ApplicationFailure {
  if (err instanceof ApplicationFailure) return err;
  const message = err instanceof Error ? err.message : String(err);
  if (isConnectionError(err)) return retryable('connection', `${what}: ${message}`);
  if (err instanceof Error && (err.name === 'TimeoutError' || err.name === 'AbortError')) {
    return retryable('timeout', `${what}: ${message}`);
  }
  return retryable('server', `${what}: ${message}`);
}
