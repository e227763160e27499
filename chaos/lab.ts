/**
 * The lab the fault matrix runs on: a Temporal dev server with SQLite persistence (so it can be
 * SIGKILLed and restarted on the same port and file), the simulated lab `npm start` runs (every
 * peer of sim/peers.ts), the EC2 fault proxy in front of moto, and workers as separate processes
 * (workers/main.ts, as a deployment runs them) that the matrix kills with SIGKILL.
 */
import { promises as fs, readdirSync, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Client, Connection } from '@temporalio/client';
import { cacheDir } from '../lib/paths.js';
import { startDevServer, type DevServer } from '../sim/dev-server.js';
import { startSimulatedLab, type SimulatedLab } from '../sim/index.js';
import type { KubeHandle } from '../sim/kube-apiserver.js';
import { SIMULATED_PEERS } from '../sim/peers.js';
import type { FakePve } from '../sim/proxmox.js';
import type { TalosStandin } from '../sim/talos-standin.js';
import { startFaultProxy, type FaultProxy } from '../test/harness/fault-proxy.js';
import { TEST_CODEC_KEY_FILE, startWorkerProcess, type WorkerProcess } from '../test/harness/processes.js';
import { testDataConverter } from '../test/harness/temporal.js';
import { startKubeFaultProxy, type KubeFaultProxy } from '../test/harness/kube-fault-proxy.js';

export interface ChaosLab {
  dir: string;
  sim: SimulatedLab;
  pve: FakePve;
  standin: TalosStandin;
  kube: KubeHandle;
  ec2: FaultProxy;
  kubeFaults: KubeFaultProxy;
  /** The peers' own processes (whose command lines name the lab's folder too). */
  peerPids: Set<number>;
  /** The Temporal address (the same across server restarts). */
  address: string;
  taskQueue: string;
  /** A client on the current server (a new connection after each restart). */
  client(): Promise<Client>;
  /** SIGKILL to the dev server, then a new one on the same port and SQLite file. */
  restartServer(): Promise<void>;
  /** The one live worker (started when none runs); resolves once it polls. */
  worker(): Promise<WorkerProcess>;
  /** SIGKILL to the live worker's process group (its children die with it). */
  killWorker(): Promise<void>;
  /**
   * Points the store's `kubeconfig/home` at the kube fault proxy (talosBootstrap writes the one
   * talosctl hands out, straight to the apiserver; the matrix calls this before every run).
   */
  proxyKubeconfig(): Promise<void>;
  /** Extra environment for workers started from now on (e.g. a talosctl that hangs). */
  setWorkerEnv(extra: NodeJS.ProcessEnv): void;
  stop(): Promise<void>;
}

/** Processes whose command line names `dir`. */
export function processesNaming(dir: string): number[] {
  return readdirSync('/proc')
    .filter((e) => /^\d+$/.test(e))
    .filter((e) => {
      try {
        return readFileSync(`/proc/${e}/cmdline`, 'utf8').includes(dir);
      } catch {
        return false;
      }
    })
    .map(Number);
}

function peerHandle<T>(sim: SimulatedLab, name: string): T {
  const peer = sim.peers.find((p) => p.name === name);
  if (!peer?.handle) throw new Error(`the simulated lab has no ${name} peer handle`);
  return peer.handle as T;
}

export async function startChaosLab(opts: { workflowBundlePath: string; dir?: string }): Promise<ChaosLab> {
  const dir = opts.dir ?? (await fs.mkdtemp(path.join(os.tmpdir(), 'labwright-chaos-')));
  const logDir = path.join(cacheDir, 'test-logs', `chaos-${process.pid}`);
  const dbFile = path.join(dir, 'temporal.db');
  let server: DevServer = await startDevServer({ dbFile, logFile: path.join(logDir, 'temporal.log') });
  const address = server.address;
  const port = Number(address.split(':')[1]);
  const stops: Array<() => Promise<void>> = [() => server.stop()];
  const stopAll = async (): Promise<void> => {
    for (const s of stops.reverse()) await s().catch(() => undefined);
  };
  try {
    const sim = await startSimulatedLab(path.join(dir, 'sim'), SIMULATED_PEERS);
    stops.push(() => sim.stop());
    const ec2 = await startFaultProxy(sim.env.AWS_ENDPOINT_URL_EC2!, { visibilityDelayMs: 500 });
    stops.push(() => ec2.stop());
    const kube = peerHandle<KubeHandle>(sim, 'kubernetes');
    const kubeFaults = await startKubeFaultProxy(kube);
    stops.push(() => kubeFaults.stop());

    const taskQueue = 'chaos';
    let extraEnv: NodeJS.ProcessEnv = {};
    const baseEnv = (): NodeJS.ProcessEnv => ({
      ...sim.env,
      ...extraEnv,
      TEMPORAL_ADDRESS: address,
      LABWRIGHT_CODEC_KEY_FILE: TEST_CODEC_KEY_FILE,
      LABWRIGHT_TASK_QUEUE: taskQueue,
      LABWRIGHT_METRICS_ADDRESS: 'off',
      LABWRIGHT_WORKFLOW_BUNDLE: opts.workflowBundlePath,
      LABWRIGHT_DR_REPORTS_DIR: path.join(dir, 'reports'),
      LABWRIGHT_PACKER_WORKDIR: path.join(dir, 'packer'),
      LABWRIGHT_SHUTDOWN_GRACE: '1 second',
      AWS_ENDPOINT_URL_EC2: ec2.url,
    });

    let live: WorkerProcess | undefined;
    const isLive = (w: WorkerProcess | undefined): w is WorkerProcess =>
      !!w && w.child.exitCode === null && w.child.signalCode === null;
    const killWorker = async (): Promise<void> => {
      if (!isLive(live)) return;
      process.kill(-live.child.pid!, 'SIGKILL');
      await live.exited;
    };
    stops.push(killWorker);

    let client: Client | undefined;
    // Connections of servers gone are only closed at the end: calls still on them (a result's
    // long poll) fail on their own and are retried on the new one.
    const connections: Connection[] = [];
    const closeClient = async () => {
      client = undefined;
    };
    stops.push(async () => {
      await Promise.all(connections.map((c) => c.close().catch(() => undefined)));
    });

    const peerPids = new Set(processesNaming(dir));
    return {
      dir,
      sim,
      peerPids,
      pve: peerHandle<FakePve>(sim, 'proxmox'),
      standin: peerHandle<TalosStandin>(sim, 'talos'),
      kube,
      ec2,
      kubeFaults,
      address,
      taskQueue,
      async client() {
        if (!client) {
          const connection = await Connection.connect({ address });
          connections.push(connection);
          client = new Client({ connection, namespace: 'default', dataConverter: testDataConverter });
        }
        return client;
      },
      async restartServer() {
        await closeClient();
        await server.kill();
        server = await startDevServer({ dbFile, port, logFile: path.join(logDir, 'temporal.log') });
        for (const pid of processesNaming(dbFile)) peerPids.add(pid);
      },
      async worker() {
        if (isLive(live)) return live;
        const w = startWorkerProcess(baseEnv());
        live = w;
        const exited = w.exited.then((how) => {
          throw new Error(`worker exited (${String(how)}) before it polled:\n${w.output().slice(-3000)}`);
        });
        exited.catch(() => undefined);
        while (!w.output().includes('"msg":"worker started"')) {
          await Promise.race([exited, new Promise((r) => setTimeout(r, 100))]);
        }
        return w;
      },
      killWorker,
      async proxyKubeconfig() {
        const file = path.join(sim.env.LABWRIGHT_SECRETS_DIR!, 'kubeconfig', 'home');
        const cfg = JSON.parse(await fs.readFile(file, 'utf8')) as {
          clusters: Array<{ cluster: { server: string; 'certificate-authority-data': string } }>;
        };
        for (const c of cfg.clusters) {
          c.cluster.server = kubeFaults.url;
          c.cluster['certificate-authority-data'] = Buffer.from(kubeFaults.caPem).toString('base64');
        }
        await fs.writeFile(file, JSON.stringify(cfg), { mode: 0o600 });
      },
      setWorkerEnv(extra) {
        extraEnv = extra;
      },
      stop: async () => {
        await stopAll();
        if (!opts.dir) await fs.rm(dir, { recursive: true, force: true });
      },
    };
  } catch (err) {
    await stopAll();
    throw err;
  }
}
