/**
 * AES-256-GCM payload codec. Client, worker and replay share it, so workflow inputs, results
 * and signals are ciphertext in the server's history. The key id travels in the payload
 * metadata so that keys can be rotated: old keys stay in the keyring for decoding.
 */
import { createCipheriv, createDecipheriv, createHash, randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import type { Payload, PayloadCodec } from '@temporalio/common';
import { temporal } from '@temporalio/proto';

const ENCODING = 'binary/encrypted';
const CIPHER = 'aes-256-gcm';
const IV_BYTES = 12;
const TAG_BYTES = 16;

export class AesGcmCodec implements PayloadCodec {
  /** @param keys key id to 32-byte key; the first entry encrypts, all decrypt. */
  constructor(private readonly keys: ReadonlyMap<string, Buffer>) {
    if (keys.size === 0) throw new Error('AesGcmCodec needs at least one key');
    for (const [id, key] of keys) {
      if (key.length !== 32) throw new Error(`codec key ${id} is ${key.length} bytes; AES-256 needs 32`);
    }
  }

  async encode(payloads: Payload[]): Promise<Payload[]> {
    const [keyId, key] = this.keys.entries().next().value as [string, Buffer];
    return payloads.map((payload) => {
      const iv = randomBytes(IV_BYTES);
      const cipher = createCipheriv(CIPHER, key, iv);
      const plain = temporal.api.common.v1.Payload.encode(payload).finish();
      const body = Buffer.concat([iv, cipher.update(plain), cipher.final(), cipher.getAuthTag()]);
      return {
        metadata: { encoding: Buffer.from(ENCODING), 'encryption-key-id': Buffer.from(keyId) },
        data: body,
      };
    });
  }

  async decode(payloads: Payload[]): Promise<Payload[]> {
    return payloads.map((payload) => {
      if (Buffer.from(payload.metadata?.encoding ?? []).toString() !== ENCODING) return payload;
      const keyId = Buffer.from(payload.metadata?.['encryption-key-id'] ?? []).toString();
      const key = this.keys.get(keyId);
      if (!key) throw new Error(`payload encrypted with unknown codec key id ${JSON.stringify(keyId)}`);
      const body = Buffer.from(payload.data ?? []);
      const iv = body.subarray(0, IV_BYTES);
      const tag = body.subarray(body.length - TAG_BYTES);
      const decipher = createDecipheriv(CIPHER, key, iv);
      decipher.setAuthTag(tag);
      const plain = Buffer.concat([
        decipher.update(body.subarray(IV_BYTES, body.length - TAG_BYTES)),
        decipher.final(),
      ]);
      return temporal.api.common.v1.Payload.decode(plain);
    });
  }
}

/** A key's id: the first bytes of its hash, so ids never reveal the key and never collide by accident. */
export function keyIdOf(key: Buffer): string {
  return createHash('sha256').update(key).digest('hex').slice(0, 12);
}

export function parseKey(text: string, source: string): Buffer {
  const key = Buffer.from(text.trim(), 'base64');
  if (key.length !== 32) throw new Error(`${source} must hold 32 bytes encoded in base64 (got ${key.length} bytes)`);
  return key;
}

export function generateKey(): string {
  return randomBytes(32).toString('base64');
}

export type CodecChoice = { codec: AesGcmCodec; keyId: string } | { codec: undefined; plaintext: true };

/**
 * Reads the codec configuration from the environment:
 * LABWRIGHT_CODEC_KEY (base64) or LABWRIGHT_CODEC_KEY_FILE encrypts;
 * LABWRIGHT_CODEC_OLD_KEY_FILES (comma-separated) only decrypts;
 * LABWRIGHT_CODEC=plaintext turns encryption off, for local development only.
 */
export async function codecFromEnv(env: NodeJS.ProcessEnv = process.env): Promise<CodecChoice> {
  let current: Buffer | undefined;
  if (env.LABWRIGHT_CODEC_KEY) current = parseKey(env.LABWRIGHT_CODEC_KEY, 'LABWRIGHT_CODEC_KEY');
  else if (env.LABWRIGHT_CODEC_KEY_FILE) {
    current = parseKey(await fs.readFile(env.LABWRIGHT_CODEC_KEY_FILE, 'utf8'), env.LABWRIGHT_CODEC_KEY_FILE);
  }
  if (!current) {
    if (env.LABWRIGHT_CODEC === 'plaintext') return { codec: undefined, plaintext: true };
    throw new Error(
      'no payload codec key: set LABWRIGHT_CODEC_KEY or LABWRIGHT_CODEC_KEY_FILE ' +
        '(generate one with `openssl rand -base64 32`), or LABWRIGHT_CODEC=plaintext for local development',
    );
  }
  const keys = new Map([[keyIdOf(current), current]]);
  for (const file of (env.LABWRIGHT_CODEC_OLD_KEY_FILES ?? '').split(',').filter(Boolean)) {
    const old = parseKey(await fs.readFile(file, 'utf8'), file);
    keys.set(keyIdOf(old), old);
  }
  return { codec: new AesGcmCodec(keys), keyId: keyIdOf(current) };
}
