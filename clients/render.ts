/** Renders a workflow's `progress` for people: one line per step. */
import type { Progress, StepState } from '../common/progress.js';

const MARKERS: Record<StepState['status'], string> = {
  pending: '  ',
  running: '->',
  done: 'ok',
  skipped: '--',
  failed: '!!',
};

export function renderProgress(progress: Progress): string {
  const lines = progress.steps.map((s) => `  [${MARKERS[s.status]}] ${s.name}${s.detail ? `: ${s.detail}` : ''}`);
  if (progress.result) lines.push(`  => ${progress.result}`);
  return lines.join('\n');
}
