/**
 * EC2 for the simulated lab and the tests: moto in server mode on loopback, the launch template
 * the example pool (`g5-llm`) names, and a fake Ollama-compatible model server that stands in for
 * the model server on every instance (moto's instances have 10.x addresses nobody may connect to,
 * so the worker gets an address map that sends them all to the fake on 127.0.0.1).
 */
import { createWriteStream, promises as fs } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import {
  CreateLaunchTemplateCommand,
  DescribeImagesCommand,
  DescribeLaunchTemplatesCommand,
  EC2Client,
} from '@aws-sdk/client-ec2';
import { ensureTool, freePort, spawnGroup, stopProcess, tail, waitUntilReady } from '../lib/processes.js';
import type { PeerStarter } from './index.js';

/** Dummy keys: moto accepts any, and they keep the SDK from looking for real ones. */
export const MOTO_CREDENTIALS = { accessKeyId: 'testing', secretAccessKey: 'testing' } as const;

export interface MotoServer {
  endpoint: string;
  port: number;
  logFile: string;
  stop(): Promise<void>;
}

/** Starts `moto_server` (from scripts/python-peers.txt) on 127.0.0.1 and a free port. */
export async function startMotoServer(opts: { logFile: string; port?: number }): Promise<MotoServer> {
  const bin = ensureTool('ensure-python-peers.sh');
  const port = opts.port ?? (await freePort());
  await fs.mkdir(path.dirname(opts.logFile), { recursive: true });
  const log = createWriteStream(opts.logFile);
  const child = spawnGroup(path.join(bin, 'moto_server'), ['-H', '127.0.0.1', '-p', String(port)], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  child.stdout!.pipe(log);
  child.stderr!.pipe(log);
  const endpoint = `http://127.0.0.1:${port}`;
  try {
    await waitUntilReady(
      `moto_server on ${endpoint}`,
      async () => (await fetch(`${endpoint}/moto-api/`, { signal: AbortSignal.timeout(1000) })).status < 500,
      { child, timeoutMs: 60_000, describe: () => tail(opts.logFile) },
    );
  } catch (err) {
    await stopProcess(child);
    throw err;
  }
  return {
    endpoint,
    port,
    logFile: opts.logFile,
    stop: async () => {
      await stopProcess(child);
      log.end();
    },
  };
}

export function motoClient(endpoint: string, region = 'us-east-1'): EC2Client {
  // moto needs no support notices for the Node version the lab runs.
  process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
  return new EC2Client({ region, endpoint, credentials: MOTO_CREDENTIALS, maxAttempts: 1 });
}

/** What a pool needs to exist in moto: its launch template, built on one of moto's stock AMIs. */
export async function prepareBurstPool(
  endpoint: string,
  pool: { region: string; instanceTypes: string[]; launchTemplate?: { name: string } },
): Promise<{ imageId: string }> {
  const ec2 = motoClient(endpoint, pool.region);
  try {
    const images = await ec2.send(new DescribeImagesCommand({ Owners: ['amazon'] }));
    const image = images.Images?.find((i) => i.Platform !== 'Windows' && i.ImageId) ?? images.Images?.[0];
    if (!image?.ImageId) throw new Error('moto lists no AMIs');
    const name = pool.launchTemplate?.name;
    if (name) {
      const existing = await ec2
        .send(new DescribeLaunchTemplatesCommand({ LaunchTemplateNames: [name] }))
        .then((r) => r.LaunchTemplates ?? [])
        .catch(() => []);
      if (existing.length === 0) {
        await ec2.send(
          new CreateLaunchTemplateCommand({
            LaunchTemplateName: name,
            LaunchTemplateData: {
              ImageId: image.ImageId,
              InstanceType: pool.instanceTypes[0] as never,
              BlockDeviceMappings: [
                { DeviceName: '/dev/sda1', Ebs: { VolumeSize: 200, VolumeType: 'gp3', DeleteOnTermination: true } },
              ],
            },
          }),
        );
      }
    }
    return { imageId: image.ImageId };
  } finally {
    ec2.destroy();
  }
}

// ------------------------------------------------------------------ fake model server

export interface FakeModelServer {
  name: string;
  url: string;
  port: number;
  /** Requests served per path, health checks included. */
  requests: Map<string, number>;
  /** While false, /api/tags answers 503 and generation requests fail. */
  healthy: boolean;
  stop(): Promise<void>;
}

export interface FakeModelOptions {
  name: string;
  port?: number;
  /** Chunks in a streamed answer, and the pause between them. */
  chunks?: number;
  chunkDelayMs?: number;
}

/**
 * An Ollama-compatible model server: GET /api/tags lists one model; POST /api/generate and
 * /api/chat stream NDJSON chunks, each naming the server (`served_by`), so a test can tell
 * whether the local GPU or the burst pool answered and that the answer streamed.
 */
export async function startFakeModelServer(opts: FakeModelOptions): Promise<FakeModelServer> {
  const chunks = opts.chunks ?? 4;
  const delay = opts.chunkDelayMs ?? 20;
  const state: FakeModelServer = {
    name: opts.name,
    url: '',
    port: 0,
    requests: new Map(),
    healthy: true,
    stop: async () => undefined,
  };
  const server = http.createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://fake');
    state.requests.set(url.pathname, (state.requests.get(url.pathname) ?? 0) + 1);
    const body: Buffer[] = [];
    req.on('data', (c: Buffer) => body.push(c));
    req.on('end', () => {
      if (!state.healthy) {
        res.writeHead(503, { 'content-type': 'application/json' }).end('{"error":"model server unavailable"}');
        return;
      }
      if (req.method === 'GET' && url.pathname === '/api/tags') {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ models: [{ name: 'llama3.1:8b', model: 'llama3.1:8b', size: 4_920_753_328 }] }));
        return;
      }
      if (req.method === 'POST' && (url.pathname === '/api/generate' || url.pathname === '/api/chat')) {
        let model = 'llama3.1:8b';
        try {
          model = (JSON.parse(Buffer.concat(body).toString() || '{}') as { model?: string }).model ?? model;
        } catch {
          res.writeHead(400, { 'content-type': 'application/json' }).end('{"error":"invalid JSON"}');
          return;
        }
        res.writeHead(200, { 'content-type': 'application/x-ndjson' });
        let i = 0;
        const next = (): void => {
          if (res.destroyed) return;
          if (i < chunks) {
            res.write(`${JSON.stringify({ model, response: `word${i} `, done: false, served_by: opts.name })}\n`);
            i++;
            setTimeout(next, delay);
          } else {
            res.end(`${JSON.stringify({ model, response: '', done: true, served_by: opts.name })}\n`);
          }
        };
        next();
        return;
      }
      res.writeHead(404, { 'content-type': 'application/json' }).end('{"error":"not found"}');
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port ?? 0, '127.0.0.1', () => resolve());
  });
  state.port = (server.address() as AddressInfo).port;
  state.url = `http://127.0.0.1:${state.port}`;
  state.stop = () =>
    new Promise<void>((resolve) => {
      server.closeAllConnections();
      server.close(() => resolve());
    });
  return state;
}

// ------------------------------------------------------------------ the simulated lab's peer

/** Environment that points the EC2 activities at moto and the model server at the fake. */
export function ec2Env(endpoint: string, modelPort: number): Record<string, string> {
  return {
    AWS_ENDPOINT_URL_EC2: endpoint,
    AWS_ACCESS_KEY_ID: MOTO_CREDENTIALS.accessKeyId,
    AWS_SECRET_ACCESS_KEY: MOTO_CREDENTIALS.secretAccessKey,
    AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true',
    LABWRIGHT_EC2_ADDRESS_MAP: `*=127.0.0.1:${modelPort}`,
  };
}

export const ec2SimPeer: PeerStarter = async (ctx) => {
  const moto = await startMotoServer({ logFile: path.join(ctx.dir, 'logs', 'moto.log') });
  let model: FakeModelServer | undefined;
  try {
    model = await startFakeModelServer({ name: 'sim-burst' });
    const pools = (ctx.inventory.burstPools ?? []) as Array<Record<string, unknown>>;
    for (const pool of pools) {
      await prepareBurstPool(moto.endpoint, pool as Parameters<typeof prepareBurstPool>[1]);
    }
    const fake = model;
    return {
      name: 'ec2',
      summary: `moto (EC2) on ${moto.endpoint}; every instance's model server is the fake at ${fake.url}`,
      env: { ...ec2Env(moto.endpoint, fake.port), LABWRIGHT_EC2_POLL_MS: '1000' },
      stop: async () => {
        await fake.stop();
        await moto.stop();
      },
    };
  } catch (err) {
    await model?.stop();
    await moto.stop();
    throw err;
  }
};
