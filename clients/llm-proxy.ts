/**
 * The LLM proxy: one front door speaking the Ollama and the OpenAI API, in front of the local
 * model server and the burst pool on EC2.
 *
 * Demand comes only from inference: Ollama `POST /api/generate`, `/api/chat`, `/api/embed`, and
 * OpenAI `POST /v1/chat/completions`, `/v1/completions`, `/v1/embeddings`. Listings, version and
 * health polls (Open WebUI and LiteLLM send them every few seconds) never start the pool and never
 * keep it up: `/api/tags` and `/v1/models` answer a merged list (the local server's models and
 * the pool's), anything else goes to the local server, or to the pool only while it is warm.
 *
 * An inference request goes to the local server unless it is down (its health check fails),
 * saturated (`localConcurrency` requests already in flight there) or lacks the requested model;
 * then to the pool, whose endpoint the LlmBurstClient keeps (warm: from memory; cold: `acquire`,
 * which starts the instance). Answers stream through as they arrive. A refused start (daily
 * budget, failed start) is a 503 with `Retry-After`.
 *
 * With a bearer token configured every path but `/healthz` needs `Authorization: Bearer <token>`.
 * `GET /metrics` answers Prometheus text: requests by route and backend, time to first byte,
 * cold-start waits, budget refusals.
 *
 * Run it as `labwright proxy` (see runProxy) or `npx tsx clients/llm-proxy.ts`.
 */
import { timingSafeEqual } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { performance } from 'node:perf_hooks';
import { identityResolver, parseAddressMap, resolveUrl, type AddressResolver } from '../common/llm-burst.js';
import type { SecretRef } from '../common/secret-ref.js';
import { BurstUnavailableError, type LlmBurstClient } from './llm-burst-client.js';

export interface LlmProxyOptions {
  /** The local model server, e.g. http://127.0.0.1:11434 or http://[::1]:8000. */
  localUrl: string;
  pool: string;
  burst: Pick<LlmBurstClient, 'endpoint' | 'invalidate' | 'peek'>;
  /** Maps the instance's private address to one this proxy can reach (tests: the fake on loopback). */
  resolveAddress?: AddressResolver;
  /** The local server's health check: /api/tags for Ollama (default), /health for vLLM and llama.cpp. */
  localHealthPath?: string;
  /** How long a local health verdict and model list are trusted (default 2 s). */
  localHealthTtlMs?: number;
  localHealthTimeoutMs?: number;
  /** Inference requests the local server takes at once; more go to the pool (default 4). */
  localConcurrency?: number;
  /** Models the pool serves, listed even while it is stopped (its own list is merged in while warm). */
  poolModels?: string[];
  /** When set, clients must send `Authorization: Bearer <token>`. */
  bearerToken?: string;
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
  /** The Prometheus text `GET /metrics` answers. */
  metrics(): string;
  stop(): Promise<void>;
}

/** The inference paths of both APIs: the only requests that count as demand for the pool. */
export const INFERENCE_PATHS = new Set([
  '/api/generate',
  '/api/chat',
  '/api/embed',
  '/v1/chat/completions',
  '/v1/completions',
  '/v1/embeddings',
]);
const MODEL_LIST_PATHS = new Set(['/api/tags', '/v1/models']);

type Backend = 'local' | 'burst' | 'proxy';
export type BurstReason = 'local-down' | 'local-saturated' | 'local-lacks-model';

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
  'authorization',
]);

class UpstreamUnreachable extends Error {}

/** `[::1]` → `::1`: URL keeps IPv6 hosts in brackets, http.request wants them bare. */
const bareHost = (hostname: string): string => hostname.replace(/^\[(.*)\]$/, '$1');
const urlHost = (host: string): string => (host.includes(':') ? `[${host}]` : host);

// ------------------------------------------------------------------ metrics

const TTFB_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];
const COLD_BUCKETS = [1, 5, 15, 30, 60, 120, 300, 600, 900];

class Histogram {
  private readonly series = new Map<string, { counts: number[]; sum: number; count: number }>();
  constructor(
    readonly name: string,
    readonly help: string,
    readonly buckets: number[],
  ) {}
  observe(labels: string, value: number): void {
    let s = this.series.get(labels);
    if (!s) this.series.set(labels, (s = { counts: this.buckets.map(() => 0), sum: 0, count: 0 }));
    this.buckets.forEach((b, i) => value <= b && s.counts[i]!++);
    s.sum += value;
    s.count++;
  }
  render(): string[] {
    const out = [`# HELP ${this.name} ${this.help}`, `# TYPE ${this.name} histogram`];
    for (const [labels, s] of this.series) {
      const sep = labels ? `${labels},` : '';
      this.buckets.forEach((b, i) => out.push(`${this.name}_bucket{${sep}le="${b}"} ${s.counts[i]}`));
      out.push(`${this.name}_bucket{${sep}le="+Inf"} ${s.count}`);
      out.push(`${this.name}_sum${labels ? `{${labels}}` : ''} ${s.sum}`);
      out.push(`${this.name}_count${labels ? `{${labels}}` : ''} ${s.count}`);
    }
    return out;
  }
}

class Counter {
  private readonly series = new Map<string, number>();
  constructor(
    readonly name: string,
    readonly help: string,
  ) {}
  inc(labels = ''): void {
    this.series.set(labels, (this.series.get(labels) ?? 0) + 1);
  }
  get(labels = ''): number {
    return this.series.get(labels) ?? 0;
  }
  render(): string[] {
    const out = [`# HELP ${this.name} ${this.help}`, `# TYPE ${this.name} counter`];
    for (const [labels, v] of this.series) out.push(`${this.name}${labels ? `{${labels}}` : ''} ${v}`);
    return out;
  }
}

const label = (pairs: Record<string, string>): string =>
  Object.entries(pairs)
    .map(([k, v]) => `${k}="${v.replace(/["\\\n]/g, '_')}"`)
    .join(',');

/** The route label: the known API paths as they are, anything else as `other` (no unbounded label values). */
const routeOf = (path: string): string =>
  INFERENCE_PATHS.has(path) || MODEL_LIST_PATHS.has(path) || ['/api/version', '/metrics', '/healthz'].includes(path)
    ? path
    : 'other';

// ------------------------------------------------------------------ the proxy

interface ModelEntry {
  name: string;
}

export async function startLlmProxy(opts: LlmProxyOptions): Promise<LlmProxy> {
  const resolve = opts.resolveAddress ?? identityResolver;
  const healthTtl = opts.localHealthTtlMs ?? 2000;
  const healthPath = opts.localHealthPath ?? '/api/tags';
  const localLimit = opts.localConcurrency ?? 4;
  const stats: LlmProxyStats = { local: 0, burst: 0, failed: 0 };
  const agent = new http.Agent({ keepAlive: true, maxSockets: 256 });
  const expectedAuth = opts.bearerToken ? Buffer.from(`Bearer ${opts.bearerToken}`) : undefined;

  const requests = new Counter('labwright_proxy_requests_total', 'Requests answered, by route, backend and status.');
  const bursts = new Counter(
    'labwright_proxy_burst_routes_total',
    'Inference requests sent to the burst pool, by why the local server did not take them.',
  );
  const refusals = new Counter(
    'labwright_proxy_budget_refusals_total',
    'Inference requests refused because the pool reached its daily budget.',
  );
  const ttfb = new Histogram(
    'labwright_proxy_time_to_first_byte_seconds',
    'From the request to the first byte of the answer, by backend.',
    TTFB_BUCKETS,
  );
  const coldWaits = new Histogram(
    'labwright_proxy_cold_start_wait_seconds',
    'How long inference requests waited for the burst pool to become ready (cold acquires).',
    COLD_BUCKETS,
  );

  let localInFlight = 0;
  let localVerdict: { healthy: boolean; models?: Set<string>; at: number } | undefined;
  let localProbe: Promise<{ healthy: boolean; models?: Set<string> }> | undefined;

  async function fetchModels(base: string): Promise<ModelEntry[] | undefined> {
    const signal = AbortSignal.timeout(opts.localHealthTimeoutMs ?? 1000);
    const tags = await fetch(new URL('/api/tags', base), { signal }).catch(() => undefined);
    if (tags?.ok) return ((await tags.json()) as { models?: ModelEntry[] }).models ?? [];
    await tags?.body?.cancel();
    const v1 = await fetch(new URL('/v1/models', base), { signal }).catch(() => undefined);
    if (v1?.ok)
      return (((await v1.json()) as { data?: Array<{ id: string }> }).data ?? []).map((m) => ({ name: m.id }));
    await v1?.body?.cancel();
    return undefined;
  }

  /** Is the local server up, and which models does it have (undefined: it does not say). */
  async function localState(): Promise<{ healthy: boolean; models?: Set<string> }> {
    if (localVerdict && Date.now() - localVerdict.at < healthTtl) return localVerdict;
    localProbe ??= (async () => {
      const res = await fetch(new URL(healthPath, opts.localUrl), {
        signal: AbortSignal.timeout(opts.localHealthTimeoutMs ?? 1000),
      }).catch(() => undefined);
      await res?.body?.cancel();
      if (!res?.ok) return { healthy: false };
      const models = await fetchModels(opts.localUrl).catch(() => undefined);
      return { healthy: true, models: models && new Set(models.map((m) => m.name)) };
    })()
      .then((v) => {
        localVerdict = { ...v, at: Date.now() };
        return v;
      })
      .finally(() => (localProbe = undefined));
    return localProbe;
  }

  function answer(
    res: http.ServerResponse,
    status: number,
    body: unknown,
    headers: http.OutgoingHttpHeaders = {},
  ): void {
    if (res.headersSent) {
      res.destroy();
      return;
    }
    res.writeHead(status, { 'content-type': 'application/json', ...headers });
    res.end(typeof body === 'string' ? body : JSON.stringify(body));
  }

  /** Streams the upstream answer to `res`; rejects with UpstreamUnreachable if no answer began. */
  function forward(
    target: string,
    req: http.IncomingMessage,
    body: Buffer,
    res: http.ServerResponse,
    servedBy: string,
    onFirstByte: (servedBy: string) => void,
  ): Promise<number> {
    const url = new URL(req.url ?? '/', target);
    return new Promise((resolveDone, reject) => {
      const headers: http.OutgoingHttpHeaders = {};
      for (const [k, v] of Object.entries(req.headers)) if (!HOP_BY_HOP.has(k)) headers[k] = v;
      headers['content-length'] = body.length;
      let finished = false;
      const up = http.request(
        {
          host: bareHost(url.hostname),
          port: url.port,
          path: url.pathname + url.search,
          method: req.method,
          headers,
          agent,
        },
        (upRes) => {
          const out: http.OutgoingHttpHeaders = {};
          for (const [k, v] of Object.entries(upRes.headers)) if (!HOP_BY_HOP.has(k)) out[k] = v;
          out['x-labwright-served-by'] = servedBy;
          res.writeHead(upRes.statusCode ?? 502, out);
          res.flushHeaders();
          upRes.once('data', () => onFirstByte(servedBy));
          upRes.pipe(res);
          upRes.on('end', () => {
            finished = true;
            resolveDone(upRes.statusCode ?? 502);
          });
          upRes.on('error', () => {
            res.destroy();
            resolveDone(502);
          });
        },
      );
      up.on('error', (err) => {
        if (res.headersSent) {
          res.destroy();
          resolveDone(502);
        } else reject(new UpstreamUnreachable(err.message));
      });
      // The caller went away mid-answer: stop generating upstream too.
      res.on('close', () => {
        if (!finished) up.destroy();
      });
      up.end(body);
    });
  }

  async function viaBurst(
    req: http.IncomingMessage,
    body: Buffer,
    res: http.ServerResponse,
    firstByte: (servedBy: string) => void,
  ): Promise<number> {
    for (let attempt = 0; ; attempt++) {
      const askedAt = performance.now();
      const ep = await opts.burst.endpoint(opts.pool);
      if (ep.cold) coldWaits.observe('', (performance.now() - askedAt) / 1000);
      try {
        const status = await forward(
          resolveUrl(ep.endpoint, resolve),
          req,
          body,
          res,
          `burst:${ep.instanceId}`,
          firstByte,
        );
        stats.burst++;
        return status;
      } catch (err) {
        // The cached instance is gone (stopped outside, spot interruption): acquire once more.
        if (!(err instanceof UpstreamUnreachable) || attempt > 0) throw err;
        opts.burst.invalidate(opts.pool);
      }
    }
  }

  /** Where an inference request goes, and why not locally. */
  async function route(
    model: string | undefined,
  ): Promise<{ backend: 'local' } | { backend: 'burst'; why: BurstReason }> {
    const local = await localState();
    if (!local.healthy) return { backend: 'burst', why: 'local-down' };
    if (model && local.models && !local.models.has(model)) return { backend: 'burst', why: 'local-lacks-model' };
    if (localInFlight >= localLimit) return { backend: 'burst', why: 'local-saturated' };
    return { backend: 'local' };
  }

  async function inference(
    req: http.IncomingMessage,
    body: Buffer,
    res: http.ServerResponse,
    firstByte: (servedBy: string) => void,
  ): Promise<{ backend: Backend; status: number }> {
    let model: string | undefined;
    try {
      const parsed = JSON.parse(body.toString() || '{}') as { model?: unknown };
      model = typeof parsed.model === 'string' ? parsed.model : undefined;
    } catch {
      answer(res, 400, { error: 'request body is not JSON' });
      return { backend: 'proxy', status: 400 };
    }
    const where = await route(model);
    if (where.backend === 'local') {
      localInFlight++;
      try {
        const status = await forward(opts.localUrl, req, body, res, 'local', firstByte);
        stats.local++;
        return { backend: 'local', status };
      } catch (err) {
        if (!(err instanceof UpstreamUnreachable)) throw err;
        localVerdict = { healthy: false, at: Date.now() };
      } finally {
        localInFlight--;
      }
    }
    bursts.inc(label({ reason: where.backend === 'burst' ? where.why : 'local-down' }));
    try {
      return { backend: 'burst', status: await viaBurst(req, body, res, firstByte) };
    } catch (err) {
      if (!(err instanceof BurstUnavailableError)) throw err;
      const budget = /daily budget/.test(err.message);
      if (budget) refusals.inc();
      const retryAfter = budget ? Math.ceil((nextUtcMidnight() - Date.now()) / 1000) : 30;
      answer(res, 503, { error: err.message }, { 'retry-after': String(retryAfter) });
      return { backend: 'burst', status: 503 };
    }
  }

  /** `/api/tags` or `/v1/models`: the local server's models and the pool's, never starting it. */
  async function modelList(path: string, res: http.ServerResponse): Promise<{ backend: Backend; status: number }> {
    const local = await localState();
    const names = new Set(local.healthy && local.models ? local.models : []);
    for (const m of opts.poolModels ?? []) names.add(m);
    const warm = opts.burst.peek(opts.pool);
    if (warm) for (const m of (await fetchModels(resolveUrl(warm.endpoint, resolve))) ?? []) names.add(m.name);
    const sorted = [...names].sort();
    if (path === '/api/tags') answer(res, 200, { models: sorted.map((name) => ({ name, model: name })) });
    else {
      answer(res, 200, {
        object: 'list',
        data: sorted.map((id) => ({ id, object: 'model', created: 0, owned_by: 'labwright' })),
      });
    }
    return { backend: 'proxy', status: 200 };
  }

  /** Version, show, ps, health…: the local server, else the pool while warm; never a reason to start it. */
  async function passThrough(
    req: http.IncomingMessage,
    body: Buffer,
    res: http.ServerResponse,
    firstByte: (servedBy: string) => void,
  ): Promise<{ backend: Backend; status: number }> {
    if ((await localState()).healthy) {
      try {
        return { backend: 'local', status: await forward(opts.localUrl, req, body, res, 'local', firstByte) };
      } catch (err) {
        if (!(err instanceof UpstreamUnreachable)) throw err;
      }
    }
    const warm = opts.burst.peek(opts.pool);
    if (warm) {
      try {
        const target = resolveUrl(warm.endpoint, resolve);
        return {
          backend: 'burst',
          status: await forward(target, req, body, res, `burst:${warm.instanceId}`, firstByte),
        };
      } catch (err) {
        if (!(err instanceof UpstreamUnreachable)) throw err;
      }
    }
    answer(
      res,
      503,
      { error: 'no model server is up; an inference request starts the burst pool' },
      { 'retry-after': '5' },
    );
    return { backend: 'proxy', status: 503 };
  }

  function authorized(req: http.IncomingMessage): boolean {
    if (!expectedAuth) return true;
    const got = Buffer.from(req.headers.authorization ?? '');
    return got.length === expectedAuth.length && timingSafeEqual(got, expectedAuth);
  }

  function metrics(): string {
    return [
      ...requests.render(),
      ...bursts.render(),
      ...refusals.render(),
      ...ttfb.render(),
      ...coldWaits.render(),
      `# HELP labwright_proxy_local_in_flight Inference requests the local server is answering.`,
      `# TYPE labwright_proxy_local_in_flight gauge`,
      `labwright_proxy_local_in_flight ${localInFlight}`,
      '',
    ].join('\n');
  }

  async function handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const started = performance.now();
    const path = new URL(req.url ?? '/', 'http://proxy').pathname;
    const firstByte = (servedBy: string): void => {
      const backend = servedBy === 'local' ? 'local' : servedBy.startsWith('burst') ? 'burst' : 'proxy';
      ttfb.observe(label({ backend }), (performance.now() - started) / 1000);
    };
    const record = (backend: Backend, status: number): void =>
      requests.inc(label({ route: routeOf(path), backend, status: String(status) }));

    if (path === '/healthz') {
      answer(res, 200, { ok: true });
      return;
    }
    if (!authorized(req)) {
      answer(res, 401, { error: 'missing or wrong bearer token' }, { 'www-authenticate': 'Bearer' });
      record('proxy', 401);
      return;
    }
    if (req.method === 'GET' && path === '/metrics') {
      res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4' }).end(metrics());
      return;
    }
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const body = Buffer.concat(chunks);
    let outcome: { backend: Backend; status: number };
    if (req.method === 'POST' && INFERENCE_PATHS.has(path)) {
      outcome = await inference(req, body, res, firstByte);
    } else if (req.method === 'GET' && MODEL_LIST_PATHS.has(path)) {
      outcome = await modelList(path, res);
    } else {
      outcome = await passThrough(req, body, res, firstByte);
    }
    record(outcome.backend, outcome.status);
  }

  const server = http.createServer((req, res) => {
    handle(req, res).catch((err: unknown) => {
      stats.failed++;
      const message = err instanceof Error ? err.message : String(err);
      requests.inc(
        label({ route: routeOf(new URL(req.url ?? '/', 'http://proxy').pathname), backend: 'proxy', status: '502' }),
      );
      answer(res, 502, { error: message });
    });
  });
  await new Promise<void>((ok, fail) => {
    server.once('error', fail);
    server.listen(opts.port ?? 0, bareHost(opts.host ?? '127.0.0.1'), () => ok());
  });
  const { address, port } = server.address() as AddressInfo;
  return {
    url: `http://${urlHost(address)}:${port}`,
    stats,
    metrics,
    stop: () =>
      new Promise<void>((done) => {
        agent.destroy();
        server.closeAllConnections();
        server.close(() => done());
      }),
  };
}

function nextUtcMidnight(now = Date.now()): number {
  const d = new Date(now);
  return Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate() + 1);
}

// ------------------------------------------------------------------ labwright proxy

export interface RunProxyOptions {
  /** The lab inventory (default LABWRIGHT_INVENTORY). */
  inventory?: string;
  /** The inventory's burst pool to use (default LABWRIGHT_BURST_POOL, else the first). */
  pool?: string;
  /** host:port, or [v6]:port, to serve on (default LABWRIGHT_PROXY_LISTEN, else 127.0.0.1:11435). */
  listen?: string;
  /** The local model server (default LABWRIGHT_LOCAL_LLM, else http://127.0.0.1:11434). */
  localUrl?: string;
  /** Its health path (default LABWRIGHT_LOCAL_HEALTH_PATH, else /api/tags; /health for vLLM, llama.cpp). */
  localHealthPath?: string;
  /** Requests the local server takes at once (default LABWRIGHT_LOCAL_CONCURRENCY, else 4). */
  localConcurrency?: number;
  /** Models the pool serves, listed while it is stopped (default LABWRIGHT_BURST_MODELS, comma-separated). */
  poolModels?: string[];
  /** The bearer token clients must send, as a secret reference (default { file: LABWRIGHT_PROXY_TOKEN_FILE }). */
  token?: SecretRef;
  /** Where the Temporal settings, the address map (LABWRIGHT_EC2_ADDRESS_MAP) and the defaults above come from. */
  env?: NodeJS.ProcessEnv;
}

export interface RunningProxy {
  proxy: LlmProxy;
  pool: string;
  /** Stops serving and closes the Temporal connection. */
  close(): Promise<void>;
}

/** Parses `host:port`, `[v6]:port` or `:port`. */
export function parseListen(text: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:[\]]*)):(\d+)$/.exec(text.trim());
  if (!m) throw new Error(`listen address ${JSON.stringify(text)}: expected host:port or [ipv6]:port`);
  return { host: m[1] ?? (m[2] || '127.0.0.1'), port: Number(m[3]) };
}

/**
 * `labwright proxy`: reads the inventory and the environment, connects to Temporal, and serves
 * the proxy until close() (the command wires SIGINT/SIGTERM to it).
 */
export async function runProxy(options: RunProxyOptions = {}): Promise<RunningProxy> {
  const env = options.env ?? process.env;
  const [{ loadInventory }, { connectClient, taskQueue, temporalSettings }, { LlmBurstClient }, { SecretStore }] =
    await Promise.all([
      import('../hardware/load.js'),
      import('../lib/temporal.js'),
      import('./llm-burst-client.js'),
      import('../lib/secrets.js'),
    ]);
  const inventoryPath = options.inventory ?? env.LABWRIGHT_INVENTORY;
  if (!inventoryPath) throw new Error('LABWRIGHT_INVENTORY is not set: point it at the lab inventory file');
  const inventory = await loadInventory(inventoryPath);
  const poolName = options.pool ?? env.LABWRIGHT_BURST_POOL;
  const pool = poolName ? inventory.burstPools.find((p) => p.name === poolName) : inventory.burstPools[0];
  if (!pool) throw new Error(`no burst pool ${poolName ?? ''} in ${inventoryPath}`);
  const tokenRef =
    options.token ?? (env.LABWRIGHT_PROXY_TOKEN_FILE ? { file: env.LABWRIGHT_PROXY_TOKEN_FILE } : undefined);
  const bearerToken = tokenRef
    ? (await new SecretStore(env.LABWRIGHT_SECRETS_DIR ?? '.labwright/secrets', env).resolve(tokenRef)).trim()
    : undefined;
  const concurrency =
    options.localConcurrency ?? (env.LABWRIGHT_LOCAL_CONCURRENCY ? Number(env.LABWRIGHT_LOCAL_CONCURRENCY) : undefined);
  if (concurrency !== undefined && !(Number.isInteger(concurrency) && concurrency >= 0)) {
    throw new Error('LABWRIGHT_LOCAL_CONCURRENCY: expected a whole number of requests');
  }
  const listen = parseListen(options.listen ?? env.LABWRIGHT_PROXY_LISTEN ?? '127.0.0.1:11435');
  const client = await connectClient(await temporalSettings(env));
  try {
    const burst = new LlmBurstClient({ client, taskQueue: taskQueue(env), pools: { [pool.name]: { pool } } });
    const proxy = await startLlmProxy({
      localUrl: options.localUrl ?? env.LABWRIGHT_LOCAL_LLM ?? 'http://127.0.0.1:11434',
      localHealthPath: options.localHealthPath ?? env.LABWRIGHT_LOCAL_HEALTH_PATH,
      localConcurrency: concurrency,
      poolModels:
        options.poolModels ??
        env.LABWRIGHT_BURST_MODELS?.split(',')
          .map((m) => m.trim())
          .filter(Boolean),
      pool: pool.name,
      burst,
      resolveAddress: env.LABWRIGHT_EC2_ADDRESS_MAP ? parseAddressMap(env.LABWRIGHT_EC2_ADDRESS_MAP) : undefined,
      bearerToken,
      host: listen.host,
      port: listen.port,
    });
    return {
      proxy,
      pool: pool.name,
      close: async () => {
        await proxy.stop();
        await client.connection.close();
      },
    };
  } catch (err) {
    await client.connection.close();
    throw err;
  }
}
