// `npm start` as a user runs it: the dev server, the simulated lab and the worker come up; Ctrl-C
// (SIGINT to the terminal's process group), `kill` (SIGTERM to npm) and the death of start.ts
// itself each leave no process and no listening port behind. A restart on the same state runs the
// talosBootstrap example to the end (it used to wait 30 minutes on the kubeconfig of the API
// server of the previous start).
import { execFile } from 'node:child_process';
import { promises as fs, readFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { workflowIdFor } from '../clients/start.js';
import type { TalosBootstrapResult } from '../common/talos.js';
import { projectRoot } from '../lib/paths.js';
import { ensureTool, portIsFree } from '../lib/processes.js';
import { connectClient, temporalSettings } from '../lib/temporal.js';
import {
  listeningPorts,
  npmStart,
  processTree,
  startPorts,
  stillRunning,
  untilWorkerStarted,
  type NpmStart,
} from './harness/processes.js';

let stateDir: string;
let env: NodeJS.ProcessEnv;

beforeAll(async () => {
  stateDir = await fs.mkdtemp(path.join(os.tmpdir(), 'labwright-start-'));
  env = {
    TEMPORAL_ADDRESS: '',
    LABWRIGHT_INVENTORY: '',
    LABWRIGHT_CODEC_KEY: '',
    LABWRIGHT_CODEC_KEY_FILE: '',
    LABWRIGHT_STATE_DIR: stateDir,
    ...(await startPorts()),
  };
});
afterAll(async () => {
  await fs.rm(stateDir, { recursive: true, force: true });
});

const address = () => `127.0.0.1:${env.LABWRIGHT_DEV_PORT}`;

/** Starts `npm start`; resolves once the worker polls, with every PID and listening port of the stack. */
async function up(): Promise<NpmStart & { pids: number[]; ports: number[] }> {
  const run = npmStart(projectRoot, env);
  try {
    await untilWorkerStarted(run);
  } catch (err) {
    process.kill(-run.child.pid!, 'SIGKILL');
    throw err;
  }
  const pids = processTree(run.child.pid!);
  return { ...run, pids, ports: listeningPorts(pids) };
}

/** After a stop: not one process of the stack runs, and every port it listened on is free. */
async function expectNothingLeft(run: { pids: number[]; ports: number[] }, timeout = 5_000): Promise<void> {
  // The reaper (a shell) sees its pipe close as start.ts exits, and exits a moment later.
  await expect.poll(() => stillRunning(run.pids), { timeout, interval: 100 }).toEqual([]);
  const busy: number[] = [];
  for (const port of run.ports) if (!(await portIsFree(port))) busy.push(port);
  expect(busy).toEqual([]);
}

async function talosBootstrapExample(): Promise<TalosBootstrapResult> {
  const input = JSON.parse(await fs.readFile(path.join(projectRoot, 'docs/examples/talos-bootstrap.json'), 'utf8'));
  const client = await connectClient(
    await temporalSettings({ TEMPORAL_ADDRESS: address(), LABWRIGHT_CODEC_KEY_FILE: path.join(stateDir, 'codec.key') }),
  );
  try {
    const handle = await client.workflow.start('talosBootstrap', {
      taskQueue: 'labwright',
      workflowId: workflowIdFor('talosBootstrap', input),
      args: [input],
      workflowIdConflictPolicy: 'USE_EXISTING',
    });
    return (await handle.result()) as TalosBootstrapResult;
  } finally {
    await client.connection.close();
  }
}

describe('npm start', () => {
  it('brings up the dev server, the simulated lab and the worker, says so; Ctrl-C stops it all, exit 0', async () => {
    const run = await up();
    expect(run.output()).toContain(`Temporal:  ${address()} (local dev server`);
    expect(run.output()).toContain('Lab:       SIMULATED — no real endpoints configured');
    expect(run.output()).toMatch(/proxmox: fakepve/);
    expect(run.output()).toContain('npx labwright start talosBootstrap --input docs/examples/talos-bootstrap.json');
    // The codec server the UI decodes through answers the codec protocol.
    const codecUrl = `http://127.0.0.1:${env.LABWRIGHT_CODEC_SERVER_PORT}`;
    expect(run.output()).toContain(`Codec:     ${codecUrl}`);
    const decoded = await fetch(`${codecUrl}/decode`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-namespace': 'default' },
      body: JSON.stringify({ payloads: [] }),
    });
    expect(decoded.status).toBe(200);
    // Temporal, kube-apiserver, etcd, fakepve, moto, the Talos stand-in, the worker's metrics, ...
    expect(run.ports).toEqual(expect.arrayContaining([Number(env.LABWRIGHT_DEV_PORT), Number(env.LABWRIGHT_UI_PORT)]));
    expect(run.ports.length).toBeGreaterThanOrEqual(8);

    const temporal = ensureTool('ensure-temporal.sh');
    const list = await promisify(execFile)(temporal, ['workflow', 'list', '--address', address()]);
    expect(list.stderr).toBe('');
    expect((await fs.stat(path.join(stateDir, 'codec.key'))).mode & 0o077).toBe(0);
    await fs.access(path.join(stateDir, 'temporal.db'));

    // The example the banner suggests, so that the restart below finds a stored kubeconfig.
    const first = await talosBootstrapExample();
    expect(first.changes).toContain('stored the admin kubeconfig');

    process.kill(-run.child.pid!, 'SIGINT');
    expect(await run.exited).toEqual({ code: 0, signal: null });
    await expectNothingLeft(run);
  }, 600_000);

  it('restarted on the same state, runs the talosBootstrap example to the end; SIGTERM stops it all, exit 0', async () => {
    const run = await up();
    const again = await talosBootstrapExample();
    // The lab was re-seeded (new VMs, a new API server): the stored kubeconfig was fetched again.
    expect(again.changes).toEqual(
      expect.arrayContaining([
        expect.stringMatching(/^fetched the admin kubeconfig again: the stored one does not reach/),
      ]),
    );
    process.kill(run.child.pid!, 'SIGTERM'); // `kill <pid of npm start>`
    expect(await run.exited).toEqual({ code: 0, signal: null });
    await expectNothingLeft(run);
  }, 600_000);

  it('leaves nothing behind when start.ts itself is killed outright', async () => {
    const run = await up();
    const startTs = run.pids.find(isStartTs);
    expect(startTs).toBeDefined();
    process.kill(startTs!, 'SIGKILL');
    await run.exited;
    // The reaper ends every group: SIGTERM, SIGKILL 5 s later for what is left.
    await expectNothingLeft(run, 20_000);
  }, 600_000);

  it('with its codec port taken (another labwright start), says which port and which variable moves it, exit 1', async () => {
    const taken = net.createServer();
    await new Promise<void>((resolve) => taken.listen(Number(env.LABWRIGHT_CODEC_SERVER_PORT), '127.0.0.1', resolve));
    try {
      const run = npmStart(projectRoot, env);
      expect(await run.exited).toEqual({ code: 1, signal: null });
      expect(run.output()).toContain(
        `labwright start failed: port ${env.LABWRIGHT_CODEC_SERVER_PORT} (the codec server) is in use, by another labwright start perhaps; stop it or set LABWRIGHT_CODEC_SERVER_PORT`,
      );
      expect(await portIsFree(Number(env.LABWRIGHT_DEV_PORT))).toBe(true);
    } finally {
      await new Promise((resolve) => taken.close(resolve));
    }
  }, 120_000);
});

function isStartTs(pid: number): boolean {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes('scripts/start.ts');
  } catch {
    return false;
  }
}
