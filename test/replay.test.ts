import { promises as fs } from 'node:fs';
import path from 'node:path';
import { DeterminismViolationError } from '@temporalio/workflow';
import { inject } from 'vitest';
import { describe, expect, it } from 'vitest';
import { projectRoot } from '../lib/paths.js';
import { HISTORIES_DIR, replayHistories } from './harness/histories.js';
import { testDataConverter } from './harness/temporal.js';

describe('recorded histories', () => {
  it('replay against the current workflow code without a determinism violation', async () => {
    const files = (await fs.readdir(HISTORIES_DIR)).filter((f) => f.endsWith('.json'));
    expect(files).toContain('steps-demo.json');
    const outcomes = await replayHistories(HISTORIES_DIR, {
      workflowBundle: { codePath: inject('workflowBundlePath') },
      dataConverter: testDataConverter,
    });
    expect(outcomes.map((o) => o.file).sort()).toEqual(files.sort());
    const failures = outcomes.filter((o) => o.error).map((o) => `${o.file}: ${o.error?.message}`);
    expect(failures).toEqual([]);
  });

  it('fail on a deliberately non-deterministic change', async () => {
    // .cache/ is missing in a fresh clone that keeps its built peers in LABWRIGHT_CACHE.
    await fs.mkdir(path.join(projectRoot, '.cache'), { recursive: true });
    const only = await fs.mkdtemp(path.join(projectRoot, '.cache', 'replay-'));
    try {
      await fs.copyFile(path.join(HISTORIES_DIR, 'steps-demo.json'), path.join(only, 'steps-demo.json'));
      const [outcome] = await replayHistories(only, {
        workflowsPath: path.join(projectRoot, 'test', 'fixtures', 'nondeterministic', 'index.ts'),
        dataConverter: testDataConverter,
      });
      expect(outcome?.error).toBeInstanceOf(DeterminismViolationError);
    } finally {
      await fs.rm(only, { recursive: true, force: true });
    }
  });
});
