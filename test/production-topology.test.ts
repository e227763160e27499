// The production stack's Temporal without Docker: the real temporal-server and temporal-sql-tool
// (go.temporal.io/server, pinned to the dev server's version) on Debian's PostgreSQL, the schema
// made by the compose file's admin-tools step (deploy/temporal/setup.sh), the same settings and
// dynamic config (deploy/temporal/), and the worker started with the image's own command. A
// talosBootstrap run survives the server's SIGKILL and restart mid-step.
import { execFile } from 'node:child_process';
import { promises as fs } from 'node:fs';
import { promisify } from 'node:util';
import os from 'node:os';
import path from 'node:path';
import type { ChildProcess } from 'node:child_process';
import { Client, Connection } from '@temporalio/client';
import { temporal } from '@temporalio/proto';
import { inject } from 'vitest';
import { parse as parseYaml } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SEARCH_ATTRIBUTE_KEYS } from '../common/search-attributes.js';
import type { TalosBootstrapResult } from '../common/talos.js';
import { projectRoot } from '../lib/paths.js';
import { ensureTool, freePort, spawnLogged, stopProcess, tail, waitUntilReady } from '../lib/processes.js';
import { execForm, instructions, readDockerfile } from './harness/dockerfile.js';
import {
  bootstrapThroughOutage,
  labWorkerEnv,
  oneControlPlane,
  startTalosLab,
  type TalosLab,
} from './harness/talos.js';
import {
  runSetupStep,
  startPostgres,
  startTemporalServer,
  temporalEnv,
  temporalSettingsFile,
  type Postgres,
  type TemporalServer,
} from './harness/temporal-cluster.js';
import { testDataConverter } from './harness/temporal.js';

const CLUSTER = 'prod-topology';
const run = promisify(execFile);

interface ComposeService {
  image?: string;
  build?: string;
  command?: string[];
  entrypoint?: string[];
  env_file?: string | string[];
  environment?: Record<string, string>;
  volumes?: string[];
  ports?: string[];
}

async function compose(): Promise<Record<string, ComposeService>> {
  const doc = parseYaml(await fs.readFile(path.join(projectRoot, 'docker-compose.yml'), 'utf8'), {
    merge: true,
  }) as { services: Record<string, ComposeService> };
  return doc.services;
}

describe('docker-compose.yml and this test run Temporal on the same settings', () => {
  it('the same env file, setup script, dynamic config and server version; the UI decodes through the codec server', async () => {
    const services = await compose();
    const settings = await temporalSettingsFile();
    const envFiles = (s: ComposeService) => [s.env_file ?? []].flat();
    const goMod = await fs.readFile(path.join(projectRoot, 'test', 'temporal-server', 'go.mod'), 'utf8');
    const pinned = /^\s*go\.temporal\.io\/server v(\S+)/m.exec(goMod)![1];

    expect(services.temporal!.image).toBe(`temporalio/server:${pinned}`);
    expect(envFiles(services.temporal!)).toEqual(['deploy/temporal/temporal.env']);
    // The dynamic config file is mounted where the shared settings tell the server to read it.
    expect(services.temporal!.volumes).toContain(
      `./deploy/temporal/dynamicconfig.yaml:${settings.DYNAMIC_CONFIG_FILE_PATH}:ro`,
    );
    for (const [name, step] of [
      ['temporal-admin-tools', 'schema'],
      ['temporal-namespace', 'namespace'],
    ] as const) {
      const s = services[name]!;
      expect(s.image).toBe(`temporalio/admin-tools:${pinned}`);
      expect(envFiles(s)).toEqual(['deploy/temporal/temporal.env']);
      expect(s.volumes).toContain('./deploy/temporal:/etc/labwright/temporal:ro');
      expect([...s.entrypoint!, ...s.command!]).toEqual(['sh', '/etc/labwright/temporal/setup.sh', step]);
    }
    // No auto-setup image, which Temporal no longer builds.
    expect(Object.values(services).map((s) => s.image ?? '')).not.toContainEqual(expect.stringContaining('auto-setup'));

    // The UI's codec endpoint is the codec server's published port, and the codec server lets the
    // UI's origin in.
    const ui = services['temporal-ui']!;
    const codec = services['codec-server']!;
    const codecPort = /^--port=(\d+)$/.exec(codec.command!.find((a) => a.startsWith('--port='))!)![1];
    expect(codec.ports).toContain(`127.0.0.1:${codecPort}:${codecPort}`);
    expect(ui.environment!.TEMPORAL_CODEC_ENDPOINT).toBe(`http://localhost:${codecPort}`);
    expect(codec.command!.slice(codec.command!.indexOf('--ui-origin') + 1)).toContain(
      ui.environment!.TEMPORAL_CORS_ORIGINS,
    );
    expect(codec.command!.slice(0, 4)).toEqual([
      'node',
      'node_modules/tsx/dist/cli.mjs',
      'clients/labwright.ts',
      'codec-server',
    ]);

    // The worker runs the image's own command (no override), which this test starts below.
    expect(services.worker!.build).toBe('.');
    expect(services.worker!.command).toBeUndefined();
    expect(services['llm-proxy']!.command).toEqual([
      'node',
      'node_modules/tsx/dist/cli.mjs',
      'clients/labwright.ts',
      'proxy',
    ]);
  });

  it('mounts every file the example inventory references into the worker', async () => {
    const inventory = parseYaml(
      await fs.readFile(path.join(projectRoot, 'hardware', 'lab.example.yaml'), 'utf8'),
    ) as unknown;
    // Every `caFile:` and `{ file: … }` anywhere in it.
    const found = new Set<string>();
    const walk = (v: unknown): void => {
      if (Array.isArray(v)) v.forEach(walk);
      else if (v && typeof v === 'object') {
        for (const [k, x] of Object.entries(v)) {
          if ((k === 'caFile' || k === 'file') && typeof x === 'string') found.add(x);
          else walk(x);
        }
      }
    };
    walk(inventory);
    const referenced = [...found].sort();
    expect(referenced.length).toBeGreaterThanOrEqual(4);
    const worker = (await compose()).worker!;
    const mounted = worker.volumes!.map((v) => v.split(':')[1]);
    for (const file of referenced) expect(mounted, file).toContain(file);
    expect(mounted).toContain('/etc/labwright/lab.yaml');
  });
});

describe('the production topology: temporal-server on PostgreSQL, the worker from the image command', () => {
  let dir: string;
  let pg: Postgres;
  let server: TemporalServer;
  let lab: TalosLab;
  let worker: ChildProcess | undefined;
  let schemaOutput = '';

  beforeAll(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'labwright-prod-'));
    const labStart = startTalosLab({
      clusterName: CLUSTER,
      cluster: oneControlPlane,
    });
    labStart.catch(() => undefined); // awaited below
    const settings = await temporalSettingsFile();
    pg = await startPostgres(settings.POSTGRES_USER!);
    const env = await temporalEnv(pg);
    const schema = await runSetupStep('schema', env);
    schemaOutput = schema.stdout + schema.stderr;
    server = await startTemporalServer(dir, env);
    await runSetupStep('namespace', { ...env, TEMPORAL_ADDRESS: server.address });
    lab = await labStart;
  }, 300_000);

  afterAll(async () => {
    if (worker) await stopProcess(worker, 5000);
    await server?.stop();
    await pg?.stop();
    await lab?.stop();
    if (dir) await fs.rm(dir, { recursive: true, force: true });
  });

  it('sets up both stores to the schema version the server ships, and a re-run changes nothing', async () => {
    const settings = await temporalSettingsFile();
    const schemaDir = path.join(ensureTool('ensure-temporal-server.sh'), 'schema', 'postgresql', 'v12');
    const newest = async (store: string) =>
      (await fs.readdir(path.join(schemaDir, store, 'versioned')))
        .map((v) => v.replace(/^v/, ''))
        .sort((a, b) => a.localeCompare(b, 'en', { numeric: true }))
        .at(-1)!;
    const current = async () => ({
      [settings.DBNAME!]: await pg.query(settings.DBNAME!, 'SELECT curr_version FROM schema_version'),
      [settings.VISIBILITY_DBNAME!]: await pg.query(
        settings.VISIBILITY_DBNAME!,
        'SELECT curr_version FROM schema_version',
      ),
    });
    const expected = {
      [settings.DBNAME!]: await newest('temporal'),
      [settings.VISIBILITY_DBNAME!]: await newest('visibility'),
    };
    expect(await current()).toEqual(expected);
    expect(schemaOutput).toMatch(/UpdateSchemaTask done/);
    // The admin-tools one-shot runs at every `docker compose up`: a second run is harmless.
    await runSetupStep('schema', await temporalEnv(pg));
    expect(await current()).toEqual(expected);
    // The namespace step made the configured namespace, with its retention.
    const client = await Connection.connect({ address: server.address });
    try {
      const ns = await client.workflowService.describeNamespace({ namespace: settings.TEMPORAL_NAMESPACE });
      expect(Number(ns.config?.workflowExecutionRetentionTtl?.seconds)).toBe(72 * 3600);
    } finally {
      await client.close();
    }
  });

  it('registers the search attributes every workflow sets, which the server refuses a workflow without; a re-run changes nothing', async () => {
    const settings = await temporalSettingsFile();
    expect(settings.SEARCH_ATTRIBUTES!.split(',')).toEqual(SEARCH_ATTRIBUTE_KEYS.map((k) => k.name));
    const connection = await Connection.connect({ address: server.address });
    try {
      const registered = async () =>
        (await connection.operatorService.listSearchAttributes({ namespace: settings.TEMPORAL_NAMESPACE }))
          .customAttributes;
      const keywords = Object.fromEntries(
        SEARCH_ATTRIBUTE_KEYS.map((k) => [k.name, temporal.api.enums.v1.IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD]),
      );
      expect(await registered()).toMatchObject(keywords);
      await runSetupStep('namespace', { ...(await temporalEnv(pg)), TEMPORAL_ADDRESS: server.address });
      expect(await registered()).toMatchObject(keywords);
      // What the registration is for: a start that sets one (the burst pool's update-with-start does).
      const client = new Client({
        connection,
        namespace: settings.TEMPORAL_NAMESPACE,
        dataConverter: testDataConverter,
      });
      const handle = await client.workflow.start('searchAttributeProbe', {
        workflowId: `search-attribute-probe-${Date.now()}`,
        taskQueue: 'no-worker-polls-this',
        typedSearchAttributes: SEARCH_ATTRIBUTE_KEYS.map((key) => ({ key, value: 'probe' })),
      });
      expect((await handle.describe()).typedSearchAttributes.get(SEARCH_ATTRIBUTE_KEYS[0]!)).toBe('probe');
      await handle.terminate('probe done');
    } finally {
      await connection.close();
    }
  });

  it("the image's worker command connects, reports healthy, and a talosBootstrap survives the server's SIGKILL and restart", async () => {
    const dockerfile = await readDockerfile();
    const final = dockerfile.stages.at(-1)!;
    const cmd = execForm(instructions(final, 'CMD')[0]!.args)!;
    // The image's build of the compiled worker, as its app stage runs it, in this checkout.
    const app = dockerfile.stages.find((s) => s.name === 'app')!;
    const build = instructions(app, 'RUN').find((r) => r.args.includes('workers/bundle.ts'))!;
    await run('sh', ['-c', build.args], { cwd: projectRoot });
    const healthcheck = execForm(instructions(final, 'HEALTHCHECK')[0]!.args)!;
    const metrics = `127.0.0.1:${await freePort()}`;
    const health = () =>
      run(healthcheck[0]!, healthcheck.slice(1), {
        cwd: projectRoot,
        env: { ...process.env, LABWRIGHT_METRICS_ADDRESS: metrics },
      }).then(
        () => true,
        () => false,
      );
    expect(await health()).toBe(false); // nothing runs yet

    const taskQueue = 'prod-topology';
    const env = {
      ...process.env,
      ...(await labWorkerEnv(lab, {
        temporalAddress: server.address,
        taskQueue,
        extra: { LABWRIGHT_METRICS_ADDRESS: metrics, NODE_ENV: 'production' },
      })),
      LABWRIGHT_WORKFLOW_BUNDLE: inject('workflowBundlePath'),
    };
    const workerLog = path.join(dir, 'worker.log');
    worker = spawnLogged(cmd[0]!, cmd.slice(1), workerLog, { cwd: projectRoot, env });
    await waitUntilReady('the worker (healthcheck)', health, {
      child: worker,
      timeoutMs: 120_000,
      describe: () => tail(workerLog),
    });

    const connect = async (): Promise<Client> =>
      new Client({
        connection: await Connection.connect({ address: server.address }),
        namespace: (await temporalSettingsFile()).TEMPORAL_NAMESPACE,
        dataConverter: testDataConverter,
      });
    const handle = await bootstrapThroughOutage(lab, {
      connect,
      taskQueue,
      outage: async () => {
        await server.kill();
        await server.start();
      },
    });
    const result = (await handle.result()) as TalosBootstrapResult;
    expect(result.etcd).toEqual({ node: 'talos-cp-1', bootstrappedByThisRun: true });
    expect(lab.standin.bootstraps).toEqual([{ node: 'talos-cp-1', outcome: 'bootstrapped' }]);
    // The same worker process carried it through: it reconnected rather than being restarted.
    expect(worker.exitCode).toBeNull();
    expect(await health()).toBe(true);
    // The run is in PostgreSQL: its history survived the kill, visibility lists it.
    const listed = [];
    for await (const w of (await connect()).workflow.list({ query: `WorkflowId = '${handle.workflowId}'` }))
      listed.push(w);
    expect(listed.map((w) => w.status.name)).toEqual(['COMPLETED']);
  }, 240_000);
});
