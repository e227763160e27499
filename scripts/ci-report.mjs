#!/usr/bin/env node
// Prints the closing count of a test run from test/harness/failure-reporter.ts's report; on failure,
// each failing test by name with its error, and the tail of every peer log the errors name (or,
// when none is named, of the run's shared peers), so a failed CI run can be diagnosed from its
// output alone.
//
//   node scripts/ci-report.mjs <report.json> <test-logs dir>
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';

const [reportFile, logDir] = process.argv.slice(2);
const TAIL_LINES = 60;

const tail = (file) => readFileSync(file, 'utf8').split('\n').slice(-TAIL_LINES).join('\n');
const indent = (text, lines) =>
  text
    .split('\n')
    .slice(0, lines)
    .map((l) => `    ${l}`)
    .join('\n');

function logsUnder(dir) {
  if (!dir || !existsSync(dir)) return [];
  return readdirSync(dir, { recursive: true })
    .map((f) => path.join(dir, String(f)))
    .filter((f) => f.endsWith('.log') && statSync(f).isFile());
}

/** Log files an error names by absolute path, that exist. */
function logsNamedIn(text) {
  const found = new Set();
  for (const m of text.matchAll(/(\/[^\s'"`()<>:,]+\.log)\b/g)) if (existsSync(m[1])) found.add(m[1]);
  return [...found];
}

/** The peers every test shares (test/harness/global-setup.ts): the dev server and the kube-apiserver. */
const sharedPeerLogs = () => logsUnder(logDir).filter((f) => /\/(temporal\.log|kube\/)/.test(f));

if (!reportFile || !existsSync(reportFile)) {
  console.log(`no test report at ${reportFile}: the run stopped before it wrote one (see above)`);
  for (const log of sharedPeerLogs()) console.log(`\n--- tail of ${log} ---\n${tail(log)}`);
  console.log('0 passed, 1 failed');
  process.exit(1);
}

const report = JSON.parse(readFileSync(reportFile, 'utf8'));
if (report.failures.length > 0) {
  console.log(`\n=== ${report.failures.length} failure(s) ===`);
  const named = new Set();
  for (const f of report.failures) {
    console.log(`\n✗ ${f.name}`);
    for (const e of f.errors) {
      console.log(indent(e.message, 40));
      // The frames in the project's own code say where; vitest's and the SDK's do not.
      const frames = (e.stack ?? '').split('\n').filter((l) => /^\s+at /.test(l) && !l.includes('node_modules'));
      if (frames.length > 0) console.log(indent(frames.join('\n'), 6));
      for (const log of logsNamedIn(`${e.message}\n${e.stack ?? ''}`)) named.add(log);
    }
  }
  const logs = named.size > 0 ? [...named] : sharedPeerLogs();
  for (const log of logs) console.log(`\n--- tail of ${log} ---\n${tail(log)}`);
  const others = logsUnder(logDir).filter((f) => !logs.includes(f));
  if (others.length > 0) console.log(`\nthe run's other peer logs:\n${others.map((f) => `  ${f}`).join('\n')}`);
}

// Again, last, by name only: CI may keep only the end of a long output.
for (const f of report.failures)
  console.log(`✗ ${f.name}: ${(f.errors[0]?.message ?? '').split('\n')[0].slice(0, 300)}`);
console.log(`${report.passed} passed, ${report.failed} failed`);
if (report.passed + report.failed === 0 || report.failures.length > 0) process.exit(1);
