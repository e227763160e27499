/**
 * What every bench shares: percentiles, the printed table (labwright beside its baseline, with the
 * ratio), and its section of docs/performance.md, rewritten at each run with the machine, the
 * command and the date. Benches measure; nothing here passes or fails on a number.
 */
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { projectRoot } from '../lib/paths.js';

export const PERFORMANCE_DOC = path.join(projectRoot, 'docs', 'performance.md');

export function pct(samples: number[], p: number): number {
  const sorted = [...samples].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))] ?? NaN;
}

/** One measured quantity: labwright's samples, the baseline's, and the target (on labwright's p99) if any. */
export interface Row {
  name: string;
  unit: string;
  ours: number[];
  baseline: number[];
  /** What the baseline is, for the table. */
  baselineIs?: string;
  /** Target on labwright's p99 (`below`, in `unit`) or on the p99 ratio to the baseline (`ratioBelow`). */
  target?: { below: number } | { ratioBelow: number };
}

const fmt = (n: number, unit: string): string =>
  Number.isNaN(n) ? '–' : n.toFixed(unit === 'µs' ? 2 : unit === 'x' ? 2 : n >= 100 ? 0 : 1);

function cells(r: Row): string[] {
  const [o50, o99, b50, b99] = [pct(r.ours, 50), pct(r.ours, 99), pct(r.baseline, 50), pct(r.baseline, 99)];
  const ratio = (a: number, b: number) => (b > 0 ? `${(a / b).toFixed(2)}x` : '–');
  const met = (ok: boolean) => (ok ? 'met' : 'MISSED');
  const target = !r.target
    ? ''
    : 'below' in r.target
      ? `p99 < ${r.target.below} ${r.unit}: ${met(o99 < r.target.below)}`
      : `ratio ≤ ${r.target.ratioBelow}: ${met(o99 / b99 <= r.target.ratioBelow)}`;
  return [
    r.name,
    r.unit,
    fmt(o50, r.unit),
    fmt(o99, r.unit),
    fmt(b50, r.unit),
    fmt(b99, r.unit),
    ratio(o50, b50),
    ratio(o99, b99),
    target,
  ];
}

const HEAD = ['measure', 'unit', 'p50', 'p99', 'baseline p50', 'baseline p99', 'ratio p50', 'ratio p99', 'target'];

/** The rows as a fixed-width table for the terminal. */
export function printTable(title: string, rows: Row[], notes: string[] = []): void {
  const table = [HEAD, ...rows.map(cells)];
  const widths = HEAD.map((_, i) => Math.max(...table.map((r) => r[i]!.length)));
  console.log(`\n${title}`);
  for (const r of table)
    console.log(r.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  '));
  for (const n of notes) console.log(n);
}

export function machine(): string {
  const cpus = os.cpus();
  const load = os.loadavg().map((l) => l.toFixed(2));
  return `${cpus.length} × ${cpus[0]?.model.trim() ?? 'unknown CPU'}, ${Math.round(os.totalmem() / 1024 ** 3)} GiB, Node ${process.version}; load average at the end ${load.join(' ')}`;
}

/**
 * Rewrites this bench's section of docs/performance.md (between `<!-- bench:<name> -->` markers;
 * appended when missing): the latest run's table, machine, command and date.
 */
export async function writeSection(
  name: string,
  title: string,
  command: string,
  rows: Row[],
  notes: string[] = [],
): Promise<void> {
  const begin = `<!-- bench:${name} -->`;
  const end = `<!-- /bench:${name} -->`;
  const table = [
    `| ${HEAD.join(' | ')} |`,
    `|${HEAD.map((_, i) => (i < 1 ? '---' : '---:')).join('|')}|`,
    ...rows.map((r) => `| ${cells(r).join(' | ')} |`),
  ];
  const baselines = rows.filter((r) => r.baselineIs).map((r) => `- baseline of *${r.name}*: ${r.baselineIs}`);
  const section = [
    begin,
    `### ${title}`,
    '',
    `\`${command}\` — ${new Date().toISOString().replace(/\.\d+Z$/, 'Z')}, ${machine()}`,
    '',
    ...table,
    '',
    ...baselines,
    ...notes.map((n) => `- ${n}`),
    end,
  ].join('\n');
  let doc = await fs.readFile(PERFORMANCE_DOC, 'utf8').catch(() => '');
  const at = doc.indexOf(begin);
  const until = doc.indexOf(end);
  if (at >= 0 && until > at) doc = doc.slice(0, at) + section + doc.slice(until + end.length);
  else doc = `${doc.trimEnd()}\n\n${section}\n`;
  await fs.writeFile(PERFORMANCE_DOC, doc);
}

/** The command line this bench was run with, as a user would type it. */
function commandLine(): string {
  const file = path.relative(projectRoot, process.argv[1] ?? 'bench');
  return ['npx tsx', file, ...process.argv.slice(2)].join(' ');
}

/** Prints the bench's table and rewrites its section of docs/performance.md. */
export async function publish(name: string, title: string, rows: Row[], notes: string[]): Promise<void> {
  printTable(title, rows, notes);
  await writeSection(name, title, commandLine(), rows, notes);
}

/**
 * Runs a bench's main, then its clean-ups (peers, files) whatever happened, then exits (1 on a
 * failure): a client's idle connection must not keep a finished bench alive. Ctrl-C or SIGTERM
 * cleans up too, so an interrupted bench leaves no worker, server or moto behind.
 */
export function runBench(main: () => Promise<void>, cleanups: Array<() => Promise<unknown>>): void {
  let cleaning: Promise<void> | undefined;
  const cleanUpAndExit = (code?: number): Promise<void> =>
    (cleaning ??= (async () => {
      for (const c of cleanups) await c().catch(() => undefined);
      process.exit(code);
    })());
  for (const [signal, code] of [
    ['SIGINT', 130],
    ['SIGTERM', 143],
  ] as const) {
    process.once(signal, () => void cleanUpAndExit(code));
  }
  main()
    .catch((err: unknown) => {
      console.error(err);
      process.exitCode = 1;
    })
    .finally(() => cleanUpAndExit());
}
