/**
 * Validation at the workflow boundary: input is checked before the first side effect, and a
 * failure names every offending field so the operator can fix all of them in one go.
 */
import type { z } from 'zod';
import { nonRetryable } from './errors.js';

type IssuePath = ReadonlyArray<PropertyKey>;

/** A key that reads unambiguously after a dot: no dots, colons, slashes or spaces of its own. */
const PLAIN_KEY = /^[A-Za-z_$][\w$-]*$/;

/**
 * Renders a zod path as `clusters.home.controlPlane[1].ip`; a key that is not plain is quoted,
 * as in `labels["node-role.kubernetes.io/edge"]` or `prices["g5.xlarge"].spot`.
 */
export function formatPath(root: string, path: IssuePath): string {
  let out = root;
  for (const key of path) {
    if (typeof key === 'number') out += `[${key}]`;
    else if (!PLAIN_KEY.test(String(key))) out += `[${JSON.stringify(String(key))}]`;
    else out += out === '' ? String(key) : `.${String(key)}`;
  }
  return out === '' ? '(root)' : out;
}

/**
 * One line per problem: `path: message`. A key no schema knows is a problem of its own path (a
 * typo'd `Name` at the top is `Name: ...`, not the root's).
 */
export function describeIssues(error: z.ZodError, root = ''): string[] {
  return error.issues.flatMap((issue) =>
    issue.code === 'unrecognized_keys'
      ? issue.keys.map(
          (key) => `${formatPath(root, [...issue.path, key])}: not a field here (names are case-sensitive); remove it`,
        )
      : [`${formatPath(root, issue.path)}: ${issue.message}`],
  );
}

/**
 * Parses a workflow's input; on failure throws a non-retryable ValidationError listing every
 * problem, so the workflow fails at once and touches nothing.
 */
export function parseInput<S extends z.ZodType>(schema: S, input: unknown, what: string): z.output<S> {
  const result = schema.safeParse(input);
  if (result.success) return result.data;
  const problems = describeIssues(result.error);
  throw nonRetryable('validation', `invalid ${what}: ${problems.join('; ')}`, { problems });
}
