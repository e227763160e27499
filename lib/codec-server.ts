/**
 * Temporal's remote codec protocol over HTTP, so the Temporal UI and CLI show labwright's encrypted
 * payloads in clear: POST /encode and /decode take and return `{ payloads: [...] }` in protobuf
 * JSON (metadata values and data base64), with the namespace in the `X-Namespace` header.
 *
 * The UI calls it from the browser: only the listed origins get CORS headers, and a request from
 * any other origin is refused. With a token, every request needs `Authorization: Bearer <token>`
 * (the CLI's `--codec-auth`). It listens on loopback unless told otherwise.
 */
import { timingSafeEqual } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Payload, PayloadCodec } from '@temporalio/common';
import proto from '@temporalio/proto';

const { Payloads } = proto.temporal.api.common.v1;
/** Where `npm start` and `labwright codec-server` listen unless told otherwise (the UI is on 8233). */
export const DEFAULT_CODEC_PORT = 8234;
const MAX_BODY_BYTES = 64 * 1024 * 1024;
const ALLOWED_HEADERS = ['content-type', 'x-namespace', 'authorization'];

export interface CodecServerOptions {
  codec: PayloadCodec;
  /** The one namespace whose payloads it serves. */
  namespace: string;
  host?: string;
  /** 0 (the default) picks a free port. */
  port?: number;
  /** When set, requests must carry `Authorization: Bearer <token>`. */
  token?: string;
  /** Browser origins allowed to call it, e.g. the Temporal UI's `http://127.0.0.1:8233`. */
  allowedOrigins?: string[];
}

export interface CodecServer {
  /** The endpoint to give `--codec-endpoint` / `--ui-codec-endpoint`. */
  url: string;
  close(): Promise<void>;
}

class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

export async function startCodecServer(opts: CodecServerOptions): Promise<CodecServer> {
  const origins = new Set((opts.allowedOrigins ?? []).map((o) => o.replace(/\/+$/, '')));
  const server = http.createServer((req, res) => {
    void handle(req, res).catch((err: unknown) => {
      const status = err instanceof HttpError ? err.status : 500;
      const message = err instanceof Error ? err.message : String(err);
      if (!res.headersSent) res.writeHead(status, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ error: message }));
    });
  });

  async function handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const origin = req.headers.origin;
    if (origin !== undefined) {
      if (!origins.has(origin)) throw new HttpError(403, `origin ${origin} is not allowed to use this codec server`);
      res.setHeader('access-control-allow-origin', origin);
      res.setHeader('access-control-allow-credentials', 'true');
      res.setHeader('vary', 'Origin');
    }
    const route = new URL(req.url ?? '/', 'http://codec').pathname.replace(/\/+$/, '');
    if (route !== '/encode' && route !== '/decode') throw new HttpError(404, `no such endpoint ${route || '/'}`);
    if (req.method === 'OPTIONS') {
      res.writeHead(204, {
        'access-control-allow-methods': 'POST, OPTIONS',
        'access-control-allow-headers': ALLOWED_HEADERS.join(', '),
        'access-control-max-age': '600',
      });
      res.end();
      return;
    }
    if (req.method !== 'POST') throw new HttpError(405, `${req.method} ${route}: use POST`);
    if (opts.token !== undefined && !bearerMatches(req.headers.authorization, opts.token)) {
      throw new HttpError(401, 'missing or wrong bearer token (Authorization: Bearer <token>)');
    }
    const namespace = req.headers['x-namespace'];
    if (namespace !== opts.namespace) {
      throw new HttpError(
        403,
        namespace === undefined
          ? `X-Namespace header missing; this codec server serves namespace ${opts.namespace}`
          : `namespace ${String(namespace)} is not served here (only ${opts.namespace})`,
      );
    }
    const payloads = parsePayloads(await readBody(req));
    const out = route === '/encode' ? await opts.codec.encode(payloads) : await decode(opts.codec, payloads);
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify(Payloads.toObject(Payloads.create({ payloads: out }), { bytes: String })));
  }

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port ?? 0, opts.host ?? '127.0.0.1', () => resolve());
  });
  const { address, port } = server.address() as AddressInfo;
  const host = address.includes(':') ? `[${address}]` : address;
  return {
    url: `http://${host}:${port}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

function bearerMatches(header: string | undefined, token: string): boolean {
  const given = Buffer.from(/^Bearer (.+)$/i.exec(header ?? '')?.[1] ?? '');
  const expected = Buffer.from(token);
  return given.length === expected.length && timingSafeEqual(given, expected);
}

async function decode(codec: PayloadCodec, payloads: Payload[]): Promise<Payload[]> {
  try {
    return await codec.decode(payloads);
  } catch (err) {
    // A payload this key ring cannot open (an unknown key id, tampered data): the caller's fault.
    throw new HttpError(422, `cannot decode: ${(err as Error).message}`);
  }
}

async function readBody(req: http.IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > MAX_BODY_BYTES) throw new HttpError(413, `request body over ${MAX_BODY_BYTES} bytes`);
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

function parsePayloads(body: string): Payload[] {
  let json: unknown;
  try {
    json = JSON.parse(body);
  } catch {
    throw new HttpError(400, 'request body is not JSON; expected {"payloads": [...]}');
  }
  if (typeof json !== 'object' || json === null) throw new HttpError(400, 'expected {"payloads": [...]}');
  // Protobuf JSON leaves an empty list out: the CLI sends `{}` for a query without arguments.
  const list = (json as { payloads?: unknown }).payloads ?? [];
  if (!Array.isArray(list)) throw new HttpError(400, '"payloads" is not an array');
  try {
    return Payloads.fromObject({ payloads: list }).payloads;
  } catch (err) {
    throw new HttpError(400, `payloads: ${(err as Error).message}`);
  }
}
