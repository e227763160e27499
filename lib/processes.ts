/** Helpers for the local peers labwright starts: free ports, log tails, orderly stops. */
import { execFileSync, spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { openSync, closeSync, promises as fs } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { projectRoot } from './paths.js';

export async function freePort(host = '127.0.0.1'): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, host, () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

export async function portIsFree(port: number, host = '127.0.0.1'): Promise<boolean> {
  return new Promise((resolve) => {
    const server = net.createServer();
    server.once('error', () => resolve(false));
    server.listen(port, host, () => server.close(() => resolve(true)));
  });
}

export async function tail(file: string, lines = 40): Promise<string> {
  const text = await fs.readFile(file, 'utf8').catch(() => '');
  return text.split('\n').slice(-lines).join('\n');
}

/** Runs one of the project's `scripts/ensure-*.sh` and returns what it printed (a path). */
export function ensureTool(script: string): string {
  return execFileSync('bash', [path.join(projectRoot, 'scripts', script)], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'inherit'],
  }).trim();
}

/**
 * Spawns `bin` with its stdout and stderr written straight to `logFile`. The child writes the file
 * itself (no pipe in between), so whatever it said before exiting is in the file once it has exited,
 * and an error that quotes the log's tail never quotes a log still in flight.
 */
export function spawnLogged(bin: string, args: string[], logFile: string, options: SpawnOptions = {}): ChildProcess {
  const fd = openSync(logFile, 'w');
  try {
    return spawn(bin, args, { ...options, stdio: ['ignore', fd, fd] });
  } finally {
    closeSync(fd);
  }
}

/** SIGTERM, then SIGKILL if the process outlives `graceMs`. */
export async function stopProcess(child: ChildProcess, graceMs = 5000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
  await exited;
  clearTimeout(timer);
}

/** Polls `probe` until it resolves true; fails early if `child` exits, with `describe()` in the error. */
export async function waitUntilReady(
  what: string,
  probe: () => Promise<boolean>,
  opts: { child?: ChildProcess; timeoutMs: number; describe: () => Promise<string> },
): Promise<void> {
  const deadline = Date.now() + opts.timeoutMs;
  while (Date.now() < deadline) {
    if (opts.child && (opts.child.exitCode !== null || opts.child.signalCode !== null)) {
      throw new Error(
        `${what} exited (${opts.child.exitCode ?? opts.child.signalCode}) before it was ready:\n${await opts.describe()}`,
      );
    }
    if (await probe().catch(() => false)) return;
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`${what} was not ready after ${opts.timeoutMs} ms:\n${await opts.describe()}`);
}

/** Variables a program run on the lab's behalf (packer) may inherit: where programs are, home, proxies. */
const PROGRAM_BASE_ENV = /^(PATH|HOME|USER|LANG|LC_[A-Z]+|TZ|TMPDIR|(https?|no|all)_proxy|(HTTPS?|NO|ALL)_PROXY)$/;

/**
 * The environment of an external program without the worker's own variables (its codec key
 * file, Temporal address, secret folder and whatever else it was given): only PATH, HOME, locale
 * and proxy settings of `parent`, plus `extra`.
 */
export function programBaseEnv(parent: NodeJS.ProcessEnv, extra: Record<string, string>): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(parent)) if (v !== undefined && PROGRAM_BASE_ENV.test(k)) env[k] = v;
  return { ...env, ...extra };
}
