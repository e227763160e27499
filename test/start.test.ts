import { execFile } from 'node:child_process';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { ensureTool, freePort, portIsFree } from '../lib/processes.js';
import { spawnTs } from './harness/processes.js';

describe('npm start', () => {
  it('brings up the dev server, the simulated lab and the worker, says so, and stops on Ctrl-C', async () => {
    const stateDir = await fs.mkdtemp(path.join(os.tmpdir(), 'labwright-start-'));
    const port = await freePort();
    const codecPort = await freePort();
    const { child, output } = spawnTs('scripts/start.ts', {
      TEMPORAL_ADDRESS: '',
      LABWRIGHT_INVENTORY: '',
      LABWRIGHT_CODEC_KEY: '',
      LABWRIGHT_CODEC_KEY_FILE: '',
      LABWRIGHT_STATE_DIR: stateDir,
      LABWRIGHT_DEV_PORT: String(port),
      LABWRIGHT_UI_PORT: String(await freePort()),
      LABWRIGHT_CODEC_SERVER_PORT: String(codecPort),
      LABWRIGHT_METRICS_ADDRESS: `127.0.0.1:${await freePort()}`,
    });
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    try {
      await expect.poll(() => output(), { timeout: 120_000, interval: 500 }).toContain('"msg":"worker started"');
      expect(output()).toContain(`Temporal:  127.0.0.1:${port} (local dev server`);
      expect(output()).toContain('Lab:       SIMULATED — no real endpoints configured');
      expect(output()).toMatch(/proxmox: fakepve/);
      // The codec server the UI decodes through answers the codec protocol.
      expect(output()).toContain(`Codec:     http://127.0.0.1:${codecPort}`);
      const decoded = await fetch(`http://127.0.0.1:${codecPort}/decode`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'x-namespace': 'default' },
        body: JSON.stringify({ payloads: [] }),
      });
      expect(decoded.status).toBe(200);
      expect(output()).toContain('npx labwright start talosBootstrap --input');

      const temporal = ensureTool('ensure-temporal.sh');
      const list = await promisify(execFile)(temporal, ['workflow', 'list', '--address', `127.0.0.1:${port}`]);
      expect(list.stderr).toBe('');
      // The local key was generated with owner-only permissions.
      expect((await fs.stat(path.join(stateDir, 'codec.key'))).mode & 0o077).toBe(0);
      await fs.access(path.join(stateDir, 'temporal.db'));
    } finally {
      child.kill('SIGINT');
      await exited;
    }
    expect(await portIsFree(port)).toBe(true);
    await fs.rm(stateDir, { recursive: true, force: true });
  });
});
