/**
 * Proxmox VE for the tests and the simulated lab: fakepve (PyPI, pinned in scripts/python-peers.txt)
 * on loopback, behind a certificate signed by a CA made for this run, so clients verify TLS exactly
 * as they do against a real PVE with `caFile`. It answers with an API token (user@realm!id=secret).
 *
 * fakepve is started through sim/fakepve_serve.py, which adds to its command line only what a
 * separate process cannot otherwise reach: API tokens, extra nodes, and a control endpoint for its
 * fault switches (locks, PVE's catalogued errors, slow guests). See that file.
 */
import { randomUUID } from 'node:crypto';
import { promises as fs } from 'node:fs';
import https from 'node:https';
import path from 'node:path';
import { makeCa, signLeaf } from './pki.js';
import { ensureTool, freePort, spawnLogged, stopProcess, tail, waitUntilReady } from '../lib/processes.js';
import { projectRoot } from '../lib/paths.js';
import type { PeerStarter } from './index.js';

/** A guest in fakepve's guests file (fakepve's own format, plus its per-VM fault attributes). */
export interface FakeGuest {
  vmid: number;
  name: string;
  node?: string;
  status?: 'running' | 'stopped';
  template?: boolean;
  lock?: string;
  config?: Record<string, string | number>;
  /** PVE seconds the start / stop / shutdown of this guest takes. */
  start_secs?: number;
  stop_secs?: number;
  shutdown_secs?: number;
  /** The start task ends with this error (e.g. a missing disk). */
  start_error?: string;
  /** Guest agent answers by command; null: no agent. */
  agent?: Record<string, unknown> | null;
}

/**
 * The template packer/proxmox-clone.pkr.hcl clones by default (`clone_vm`): what a lab makes once
 * from Debian's genericcloud image with `qm importdisk`, a cloud-init ready disk and the agent on.
 */
export function cloudImageSeed(storage: string, vmid = 8000, node = 'pve1'): FakeGuest {
  return {
    vmid,
    name: 'debian-12-genericcloud',
    node,
    template: true,
    config: {
      scsi0: `${storage}:base-${vmid}-disk-0,size=2G`,
      scsihw: 'virtio-scsi-single',
      boot: 'order=scsi0',
      net0: 'virtio=BC:24:11:00:80:00,bridge=vmbr0',
      agent: 1,
      ostype: 'l26',
      serial0: 'socket',
      tags: 'cloud-image',
    },
  };
}

export interface FakePveOptions {
  /** Folder for the PKI, guests file, token file and log. */
  dir: string;
  /** PVE node names the fake cluster has (default pve1 and pve2, as in the example lab). */
  nodes?: string[];
  guests?: FakeGuest[];
  /** Real seconds per PVE second; 0 finishes every task before the request returns. */
  timeScale?: number;
  /** Storages to create through the API once it is up (fakepve has `local` and `local-lvm`). */
  storages?: Array<{ storage: string; type: 'dir'; path: string; content: string }>;
  startTimeoutMs?: number;
}

/** A fault or state change the control endpoint understands (see sim/fakepve_serve.py). */
export type FakePveControl =
  | { op: 'fail'; method: string; suffix: string; error?: string; status?: number; message?: string; times?: number }
  | { op: 'clear_failures' }
  | { op: 'lock'; vmid: number; lock?: string }
  | { op: 'unlock'; vmid: number }
  | { op: 'backup'; vmid: number; secs?: number }
  | ({ op: 'vm'; vmid: number } & Partial<Record<VmFaultKey, unknown>>)
  | { op: 'vm_defaults'; defaults: Partial<Record<VmFaultKey, unknown>> }
  | { op: 'time_scale'; value: number }
  // (issue 17) ms added to every API request's answer
  | { op: 'latency'; ms: number }
  | { op: 'store_backup'; storage: string; name: string; size?: number; /** (issue 7) epoch seconds */ ctime?: number }
  | { op: 'vms' }
  | { op: 'requests' }
  | { op: 'settle' }
  // (issue 6) PCI hardware data fakepve lacks: devices per node, and PCI resource mappings.
  | { op: 'pci_devices'; node: string; devices: Array<Record<string, string | number>> }
  | { op: 'pci_mappings'; mappings: Array<{ id: string; description?: string; map: string[] }> }
  // (issue 16) Another API token, and ACL entries: privileges on a path for a user or token.
  | { op: 'api_token'; tokenid: string; secret: string }
  | { op: 'grant'; userid: string; path: string; privs: string[] };

type VmFaultKey = 'start_secs' | 'stop_secs' | 'shutdown_secs' | 'start_error' | 'agent' | 'agent_hangs' | 'acpi';

export interface FakeVmState {
  vmid: number;
  name: string;
  node: string;
  status: string;
  template: boolean;
  lock: string | null;
  config: Record<string, string | number>;
}

export interface FakePve {
  /** https://127.0.0.1:<port> */
  url: string;
  /** PEM file of the CA that signed the fake's certificate. */
  caFile: string;
  /** `root@pam!labwright=<uuid>`: the whole token string, as the inventory's token secret holds it. */
  token: string;
  logFile: string;
  control<T = unknown>(body: FakePveControl): Promise<T>;
  vms(): Promise<FakeVmState[]>;
  /** Calls the PVE API as the token's user (for test setup, not for the code under test). */
  api<T = unknown>(method: string, apiPath: string, params?: Record<string, string | number>): Promise<T>;
  stop(): Promise<void>;
}

/** A CA and a server certificate for 127.0.0.1 and localhost. */
export async function makeLoopbackPki(dir: string): Promise<{ caFile: string; certFile: string; keyFile: string }> {
  await makeCa(dir, 'labwright test PVE CA');
  await signLeaf(dir, 'pve', '/CN=fakepve', { server: ['IP:127.0.0.1', 'DNS:localhost'] });
  const f = (name: string): string => path.join(dir, name);
  return { caFile: f('ca.crt'), certFile: f('pve.crt'), keyFile: f('pve.key') };
}

/** PVE's form encoding of request parameters. */
export function pveForm(params: Record<string, unknown>): string {
  return new URLSearchParams(Object.entries(params).map(([k, v]): [string, string] => [k, String(v)])).toString();
}

export interface PveResponse {
  status: number;
  statusMessage: string | undefined;
  text: string;
}

/** One HTTPS request to a (fake) PVE with an API token; any HTTP status resolves. */
export function pveRequest(
  agent: https.Agent,
  url: string,
  token: string,
  method: string,
  urlPath: string,
  body?: string,
  type = 'application/json',
): Promise<PveResponse> {
  return new Promise((resolve, reject) => {
    const req = https.request(
      `${url}${urlPath}`,
      {
        method,
        agent,
        headers: {
          Authorization: `PVEAPIToken=${token}`,
          ...(body !== undefined ? { 'Content-Type': type } : {}),
        },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () =>
          resolve({
            status: res.statusCode ?? 0,
            statusMessage: res.statusMessage,
            text: Buffer.concat(chunks).toString('utf8'),
          }),
        );
      },
    );
    req.on('error', reject);
    if (body !== undefined) req.write(body);
    req.end();
  });
}

/**
 * What the sim peers use to set up a running fakepve: `(method, path, body?, json?)` sends the body
 * as form fields (JSON with `json`) and resolves the answer's text; an HTTP error rejects.
 */
export function pveCaller(url: string, token: string, ca: Buffer) {
  const agent = new https.Agent({ ca });
  return async (method: string, apiPath: string, body?: Record<string, unknown>, json = false): Promise<string> => {
    const text = body === undefined ? undefined : json ? JSON.stringify(body) : pveForm(body);
    const res = await pveRequest(
      agent,
      url,
      token,
      method,
      apiPath,
      text,
      json ? 'application/json' : 'application/x-www-form-urlencoded',
    );
    if (res.status >= 400) throw new Error(`${method} ${apiPath}: ${res.status} ${res.text}`);
    return res.text;
  };
}

function peersPython(): string {
  return path.join(ensureTool('ensure-python-peers.sh'), 'python');
}

export async function startFakePve(opts: FakePveOptions): Promise<FakePve> {
  const dir = opts.dir;
  await fs.mkdir(dir, { recursive: true, mode: 0o700 });
  const { caFile, certFile, keyFile } = await makeLoopbackPki(path.join(dir, 'pki'));
  const tokenId = 'root@pam!labwright';
  const token = `${tokenId}=${randomUUID()}`;
  const tokenFile = path.join(dir, 'tokens');
  await fs.writeFile(tokenFile, `${token}\n`, { mode: 0o600 });
  const guestsFile = path.join(dir, 'guests.json');
  await fs.writeFile(guestsFile, JSON.stringify({ guests: opts.guests ?? [] }));
  const port = await freePort();
  const logFile = path.join(dir, 'fakepve.log');
  const args = [
    path.join(projectRoot, 'sim', 'fakepve_serve.py'),
    guestsFile,
    '--host',
    '127.0.0.1',
    '--port',
    String(port),
    '--password',
    randomUUID(),
    '--token-file',
    tokenFile,
    '--nodes',
    (opts.nodes ?? ['pve1', 'pve2']).join(','),
    '--time-scale',
    String(opts.timeScale ?? 0),
    '--cert',
    certFile,
    '--key',
    keyFile,
  ];
  const child = spawnLogged(peersPython(), args, logFile);
  const url = `https://127.0.0.1:${port}`;
  const ca = await fs.readFile(caFile);
  const agent = new https.Agent({ ca, keepAlive: false });

  const request = async <T>(method: string, urlPath: string, body?: string, type?: string): Promise<T> => {
    const res = await pveRequest(agent, url, token, method, urlPath, body, type);
    if (res.status >= 400) {
      throw new Error(`fakepve ${method} ${urlPath}: ${res.status} ${res.statusMessage} ${res.text}`);
    }
    return (JSON.parse(res.text) as { data: T }).data;
  };

  const fake: FakePve = {
    url,
    caFile,
    token,
    logFile,
    control: (body) => request('POST', '/_labwright/control', JSON.stringify(body)),
    vms: () => request<FakeVmState[]>('POST', '/_labwright/control', JSON.stringify({ op: 'vms' })),
    api: (method, apiPath, params) => {
      const form = params ? pveForm(params) : undefined;
      if (method === 'GET' || method === 'DELETE') {
        return request(method, `/api2/json${apiPath}${form ? `?${form}` : ''}`);
      }
      return request(method, `/api2/json${apiPath}`, form ?? '', 'application/x-www-form-urlencoded');
    },
    stop: async () => {
      agent.destroy();
      await stopProcess(child);
    },
  };
  try {
    await waitUntilReady(
      `fakepve on ${url}`,
      async () => {
        await fake.api('GET', '/version');
        return true;
      },
      { child, timeoutMs: opts.startTimeoutMs ?? 30_000, describe: () => tail(logFile) },
    );
    for (const s of opts.storages ?? []) {
      await fake.api('POST', '/storage', { ...s });
    }
  } catch (err) {
    await fake.stop();
    throw err;
  }
  return fake;
}

/**
 * The simulated lab's Proxmox: one fakepve answering for every node of the inventory's hosts
 * (pve1 and pve2 in the example), as a PVE cluster does; each host's token is written to the
 * secret store and its CA file points at the run's CA. Guests cloned there answer through the
 * guest agent, so a canary boot works.
 */
export const proxmoxPeer: PeerStarter = async (ctx) => {
  const hosts = ctx.inventory.proxmox.hosts;
  const nodes = [...new Set(hosts.flatMap((h) => (h.nodes as string[] | undefined) ?? []))];
  const fake = await startFakePve({
    dir: path.join(ctx.dir, 'fakepve'),
    nodes: nodes.length > 0 ? nodes : ['pve1'],
    timeScale: 0.05,
    storages: [{ storage: 'unraid-backup', type: 'dir', path: '/mnt/unraid-backup', content: 'backup' }],
    // packer/proxmox-clone.pkr.hcl's base image, so `packerImageBuild` runs the real proxmox-clone builder.
    guests: [cloudImageSeed('local-lvm', 8000, nodes[0] ?? 'pve1')],
  });
  await fake.control({ op: 'vm_defaults', defaults: { agent: {}, start_secs: 5, shutdown_secs: 10 } });
  for (const host of hosts) {
    const name = String(host.name);
    host.apiUrl = fake.url;
    host.caFile = fake.caFile;
    host.token = await ctx.secrets.put(`proxmox/${name}-token`, fake.token);
  }
  return {
    name: 'proxmox',
    summary: `fakepve (Proxmox VE API) for ${hosts.map((h) => String(h.name)).join(', ')} on ${fake.url}`,
    env: {},
    handle: fake,
    stop: () => fake.stop(),
  };
};
