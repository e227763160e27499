import { execFile } from 'node:child_process';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';
import { makeCa, signLeaf } from '../sim/pki.js';

const run = promisify(execFile);

describe('throw-away PKI of the local peers', () => {
  const dirs: string[] = [];
  afterAll(async () => Promise.all(dirs.map((d) => fs.rm(d, { recursive: true, force: true }))));

  it('signs many leaves of one CA at once, each valid and with a serial of its own', async () => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'labwright-pki-'));
    dirs.push(dir);
    await makeCa(dir, 'concurrency test CA');
    const names = Array.from({ length: 16 }, (_, i) => `leaf${i}`);
    // As the kube-apiserver harness does for its serving and admin certificates, only more of them.
    await Promise.all(
      names.map((name, i) =>
        signLeaf(dir, name, `/CN=${name}`, i % 2 ? { client: true } : { server: ['IP:127.0.0.1'] }),
      ),
    );
    const serials = await Promise.all(
      names.map(async (name) => {
        const crt = path.join(dir, `${name}.crt`);
        const verified = await run('openssl', ['verify', '-CAfile', path.join(dir, 'ca.crt'), crt]);
        expect(verified.stdout.trim()).toBe(`${crt}: OK`);
        return (await run('openssl', ['x509', '-in', crt, '-noout', '-serial'])).stdout.trim();
      }),
    );
    expect(new Set(serials).size).toBe(names.length);
    expect(await fs.readdir(dir)).not.toContain('ca.srl');
  });
});
