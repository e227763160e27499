/** Helpers for the local peers labwright starts: free ports, log tails, process groups, orderly stops. */
import { execFileSync, spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { closeSync, openSync, promises as fs } from 'node:fs';
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
 * The reaper: a small `sh` in a session of its own that knows the process groups spawnGroup()
 * started. When its stdin closes (this process exited, however it died: even SIGKILL closes the
 * pipe) it sends SIGTERM to every group still registered, and SIGKILL 5 s later to what is left.
 */
const REAPER = `
groups=
while read -r op pgid; do
  case "$op" in
    +) groups="$groups $pgid" ;;
    -) set -- $groups; groups=; for g in "$@"; do [ "$g" = "$pgid" ] || groups="$groups $g"; done ;;
  esac
done
[ -n "$groups" ] || exit 0
for g in $groups; do kill -TERM -"$g" 2>/dev/null; done
i=0
while [ $i -lt 50 ]; do
  alive=
  for g in $groups; do kill -0 -"$g" 2>/dev/null && alive=1; done
  [ -n "$alive" ] || exit 0
  sleep 0.1
  i=$((i + 1))
done
for g in $groups; do kill -KILL -"$g" 2>/dev/null; done
`;

let reaper: ChildProcess | undefined;
const groups = new Set<number>();

function tellReaper(line: string): void {
  if (!reaper) {
    reaper = spawn('sh', ['-c', REAPER], { detached: true, stdio: ['pipe', 'ignore', 'ignore'] });
    reaper.unref();
    (reaper.stdin as unknown as { unref(): void }).unref();
    reaper.stdin!.on('error', () => undefined);
  }
  reaper.stdin!.write(`${line}\n`);
}

function signalGroup(pgid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pgid, signal);
  } catch {
    /* the group is gone */
  }
}

/**
 * Spawns a program as the leader of a process group of its own, so that stopProcess() ends it with
 * everything it started, a terminal's Ctrl-C reaches only this process (which stops its children
 * in order), and the reaper ends the group if this process dies without stopping it.
 */
export function spawnGroup(command: string, args: string[], options: SpawnOptions = {}): ChildProcess {
  const child = spawn(command, args, { ...options, detached: true });
  const pgid = child.pid;
  if (pgid === undefined) return child; // failed to spawn: its 'error' event says why
  groups.add(pgid);
  tellReaper(`+ ${pgid}`);
  child.once('exit', () => {
    // What the leader leaves behind goes with it.
    signalGroup(pgid, 'SIGKILL');
    groups.delete(pgid);
    tellReaper(`- ${pgid}`);
  });
  return child;
}

/**
 * spawnGroup() with the program's stdout and stderr written straight to `logFile`. The program
 * writes the file itself (no pipe in between), so whatever it said before exiting is in the file
 * once it has exited, and an error that quotes the log's tail never quotes a log still in flight.
 */
export function spawnLogged(bin: string, args: string[], logFile: string, options: SpawnOptions = {}): ChildProcess {
  const fd = openSync(logFile, 'w');
  try {
    return spawnGroup(bin, args, { ...options, stdio: ['ignore', fd, fd] });
  } finally {
    closeSync(fd);
  }
}

/** SIGTERM (to its whole group if spawnGroup() started it), then SIGKILL if it outlives `graceMs`. */
export async function stopProcess(child: ChildProcess, graceMs = 5000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const pgid = child.pid;
  const signal = (s: NodeJS.Signals) => {
    if (pgid !== undefined && groups.has(pgid)) signalGroup(pgid, s);
    else child.kill(s);
  };
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const grouped = pgid !== undefined && groups.has(pgid);
  signal('SIGTERM');
  const timer = setTimeout(() => signal('SIGKILL'), graceMs);
  await exited;
  clearTimeout(timer);
  if (grouped) await groupGone(pgid, graceMs);
}

/**
 * Waits until no process of the group is left: what the leader started may still be writing
 * into files the caller removes next (Chromium's helpers into its profile). Bounded, because a
 * container's PID 1 may never reap a zombie.
 */
async function groupGone(pgid: number, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      process.kill(-pgid, 0);
    } catch {
      return;
    }
    if (Date.now() > deadline) return;
    await new Promise((r) => setTimeout(r, 20));
  }
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

/** What a child program inherits from the worker: its search path, home, locale, temp dir, CA and proxy settings. */
const INHERITED_ENV = [
  'PATH',
  'HOME',
  'USER',
  'LANG',
  'LC_ALL',
  'TZ',
  'TMPDIR',
  'SSL_CERT_FILE',
  'SSL_CERT_DIR',
  'HTTP_PROXY',
  'HTTPS_PROXY',
  'NO_PROXY',
  'http_proxy',
  'https_proxy',
  'no_proxy',
];

/**
 * The environment for a child program (talosctl, packer): the INHERITED_ENV part of `from` plus
 * its `own` variables (its own credentials), and nothing else, so the worker's secrets (AWS keys,
 * the codec key, PVE tokens) never reach a program that does not need them.
 */
export function childEnv(
  own: Record<string, string | undefined> = {},
  from: NodeJS.ProcessEnv = process.env,
): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const key of INHERITED_ENV) if (from[key] !== undefined) env[key] = from[key];
  for (const [key, value] of Object.entries(own)) if (value !== undefined) env[key] = value;
  return env;
}

/**
 * Private (0700) temp folders for the files with secrets that activities hand to child programs:
 * `<root>/<pid>/<prefix>XXXXXX`, each removed when its activity ends. A worker killed meanwhile
 * leaves its `<pid>` folder behind; the next worker's `PrivateTemp` removes every folder whose
 * process is gone (and one with its own pid: a restarted container reuses pids) as it starts,
 * before it makes a folder of its own.
 */
export class PrivateTemp {
  private readonly own: string;
  private readonly swept: Promise<void>;

  constructor(readonly root: string) {
    this.own = path.join(root, String(process.pid));
    this.swept = this.sweep();
    this.swept.catch(() => undefined); // awaited by `run`
  }

  /** Removes the folders of worker processes that are no longer running. */
  private async sweep(): Promise<void> {
    await fs.mkdir(this.root, { recursive: true, mode: 0o700 });
    for (const name of await fs.readdir(this.root)) {
      const pid = Number(name);
      if (!Number.isInteger(pid) || (pid !== process.pid && isRunning(pid))) continue;
      await fs.rm(path.join(this.root, name), { recursive: true, force: true });
    }
  }

  /** Runs `body` with a fresh private folder, removed afterwards whatever `body` did. */
  async run<T>(prefix: string, body: (dir: string) => Promise<T>): Promise<T> {
    await this.swept;
    await fs.mkdir(this.own, { recursive: true, mode: 0o700 });
    const dir = await fs.mkdtemp(path.join(this.own, prefix));
    await fs.chmod(dir, 0o700);
    try {
      return await body(dir);
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  }
}

function isRunning(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}
