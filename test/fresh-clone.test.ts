// A fresh clone runs with nothing outside it: the committed HEAD, cloned into a temporary folder
// that holds nothing else (no sibling folder of any kind), runs `npm start` until the dev server
// answers `temporal workflow list` and the worker polls. Built peers come from the shared cache
// (LABWRIGHT_CACHE), as on a machine that ran labwright before; node_modules is this checkout's,
// linked in (npm install in the clone is what the README says to do, and is the same lock file).
import { execFile } from 'node:child_process';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { projectRoot } from '../lib/paths.js';
import { ensureTool } from '../lib/processes.js';
import { npmStart, startPorts, untilWorkerStarted } from './harness/processes.js';

const run = promisify(execFile);
let parent: string;
let clone: string;

beforeAll(async () => {
  parent = await fs.mkdtemp(path.join(os.tmpdir(), 'labwright-clone-'));
  clone = path.join(parent, 'labwright');
  const head = (await run('git', ['rev-parse', 'HEAD'], { cwd: projectRoot })).stdout.trim();
  await run('git', ['clone', '--quiet', '--no-checkout', projectRoot, clone]);
  await run('git', ['checkout', '--quiet', '--detach', head], { cwd: clone });
  await fs.symlink(path.join(projectRoot, 'node_modules'), path.join(clone, 'node_modules'));
});
afterAll(async () => {
  await fs.rm(parent, { recursive: true, force: true });
});

describe('a fresh clone', () => {
  it('has nothing beside it, and `npm start` there answers', async () => {
    expect(await fs.readdir(parent)).toEqual(['labwright']);
    const env: NodeJS.ProcessEnv = {
      TEMPORAL_ADDRESS: '',
      LABWRIGHT_INVENTORY: '',
      LABWRIGHT_CODEC_KEY: '',
      LABWRIGHT_CODEC_KEY_FILE: '',
      // Unset: the clone's own .labwright/ and the pinned CRDs, nothing pointing elsewhere.
      LABWRIGHT_STATE_DIR: undefined,
      LABWRIGHT_CRDS_DIR: undefined,
      // Every port its own: the codec server's default (8234) met another run's once, and npm start exited.
      ...(await startPorts()),
    };
    const child = npmStart(clone, env);
    try {
      await untilWorkerStarted(child);
      expect(child.output()).toContain('(with etcd, Flux/VolSync/snapshot CRDs)');
      const list = await run(ensureTool('ensure-temporal.sh'), [
        'workflow',
        'list',
        '--address',
        `127.0.0.1:${env.LABWRIGHT_DEV_PORT}`,
      ]);
      expect(list.stderr).toBe('');
      // Its state is its own.
      await fs.access(path.join(clone, '.labwright', 'temporal.db'));
    } finally {
      // Not when it has exited already: ESRCH here would hide why the lines above failed.
      if (child.child.exitCode === null && child.child.signalCode === null) process.kill(child.child.pid!, 'SIGTERM');
    }
    expect(await child.exited).toEqual({ code: 0, signal: null });
  }, 300_000);
});
