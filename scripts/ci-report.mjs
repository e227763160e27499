#!/usr/bin/env node
// Reads vitest's JSON report and prints the closing count; on failure, the failing tests by name
// with their first error lines, and the tail of every peer log their errors name (or, when none is
// named, of the run's shared peers), so a failed CI run can be diagnosed from its output alone.
//
//   node scripts/ci-report.mjs <results.json> <test-logs dir>
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';

const [resultsFile, logDir] = process.argv.slice(2);
const TAIL_LINES = 60;

function tail(file) {
  return readFileSync(file, 'utf8').split('\n').slice(-TAIL_LINES).join('\n');
}

function logsUnder(dir) {
  if (!dir || !existsSync(dir)) return [];
  return readdirSync(dir, { recursive: true })
    .map((f) => path.join(dir, String(f)))
    .filter((f) => f.endsWith('.log') && statSync(f).isFile());
}

/** Log files an error message names, by absolute path, that exist. */
function logsNamedIn(text) {
  const found = new Set();
  for (const m of text.matchAll(/(\/[^\s'"`()<>:,]+\.log)\b/g)) if (existsSync(m[1])) found.add(m[1]);
  return [...found];
}

if (!resultsFile || !existsSync(resultsFile)) {
  console.log(`no test report at ${resultsFile}: the runner stopped before it wrote one (see above)`);
  for (const log of logsUnder(logDir)) console.log(`\n--- tail of ${log} ---\n${tail(log)}`);
  console.log('0 passed, 1 failed');
  process.exit(1);
}

const report = JSON.parse(readFileSync(resultsFile, 'utf8'));
const failures = [];
for (const file of report.testResults ?? []) {
  const rel = path.relative(process.cwd(), file.name);
  const failed = (file.assertionResults ?? []).filter((a) => a.status === 'failed');
  for (const a of failed) failures.push({ name: `${rel} > ${a.fullName}`, text: (a.failureMessages ?? []).join('\n') });
  // A file that failed outside its tests (a hook, an import, a crashed fork).
  if (failed.length === 0 && file.status === 'failed')
    failures.push({ name: `${rel} (file)`, text: file.message ?? '' });
}

if (failures.length > 0) {
  console.log(`\n=== ${failures.length} failing test(s) ===`);
  const named = new Set();
  for (const f of failures) {
    console.log(`\n✗ ${f.name}`);
    console.log(
      f.text
        .split('\n')
        .slice(0, 12)
        .map((l) => `    ${l}`)
        .join('\n'),
    );
    for (const log of logsNamedIn(f.text)) named.add(log);
  }
  const logs = named.size > 0 ? [...named] : logsUnder(logDir).filter((f) => /temporal|kube|etcd/.test(f));
  for (const log of logs) console.log(`\n--- tail of ${log} ---\n${tail(log)}`);
  const others = logsUnder(logDir).filter((f) => !logs.includes(f));
  if (others.length > 0) console.log(`\nother peer logs of this run:\n${others.map((f) => `  ${f}`).join('\n')}`);
}

console.log(`${report.numPassedTests} passed, ${report.numFailedTests} failed`);
if (report.numTotalTests === 0 || report.numFailedTests > 0 || failures.length > 0) process.exit(1);
