/**
 * `labwright codec-server`: the payload codec for the Temporal UI and CLI (lib/codec-server.ts), and
 * `labwright temporal ...`: the pinned Temporal CLI with labwright's address, namespace and codec.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import os from 'node:os';
import path from 'node:path';
import type { Command } from 'commander';
import { secretRefSchema, type SecretRef } from '../../common/secret-ref.js';
import { codecFromEnv } from '../../lib/codec.js';
import { DEFAULT_CODEC_PORT, startCodecServer, type CodecServer } from '../../lib/codec-server.js';
import { stateDir } from '../../lib/paths.js';
import { ensureTool } from '../../lib/processes.js';
import { SecretStore } from '../../lib/secrets.js';
import { temporalSettings } from '../../lib/temporal.js';
import { CliError } from './io.js';

/** The dev server's UI as `npm start` serves it. */
export const DEFAULT_UI_ORIGINS = ['http://127.0.0.1:8233', 'http://localhost:8233'];

export function registerCodecCommands(program: Command): void {
  program
    .command('codec-server')
    .description(
      "serve the payload codec (Temporal's /encode and /decode) so the Temporal UI and CLI show payloads in clear",
    )
    .option('--host <address>', 'where to listen; anything but loopback needs --token', '127.0.0.1')
    .option('--port <port>', 'the port (0 picks one)', String(DEFAULT_CODEC_PORT))
    .option('--ui-origin <origins...>', 'browser origins of the Temporal UI allowed to call it', DEFAULT_UI_ORIGINS)
    .option(
      '--token <secret-ref>',
      'require "Authorization: Bearer <token>", the token from env:NAME, file:/abs/path or store:name',
    )
    .option('--namespace <namespace>', 'the namespace it serves (default TEMPORAL_NAMESPACE or default)')
    .option(
      '--allow-unauthenticated',
      "listen beyond loopback without --token: only in a container whose port is published on the host's loopback (docker-compose.yml)",
    )
    .action(
      async (opts: {
        host: string;
        port: string;
        uiOrigin: string[];
        token?: string;
        namespace?: string;
        allowUnauthenticated?: boolean;
      }) => {
        const token = opts.token === undefined ? undefined : await resolveToken(opts.token);
        if (!token && !isLoopback(opts.host) && !opts.allowUnauthenticated) {
          throw new CliError(
            `listening on ${opts.host} without --token would hand payloads in clear to the network; give --token`,
          );
        }
        const settings = await temporalSettings();
        const codec = (await codecFromEnv()).codec;
        if (!codec)
          throw new CliError('payload encryption is off (LABWRIGHT_CODEC=plaintext): there is nothing to decode');
        const server = await startCodecServer({
          codec,
          namespace: opts.namespace ?? settings.namespace,
          host: opts.host,
          port: Number(opts.port),
          token: token?.trim(),
          allowedOrigins: opts.uiOrigin,
        });
        console.log(`codec server on ${server.url} for namespace ${opts.namespace ?? settings.namespace}`);
        console.log(`  UI origins: ${opts.uiOrigin.join(', ')}${token ? '; bearer token required' : ''}`);
        console.log(
          `  CLI: temporal workflow show --workflow-id <id> --codec-endpoint ${server.url}${token ? " --codec-auth 'Bearer <token>'" : ''}`,
        );
        await new Promise<void>((resolve) => {
          for (const signal of ['SIGINT', 'SIGTERM'] as const) process.once(signal, () => resolve());
        });
        await server.close();
      },
    );

  program
    .command('temporal')
    .description(
      "the pinned Temporal CLI with --address, --namespace and --codec-endpoint set from labwright's settings",
    )
    .argument('[args...]', 'what to pass to `temporal`, e.g. workflow show --workflow-id talos-bootstrap/home')
    .helpOption(false)
    .allowUnknownOption()
    .passThroughOptions()
    .action(async (args: string[]) => {
      process.exitCode = await runTemporal(args);
    });
}

/** Parses `env:NAME`, `file:/abs/path`, `store:name` or a JSON reference, and reads the secret. */
export async function resolveToken(text: string): Promise<string> {
  const m = /^(env|file|store):(.+)$/.exec(text);
  let candidate: unknown;
  try {
    candidate = m ? { [m[1]!]: m[2] } : JSON.parse(text);
  } catch {
    candidate = text;
  }
  const parsed = secretRefSchema.safeParse(candidate);
  if (!parsed.success)
    throw new CliError(`--token: expected env:NAME, file:/abs/path or store:name, never the token itself`);
  const ref: SecretRef = parsed.data;
  const store = new SecretStore(process.env.LABWRIGHT_SECRETS_DIR ?? path.join(stateDir, 'secrets'));
  try {
    return (await store.resolve(ref)).trim();
  } catch (err) {
    throw new CliError(`--token: ${(err as Error).message}`);
  }
}

function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^127\./.test(host);
}

/**
 * Runs `temporal` with labwright's connection settings. Unless TEMPORAL_CODEC_ENDPOINT is set, a
 * codec server of its own serves this one command on loopback, behind a one-time token.
 */
async function runTemporal(args: string[]): Promise<number> {
  const help = args.length === 0 || args[0] === '--help' || args[0] === '-h' || args[0] === 'help';
  if (help) {
    console.log(
      'labwright temporal: runs the pinned Temporal CLI (scripts/ensure-temporal.sh) with TEMPORAL_ADDRESS,\n' +
        "TEMPORAL_NAMESPACE and a codec endpoint set from labwright's settings, so payloads show in clear.\n",
    );
  }
  const env: NodeJS.ProcessEnv = { ...process.env };
  let server: CodecServer | undefined;
  if (!help) {
    const settings = await temporalSettings();
    env.TEMPORAL_ADDRESS ??= settings.connection.address;
    env.TEMPORAL_NAMESPACE ??= settings.namespace;
    const codec = env.TEMPORAL_CODEC_ENDPOINT ? undefined : (await codecFromEnv()).codec;
    if (codec) {
      const token = randomBytes(24).toString('base64url');
      server = await startCodecServer({ codec, namespace: env.TEMPORAL_NAMESPACE, token });
      env.TEMPORAL_CODEC_ENDPOINT = server.url;
      env.TEMPORAL_CODEC_AUTH = `Bearer ${token}`;
    }
  }
  try {
    const child = spawn(ensureTool('ensure-temporal.sh'), args, { stdio: 'inherit', env });
    // The codec server must outlive the child: signals go to it, and it decides when to stop.
    const forward = (signal: NodeJS.Signals): void => void child.kill(signal);
    process.on('SIGINT', forward);
    process.on('SIGTERM', forward);
    return await new Promise<number>((resolve, reject) => {
      child.once('error', reject);
      child.once('exit', (code, signal) => resolve(code ?? (signal ? 128 + os.constants.signals[signal] : 1)));
    }).finally(() => {
      process.off('SIGINT', forward);
      process.off('SIGTERM', forward);
    });
  } finally {
    await server?.close();
  }
}
