/**
 * labwright's own state for disaster recovery: the secret store (each cluster's Talos secrets and
 * talosconfig, kubeconfigs, tokens workflows wrote) as one age-encrypted archive. An etcd recovery
 * cannot do without a cluster's talosconfig, and a rebuilt control plane needs its Talos secrets:
 * the archive is what brings them to a fresh state directory (docs/dr-restore.md).
 *
 * Format: ASCII-armored age (https://age-encryption.org/v1), encrypted to one or more X25519
 * recipients (`age1…`), so the machine that exports needs no private key; the plaintext is JSON
 * `{ format, version, exportedAt, secrets: { name: value } }`.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { Decrypter, Encrypter, armor, generateX25519Identity, identityToRecipient } from 'age-encryption';
import { SecretStore } from './secrets.js';

const FORMAT = 'labwright-secret-store';
const VERSION = 1;

interface Archive {
  format: typeof FORMAT;
  version: number;
  exportedAt: string;
  secrets: Record<string, string>;
}

export interface ExportResult {
  names: string[];
  recipients: number;
}

export interface ImportResult {
  written: string[];
  unchanged: string[];
}

/** Thrown for anything the operator has to fix (bad key, wrong file, conflicts); the message says what. */
export class StateArchiveError extends Error {
  override name = 'StateArchiveError';
}

/** Encrypts every secret of `store` to `recipients` and writes the armored archive to `out` (0600). */
export async function exportSecretStore(store: SecretStore, recipients: string[], out: string): Promise<ExportResult> {
  if (recipients.length === 0) throw new StateArchiveError('give at least one age recipient (age1…) to encrypt to');
  const encrypter = new Encrypter();
  for (const r of recipients) {
    try {
      encrypter.addRecipient(r);
    } catch (err) {
      throw new StateArchiveError(`recipient ${JSON.stringify(r)} is not an age recipient: ${(err as Error).message}`);
    }
  }
  const names = await store.list();
  const secrets: Record<string, string> = {};
  for (const name of names) secrets[name] = await store.resolve({ store: name });
  const archive: Archive = { format: FORMAT, version: VERSION, exportedAt: new Date().toISOString(), secrets };
  const sealed = armor.encode(await encrypter.encrypt(JSON.stringify(archive)));
  await fs.mkdir(path.dirname(path.resolve(out)), { recursive: true });
  const tmp = `${out}.${process.pid}.tmp`;
  await fs.writeFile(tmp, sealed, { mode: 0o600 });
  await fs.rename(tmp, out);
  return { names, recipients: recipients.length };
}

/**
 * Decrypts an archive with the identities (`AGE-SECRET-KEY-1…`) and writes its secrets into
 * `store`. A name the store already holds with another value is a conflict: nothing is written
 * unless `overwrite`; one with the same value is left as it is.
 */
export async function importSecretStore(
  store: SecretStore,
  sealed: string,
  identities: string[],
  opts: { overwrite?: boolean } = {},
): Promise<ImportResult> {
  if (identities.length === 0) throw new StateArchiveError('the identity file holds no AGE-SECRET-KEY-1… line');
  let ciphertext: Uint8Array;
  try {
    ciphertext = armor.decode(sealed);
  } catch (err) {
    throw new StateArchiveError(`not an armored age file: ${(err as Error).message}`);
  }
  const decrypter = new Decrypter();
  for (const id of identities) decrypter.addIdentity(id);
  let archive: Archive;
  try {
    archive = JSON.parse(await decrypter.decrypt(ciphertext, 'text')) as Archive;
  } catch (err) {
    throw new StateArchiveError(`cannot decrypt the archive with this identity: ${(err as Error).message}`);
  }
  if (archive.format !== FORMAT || archive.version !== VERSION) {
    throw new StateArchiveError(`not a labwright secret store archive (format ${archive.format} ${archive.version})`);
  }
  const existing = new Set(await store.list());
  const written: string[] = [];
  const unchanged: string[] = [];
  const conflicts: string[] = [];
  for (const [name, value] of Object.entries(archive.secrets)) {
    if (!existing.has(name)) written.push(name);
    else if ((await store.resolve({ store: name })) === value) unchanged.push(name);
    else if (opts.overwrite) written.push(name);
    else conflicts.push(name);
  }
  if (conflicts.length > 0) {
    throw new StateArchiveError(
      `the store already holds other values for ${conflicts.join(', ')}: nothing was imported (give --overwrite to replace them)`,
    );
  }
  for (const name of written) await store.put(name, archive.secrets[name]!);
  return { written, unchanged };
}

/** The `AGE-SECRET-KEY-1…` lines of an identity file (age-keygen's format: comments start with #). */
export function parseIdentities(text: string): string[] {
  return text
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l.startsWith('AGE-SECRET-KEY-'));
}

/** A new identity file's text (as age-keygen writes it) and its recipient. */
export async function newIdentity(): Promise<{ file: string; recipient: string }> {
  const identity = await generateX25519Identity();
  const recipient = await identityToRecipient(identity);
  return {
    file: `# created: ${new Date().toISOString()}\n# public key: ${recipient}\n${identity}\n`,
    recipient,
  };
}
