/**
 * Starts `temporal server start-dev` on loopback with the project's search attributes: used by
 * the test harness (in memory) and by `npm start` (SQLite file, with the UI).
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { Connection } from '@temporalio/client';
import { SEARCH_ATTRIBUTE_KEYS } from '../common/search-attributes.js';
import { ensureTool, freePort, portIsFree, spawnLogged, stopProcess, tail, waitUntilReady } from '../lib/processes.js';

export interface DevServerOptions {
  /** SQLite file for persistence; in memory when left out. */
  dbFile?: string;
  /** Serve the Web UI on this port (0 picks a free one); headless when left out. */
  uiPort?: number;
  port?: number;
  /** The UI decodes payloads through this codec server (`--ui-codec-endpoint`). */
  codecEndpoint?: string;
  logFile: string;
  startTimeoutMs?: number;
  /** Picks each port not given (default freePort); a test hands in one that returns a taken port. */
  pickPort?: () => Promise<number>;
}

export interface DevServer {
  address: string;
  pid?: number;
  uiUrl?: string;
  logFile: string;
  stop(): Promise<void>;
  /** SIGKILL, as when its machine dies: nothing is flushed or closed (tests of outages). */
  kill(): Promise<void>;
}

/** How often a start is tried again when a port it picked was taken before the server bound it. */
const STARTS_ON_TAKEN_PORT = 3;

export async function startDevServer(opts: DevServerOptions): Promise<DevServer> {
  const temporal = ensureTool('ensure-temporal.sh');
  // A port freePort() found free may be taken (another process, an outgoing connection's source
  // port) before the server binds it; the server then exits with "bind: address already in use".
  // Ports picked here are picked again; a port the caller chose is its to free.
  for (let attempt = 1; ; attempt++) {
    const picked: number[] = [];
    const pick = async (chosen?: number) => {
      if (chosen !== undefined && chosen !== 0) return chosen;
      const p = await (opts.pickPort ?? freePort)();
      picked.push(p);
      return p;
    };
    try {
      return await startOnce(temporal, opts, {
        port: await pick(opts.port),
        http: await pick(),
        metrics: await pick(),
        ui: opts.uiPort === undefined ? undefined : await pick(opts.uiPort),
      });
    } catch (err) {
      const log = await fs.readFile(opts.logFile, 'utf8').catch(() => '');
      const taken = /listen tcp 127\.0\.0\.1:(\d+): bind: address already in use/.exec(log);
      if (attempt < STARTS_ON_TAKEN_PORT && taken && picked.includes(Number(taken[1]))) continue;
      throw err;
    }
  }
}

async function startOnce(
  temporal: string,
  opts: DevServerOptions,
  ports: { port: number; http: number; metrics: number; ui?: number },
): Promise<DevServer> {
  const { port } = ports;
  // A server already on the port would answer the readiness probe in this one's place.
  if (!(await portIsFree(port)))
    throw new Error(`port ${port} on 127.0.0.1 is already in use (another Temporal server?)`);
  const args = ['server', 'start-dev', '--ip', '127.0.0.1', '--port', String(port), '--log-level', 'warn'];
  args.push('--http-port', String(ports.http), '--metrics-port', String(ports.metrics));
  // As deploy/temporal/dynamicconfig.yaml: activities dispatched eagerly to the worker that scheduled them.
  args.push('--dynamic-config-value', 'system.enableActivityEagerExecution=true');
  for (const key of SEARCH_ATTRIBUTE_KEYS) args.push('--search-attribute', `${key.name}=Keyword`);
  if (opts.dbFile) {
    await fs.mkdir(path.dirname(opts.dbFile), { recursive: true }).catch(() => undefined);
    args.push('--db-filename', opts.dbFile);
  }
  let uiUrl: string | undefined;
  if (ports.ui === undefined) args.push('--headless');
  else {
    args.push('--ui-ip', '127.0.0.1', '--ui-port', String(ports.ui));
    if (opts.codecEndpoint) args.push('--ui-codec-endpoint', opts.codecEndpoint);
    uiUrl = `http://127.0.0.1:${ports.ui}`;
  }

  await fs.mkdir(path.dirname(opts.logFile), { recursive: true });
  const child = spawnLogged(temporal, args, opts.logFile);

  const address = `127.0.0.1:${port}`;
  try {
    await waitUntilReady(
      `temporal dev server on ${address}`,
      async () => {
        const connection = await Connection.connect({ address, connectTimeout: 1000 });
        try {
          await connection.workflowService.getSystemInfo({});
          return true;
        } finally {
          await connection.close();
        }
      },
      { child, timeoutMs: opts.startTimeoutMs ?? 60_000, describe: () => tail(opts.logFile) },
    );
  } catch (err) {
    await stopProcess(child);
    throw err;
  }
  return {
    address,
    uiUrl,
    logFile: opts.logFile,
    pid: child.pid,
    stop: () => stopProcess(child),
    kill: async () => {
      if (child.exitCode === null && child.signalCode === null) {
        const exited = new Promise((resolve) => child.once('exit', resolve));
        child.kill('SIGKILL');
        await exited;
      }
    },
  };
}
