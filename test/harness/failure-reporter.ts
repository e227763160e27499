/**
 * A vitest reporter for CI: writes the run's counts and every failure, with its error messages and
 * stacks, to the JSON file named by LABWRIGHT_TEST_REPORT, for scripts/ci-report.mjs to print.
 * (vitest's JSON reporter replaces a timeout's message by a bare stack, losing the one line that
 * says what happened.)
 */
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import type { Reporter, TestModule } from 'vitest/node';

export interface FailureReport {
  passed: number;
  failed: number;
  skipped: number;
  failures: { name: string; errors: { message: string; stack?: string }[] }[];
}

interface ReportedError {
  message: string;
  stack?: string;
  cause?: unknown;
  /** An assertion's expected/received diff, as vitest prints it. */
  diff?: string;
}
type Errors = readonly ReportedError[];

/** The message with its causes: a workflow's failure says little until its cause's cause does. */
function withCauses(e: ReportedError): string {
  const lines = [e.message];
  for (let c = e.cause as ReportedError | undefined, depth = 0; c && depth < 5; c = c.cause as ReportedError, depth++) {
    lines.push(`caused by: ${c.message}`);
  }
  // Without the terminal's colour codes: CI logs show them as noise.
  if (e.diff) lines.push(e.diff.replace(/\x1b\[[0-9;]*m/g, ''));
  return lines.join('\n');
}
const plain = (errors: Errors) => errors.map((e) => ({ message: withCauses(e), stack: e.stack }));

export default class FailureReporter implements Reporter {
  onTestRunEnd(modules: readonly TestModule[], unhandled: Errors): void {
    const out = process.env.LABWRIGHT_TEST_REPORT;
    if (!out) return;
    const report: FailureReport = { passed: 0, failed: 0, skipped: 0, failures: [] };
    for (const mod of modules) {
      const file = path.relative(process.cwd(), mod.moduleId);
      for (const test of mod.children.allTests()) {
        const result = test.result();
        if (result.state === 'passed') report.passed++;
        else if (result.state === 'skipped') report.skipped++;
        else if (result.state === 'failed') {
          report.failed++;
          report.failures.push({ name: `${file} > ${test.fullName}`, errors: plain(result.errors) });
        }
      }
      // Failures outside a test: an import, a beforeAll hook, a crashed fork.
      if (mod.errors().length > 0) report.failures.push({ name: `${file} (file)`, errors: plain(mod.errors()) });
      for (const suite of mod.children.allSuites()) {
        if (suite.errors().length > 0) {
          report.failures.push({ name: `${file} > ${suite.fullName} (hooks)`, errors: plain(suite.errors()) });
        }
      }
    }
    if (unhandled.length > 0) report.failures.push({ name: 'unhandled errors', errors: plain(unhandled) });
    writeFileSync(out, JSON.stringify(report, null, 2));
  }
}
