import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { keyIdOf, parseKey } from '../lib/codec.js';
import { temporalSettings } from '../lib/temporal.js';
import { TEST_CODEC_KEY_FILE } from './harness/processes.js';

describe('connection settings', () => {
  it('come from a Temporal config file profile, with the environment taking precedence', async () => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'envconfig-'));
    const file = path.join(dir, 'temporal.toml');
    await fs.writeFile(
      file,
      [
        '[profile.lab]',
        'address = "temporal.lab.internal:7233"',
        'namespace = "homelab"',
        'api_key = "from-profile"',
        '',
      ].join('\n'),
    );
    const base = { TEMPORAL_CONFIG_FILE: file, TEMPORAL_PROFILE: 'lab', LABWRIGHT_CODEC_KEY_FILE: TEST_CODEC_KEY_FILE };
    const fromProfile = await temporalSettings(base);
    expect(fromProfile.connection.address).toBe('temporal.lab.internal:7233');
    expect(fromProfile.namespace).toBe('homelab');
    expect(fromProfile.connection.apiKey).toBe('from-profile');
    // An API key turns TLS on, as Temporal Cloud expects.
    expect(fromProfile.connection.tls).toBeTruthy();

    const overridden = await temporalSettings({
      ...base,
      TEMPORAL_ADDRESS: '127.0.0.1:7233',
      TEMPORAL_NAMESPACE: 'other',
    });
    expect(overridden.connection.address).toBe('127.0.0.1:7233');
    expect(overridden.namespace).toBe('other');
    await fs.rm(dir, { recursive: true });
  });

  it('encrypt with the configured key and name it in every payload', async () => {
    const settings = await temporalSettings({ LABWRIGHT_CODEC_KEY_FILE: TEST_CODEC_KEY_FILE });
    const codec = settings.dataConverter.payloadCodecs?.[0];
    const [encoded] = await codec!.encode([
      { metadata: { encoding: Buffer.from('json/plain') }, data: Buffer.from('"x"') },
    ]);
    const keyId = keyIdOf(parseKey(await fs.readFile(TEST_CODEC_KEY_FILE, 'utf8'), 'test key'));
    expect(Buffer.from(encoded!.metadata!['encryption-key-id']!).toString()).toBe(keyId);
    const [decoded] = await codec!.decode([encoded!]);
    expect(Buffer.from(decoded!.data!).toString()).toBe('"x"');
    expect(settings.plaintext).toBe(false);
  });
});
