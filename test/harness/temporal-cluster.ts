/**
 * The production Temporal topology without Docker, on the settings docker-compose.yml uses
 * (deploy/temporal/): Debian's PostgreSQL as a private cluster in a temp dir on a free loopback
 * port; the schema made by deploy/temporal/setup.sh as the compose file's admin-tools one-shot runs
 * it, with the real temporal-sql-tool; the real temporal-server (scripts/ensure-temporal-server.sh)
 * started as the temporalio/server image starts it (`temporal-server --env docker start` on the
 * server's own config template, config/docker.yaml, filled from the environment); and the
 * namespace step. PostgreSQL refuses to run as root: as root, it runs as the `postgres` user.
 */
import { execFile, execFileSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { Connection } from '@temporalio/client';
import { projectRoot } from '../../lib/paths.js';
import {
  ensureTool,
  freePort,
  portIsFree,
  spawnLogged,
  stopProcess,
  tail,
  waitUntilReady,
} from '../../lib/processes.js';

const run = promisify(execFile);
export const TEMPORAL_DEPLOY_DIR = path.join(projectRoot, 'deploy', 'temporal');

/** KEY=value lines (# comments), as compose's env_file reads them. */
export async function readEnvFile(file: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const line of (await fs.readFile(file, 'utf8')).split('\n')) {
    const m = /^\s*([A-Za-z_][A-Za-z0-9_]*)=(.*)$/.exec(line);
    if (m) out[m[1]!] = m[2]!.trim();
  }
  return out;
}

/** The shared settings (deploy/temporal/temporal.env). */
export function temporalSettingsFile(): Promise<Record<string, string>> {
  return readEnvFile(path.join(TEMPORAL_DEPLOY_DIR, 'temporal.env'));
}

export interface Postgres {
  port: number;
  /** The postmaster's process, or the runuser above it when run as root. */
  pid: number;
  password: string;
  logFile: string;
  /** One value (first column of the first row) of a query on `database`, through psql. */
  query(database: string, sql: string): Promise<string>;
  stop(): Promise<void>;
}

/** A user to run PostgreSQL as (it refuses root), and how to run a program as that user. */
function asPostgresUser(): { wrap: (argv: string[]) => string[]; uid?: number; gid?: number } {
  if (process.getuid?.() !== 0) return { wrap: (argv) => argv };
  const uid = Number(execFileSync('id', ['-u', 'postgres'], { encoding: 'utf8' }));
  const gid = Number(execFileSync('id', ['-g', 'postgres'], { encoding: 'utf8' }));
  return { wrap: (argv) => ['runuser', '-u', 'postgres', '--', ...argv], uid, gid };
}

/**
 * initdb + postgres in a temp dir of their own (removed by stop), superuser `user` with a random
 * password, scram auth, loopback only.
 */
export async function startPostgres(user: string): Promise<Postgres> {
  const bin = ensureTool('ensure-postgresql.sh');
  const as = asPostgresUser();
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'labwright-postgres-'));
  const data = path.join(dir, 'pgdata');
  const socketDir = path.join(dir, 'pgsocket');
  await fs.mkdir(socketDir);
  const password = randomBytes(12).toString('hex');
  const pwfile = path.join(dir, 'pgpass');
  await fs.writeFile(pwfile, password, { mode: 0o600 });
  if (as.uid !== undefined) {
    for (const p of [dir, socketDir, pwfile]) await fs.chown(p, as.uid, as.gid!);
  }
  const [initdb, ...initArgs] = as.wrap([
    path.join(bin, 'initdb'),
    '-D',
    data,
    '-U',
    user,
    `--pwfile=${pwfile}`,
    '--auth=scram-sha-256',
    '-E',
    'UTF8',
    '--no-locale',
    '--no-sync',
  ]);
  await run(initdb!, initArgs, { cwd: dir }).catch((err: { stderr?: string }) => {
    throw new Error(`initdb failed: ${err.stderr ?? String(err)}`);
  });
  await fs.rm(pwfile);
  const port = await freePort();
  const logFile = path.join(dir, 'postgres.log');
  const [pg, ...pgArgs] = as.wrap([
    path.join(bin, 'postgres'),
    '-D',
    data,
    '-p',
    String(port),
    '-c',
    'listen_addresses=127.0.0.1',
    '-c',
    `unix_socket_directories=${socketDir}`,
    '-c',
    'fsync=off',
  ]);
  const child = spawnLogged(pg!, pgArgs, logFile, { cwd: dir });
  await waitUntilReady(
    'PostgreSQL',
    async () => {
      await run(path.join(bin, 'pg_isready'), ['-q', '-h', '127.0.0.1', '-p', String(port)]);
      return true;
    },
    { child, timeoutMs: 60_000, describe: () => tail(logFile) },
  );
  const query = async (database: string, sql: string): Promise<string> => {
    const { stdout } = await run(
      path.join(bin, 'psql'),
      ['-h', '127.0.0.1', '-p', String(port), '-U', user, '-d', database, '-tAc', sql],
      { env: { ...process.env, PGPASSWORD: password } },
    );
    return stdout.trim();
  };
  const stop = async (): Promise<void> => {
    await stopProcess(child, 10_000);
    await fs.rm(dir, { recursive: true, force: true });
  };
  return { port, pid: child.pid!, password, logFile, query, stop };
}

/** The environment of the one-shots and the server: the shared settings and where the database is. */
export async function temporalEnv(pg: Postgres): Promise<NodeJS.ProcessEnv> {
  return {
    PATH: process.env.PATH,
    HOME: process.env.HOME,
    ...(await temporalSettingsFile()),
    POSTGRES_SEEDS: '127.0.0.1',
    DB_PORT: String(pg.port),
    // The server's template takes the visibility store's port from VISIBILITY_DB_PORT or
    // POSTGRES_PORT, not DB_PORT (compose's 5432 is its default).
    VISIBILITY_DB_PORT: String(pg.port),
    POSTGRES_PWD: pg.password,
  };
}

/** Runs `deploy/temporal/setup.sh <step>` with the pinned tools; resolves to its output. */
export async function runSetupStep(
  step: 'schema' | 'namespace',
  env: NodeJS.ProcessEnv,
): Promise<{ stdout: string; stderr: string }> {
  const server = ensureTool('ensure-temporal-server.sh');
  return run('sh', [path.join(TEMPORAL_DEPLOY_DIR, 'setup.sh'), step], {
    env: {
      ...env,
      TEMPORAL_SQL_TOOL: path.join(server, 'temporal-sql-tool'),
      SCHEMA_DIR: path.join(server, 'schema'),
      TEMPORAL_CLI: ensureTool('ensure-temporal.sh'),
    },
    maxBuffer: 16 << 20,
    timeout: 180_000,
  });
}

/**
 * A free loopback port below 32768: the server records its membership ports in a smallint column
 * (cluster_membership), so the kernel's ephemeral ports (32768 and up) are refused there.
 */
async function freeSmallintPort(taken: string[]): Promise<number> {
  for (;;) {
    const port = 20000 + Math.floor(Math.random() * 12000);
    if (!taken.includes(String(port)) && (await portIsFree(port))) return port;
  }
}

export interface TemporalServer {
  address: string;
  /** The running server's process. */
  pid: () => number;
  logFile: () => string;
  /** SIGKILL: the process dies as in a crash or an OOM kill, with nothing flushed. */
  kill(): Promise<void>;
  /** Starts it again on the same ports and database. */
  start(): Promise<void>;
  stop(): Promise<void>;
}

/** The real server on `env` (temporalEnv plus the dynamic config), every port free on loopback. */
export async function startTemporalServer(dir: string, env: NodeJS.ProcessEnv): Promise<TemporalServer> {
  const server = ensureTool('ensure-temporal-server.sh');
  const root = path.join(dir, 'temporal');
  await fs.mkdir(path.join(root, 'config'), { recursive: true });
  await fs.copyFile(path.join(server, 'config', 'docker.yaml'), path.join(root, 'config', 'docker.yaml'));
  const portNames = [
    'FRONTEND_GRPC_PORT',
    'FRONTEND_HTTP_PORT',
    'FRONTEND_MEMBERSHIP_PORT',
    'INTERNAL_FRONTEND_HTTP_PORT',
    'HISTORY_GRPC_PORT',
    'HISTORY_MEMBERSHIP_PORT',
    'MATCHING_GRPC_PORT',
    'MATCHING_MEMBERSHIP_PORT',
    'WORKER_GRPC_PORT',
    'WORKER_MEMBERSHIP_PORT',
  ];
  const ports: Record<string, string> = {};
  for (const name of portNames) ports[name] = String(await freeSmallintPort(Object.values(ports)));
  const serverEnv = {
    ...env,
    ...ports,
    BIND_ON_IP: '127.0.0.1',
    TEMPORAL_BROADCAST_ADDRESS: '127.0.0.1',
    // The image mounts deploy/temporal/dynamicconfig.yaml at this path; here it is the file itself.
    DYNAMIC_CONFIG_FILE_PATH: path.join(TEMPORAL_DEPLOY_DIR, 'dynamicconfig.yaml'),
  };
  const address = `127.0.0.1:${ports.FRONTEND_GRPC_PORT}`;
  let child: ChildProcess | undefined;
  let log = '';
  let runs = 0;
  const start = async (): Promise<void> => {
    log = path.join(dir, `temporal-server-${++runs}.log`);
    const proc = spawnLogged(
      path.join(server, 'temporal-server'),
      ['--root', root, '--config', 'config', '--env', 'docker', 'start'],
      log,
      { env: serverEnv, cwd: root },
    );
    child = proc;
    await waitUntilReady(
      'temporal-server',
      async () => {
        const connection = await Connection.connect({ address, connectTimeout: 2000 });
        try {
          const health = await connection.healthService.check({});
          return health.status === 1; // SERVING
        } finally {
          await connection.close();
        }
      },
      { child: proc, timeoutMs: 120_000, describe: () => tail(log, 60) },
    );
  };
  await start();
  return {
    address,
    pid: () => child!.pid!,
    logFile: () => log,
    start,
    kill: async () => {
      const c = child!;
      const exited = new Promise<void>((resolve) => c.once('exit', () => resolve()));
      process.kill(-c.pid!, 'SIGKILL');
      await exited;
    },
    stop: async () => {
      if (child) await stopProcess(child, 10_000);
    },
  };
}
