/**
 * The DR report of a plan over its last runs: a text table for the terminal and a self-contained
 * HTML page (inline CSS and SVG, nothing fetched) with the RTO and RPO trend. `labwright dr report`
 * prints and writes it; the worker writes it beside every run's report (activities/dr-reports.ts).
 */
import { formatDuration, type DrReport } from '../common/dr-restore.js';

/** How many runs the table and the trend show by default. */
export const REPORT_RUNS = 12;

export interface ReportRow {
  finishedAt: string;
  verdict: 'ok' | 'FAILED';
  rto: string;
  rpo: string;
  cleanup: string;
  targets: string;
  workflowId: string;
}

/** One row per run, oldest first, the figures as the run's summary gives them. */
export function reportRows(reports: DrReport[]): ReportRow[] {
  return reports.map((r) => ({
    finishedAt: r.finishedAt.replace(/\.\d+Z$/, 'Z'),
    verdict: r.ok ? 'ok' : 'FAILED',
    rto: formatDuration(r.totalRtoMs),
    rpo: formatDuration(r.maxRpoMs),
    cleanup: formatDuration(r.cleanupMs),
    targets: r.targets.map((t) => `${t.target}${t.ok ? '' : ' (failed)'}`).join(', '),
    workflowId: r.workflowId,
  }));
}

const COLUMNS: Array<[keyof ReportRow, string]> = [
  ['finishedAt', 'finished'],
  ['verdict', 'verdict'],
  ['rto', 'RTO'],
  ['rpo', 'RPO'],
  ['cleanup', 'cleanup'],
  ['targets', 'targets'],
];

/** The runs as an aligned text table. */
export function reportTable(plan: string, mode: string, reports: DrReport[]): string {
  if (reports.length === 0) return `no ${mode} reports of plan ${plan}`;
  const rows = reportRows(reports);
  const widths = COLUMNS.map(([key, title]) => Math.max(title.length, ...rows.map((r) => r[key].length)));
  const line = (cells: string[]): string =>
    cells
      .map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!)))
      .join('  ')
      .trimEnd();
  return [
    `${mode} ${plan}: the last ${reports.length} run(s)`,
    line(COLUMNS.map(([, title]) => title)),
    ...rows.map((r) => line(COLUMNS.map(([key]) => r[key]))),
  ].join('\n');
}

const escape = (text: string): string =>
  text.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);

const W = 640;
const H = 180;
const PAD = { left: 72, right: 56, top: 26, bottom: 36 };

/** A line chart of one figure over the runs, each point labelled with its value. */
function trendChart(title: string, cls: string, reports: DrReport[], value: (r: DrReport) => number): string {
  const values = reports.map(value);
  const max = Math.max(...values, 1);
  const step = reports.length > 1 ? (W - PAD.left - PAD.right) / (reports.length - 1) : 0;
  const x = (i: number): number => PAD.left + (reports.length > 1 ? i * step : (W - PAD.left - PAD.right) / 2);
  const y = (v: number): number => PAD.top + (1 - v / max) * (H - PAD.top - PAD.bottom);
  const points = values.map((v, i) => `${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(' ');
  const grid = [0, 0.5, 1]
    .map((f) => {
      const gy = y(max * f).toFixed(1);
      return (
        `<line class="grid" x1="${PAD.left}" x2="${W - PAD.right}" y1="${gy}" y2="${gy}"/>` +
        `<text class="axis" x="${PAD.left - 6}" y="${gy}" text-anchor="end" dominant-baseline="middle">${escape(formatDuration(max * f))}</text>`
      );
    })
    .join('');
  const dots = reports
    .map((r, i) => {
      const v = values[i]!;
      const label = escape(formatDuration(v));
      return (
        `<g class="point${r.ok ? '' : ' failed'}" data-run="${escape(r.workflowId)}" data-ms="${v}">` +
        `<circle cx="${x(i).toFixed(1)}" cy="${y(v).toFixed(1)}" r="4"><title>${escape(r.finishedAt)}: ${label}</title></circle>` +
        `<text class="value" x="${x(i).toFixed(1)}" y="${(y(v) - 9).toFixed(1)}" text-anchor="middle">${label}</text>` +
        `<text class="axis" x="${x(i).toFixed(1)}" y="${H - PAD.bottom + 16}" text-anchor="middle">${escape(r.finishedAt.slice(5, 16).replace('T', ' '))}</text>` +
        `</g>`
      );
    })
    .join('');
  return (
    `<figure class="${cls}"><figcaption>${escape(title)}</figcaption>` +
    `<svg viewBox="0 0 ${W} ${H}" width="${W}" height="${H}" role="img" aria-label="${escape(title)}">` +
    `${grid}<polyline class="line" points="${points}"/>${dots}</svg></figure>`
  );
}

/** The HTML page: the trend of RTO and RPO over the runs, and the table of runs. */
export function reportPage(plan: string, mode: string, reports: DrReport[]): string {
  const rows = reportRows(reports);
  const title = `DR ${mode} report: ${plan}`;
  const last = reports.at(-1);
  const table =
    `<table><thead><tr>${COLUMNS.map(([, t]) => `<th>${t}</th>`).join('')}</tr></thead><tbody>` +
    rows
      .map(
        (r) =>
          `<tr class="${r.verdict === 'ok' ? 'ok' : 'failed'}">${COLUMNS.map(([k]) => `<td>${escape(r[k])}</td>`).join('')}</tr>`,
      )
      .join('') +
    `</tbody></table>`;
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>${escape(title)}</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #1f2328; background: #fff; }
h1 { font-size: 20px; margin: 0 0 4px; } p.summary { margin: 0 0 16px; color: #57606a; }
figure { margin: 0 0 12px; } figcaption { font-weight: 600; margin-bottom: 2px; }
svg .line { fill: none; stroke: #0969da; stroke-width: 2; } .rpo svg .line { stroke: #8250df; }
svg circle { fill: #0969da; } .rpo svg circle { fill: #8250df; } svg .failed circle { fill: #cf222e; }
svg .grid { stroke: #d0d7de; stroke-dasharray: 3 3; } svg .axis { font-size: 11px; fill: #57606a; }
svg .value { font-size: 11px; fill: #1f2328; font-weight: 600; }
table { border-collapse: collapse; margin-top: 8px; } th, td { padding: 4px 10px; border-bottom: 1px solid #d0d7de; text-align: left; }
tr.failed td { color: #cf222e; }
</style></head>
<body>
<h1>${escape(title)}</h1>
<p class="summary">${reports.length} run(s)${last ? `; the last: ${escape(last.summary)}` : ''}</p>
${reports.length > 0 ? trendChart('RTO (restore start to the last verification)', 'rto', reports, (r) => r.totalRtoMs) : ''}
${reports.length > 0 ? trendChart('RPO (age of the oldest backup restored)', 'rpo', reports, (r) => r.maxRpoMs) : ''}
${table}
</body></html>
`;
}
