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
}

export interface DevServer {
  address: string;
  uiUrl?: string;
  logFile: string;
  stop(): Promise<void>;
  /** SIGKILL, as when its machine dies: nothing is flushed or closed (tests of outages). */
  kill(): Promise<void>;
}

export async function startDevServer(opts: DevServerOptions): Promise<DevServer> {
  const temporal = ensureTool('ensure-temporal.sh');
  const port = opts.port ?? (await freePort());
  // A server already on the port would answer the readiness probe in this one's place.
  if (!(await portIsFree(port)))
    throw new Error(`port ${port} on 127.0.0.1 is already in use (another Temporal server?)`);
  const args = ['server', 'start-dev', '--ip', '127.0.0.1', '--port', String(port), '--log-level', 'warn'];
  args.push('--http-port', String(await freePort()), '--metrics-port', String(await freePort()));
  // As deploy/temporal/dynamicconfig.yaml: activities dispatched eagerly to the worker that scheduled them.
  args.push('--dynamic-config-value', 'system.enableActivityEagerExecution=true');
  for (const key of SEARCH_ATTRIBUTE_KEYS) args.push('--search-attribute', `${key.name}=Keyword`);
  if (opts.dbFile) {
    await fs.mkdir(path.dirname(opts.dbFile), { recursive: true }).catch(() => undefined);
    args.push('--db-filename', opts.dbFile);
  }
  let uiUrl: string | undefined;
  if (opts.uiPort === undefined) args.push('--headless');
  else {
    const uiPort = opts.uiPort === 0 ? await freePort() : opts.uiPort;
    args.push('--ui-ip', '127.0.0.1', '--ui-port', String(uiPort));
    if (opts.codecEndpoint) args.push('--ui-codec-endpoint', opts.codecEndpoint);
    uiUrl = `http://127.0.0.1:${uiPort}`;
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
