/**
 * `npm start`: the local Temporal dev server (SQLite under .labwright/) and the worker. Without
 * LABWRIGHT_INVENTORY it starts the simulated lab on loopback and says so; with TEMPORAL_ADDRESS
 * it uses that server instead of starting one.
 *
 * SIGINT, SIGTERM and SIGHUP stop everything it started, worker first, and it exits 0; so does
 * the death of its parent (the terminal or `npm`). Every program it starts leads a process group
 * of its own (lib/processes.ts spawnGroup), which the reaper ends if this process is killed
 * outright.
 */
import path from 'node:path';
import { codecFromEnv, ensureLocalKey } from '../lib/codec.js';
import { DEFAULT_CODEC_PORT, startCodecServer } from '../lib/codec-server.js';
import { startDevServer, type DevServer } from '../sim/dev-server.js';
import { projectRoot, stateDir } from '../lib/paths.js';
import { spawnGroup, stopProcess } from '../lib/processes.js';
import { startSimulatedLab, type SimulatedLab } from '../sim/index.js';
import { SIMULATED_PEERS } from '../sim/peers.js';

const env: NodeJS.ProcessEnv = { ...process.env };
const cleanups: Array<() => Promise<void>> = [];

async function main(): Promise<void> {
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(signal, () => stop(signal));
  watchParent();
  if (!env.LABWRIGHT_CODEC_KEY && !env.LABWRIGHT_CODEC_KEY_FILE && env.LABWRIGHT_CODEC !== 'plaintext') {
    env.LABWRIGHT_CODEC_KEY_FILE = await ensureLocalKey();
  }
  const uiPort = Number(env.LABWRIGHT_UI_PORT ?? 8233);
  // The UI decodes payloads through the codec server, so it shows inputs, results and details in clear.
  const codec = (await codecFromEnv(env)).codec;
  const codecPort = Number(env.LABWRIGHT_CODEC_SERVER_PORT ?? DEFAULT_CODEC_PORT);
  const codecServer = codec
    ? await startCodecServer({
        codec,
        namespace: env.TEMPORAL_NAMESPACE ?? 'default',
        port: codecPort,
        allowedOrigins: [`http://127.0.0.1:${uiPort}`, `http://localhost:${uiPort}`],
      }).catch((err: NodeJS.ErrnoException) => {
        if (err.code !== 'EADDRINUSE') throw err;
        throw new Error(
          `port ${codecPort} (the codec server) is in use, by another labwright start perhaps; stop it or set LABWRIGHT_CODEC_SERVER_PORT`,
        );
      })
    : undefined;
  if (codecServer) cleanups.push(() => codecServer.close());
  let server: DevServer | undefined;
  if (!env.TEMPORAL_ADDRESS) {
    server = await startDevServer({
      dbFile: path.join(stateDir, 'temporal.db'),
      port: Number(env.LABWRIGHT_DEV_PORT ?? 7233),
      uiPort,
      codecEndpoint: codecServer?.url,
      logFile: path.join(stateDir, 'logs', 'temporal.log'),
    });
    cleanups.push(() => server!.stop());
    env.TEMPORAL_ADDRESS = server.address;
  }

  let lab: SimulatedLab | undefined;
  let firstRun = '';
  if (!env.LABWRIGHT_INVENTORY) {
    lab = await startSimulatedLab(path.join(stateDir, 'sim'), SIMULATED_PEERS);
    cleanups.push(() => lab!.stop());
    Object.assign(env, lab.env);
    firstRun = `
      npx labwright start talosBootstrap --input docs/examples/talos-bootstrap.json
      npx labwright watch talos-bootstrap/home
      (an input for every workflow: docs/examples/)`;
  }

  // One process (tsx as a loader, not its CLI, which would add a parent relaying signals).
  const worker = spawnGroup(process.execPath, ['--import', 'tsx', 'workers/main.ts'], {
    cwd: projectRoot,
    env,
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  cleanups.unshift(() => stopProcess(worker, 35_000));

  console.log(`
labwright is running.
  Temporal:  ${env.TEMPORAL_ADDRESS}${server ? ` (local dev server, data in ${path.relative(projectRoot, stateDir)}/temporal.db)` : ''}
  Web UI:    ${server?.uiUrl ?? '(the server at TEMPORAL_ADDRESS serves its own)'}
  Payloads:  ${env.LABWRIGHT_CODEC === 'plaintext' ? 'plaintext (local development)' : `encrypted, key ${env.LABWRIGHT_CODEC_KEY_FILE ?? 'from LABWRIGHT_CODEC_KEY'}`}
  Codec:     ${codecServer ? `${codecServer.url} (the UI decodes through it; temporal ... --codec-endpoint ${codecServer.url})` : 'none (plaintext)'}
  Lab:       ${lab ? `SIMULATED — no real endpoints configured (LABWRIGHT_INVENTORY is unset); inventory ${path.relative(projectRoot, lab.inventoryFile)}` : env.LABWRIGHT_INVENTORY}
${lab ? lab.peers.map((p) => `             ${p.name}: ${p.summary}`).join('\n') : ''}
Try:  npx labwright temporal workflow list
      npx labwright workflows${firstRun}
Stop with Ctrl-C.
`);

  const code = await new Promise<number>((resolve) => worker.once('exit', (c) => resolve(c ?? 0)));
  if (stopping) return; // stop() ends the rest and exits
  console.error(`worker exited with code ${code}`);
  await shutdown();
  process.exit(code === 0 ? 0 : 1);
}

let stopping = false;
/** A clean stop: everything started is stopped, in reverse order, and the exit code is 0. */
function stop(why: string): void {
  if (!stopping) console.error(`\n${why}: stopping labwright ...`);
  stopping = true;
  void shutdown().then(() => process.exit(0));
}

/** The parent gone (a closed terminal, a killed `npm`): orphaned, this process stops too. */
function watchParent(): void {
  const parent = process.ppid;
  setInterval(() => {
    if (process.ppid !== parent) stop('parent process exited');
  }, 1000).unref();
}

let shuttingDown: Promise<void> | undefined;
function shutdown(): Promise<void> {
  shuttingDown ??= (async () => {
    for (const cleanup of cleanups) await cleanup().catch((err: unknown) => console.error(err));
  })();
  return shuttingDown;
}

main().catch(async (err: unknown) => {
  console.error(`labwright start failed: ${(err as Error).message}`);
  await shutdown();
  process.exit(1);
});
