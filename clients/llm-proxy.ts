/**
 * Reference LLM proxy: an Ollama-compatible front door. Requests go to the local model server
 * while it is healthy; otherwise to the burst pool on EC2, whose endpoint comes from the
 * LlmBurstClient (warm: from memory; cold: `acquire`, which starts the instance). Answers stream
 * through as they arrive.
 *
 * Run it:  LABWRIGHT_INVENTORY=lab.yaml npx tsx clients/llm-proxy.ts
 *   LABWRIGHT_PROXY_LISTEN   host:port to serve on (default 127.0.0.1:11435)
 *   LABWRIGHT_LOCAL_LLM      the local Ollama (default http://127.0.0.1:11434)
 *   LABWRIGHT_BURST_POOL     the inventory's burst pool to use (default: the first)
 *   LABWRIGHT_EC2_ADDRESS_MAP  optional from=host:port rules to reach instances (the simulated lab sets it)
 *   plus the Temporal settings every client reads (TEMPORAL_ADDRESS, LABWRIGHT_CODEC_KEY…).
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { pathToFileURL } from 'node:url';
import { identityResolver, parseAddressMap, resolveUrl, type AddressResolver } from '../common/llm-burst.js';
import { BurstUnavailableError, type LlmBurstClient } from './llm-burst-client.js';

export interface LlmProxyOptions {
  /** The local Ollama-compatible server, e.g. http://127.0.0.1:11434. */
  localUrl: string;
  pool: string;
  burst: Pick<LlmBurstClient, 'endpoint' | 'invalidate'>;
  /** Maps the instance's private address to one this proxy can reach (tests: the fake on loopback). */
  resolveAddress?: AddressResolver;
  localHealthPath?: string;
  /** How long a local health verdict is trusted (default 2 s). */
  localHealthTtlMs?: number;
  localHealthTimeoutMs?: number;
  host?: string;
  port?: number;
}

export interface LlmProxyStats {
  local: number;
  burst: number;
  failed: number;
}

export interface LlmProxy {
  url: string;
  stats: LlmProxyStats;
  stop(): Promise<void>;
}

const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'transfer-encoding',
  'upgrade',
  'te',
  'trailer',
  'host',
  'content-length',
]);

class UpstreamUnreachable extends Error {}

export async function startLlmProxy(opts: LlmProxyOptions): Promise<LlmProxy> {
  const resolve = opts.resolveAddress ?? identityResolver;
  const healthTtl = opts.localHealthTtlMs ?? 2000;
  const stats: LlmProxyStats = { local: 0, burst: 0, failed: 0 };
  const agent = new http.Agent({ keepAlive: true, maxSockets: 64 });
  let localVerdict: { healthy: boolean; at: number } | undefined;
  let localProbe: Promise<boolean> | undefined;

  async function localHealthy(): Promise<boolean> {
    if (localVerdict && Date.now() - localVerdict.at < healthTtl) return localVerdict.healthy;
    localProbe ??= fetch(new URL(opts.localHealthPath ?? '/api/tags', opts.localUrl), {
      signal: AbortSignal.timeout(opts.localHealthTimeoutMs ?? 1000),
    })
      .then(async (res) => {
        await res.body?.cancel();
        return res.ok;
      })
      .catch(() => false)
      .then((healthy) => {
        localVerdict = { healthy, at: Date.now() };
        return healthy;
      })
      .finally(() => (localProbe = undefined));
    return localProbe;
  }

  /** Streams the upstream answer to `res`; rejects with UpstreamUnreachable if no answer began. */
  function forward(
    target: string,
    req: http.IncomingMessage,
    body: Buffer,
    res: http.ServerResponse,
    servedBy: string,
  ): Promise<void> {
    const url = new URL(req.url ?? '/', target);
    return new Promise((resolveDone, reject) => {
      const headers: http.OutgoingHttpHeaders = {};
      for (const [k, v] of Object.entries(req.headers)) if (!HOP_BY_HOP.has(k)) headers[k] = v;
      headers['content-length'] = body.length;
      let finished = false;
      const up = http.request(
        { host: url.hostname, port: url.port, path: url.pathname + url.search, method: req.method, headers, agent },
        (upRes) => {
          const out: http.OutgoingHttpHeaders = {};
          for (const [k, v] of Object.entries(upRes.headers)) if (!HOP_BY_HOP.has(k)) out[k] = v;
          out['x-labwright-served-by'] = servedBy;
          res.writeHead(upRes.statusCode ?? 502, out);
          res.flushHeaders();
          upRes.pipe(res);
          upRes.on('end', () => {
            finished = true;
            resolveDone();
          });
          upRes.on('error', () => {
            res.destroy();
            resolveDone();
          });
        },
      );
      up.on('error', (err) => {
        if (res.headersSent) {
          res.destroy();
          resolveDone();
        } else reject(new UpstreamUnreachable(err.message));
      });
      // The caller went away mid-answer: stop generating upstream too.
      res.on('close', () => {
        if (!finished) up.destroy();
      });
      up.end(body);
    });
  }

  async function viaBurst(req: http.IncomingMessage, body: Buffer, res: http.ServerResponse): Promise<void> {
    for (let attempt = 0; ; attempt++) {
      const ep = await opts.burst.endpoint(opts.pool);
      try {
        await forward(resolveUrl(ep.endpoint, resolve), req, body, res, `burst:${ep.instanceId}`);
        stats.burst++;
        return;
      } catch (err) {
        // The cached instance is gone (stopped outside, spot interruption): acquire once more.
        if (!(err instanceof UpstreamUnreachable) || attempt > 0) throw err;
        opts.burst.invalidate(opts.pool);
      }
    }
  }

  async function handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const body = Buffer.concat(chunks);
    if (await localHealthy()) {
      try {
        await forward(opts.localUrl, req, body, res, 'local');
        stats.local++;
        return;
      } catch (err) {
        if (!(err instanceof UpstreamUnreachable)) throw err;
        localVerdict = { healthy: false, at: Date.now() };
      }
    }
    await viaBurst(req, body, res);
  }

  const server = http.createServer((req, res) => {
    handle(req, res).catch((err: unknown) => {
      stats.failed++;
      const status = err instanceof BurstUnavailableError ? 503 : 502;
      const message = err instanceof Error ? err.message : String(err);
      if (!res.headersSent) res.writeHead(status, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ error: message }));
    });
  });
  await new Promise<void>((ok, fail) => {
    server.once('error', fail);
    server.listen(opts.port ?? 0, opts.host ?? '127.0.0.1', () => ok());
  });
  const { address, port } = server.address() as AddressInfo;
  return {
    url: `http://${address}:${port}`,
    stats,
    stop: () =>
      new Promise<void>((done) => {
        agent.destroy();
        server.closeAllConnections();
        server.close(() => done());
      }),
  };
}

// ------------------------------------------------------------------ command line

async function main(): Promise<void> {
  const [{ loadInventory }, { connectClient, taskQueue }, { LlmBurstClient }] = await Promise.all([
    import('../hardware/load.js'),
    import('../lib/temporal.js'),
    import('./llm-burst-client.js'),
  ]);
  const env = process.env;
  if (!env.LABWRIGHT_INVENTORY) throw new Error('LABWRIGHT_INVENTORY is not set: point it at the lab inventory file');
  const inventory = await loadInventory(env.LABWRIGHT_INVENTORY);
  const pool = env.LABWRIGHT_BURST_POOL
    ? inventory.burstPools.find((p) => p.name === env.LABWRIGHT_BURST_POOL)
    : inventory.burstPools[0];
  if (!pool) throw new Error(`no burst pool ${env.LABWRIGHT_BURST_POOL ?? ''} in ${env.LABWRIGHT_INVENTORY}`);
  const client = await connectClient();
  const burst = new LlmBurstClient({ client, taskQueue: taskQueue(env), pools: { [pool.name]: { pool } } });
  const [host, port] = (env.LABWRIGHT_PROXY_LISTEN ?? '127.0.0.1:11435').split(':');
  const proxy = await startLlmProxy({
    localUrl: env.LABWRIGHT_LOCAL_LLM ?? 'http://127.0.0.1:11434',
    pool: pool.name,
    burst,
    resolveAddress: env.LABWRIGHT_EC2_ADDRESS_MAP ? parseAddressMap(env.LABWRIGHT_EC2_ADDRESS_MAP) : undefined,
    host,
    port: Number(port),
  });
  console.log(
    `llm proxy on ${proxy.url}: local ${env.LABWRIGHT_LOCAL_LLM ?? 'http://127.0.0.1:11434'}, burst pool ${pool.name}`,
  );
  const stop = (): void => {
    void proxy.stop().then(() => client.connection.close());
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch((err: unknown) => {
    console.error(err instanceof Error ? err.message : err);
    process.exitCode = 1;
  });
}
