/** Runs the project's own entry points (worker, CLI) as separate processes, as people run them. */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { promisify } from 'node:util';
import { projectRoot } from '../../lib/paths.js';

const TSX = path.join(projectRoot, 'node_modules', 'tsx', 'dist', 'cli.mjs');
export const TEST_CODEC_KEY_FILE = path.join(projectRoot, 'test', 'fixtures', 'codec-test.key');

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a TypeScript entry point to completion. */
export async function runTs(script: string, args: string[], env: NodeJS.ProcessEnv): Promise<RunResult> {
  try {
    const { stdout, stderr } = await promisify(execFile)(process.execPath, [TSX, script, ...args], {
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
  const child = spawn(process.execPath, [TSX, script], {
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
