/**
 * `labwright state export | import | keygen`: labwright's own state (the secret store: Talos
 * secrets, talosconfigs, kubeconfigs) as an age-encrypted archive, for the DR plan
 * (docs/dr-restore.md). The store is LABWRIGHT_SECRETS_DIR (default <state dir>/secrets).
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import type { Command } from 'commander';
import { stateDir } from '../../lib/paths.js';
import { SecretStore } from '../../lib/secrets.js';
import { CliError, emit, withOutput, type Format } from './io.js';

function secretsDir(): string {
  return process.env.LABWRIGHT_SECRETS_DIR ?? path.join(stateDir, 'secrets');
}

async function readText(file: string, what: string): Promise<string> {
  return fs.readFile(file, 'utf8').catch((err: NodeJS.ErrnoException) => {
    throw new CliError(`cannot read ${what} ${file}: ${err.code ?? err.message}`);
  });
}

type StateArchive = typeof import('../../lib/state-archive.js');

/** Runs body with the archive module, loaded only by the state commands (age is not small). */
async function withArchive<T>(body: (archive: StateArchive) => Promise<T>): Promise<T> {
  const archive = await import('../../lib/state-archive.js');
  try {
    return await body(archive);
  } catch (err) {
    if (err instanceof archive.StateArchiveError) throw new CliError(err.message);
    throw err;
  }
}

export function registerStateCommands(program: Command): void {
  const state = program
    .command('state')
    .description("labwright's own state (the secret store) as an age-encrypted archive, for disaster recovery");

  withOutput(
    state
      .command('export')
      .description('encrypt the whole secret store to age recipients and write it to a file (0600)')
      .requiredOption('--out <file>', 'the archive to write')
      .option('--recipient <age1...>', 'an age recipient (public key) to encrypt to; repeatable', collect, [])
      .option('--recipients-file <file>', 'a file of age recipients, one a line (# comments)'),
  ).action(async (opts: { out: string; recipient: string[]; recipientsFile?: string; output: Format }) => {
    const recipients = [...opts.recipient];
    if (opts.recipientsFile) {
      const text = await readText(opts.recipientsFile, 'recipients file');
      recipients.push(
        ...text
          .split('\n')
          .map((l) => l.trim())
          .filter((l) => l && !l.startsWith('#')),
      );
    }
    const dir = secretsDir();
    const result = await withArchive((archive) =>
      archive.exportSecretStore(new SecretStore(dir), recipients, opts.out),
    );
    emit(
      opts.output,
      { archive: path.resolve(opts.out), store: dir, ...result },
      () =>
        `exported ${result.names.length} secret(s) from ${dir} to ${opts.out}, encrypted to ${result.recipients} recipient(s)\n` +
        result.names.map((n) => `  ${n}`).join('\n'),
    );
  });

  withOutput(
    state
      .command('import')
      .description('decrypt an archive with an age identity and write its secrets into the secret store')
      .requiredOption('--in <file>', 'the archive `labwright state export` wrote')
      .requiredOption('--identity-file <file>', 'the age identity (AGE-SECRET-KEY-1...) file')
      .option('--overwrite', 'replace secrets the store holds with other values (default: refuse, import nothing)'),
  ).action(async (opts: { in: string; identityFile: string; overwrite?: boolean; output: Format }) => {
    const sealed = await readText(opts.in, 'archive');
    const identityFile = await readText(opts.identityFile, 'identity file');
    const dir = secretsDir();
    const result = await withArchive((archive) =>
      archive.importSecretStore(new SecretStore(dir), sealed, archive.parseIdentities(identityFile), {
        overwrite: opts.overwrite,
      }),
    );
    emit(
      opts.output,
      { store: dir, ...result },
      () =>
        `imported ${result.written.length} secret(s) into ${dir}` +
        (result.unchanged.length ? ` (${result.unchanged.length} already there, unchanged)` : '') +
        result.written.map((n) => `\n  ${n}`).join(''),
    );
  });

  state
    .command('keygen')
    .description('write a new age identity file (0600) and print its recipient, for `state export --recipient`')
    .requiredOption('--out <file>', 'the identity file to create (refused if it exists)')
    .action(async (opts: { out: string }) => {
      const { file, recipient } = await withArchive((archive) => archive.newIdentity());
      await fs.writeFile(opts.out, file, { mode: 0o600, flag: 'wx' }).catch((err: NodeJS.ErrnoException) => {
        throw new CliError(`cannot create ${opts.out}: ${err.code === 'EEXIST' ? 'it exists' : err.message}`);
      });
      console.log(recipient);
    });
}

function collect(value: string, previous: string[]): string[] {
  return [...previous, value];
}
