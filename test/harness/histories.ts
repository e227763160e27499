/**
 * Recorded histories: tests save a finished run's history under test/histories/, and the
 * replay test runs every saved history against the current workflow code.
 * Re-record after an intended change with LABWRIGHT_RECORD_HISTORIES=1. Next to each history,
 * `<name>.workflow-id` keeps the run's workflow ID: a workflow that checks its own ID
 * (talos-bootstrap/<cluster>) replays under the ID it ran with.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import type { WorkflowHandle } from '@temporalio/client';
import { historyFromJSON, historyToJSON } from '@temporalio/common/lib/proto-utils.js';
import { Worker, type ReplayWorkerOptions } from '@temporalio/worker';
import { projectRoot } from '../../lib/paths.js';
import { installQuietRuntime } from './temporal.js';

export const HISTORIES_DIR = path.join(projectRoot, 'test', 'histories');

/** Saves the history of a finished run, once (or again when re-recording is asked for). */
export async function recordHistory(handle: WorkflowHandle, name: string): Promise<void> {
  const file = path.join(HISTORIES_DIR, `${name}.json`);
  const exists = await fs.access(file).then(
    () => true,
    () => false,
  );
  if (exists && process.env.LABWRIGHT_RECORD_HISTORIES !== '1') return;
  const history = await handle.fetchHistory();
  await fs.mkdir(HISTORIES_DIR, { recursive: true });
  await fs.writeFile(file, `${JSON.stringify(JSON.parse(historyToJSON(history)), null, 1)}\n`);
  await fs.writeFile(path.join(HISTORIES_DIR, `${name}.workflow-id`), `${handle.workflowId}\n`);
}

export interface ReplayOutcome {
  file: string;
  error?: Error;
}

/** Replays every history in `dir` against the workflows in `options`; returns one outcome each. */
export async function replayHistories(dir: string, options: ReplayWorkerOptions): Promise<ReplayOutcome[]> {
  installQuietRuntime();
  const files = (await fs.readdir(dir)).filter((f) => f.endsWith('.json')).sort();
  const histories = await Promise.all(
    files.map(async (file) => ({
      workflowId: await fs
        .readFile(path.join(dir, file.replace(/\.json$/, '.workflow-id')), 'utf8')
        .then((id) => id.trim())
        .catch(() => file),
      history: historyFromJSON(JSON.parse(await fs.readFile(path.join(dir, file), 'utf8'))),
    })),
  );
  // Results come in the order given; two histories may share a workflow ID (one cluster's runs).
  const outcomes: ReplayOutcome[] = [];
  for await (const result of Worker.runReplayHistories(options, histories)) {
    const i = outcomes.length;
    if (result.workflowId !== histories[i]!.workflowId) {
      throw new Error(
        `replay result ${i} is of ${result.workflowId}, not of ${files[i]}'s ${histories[i]!.workflowId}`,
      );
    }
    outcomes.push({ file: files[i]!, error: result.error as Error | undefined });
  }
  return outcomes;
}
