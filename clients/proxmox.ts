/**
 * The Proxmox VE client: an HTTPS engine behind proxmox-api's typed proxy, and the classification
 * of PVE's failures. Activities (activities/proxmox.ts) take a `ProxmoxDeps` by factory, so tests
 * hand them clients aimed at the PVE peer and the worker clients built from the inventory.
 *
 * PVE's failures are classified from status and reason (see `classifyPveError`):
 * - a locked VM (`VM is locked (backup)`, a config-lock timeout) is transient: retried;
 * - a VMID that already exists is a conflict;
 * - 5xx retry, other 4xx not; a missing VM config is NotFound; a lost quorum retries.
 *
 * TLS verification is always on: the host's `caFile` is the trust anchor when set, the system
 * store otherwise. The API token comes from the host's secret reference, resolved per call.
 */
import { promises as fs } from 'node:fs';
import https from 'node:https';
import { ApplicationFailure } from '@temporalio/common';
import { proxmoxApi, type ApiRequestable, type Proxmox } from 'proxmox-api';
import { classifyUnknown, failureForHttpStatus, nonRetryable, retryable } from '../common/errors.js';
import type { SecretRef } from '../common/secret-ref.js';
import type { Inventory, ProxmoxHost } from '../hardware/schema.js';
import type { SecretStore } from '../lib/secrets.js';

// ---------------------------------------------------------------- client

/** What a client needs to reach one PVE endpoint. */
export interface PveEndpoint {
  /** The inventory host name, used in messages. */
  name: string;
  /** Base URL, e.g. https://pve1.lab:8006 */
  apiUrl: string;
  /** `user@realm!tokenid=secret` */
  token: string;
  /** PEM CA bundle that verifies the API's certificate; the system store when left out. */
  ca?: string | Buffer;
  /** Per-request timeout (default 30 s). */
  timeoutMs?: number;
}

/** An HTTP answer from PVE that was not 200: its status, PVE's reason line and per-field errors. */
export class PveHttpError extends Error {
  constructor(
    readonly status: number,
    readonly reason: string,
    readonly fieldErrors: Record<string, string> | undefined,
    readonly method: string,
    readonly path: string,
  ) {
    super(`${method} ${path}: ${status} ${reason}`);
    this.name = 'PveHttpError';
  }
}

/**
 * The request engine behind proxmox-api's typed proxy: API-token auth, TLS verified with the
 * configured CA (never switched off), and errors that keep PVE's status and reason.
 */
export class PveEngine implements ApiRequestable {
  private readonly base: URL;
  private readonly agent: https.Agent;
  private readonly authorization: string;

  constructor(private readonly endpoint: PveEndpoint) {
    this.base = new URL(endpoint.apiUrl);
    if (this.base.protocol !== 'https:') {
      throw nonRetryable('validation', `Proxmox host ${endpoint.name}: apiUrl must be https (got ${endpoint.apiUrl})`);
    }
    const token = parseToken(endpoint.token, endpoint.name);
    this.authorization = `PVEAPIToken=${token.id}=${token.secret}`;
    this.agent = new https.Agent({ keepAlive: true, maxSockets: 8, ...(endpoint.ca ? { ca: endpoint.ca } : {}) });
  }

  async doRequest(method: string, path: string, _template: string, params?: Record<string, unknown>): Promise<unknown> {
    method = method.toUpperCase();
    const url = new URL(path, this.base);
    let body: string | undefined;
    const form = new URLSearchParams();
    for (const [key, value] of Object.entries(params ?? {})) {
      if (value === undefined || value === null) continue;
      const values = Array.isArray(value) ? value : [value];
      for (const v of values) form.append(key, typeof v === 'boolean' ? (v ? '1' : '0') : String(v));
    }
    if (method === 'POST' || method === 'PUT') body = form.toString();
    else for (const [k, v] of form) url.searchParams.append(k, v);

    return new Promise((resolve, reject) => {
      const req = https.request(
        url,
        {
          method,
          agent: this.agent,
          timeout: this.endpoint.timeoutMs ?? 30_000,
          headers: {
            Authorization: this.authorization,
            Accept: 'application/json',
            ...(body !== undefined
              ? { 'Content-Type': 'application/x-www-form-urlencoded', 'Content-Length': Buffer.byteLength(body) }
              : {}),
          },
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('error', reject);
          res.on('end', () => {
            const text = Buffer.concat(chunks).toString('utf8');
            let parsed: { data?: unknown; errors?: Record<string, string>; message?: string } = {};
            try {
              parsed = text ? (JSON.parse(text) as typeof parsed) : {};
            } catch {
              parsed = {};
            }
            const status = res.statusCode ?? 0;
            if (status === 200) {
              resolve(parsed.data ?? null);
              return;
            }
            const reason = (parsed.message ?? res.statusMessage ?? '').trim() || `HTTP ${status}`;
            reject(new PveHttpError(status, reason, parsed.errors, method, url.pathname));
          });
        },
      );
      req.on('timeout', () => req.destroy(Object.assign(new Error('PVE request timed out'), { name: 'TimeoutError' })));
      req.on('error', reject);
      if (body !== undefined) req.write(body);
      req.end();
    });
  }

  close(): void {
    this.agent.destroy();
  }
}

/** `user@realm!tokenid=secret` as PVE's Authorization header wants it. */
export function parseToken(token: string, host: string): { id: string; secret: string } {
  const match = /^([^@\s]+@[^!\s]+![^=\s]+)=(\S+)$/.exec(token.trim());
  if (!match) {
    throw nonRetryable(
      'validation',
      `the API token of Proxmox host ${host} is not in the form user@realm!tokenid=secret`,
    );
  }
  return { id: match[1]!, secret: match[2]! };
}

/** A client for one inventory host: the typed API and the host's name for messages. */
export interface PveClient {
  host: string;
  api: Proxmox.Api;
}

export interface ProxmoxDeps {
  /** The client of an inventory host (cached by the implementation). */
  clientFor(host: string): Promise<PveClient>;
  /** PVE node names a host answers for, to scope listings. */
  nodesOf(host: string): string[];
}

/** Clients built from the inventory: token from the host's secret ref, CA from its caFile. */
export function proxmoxDepsFromInventory(
  inventory: Pick<Inventory, 'proxmox'>,
  secrets: Pick<SecretStore, 'resolve'>,
  opts: { timeoutMs?: number } = {},
): ProxmoxDeps & { close(): void } {
  const hosts = new Map<string, ProxmoxHost>(inventory.proxmox.hosts.map((h) => [h.name, h]));
  const engines = new Map<string, { engine: PveEngine; tokenRef: SecretRef; token: string }>();
  const hostOf = (name: string): ProxmoxHost => {
    const host = hosts.get(name);
    if (!host) throw nonRetryable('notFound', `Proxmox host ${name} is not in the inventory`);
    return host;
  };
  return {
    nodesOf: (name) => hostOf(name).nodes,
    clientFor: async (name) => {
      const host = hostOf(name);
      const token = await secrets.resolve(host.token);
      let cached = engines.get(name);
      // A rotated token (same ref, new value) gets a new engine.
      if (!cached || cached.token !== token) {
        cached?.engine.close();
        const ca = host.caFile ? await readCa(host.caFile, name) : undefined;
        cached = {
          engine: new PveEngine({ name, apiUrl: host.apiUrl, token, ca, timeoutMs: opts.timeoutMs }),
          tokenRef: host.token,
          token,
        };
        engines.set(name, cached);
      }
      return { host: name, api: proxmoxApi(cached.engine) };
    },
    close: () => {
      for (const { engine } of engines.values()) engine.close();
      engines.clear();
    },
  };
}

async function readCa(file: string, host: string): Promise<Buffer> {
  try {
    return await fs.readFile(file);
  } catch {
    throw nonRetryable('validation', `CA file ${file} of Proxmox host ${host} cannot be read`);
  }
}

// ------------------------------------------------------------ classification

/** What a PVE error message means, independent of the HTTP status it came with. */
export type PveReason =
  'locked' | 'exists' | 'already-running' | 'not-running' | 'missing' | 'no-quorum' | 'permission' | 'other';

export function pveReason(message: string): PveReason {
  if (/VM is locked \(|can't lock file .* got timeout|is locked \(/i.test(message)) return 'locked';
  if (/already exists|config file already exists/i.test(message)) return 'exists';
  if (/already running/i.test(message)) return 'already-running';
  if (/VM \d+ not running|is not running/i.test(message)) return 'not-running';
  if (
    /Configuration file '[^']+' does not exist|unable to find configuration file|can't find archive|does not exist$/i.test(
      message,
    )
  ) {
    return 'missing';
  }
  if (/no quorum/i.test(message)) return 'no-quorum';
  // PVE answers some permission checks (`only root can set 'hostpci0' config for non-mapped
  // devices`) with a 500: no retry changes who is asking.
  if (/^only root can|Permission check failed/i.test(message)) return 'permission';
  return 'other';
}

/**
 * Turns anything a PVE call threw into a classified failure whose message is `what: PVE's reason`.
 * Locks and lost quorum retry whatever the status; a missing VM is NotFound; the rest by status.
 */
export function classifyPveError(err: unknown, what: string): ApplicationFailure {
  if (err instanceof ApplicationFailure) return err;
  if (err instanceof PveHttpError) {
    const fields = err.fieldErrors
      ? ` (${Object.entries(err.fieldErrors)
          .map(([k, v]) => `${k}: ${v}`)
          .join('; ')})`
      : '';
    const message = `${what}: ${err.reason}${fields}`;
    const details = { status: err.status, reason: err.reason, fieldErrors: err.fieldErrors };
    switch (pveReason(err.reason)) {
      case 'locked':
      case 'no-quorum':
        return retryable('server', message, details);
      case 'missing':
        return nonRetryable('notFound', message, details);
      case 'exists':
        return nonRetryable('conflict', message, details);
      case 'permission':
        return nonRetryable('client', message, details);
      default:
        // 595 is pveproxy's "no route to host" to another node: a connection problem.
        if (err.status === 595 || err.status === 596) return retryable('connection', message, details);
        return failureForHttpStatus(err.status, message, details);
    }
  }
  const code = (err as { code?: unknown } | null)?.code;
  if (typeof code === 'string' && TLS_CODES.has(code)) {
    // Retrying cannot fix a certificate the configured CA does not vouch for.
    return nonRetryable(
      'precondition',
      `${what}: TLS verification failed (${code}: ${(err as Error).message}); check the host's caFile`,
    );
  }
  return classifyUnknown(err, what);
}

const TLS_CODES = new Set([
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'CERT_HAS_EXPIRED',
  'ERR_TLS_CERT_ALTNAME_INVALID',
  'CERT_SIGNATURE_FAILURE',
]);

/** Runs one PVE call; whatever it throws comes out classified, its message starting with `what`. */
export async function pveCall<T>(what: string, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    throw classifyPveError(err, what);
  }
}
