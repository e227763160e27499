/** Runs the project's own entry points (worker, CLI) as separate processes, as people run them. */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { projectRoot } from '../../lib/paths.js';
import { freePort } from '../../lib/processes.js';

/**
 * Node's arguments to run a TypeScript entry point in one process (tsx as a loader). The tsx CLI
 * would add a second Node process and about two seconds of start-up to each run.
 */
export function tsArgv(script: string, ...args: string[]): string[] {
  return ['--import', 'tsx', script, ...args];
}
export const TEST_CODEC_KEY_FILE = path.join(projectRoot, 'test', 'fixtures', 'codec-test.key');

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a TypeScript entry point to completion. */
export async function runTs(script: string, args: string[], env: NodeJS.ProcessEnv): Promise<RunResult> {
  try {
    const { stdout, stderr } = await promisify(execFile)(process.execPath, tsArgv(script, ...args), {
      cwd: projectRoot,
      env: { ...process.env, ...env },
      timeout: 60_000,
    });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return { code: typeof e.code === 'number' ? e.code : 1, stdout: e.stdout ?? '', stderr: e.stderr ?? '' };
  }
}

/**
 * Starts a TypeScript entry point in the background; output is collected in `output()`. With
 * `group`, it leads a process group of its own, so `process.kill(-child.pid, signal)` reaches it
 * and every program it runs (as when a container or machine dies).
 */
export function spawnTs(
  script: string,
  env: NodeJS.ProcessEnv,
  opts: { group?: boolean } = {},
): { child: ChildProcess; output: () => string } {
  const child = spawn(process.execPath, tsArgv(script), {
    cwd: projectRoot,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: opts.group ?? false,
  });
  let output = '';
  child.stdout?.on('data', (d: Buffer) => (output += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (output += d.toString()));
  return { child, output: () => output };
}

/** The PIDs of `root` and every process below it, read from /proc (Linux). */
export function processTree(root: number): number[] {
  const children = new Map<number, number[]>();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      // pid (comm) state ppid ...: comm may hold spaces and parentheses, so split after the last ')'.
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      children.set(ppid, [...(children.get(ppid) ?? []), Number(entry)]);
    } catch {
      /* exited meanwhile */
    }
  }
  const tree: number[] = [];
  const visit = (pid: number) => {
    tree.push(pid);
    for (const c of children.get(pid) ?? []) visit(c);
  };
  visit(root);
  return tree;
}

/** Which of `pids` still run (zombies count as gone). */
export function stillRunning(pids: number[]): number[] {
  return pids.filter((pid) => {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      return stat.slice(stat.lastIndexOf(')') + 2)[0] !== 'Z';
    } catch {
      return false;
    }
  });
}

/** The TCP ports `pids` listen on (/proc/net/tcp{,6} sockets in state LISTEN, matched by inode). */
export function listeningPorts(pids: number[]): number[] {
  const inodes = new Set<string>();
  for (const pid of pids) {
    let fds: string[] = [];
    try {
      fds = readdirSync(`/proc/${pid}/fd`);
    } catch {
      continue;
    }
    for (const fd of fds) {
      try {
        const m = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${pid}/fd/${fd}`));
        if (m) inodes.add(m[1]!);
      } catch {
        /* closed meanwhile */
      }
    }
  }
  const ports = new Set<number>();
  for (const table of ['/proc/net/tcp', '/proc/net/tcp6']) {
    for (const line of readFileSync(table, 'utf8').split('\n').slice(1)) {
      const f = line.trim().split(/\s+/);
      if (f[3] === '0A' && inodes.has(f[9] ?? '')) ports.add(parseInt(f[1]!.split(':')[1]!, 16));
    }
  }
  return [...ports].sort((a, b) => a - b);
}

export interface NpmStart {
  child: ChildProcess;
  output: () => string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/**
 * `npm start` in `cwd`, as a user runs it from a terminal: the leader of a process group of its
 * own (the terminal's foreground group), so `process.kill(-child.pid, 'SIGINT')` is Ctrl-C.
 */
/**
 * A free port for every port `npm start` binds (scripts/start.ts), so that two starts, two test
 * files or two CI runs on one machine never meet on a default (7233, 8233, 8234, 9464).
 */
export async function startPorts(): Promise<NodeJS.ProcessEnv> {
  return {
    LABWRIGHT_DEV_PORT: String(await freePort()),
    LABWRIGHT_UI_PORT: String(await freePort()),
    LABWRIGHT_CODEC_SERVER_PORT: String(await freePort()),
    LABWRIGHT_METRICS_ADDRESS: `127.0.0.1:${await freePort()}`,
  };
}

export function npmStart(cwd: string, env: NodeJS.ProcessEnv): NpmStart {
  const child = spawn('npm', ['start'], {
    cwd,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true,
  });
  let output = '';
  child.stdout?.on('data', (d: Buffer) => (output += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (output += d.toString()));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('exit', (code, signal) => resolve({ code, signal })),
  );
  return { child, output: () => output, exited };
}

/**
 * Resolves once the worker (of `npm start`, or a worker process) polls; rejects with the output if
 * the start failed, the process exited, or after `timeoutMs`.
 */
export async function untilWorkerStarted(
  run: { output: () => string; exited: Promise<unknown> },
  timeoutMs = 240_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let exited = false;
  void run.exited.then(() => (exited = true));
  while (!run.output().includes('"msg":"worker started"')) {
    if (exited || run.output().includes('labwright start failed') || Date.now() > deadline) {
      throw new Error(`the worker did not come up:\n${run.output()}`);
    }
    await new Promise((r) => setTimeout(r, 250));
  }
}

/** A worker process (workers/main.ts) leading its own process group, as a deployment runs it. */
export interface WorkerProcess {
  child: ChildProcess;
  output: () => string;
  /** Resolves with the signal that ended it, or its exit code. */
  exited: Promise<NodeJS.Signals | number | null>;
}

/** Starts workers/main.ts with `env` in a process group of its own (kill `-child.pid` to end it all). */
export function startWorkerProcess(env: NodeJS.ProcessEnv): WorkerProcess {
  const { child, output } = spawnTs('workers/main.ts', env, { group: true });
  const exited = new Promise<NodeJS.Signals | number | null>((resolve) =>
    child.once('exit', (code, signal) => resolve(signal ?? code)),
  );
  return { child, output, exited };
}
