import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AesGcmCodec, keyIdOf } from '../lib/codec.js';
import { startCodecServer, type CodecServer } from '../lib/codec-server.js';
import { resolveToken } from '../clients/cli/codec-commands.js';
import { TEST_CODEC_KEY } from './harness/temporal.js';

const UI = 'http://127.0.0.1:8233';
const OLD_KEY = randomBytes(32);
const TOKEN = 'codec-token-for-tests-only';

/** A payload as the Temporal UI and CLI send it: protobuf JSON, metadata values and data in base64. */
function jsonPayload(value: unknown) {
  return {
    metadata: { encoding: Buffer.from('json/plain').toString('base64') },
    data: Buffer.from(JSON.stringify(value)).toString('base64'),
  };
}

let server: CodecServer;
let oldKeyServer: CodecServer;

beforeAll(async () => {
  // The current key encrypts; the old one, still in the ring, only decrypts (after a rotation).
  const ring = new Map([
    [keyIdOf(TEST_CODEC_KEY), TEST_CODEC_KEY],
    [keyIdOf(OLD_KEY), OLD_KEY],
  ]);
  server = await startCodecServer({
    codec: new AesGcmCodec(ring),
    namespace: 'default',
    token: TOKEN,
    allowedOrigins: [UI],
  });
  oldKeyServer = await startCodecServer({
    codec: new AesGcmCodec(new Map([[keyIdOf(OLD_KEY), OLD_KEY]])),
    namespace: 'default',
  });
});
afterAll(async () => {
  await server?.close();
  await oldKeyServer?.close();
});

async function call(
  s: CodecServer,
  route: string,
  payloads: unknown[],
  headers: Record<string, string> = { 'x-namespace': 'default', authorization: `Bearer ${TOKEN}` },
) {
  const res = await fetch(`${s.url}${route}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: JSON.stringify({ payloads }),
  });
  return {
    status: res.status,
    headers: res.headers,
    body: (await res.json()) as { payloads: typeof payloads; error?: string },
  };
}

describe('the codec server', () => {
  it('listens on loopback and round-trips payloads: /encode encrypts, /decode gives back the same JSON', async () => {
    expect(new URL(server.url).hostname).toBe('127.0.0.1');
    const plain = [jsonPayload({ cluster: 'home', step: 'store kubeconfig' }), jsonPayload('done')];
    const encoded = await call(server, '/encode', plain);
    expect(encoded.status).toBe(200);
    const [first] = encoded.body.payloads as Array<{ metadata: Record<string, string>; data: string }>;
    expect(Buffer.from(first!.metadata.encoding!, 'base64').toString()).toBe('binary/encrypted');
    expect(Buffer.from(first!.data, 'base64').toString()).not.toContain('store kubeconfig');
    const decoded = await call(server, '/decode', encoded.body.payloads);
    expect(decoded.status).toBe(200);
    expect(decoded.body.payloads).toEqual(plain);
  });

  it('decodes payloads written with an old key still in the ring, and names a key it does not have', async () => {
    const written = await call(oldKeyServer, '/encode', [jsonPayload('from before the rotation')], {
      'x-namespace': 'default',
    });
    const decoded = await call(server, '/decode', written.body.payloads);
    expect(decoded.body.payloads).toEqual([jsonPayload('from before the rotation')]);

    const current = await call(server, '/encode', [jsonPayload('after')]);
    const unknown = await call(oldKeyServer, '/decode', current.body.payloads, { 'x-namespace': 'default' });
    expect(unknown.status).toBe(422);
    expect(unknown.body.error).toContain(`unknown codec key id "${keyIdOf(TEST_CODEC_KEY)}"`);
  });

  it('refuses another namespace, a missing namespace, and a missing or wrong token', async () => {
    const payloads = [jsonPayload('x')];
    const other = await call(server, '/decode', payloads, { 'x-namespace': 'prod', authorization: `Bearer ${TOKEN}` });
    expect(other.status).toBe(403);
    expect(other.body.error).toBe('namespace prod is not served here (only default)');
    const none = await call(server, '/decode', payloads, { authorization: `Bearer ${TOKEN}` });
    expect(none.status).toBe(403);
    expect((await call(server, '/decode', payloads, { 'x-namespace': 'default' })).status).toBe(401);
    const wrong = await call(server, '/encode', payloads, { 'x-namespace': 'default', authorization: 'Bearer nope' });
    expect(wrong.status).toBe(401);
    expect(wrong.body.payloads).toBeUndefined();
  });

  it("answers the UI's CORS preflight (credentials, authorization and namespace headers) and refuses other origins", async () => {
    const preflight = await fetch(`${server.url}/decode`, {
      method: 'OPTIONS',
      headers: {
        origin: UI,
        'access-control-request-method': 'POST',
        'access-control-request-headers': 'authorization,content-type,x-namespace',
      },
    });
    expect(preflight.status).toBe(204);
    expect(preflight.headers.get('access-control-allow-origin')).toBe(UI);
    expect(preflight.headers.get('access-control-allow-credentials')).toBe('true');
    expect(preflight.headers.get('access-control-allow-methods')).toContain('POST');
    const allowed = preflight.headers.get('access-control-allow-headers')!.split(/,\s*/);
    expect(allowed).toEqual(expect.arrayContaining(['authorization', 'content-type', 'x-namespace']));

    const fromUi = await call(server, '/decode', [jsonPayload(1)], {
      origin: UI,
      'x-namespace': 'default',
      authorization: `Bearer ${TOKEN}`,
    });
    expect(fromUi.status).toBe(200);
    expect(fromUi.headers.get('access-control-allow-origin')).toBe(UI);

    const evil = await fetch(`${server.url}/decode`, {
      method: 'OPTIONS',
      headers: { origin: 'http://evil.example', 'access-control-request-method': 'POST' },
    });
    expect(evil.status).toBe(403);
    expect(evil.headers.get('access-control-allow-origin')).toBeNull();
    const evilPost = await call(server, '/decode', [jsonPayload(1)], {
      origin: 'http://evil.example',
      'x-namespace': 'default',
      authorization: `Bearer ${TOKEN}`,
    });
    expect(evilPost.status).toBe(403);
  });

  it('reads its token from a secret reference, never from the command line itself', async () => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'codec-token-'));
    const file = path.join(dir, 'token');
    await fs.writeFile(file, `${TOKEN}\n`, { mode: 0o600 });
    expect(await resolveToken(`file:${file}`)).toBe(TOKEN);
    expect(await resolveToken(JSON.stringify({ file }))).toBe(TOKEN);
    process.env.LABWRIGHT_TEST_CODEC_TOKEN = TOKEN;
    expect(await resolveToken('env:LABWRIGHT_TEST_CODEC_TOKEN')).toBe(TOKEN);
    await expect(resolveToken(TOKEN)).rejects.toThrow('never the token itself');
    await fs.chmod(file, 0o644);
    await expect(resolveToken(`file:${file}`)).rejects.toThrow('readable by group or others');
  });
});
