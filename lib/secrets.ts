/**
 * Secrets travel through workflows as references, never values. This store resolves a reference
 * inside an activity and writes new secrets (Talos secrets, kubeconfigs) as 0600 files.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { nonRetryable } from '../common/errors.js';
import { secretRefSchema, type SecretRef } from '../common/secret-ref.js';

export { secretRefSchema, type SecretRef };

export class SecretStore {
  constructor(
    private readonly dir: string,
    private readonly env: NodeJS.ProcessEnv = process.env,
  ) {}

  /** Reads a secret's value; fails non-retryably when it is missing or readable by others. */
  async resolve(ref: SecretRef): Promise<string> {
    if ('env' in ref) {
      const value = this.env[ref.env];
      if (value === undefined || value === '') {
        throw nonRetryable('validation', `secret env var ${ref.env} is not set`);
      }
      return value;
    }
    const file = 'file' in ref ? ref.file : this.pathOf(ref.store);
    return this.readFile(file);
  }

  async exists(ref: SecretRef): Promise<boolean> {
    if ('env' in ref) return Boolean(this.env[ref.env]);
    const file = 'file' in ref ? ref.file : this.pathOf(ref.store);
    return fs.access(file).then(
      () => true,
      () => false,
    );
  }

  /** Writes a secret under a store name (atomic, 0600) and returns its reference. */
  async put(name: string, value: string): Promise<SecretRef> {
    const file = this.pathOf(name);
    await fs.mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
    const tmp = `${file}.${process.pid}.tmp`;
    await fs.writeFile(tmp, value, { mode: 0o600 });
    await fs.rename(tmp, file);
    return { store: name };
  }

  /** Every name in the store (`talos/home/talosconfig`, …), sorted; none while the store does not exist. */
  async list(): Promise<string[]> {
    const root = path.resolve(this.dir);
    const entries = await fs
      .readdir(root, { recursive: true, withFileTypes: true })
      .catch((err: NodeJS.ErrnoException) => {
        if (err.code === 'ENOENT') return [];
        throw err;
      });
    return entries
      .filter((e) => e.isFile() && !e.name.endsWith('.tmp'))
      .map((e) => path.relative(root, path.join(e.parentPath, e.name)).split(path.sep).join('/'))
      .sort();
  }

  async remove(name: string): Promise<void> {
    await fs.rm(this.pathOf(name), { force: true });
  }

  /** Removes a folder of the store (e.g. `talos/<scratch-cluster>`) with everything in it. */
  async removeFolder(name: string): Promise<void> {
    await fs.rm(this.pathOf(name), { recursive: true, force: true });
  }

  private pathOf(name: string): string {
    const file = path.resolve(this.dir, name);
    if (!file.startsWith(path.resolve(this.dir) + path.sep)) {
      throw nonRetryable('validation', `secret store name ${JSON.stringify(name)} leaves the store`);
    }
    return file;
  }

  private async readFile(file: string): Promise<string> {
    let stat;
    try {
      stat = await fs.stat(file);
    } catch {
      throw nonRetryable('validation', `secret file ${file} does not exist`);
    }
    if ((stat.mode & 0o077) !== 0) {
      throw nonRetryable('validation', `secret file ${file} is readable by group or others; chmod 600 it`);
    }
    return fs.readFile(file, 'utf8');
  }
}
