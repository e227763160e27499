/**
 * What child programs get from the worker (lib/processes.ts): talosctl runs with the worker's
 * PATH, HOME and proxy settings only, never its credentials; private temp folders a killed worker
 * left are removed by the next one.
 */
import { spawn } from 'node:child_process';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTalosActivities } from '../activities/talos.js';
import { PrivateTemp, spawnGroup, stopProcess } from '../lib/processes.js';
import { SecretStore } from '../lib/secrets.js';

let dir: string;
beforeAll(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'labwright-processes-'));
});
afterAll(async () => {
  await fs.rm(dir, { recursive: true, force: true });
});

describe('child processes', () => {
  it("talosctl gets PATH, HOME and the proxies, not the worker's AWS keys or codec key", async () => {
    // A talosctl that prints the environment it was given.
    const talosctl = path.join(dir, 'talosctl-env');
    await fs.writeFile(talosctl, '#!/bin/sh\nenv\n', { mode: 0o755 });
    const saved = { ...process.env };
    Object.assign(process.env, {
      AWS_SECRET_ACCESS_KEY: 'worker-aws-secret',
      LABWRIGHT_CODEC_KEY: 'worker-codec-key',
      HTTPS_PROXY: 'http://127.0.0.1:3128',
    });
    try {
      const talos = createTalosActivities({ talosctl, secrets: new SecretStore(path.join(dir, 'secrets')) });
      const env = await talos.talosClientVersion();
      expect(env).toMatch(/^PATH=/m);
      expect(env).toMatch(/^HOME=/m);
      expect(env).toContain('HTTPS_PROXY=http://127.0.0.1:3128');
      expect(env).not.toContain('worker-aws-secret');
      expect(env).not.toContain('worker-codec-key');
    } finally {
      process.env = saved;
    }
  });

  it("removes a killed process's private temp folder when the next one starts, and keeps a live one's", async () => {
    const root = path.join(dir, 'tmp');
    // A process that made its folder and a secret file in it, then was killed.
    const dead = spawn('sleep', ['30']);
    const deadDir = path.join(root, String(dead.pid), 'talosctl-x');
    await fs.mkdir(deadDir, { recursive: true });
    await fs.writeFile(path.join(deadDir, 'talosconfig'), 'client key', { mode: 0o600 });
    dead.kill('SIGKILL');
    await new Promise((r) => dead.once('exit', r));
    // A worker that is still running has its own.
    const alive = spawn('sleep', ['30']);
    const aliveDir = path.join(root, String(alive.pid), 'talosctl-y');
    await fs.mkdir(aliveDir, { recursive: true });
    try {
      const temp = new PrivateTemp(root);
      const seen = await temp.run('talosctl-', async (d) => {
        await fs.writeFile(path.join(d, 'talosconfig'), 'x');
        return (await fs.stat(d)).mode & 0o777;
      });
      expect(seen).toBe(0o700);
      expect(await fs.readdir(root)).toEqual(expect.arrayContaining([String(alive.pid), String(process.pid)]));
      expect(await fs.readdir(root)).not.toContain(String(dead.pid));
      expect(await fs.readdir(path.join(root, String(process.pid)))).toEqual([]);
    } finally {
      alive.kill('SIGKILL');
    }
  });

  it('stopProcess returns once every process of the group is gone, not only its leader', async () => {
    // A leader that leaves at SIGTERM, and a helper of its that ignores it and keeps writing
    // into a folder the caller removes next (what Chromium's helpers do with its profile).
    const out = await fs.mkdtemp(path.join(dir, 'group-'));
    const leader = spawnGroup('sh', [
      '-c',
      `(trap '' TERM; while :; do date > "${out}/helper.$$"; done) & trap 'exit 0' TERM; while :; do sleep 0.05; done`,
    ]);
    await expect.poll(async () => (await fs.readdir(out)).length, { timeout: 10_000 }).toBeGreaterThan(0);
    await stopProcess(leader);
    expect(() => process.kill(-leader.pid!, 0)).toThrow(expect.objectContaining({ code: 'ESRCH' }));
    await fs.rm(out, { recursive: true });
  });
});
