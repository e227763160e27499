/** Metric names on both sides of a dashboard: what its PromQL queries, and what an endpoint exports. */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { projectRoot } from '../../lib/paths.js';

export const DASHBOARD_FILE = path.join(projectRoot, 'deploy', 'monitoring', 'grafana', 'dashboards', 'labwright.json');

interface Panel {
  title?: string;
  type: string;
  targets?: Array<{ expr?: string }>;
  panels?: Panel[];
}
export interface Dashboard {
  panels: Panel[];
  templating?: { list: Array<{ definition?: string }> };
}

export async function readDashboard(file = DASHBOARD_FILE): Promise<Dashboard> {
  return JSON.parse(await fs.readFile(file, 'utf8')) as Dashboard;
}

/** Every PromQL expression of the dashboard, by panel title (template variables as `$name`). */
export function dashboardExprs(d: Dashboard): Array<{ panel: string; expr: string }> {
  const out: Array<{ panel: string; expr: string }> = [];
  const walk = (panels: Panel[]): void => {
    for (const p of panels) {
      for (const t of p.targets ?? []) if (t.expr) out.push({ panel: p.title ?? p.type, expr: t.expr });
      walk(p.panels ?? []);
    }
  };
  walk(d.panels);
  for (const v of d.templating?.list ?? []) if (v.definition) out.push({ panel: 'variables', expr: v.definition });
  return out;
}

const PROMQL_WORDS = new Set(
  [
    'sum avg min max count stddev stdvar topk bottomk quantile count_values group by without on ignoring',
    'group_left group_right and or unless bool offset rate irate increase delta idelta deriv histogram_quantile',
    'time label_values abs clamp_min clamp_max',
  ]
    .join(' ')
    .split(' '),
);

/**
 * The metric names a PromQL expression reads: identifiers outside label matchers, strings,
 * ranges and grouping clauses that are neither functions nor keywords.
 */
export function metricNamesOf(expr: string): string[] {
  const bare = expr
    .replace(/\blabel_values\(([^,()]+),\s*\w+\)/g, '$1')
    .replace(/"(?:[^"\\]|\\.)*"/g, '""')
    .replace(/\{[^}]*\}/g, '')
    .replace(/\[[^\]]*\]/g, '')
    .replace(/\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, '')
    .replace(/\$\w+/g, '');
  const names = new Set<string>();
  for (const m of bare.matchAll(/([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?/g)) {
    if (m[2] || PROMQL_WORDS.has(m[1]!)) continue;
    names.add(m[1]!);
  }
  return [...names];
}

/**
 * The labels an expression selects on (`name{label=...}`: that metric) or groups by (`by (...)`:
 * any metric of the expression), with the metrics that must carry them.
 */
export function labelsOf(expr: string): Array<{ label: string; metrics: string[] }> {
  const out: Array<{ label: string; metrics: string[] }> = [];
  const all = metricNamesOf(expr);
  for (const m of expr.matchAll(/([A-Za-z_:][A-Za-z0-9_:]*)\{([^}]*)\}/g)) {
    for (const l of m[2]!.matchAll(/(\w+)\s*(?:=~|!~|!=|=)/g)) out.push({ label: l[1]!, metrics: [m[1]!] });
  }
  for (const m of expr.matchAll(/\bby\s*\(([^)]*)\)/g)) {
    for (const label of m[1]!.split(',').map((l) => l.trim())) out.push({ label, metrics: all });
  }
  return out;
}

/** Sample names of a Prometheus text exposition that have at least one sample. */
export function sampledNames(exposition: string): Set<string> {
  const names = new Set<string>();
  for (const line of exposition.split('\n')) {
    const m = /^([A-Za-z_:][A-Za-z0-9_:]*)[{ ]/.exec(line);
    if (m) names.add(m[1]!);
  }
  return names;
}

/** The samples of `name` with their labels, e.g. to check a value. */
export function samples(exposition: string, name: string): Array<{ labels: Record<string, string>; value: number }> {
  const out: Array<{ labels: Record<string, string>; value: number }> = [];
  for (const line of exposition.split('\n')) {
    const m = /^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]!] = l[2]!;
    out.push({ labels, value: Number(m[3]) });
  }
  return out;
}
