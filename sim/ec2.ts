/**
 * EC2 for the simulated lab and the tests: moto in server mode on loopback, the launch template
 * the example pool (`g5-llm`) names, and a fake Ollama-compatible model server that stands in for
 * the model server on every instance (moto's instances have 10.x addresses nobody may connect to,
 * so the worker gets an address map that sends them all to the fake on 127.0.0.1).
 */
import { promises as fs } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import {
  CreateLaunchTemplateCommand,
  DescribeImagesCommand,
  DescribeLaunchTemplatesCommand,
  EC2Client,
} from '@aws-sdk/client-ec2';
import { ensureTool, freePort, spawnLogged, stopProcess, tail, waitUntilReady } from '../lib/processes.js';
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
  const child = spawnLogged(path.join(bin, 'moto_server'), ['-H', '127.0.0.1', '-p', String(port)], opts.logFile);
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
    stop: () => stopProcess(child),
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
  /** While false, every path answers 503 (the server is down or still loading). */
  healthy: boolean;
  /** The models it serves; inference for any other is 404, as Ollama and OpenAI-compatible servers answer. */
  models: string[];
  /** Pause between streamed chunks (changeable while it runs: a slow answer keeps a request in flight). */
  chunkDelayMs: number;
  /** Inference requests being answered right now. */
  inFlight: number;
  stop(): Promise<void>;
}

export interface FakeModelOptions {
  name: string;
  port?: number;
  /** Listen address (default 127.0.0.1; `::1` for an IPv6 upstream). */
  host?: string;
  models?: string[];
  /** Chunks in a streamed answer, and the pause between them. */
  chunks?: number;
  chunkDelayMs?: number;
}

const json = (res: http.ServerResponse, status: number, body: unknown): void => {
  res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body));
};

/**
 * A model server speaking both APIs local LLM servers offer, streaming as they do:
 *
 * - Ollama: GET /api/tags and /api/version; POST /api/generate and /api/chat (NDJSON stream
 *   unless `stream: false`), /api/embed;
 * - OpenAI: GET /v1/models; POST /v1/chat/completions and /v1/completions (server-sent events
 *   ending in `data: [DONE]` with `stream: true`), /v1/embeddings.
 *
 * Every answer names the server (`served_by`), so a test can tell whether the local GPU or the
 * burst pool answered and that the answer streamed.
 */
export async function startFakeModelServer(opts: FakeModelOptions): Promise<FakeModelServer> {
  const chunks = opts.chunks ?? 4;
  const state: FakeModelServer = {
    name: opts.name,
    url: '',
    port: 0,
    requests: new Map(),
    healthy: true,
    models: opts.models ?? ['llama3.1:8b'],
    chunkDelayMs: opts.chunkDelayMs ?? 20,
    inFlight: 0,
    stop: async () => undefined,
  };
  const served_by = opts.name;
  const created = Math.floor(Date.now() / 1000);

  /** Writes `count` pieces, `state.chunkDelayMs` apart, then the last one. */
  function stream(res: http.ServerResponse, piece: (i: number) => string, last: string): void {
    state.inFlight++;
    let i = 0;
    const next = (): void => {
      if (res.destroyed) {
        state.inFlight--;
        return;
      }
      if (i < chunks) {
        res.write(piece(i));
        i++;
        setTimeout(next, state.chunkDelayMs);
      } else {
        state.inFlight--;
        res.end(last);
      }
    };
    next();
  }

  function ollama(path: string, body: Record<string, unknown>, model: string, res: http.ServerResponse): void {
    if (path === '/api/embed') {
      json(res, 200, { model, embeddings: [[0.1, 0.2, 0.3]], served_by });
      return;
    }
    const chat = path === '/api/chat';
    const line = (text: string, done: boolean): string =>
      `${JSON.stringify(
        chat
          ? {
              model,
              created_at: new Date().toISOString(),
              message: { role: 'assistant', content: text },
              done,
              served_by,
            }
          : { model, created_at: new Date().toISOString(), response: text, done, served_by },
      )}\n`;
    if (body.stream === false) {
      json(res, 200, JSON.parse(line(Array.from({ length: chunks }, (_, i) => `word${i} `).join(''), true)));
      return;
    }
    res.writeHead(200, { 'content-type': 'application/x-ndjson' });
    stream(res, (i) => line(`word${i} `, false), line('', true));
  }

  function openai(path: string, body: Record<string, unknown>, model: string, res: http.ServerResponse): void {
    if (path === '/v1/embeddings') {
      json(res, 200, {
        object: 'list',
        data: [{ object: 'embedding', index: 0, embedding: [0.1, 0.2, 0.3] }],
        model,
        usage: { prompt_tokens: 1, total_tokens: 1 },
        served_by,
      });
      return;
    }
    const chat = path === '/v1/chat/completions';
    const id = `${chat ? 'chatcmpl' : 'cmpl'}-${served_by}`;
    const object = chat ? 'chat.completion' : 'text_completion';
    const choice = (text: string, finish: string | null, delta: boolean) =>
      chat
        ? { index: 0, [delta ? 'delta' : 'message']: { role: 'assistant', content: text }, finish_reason: finish }
        : { index: 0, text, finish_reason: finish, logprobs: null };
    if (body.stream !== true) {
      const text = Array.from({ length: chunks }, (_, i) => `word${i} `).join('');
      json(res, 200, { id, object, created, model, choices: [choice(text, 'stop', false)], served_by });
      return;
    }
    const event = (text: string, finish: string | null): string =>
      `data: ${JSON.stringify({ id, object: chat ? 'chat.completion.chunk' : object, created, model, choices: [choice(text, finish, true)], served_by })}\n\n`;
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
    stream(res, (i) => event(`word${i} `, null), `${event('', 'stop')}data: [DONE]\n\n`);
  }

  const server = http.createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://fake');
    const path = url.pathname;
    state.requests.set(path, (state.requests.get(path) ?? 0) + 1);
    const chunksIn: Buffer[] = [];
    req.on('data', (c: Buffer) => chunksIn.push(c));
    req.on('end', () => {
      if (!state.healthy) return json(res, 503, { error: 'model server unavailable' });
      if (req.method === 'GET' && path === '/api/tags') {
        return json(res, 200, {
          models: state.models.map((name) => ({
            name,
            model: name,
            size: 4_920_753_328,
            modified_at: new Date(created * 1000).toISOString(),
          })),
        });
      }
      if (req.method === 'GET' && path === '/api/version') return json(res, 200, { version: '0.6.4' });
      if (req.method === 'GET' && path === '/v1/models') {
        return json(res, 200, {
          object: 'list',
          data: state.models.map((id) => ({ id, object: 'model', created, owned_by: served_by })),
        });
      }
      const isOllama = ['/api/generate', '/api/chat', '/api/embed'].includes(path);
      const isOpenai = ['/v1/chat/completions', '/v1/completions', '/v1/embeddings'].includes(path);
      if (req.method !== 'POST' || (!isOllama && !isOpenai)) return json(res, 404, { error: 'not found' });
      let body: Record<string, unknown>;
      try {
        body = JSON.parse(Buffer.concat(chunksIn).toString() || '{}') as Record<string, unknown>;
      } catch {
        return json(res, 400, { error: 'invalid JSON' });
      }
      const model = typeof body.model === 'string' ? body.model : '';
      if (!state.models.includes(model)) {
        const message = `model "${model}" not found, try pulling it first`;
        return json(
          res,
          404,
          isOllama
            ? { error: message }
            : { error: { message, type: 'invalid_request_error', code: 'model_not_found' } },
        );
      }
      if (isOllama) ollama(path, body, model, res);
      else openai(path, body, model, res);
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port ?? 0, opts.host ?? '127.0.0.1', () => resolve());
  });
  state.port = (server.address() as AddressInfo).port;
  const host = opts.host ?? '127.0.0.1';
  state.url = `http://${host.includes(':') ? `[${host}]` : host}:${state.port}`;
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
