/**
 * Progress reporting every workflow shares: a `progress` query with each step's state, the
 * current step in the Temporal UI's "current details", and the step as a search attribute.
 */
import * as wf from '@temporalio/workflow';
import { recordStep } from './metrics.js';
import { STEP_KEY } from './search-attributes.js';

export type StepStatus = 'pending' | 'running' | 'done' | 'skipped' | 'failed';

export interface StepState {
  name: string;
  status: StepStatus;
  detail?: string;
  startedAt?: string;
  endedAt?: string;
}

export interface Progress {
  workflow: string;
  steps: StepState[];
  current?: string;
  result?: string;
}

export const progressQuery = wf.defineQuery<Progress>('progress');

export class ProgressTracker {
  private readonly state: Progress;

  constructor(steps: readonly string[]) {
    this.state = {
      workflow: wf.workflowInfo().workflowType,
      steps: steps.map((name) => ({ name, status: 'pending' })),
    };
    wf.setHandler(progressQuery, () => this.state);
  }

  /** Marks a step running; steps not listed up front (per-node work, say) are appended. */
  start(name: string, detail?: string): void {
    const step = this.step(name);
    step.status = 'running';
    step.detail = detail;
    step.startedAt = new Date().toISOString();
    this.state.current = name;
    this.publish();
  }

  /** Updates what a running step is doing without changing its state. */
  detail(name: string, detail: string): void {
    this.step(name).detail = detail;
    this.publish();
  }

  done(name: string, detail?: string): void {
    this.finish(name, 'done', detail);
  }

  skip(name: string, detail: string): void {
    this.finish(name, 'skipped', detail);
  }

  fail(name: string, detail: string): void {
    this.finish(name, 'failed', detail);
  }

  /** Runs `body` as step `name`, marking it done or failed. */
  async run<T>(name: string, body: () => Promise<T>, describe?: (value: T) => string): Promise<T> {
    this.start(name);
    try {
      const value = await body();
      this.done(name, describe?.(value));
      return value;
    } catch (err) {
      this.fail(name, err instanceof Error ? err.message : String(err));
      throw err;
    }
  }

  /** The one-line outcome shown by `labwright status` once the workflow ends. */
  finishWith(result: string): void {
    this.state.result = result;
    this.state.current = undefined;
    wf.setCurrentDetails(result);
  }

  snapshot(): Progress {
    return this.state;
  }

  private step(name: string): StepState {
    let step = this.state.steps.find((s) => s.name === name);
    if (!step) {
      step = { name, status: 'pending' };
      this.state.steps.push(step);
    }
    return step;
  }

  private finish(name: string, status: 'done' | 'skipped' | 'failed', detail?: string): void {
    const step = this.step(name);
    step.status = status;
    if (detail !== undefined) step.detail = detail;
    step.endedAt = new Date().toISOString();
    // Only a step that was started has a duration (`labwright_step_duration_seconds`).
    if (step.startedAt && status !== 'skipped')
      recordStep(name, status, Date.parse(step.endedAt) - Date.parse(step.startedAt));
    // Steps may run side by side: the current one is then the latest still running.
    if (this.state.current === name)
      this.state.current = this.state.steps.findLast((s) => s.status === 'running')?.name;
    this.publish();
  }

  private publish(): void {
    const lines = this.state.steps.map((s) => `${marker(s.status)} ${s.name}${s.detail ? ` — ${s.detail}` : ''}`);
    wf.setCurrentDetails(lines.join('\n'));
    wf.upsertSearchAttributes([{ key: STEP_KEY, value: this.state.current ?? 'idle' }]);
  }
}

function marker(status: StepStatus): string {
  return { pending: '[ ]', running: '[>]', done: '[x]', skipped: '[-]', failed: '[!]' }[status];
}
