/**
 * A stand-in for the Talos nodes of a cluster, behind a `talosctl` that answers like the real one.
 *
 * What is real: `gen secrets`, `gen config` and `validate` run the real talosctl built from
 * github.com/siderolabs/talos (scripts/ensure-talosctl.sh). What is stood in: every command that
 * talks to a node (`get machinestatus`, `apply-config`, `bootstrap`, `etcd members`, `health`,
 * `kubeconfig`, `version` of a node). Those go from the wrapper (sim/talos-standin-cli.mjs) to
 * this process on loopback, which keeps each node's state and answers with talosctl's own output
 * shapes and error texts:
 *
 * - a node answers only while its VM runs in PVE (asked from the PVE API on every command; metal
 *   nodes are powered on unless a test says otherwise); a deleted VM is a wiped node;
 * - without a config it is in maintenance mode: `--insecure` reads and `apply-config --insecure`
 *   work, authenticated calls fail the TLS handshake;
 * - after a config it installs and reboots (`bootMs`), then runs, authenticated only;
 * - `bootstrap` on a control plane whose etcd is empty starts the cluster's etcd; a second one
 *   answers `AlreadyExists: etcd data directory is not empty`, as machined does. Other control
 *   planes join etcd once it exists;
 * - once etcd exists, every running node registers its Node, Ready, in the test kube-apiserver
 *   (as its kubelet would), with the labels of its machine config.
 * - (issue 7) etcd's data is a revision (moving while etcd runs, as leases do) and a key count.
 *   `etcd snapshot <path>` writes what talosctl writes: a bbolt database (1 MiB, the stand-in's
 *   revision and keys inside) with its sha256 appended. `reset --system-labels-to-wipe=EPHEMERAL`
 *   wipes the node's etcd data and keeps its config. `bootstrap --recover-from=<file>` does what
 *   talosctl and machined do: the file's status (`invalid database` for anything but bbolt) is
 *   printed, the file uploaded, the bootstrap refused with AlreadyExists while the node has etcd
 *   data; otherwise the bootstrap answers, and etcd starts from the snapshot's revision, unless
 *   its sha256 is missing (without --recover-skip-hash-check) or wrong: then etcd stays down, as
 *   the real etcd service fails after the bootstrap answered. Each recovery is recorded
 *   (`recoveries`, `etcdState().recoveredFrom`). The stand-in's hash is not etcd's (a CRC of the
 *   keys): it is the first 32 bits of the database's sha256.
 * - (issue 7) a `scratch` node (a DR drill's scratch control plane, behind a VM of the drill
 *   range) is a one-node cluster of its own: its etcd is bootstrapped or recovered on its own, its
 *   member is named by its config's hostname, it never joins the cluster's etcd nor registers a
 *   Node; deleting its VM wipes it, etcd included (`scratchEtcd`).
 *
 * Every call is recorded, so tests can count bootstraps and AlreadyExists answers; an answer can be
 * held back after the node acted on it (`holdNextAnswer`), so a test can kill the caller in between.
 */
import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import https from 'node:https';
import http from 'node:http';
import path from 'node:path';
import { parse as parseYaml, parseAllDocuments } from 'yaml';
import { BatchV1Api } from '@kubernetes/client-node';
import { SMOKE_NODE_LABEL } from '../common/gpu-node-join.js';
import { kubeletLabelProblem } from '../hardware/lab-rules.js';
import { completeJob, kubeConfigFor, markNodeReady } from './kube-controllers.js';
import { projectRoot } from '../lib/paths.js';

export interface StandinNodeSpec {
  name: string;
  /** The inventory's address. */
  ip: string;
  /** The loopback address talosctl is given for it (the activities' address map). */
  address: string;
  kind: 'vm' | 'metal';
  arch: 'amd64' | 'arm64';
  /** The PVE VM behind a VM node. */
  vm?: { node: string; vmid: number };
  /**
   * (issue 7) A one-node cluster of its own, e.g. a DR drill's scratch control plane: its etcd is
   * not the cluster's (bootstrapped or recovered on its own, members named by its config's
   * hostname), it never joins the cluster's etcd and registers no Node in the cluster's API.
   */
  scratch?: boolean;
}

export interface PveVmState {
  node: string;
  vmid: number;
  status: string;
}

export interface TalosStandinOptions {
  dir: string;
  nodes: StandinNodeSpec[];
  /** The real talosctl for gen/validate. */
  realTalosctl: string;
  /** PVE's VMs (node, vmid, status), asked before each answer. */
  listVms(): Promise<PveVmState[]>;
  /** The cluster's kube-apiserver: nodes register there, `talosctl kubeconfig` hands it out. */
  kubeconfigPath?: string;
  /** Install + reboot after a config is applied in maintenance mode (default 300 ms). */
  bootMs?: number;
  /** (issue 17) Added to every node-facing answer, as a node's Talos API over a real network takes (default 0). */
  callLatencyMs?: number;
  /**
   * The simulated lab only: play the NVIDIA device plugin (nvidia.com/gpu: 1 on nodes whose
   * config loads the nvidia modules) and the Job controller for their smoke Jobs
   * (completed). Tests leave it off and play both themselves.
   */
  playGpuNodes?: boolean;
}

export interface StandinCall {
  argv: string[];
  command: string;
  node?: string;
  code: number;
  stderr: string;
}

interface NodeState {
  spec: StandinNodeSpec;
  config?: string;
  role?: 'controlplane' | 'worker';
  labels: Record<string, string>;
  nvidia: boolean;
  gpuReported?: boolean;
  configuredAt?: number;
  registered: boolean;
  registering?: Promise<void>;
  /** For metal nodes: whether the machine is switched on. */
  metalPowered: boolean;
  /** Scratch nodes: the config's hostname, and their own etcd (a member once bootstrapped). */
  hostname?: string;
  etcd?: { revision: number; keys: number; recoveredFrom?: StandinSnapshotStatus };
}

export interface TalosStandin {
  /** The `talosctl` to give the activities. */
  talosctl: string;
  url: string;
  /** Inventory address -> loopback address, for the activities' address map. */
  addressMap: Record<string, string>;
  calls: StandinCall[];
  /** Bootstrap calls that reached a node, with what each answered. */
  bootstraps: Array<{ node: string; outcome: 'bootstrapped' | 'AlreadyExists' | 'refused' }>;
  etcdMembers(): string[];
  nodeState(name: string): { stage: string; configured: boolean; role?: string; registered: boolean };
  /** The next successful bootstrap loses its reply (the caller sees a dropped connection). */
  loseNextBootstrapReply(): void;
  /** (issue 7) `bootstrap --recover-from` calls that reached a control plane, with the snapshot each uploaded. */
  recoveries: StandinRecovery[];
  /**
   * (issue 7) The cluster's etcd as the stand-in models it: a revision that moves while etcd runs
   * (as leases do), a key count, and the snapshot it was recovered from. undefined: no etcd data.
   */
  etcdState(): { revision: number; keys: number; recoveredFrom?: StandinSnapshotStatus } | undefined;
  /** (issue 7) A scratch node's own etcd (undefined: none, e.g. its VM is gone) and member name. */
  scratchEtcd(
    name: string,
  ): { revision: number; keys: number; member: string; recoveredFrom?: StandinSnapshotStatus } | undefined;
  /**
   * The next call that `matches` (seen as it is recorded, e.g. a successful `bootstrap`) is
   * carried out on the node as usual, but its answer is held back until `release()`: `reached`
   * resolves once the node has done it, so a test can kill the caller inside that window.
   */
  holdNextAnswer(matches: (call: StandinCall) => boolean): { reached: Promise<StandinCall>; release(): void };
  /** Changes callLatencyMs from the next call on. */
  setCallLatency(ms: number): void;
  setMetalPower(name: string, on: boolean): void;
  stop(): Promise<void>;
}

/** (issue 7) What `snapshot status` says of a snapshot (talosctl prints it before it uploads one). */
export interface StandinSnapshotStatus {
  /** %08x; the stand-in's hash is the first 32 bits of the database's sha256 (etcd's is a CRC of its keys). */
  hash: string;
  revision: number;
  totalKeys: number;
  totalSize: number;
  /** sha256 of the whole file as uploaded. */
  fileSha256: string;
}

export interface StandinRecovery {
  node: string;
  /** recovered: etcd started from it; failed: bootstrap answered, then etcd refused the snapshot; AlreadyExists: refused. */
  outcome: 'recovered' | 'failed' | 'AlreadyExists';
  snapshot: StandinSnapshotStatus;
  skipHashCheck: boolean;
  error?: string;
}

const SNAPSHOT_MARK = 'labwright-standin-etcd:';

/**
 * A snapshot as `talosctl etcd snapshot` writes it: a bbolt database (meta pages 0 and 1 with the
 * magic 0xED0CDAED at offset 16, 4 KiB pages; the stand-in's revision and keys in page 2), 1 MiB,
 * followed by the sha256 of the database (so the size is 32 bytes past a multiple of 512).
 */
export function standinSnapshot(state: { revision: number; keys: number }, cluster = 'home'): Buffer {
  const db = Buffer.alloc(1024 * 1024);
  for (const page of [0, 1]) {
    const at = page * 4096;
    db.writeUInt32LE(page, at);
    db.writeUInt16LE(0x04, at + 8); // meta page
    db.writeUInt32LE(0xed0cdaed, at + 16);
    db.writeUInt32LE(2, at + 20);
    db.writeUInt32LE(4096, at + 24);
  }
  const record = { revision: state.revision, keys: state.keys, cluster, takenAt: new Date().toISOString() };
  db.write(`${SNAPSHOT_MARK}${JSON.stringify(record)}\n`, 2 * 4096, 'utf8');
  return Buffer.concat([db, createHash('sha256').update(db).digest()]);
}

/** `snapshot status` of an uploaded file, or the error talosctl prints when it is no bbolt database. */
export function standinSnapshotStatus(file: Buffer): StandinSnapshotStatus | string {
  if (file.length < 4096 * 2 || file.readUInt32LE(16) !== 0xed0cdaed) return 'invalid database';
  const db = file.length % 512 === 32 ? file.subarray(0, file.length - 32) : file;
  const text = db.subarray(2 * 4096, 3 * 4096).toString('utf8');
  const at = text.indexOf(SNAPSHOT_MARK);
  const record =
    at >= 0
      ? (JSON.parse(text.slice(at + SNAPSHOT_MARK.length, text.indexOf('\n', at))) as {
          revision: number;
          keys: number;
        })
      : { revision: 0, keys: 0 };
  return {
    hash: createHash('sha256').update(db).digest('hex').slice(0, 8),
    revision: record.revision,
    totalKeys: record.keys,
    totalSize: db.length,
    fileSha256: createHash('sha256').update(file).digest('hex'),
  };
}

/** What etcd's restore says of the appended sha256 (undefined: fine), as `--recover-skip-hash-check` decides. */
function snapshotHashError(file: Buffer, skip: boolean): string | undefined {
  if (skip) return undefined;
  if (file.length % 512 !== 32) return 'snapshot missing hash but --skip-hash-check=false';
  const want = file.subarray(file.length - 32).toString('hex');
  const got = createHash('sha256')
    .update(file.subarray(0, file.length - 32))
    .digest('hex');
  return want === got ? undefined : `expected sha256 ${want}, got ${got}`;
}

/** Loopback address for an inventory IPv4 address: 192.168.1.101 -> 127.<2nd>.<3rd>.<4th>... kept unique. */
export function loopbackFor(ip: string): string {
  const [, b, c, d] = ip.split('.');
  return `127.${Number(b) % 256}.${Number(c)}.${Number(d)}`;
}

/** Lists PVE VMs through the real API with an API token (what the stand-in asks fakepve). */
export function pveVmLister(opts: { url: string; token: string; ca: string | Buffer }): () => Promise<PveVmState[]> {
  const agent = new https.Agent({ ca: opts.ca, keepAlive: true });
  return () =>
    new Promise((resolve, reject) => {
      const req = https.request(
        `${opts.url}/api2/json/cluster/resources?type=vm`,
        { agent, headers: { Authorization: `PVEAPIToken=${opts.token}` } },
        (res) => {
          let text = '';
          res.setEncoding('utf8');
          res.on('data', (c: string) => (text += c));
          res.on('end', () => {
            if (res.statusCode !== 200) {
              reject(new Error(`PVE /cluster/resources: ${res.statusCode} ${text}`));
              return;
            }
            const data = (JSON.parse(text) as { data: Array<{ node: string; vmid: number; status: string }> }).data;
            resolve(data.map((v) => ({ node: v.node, vmid: Number(v.vmid), status: v.status })));
          });
        },
      );
      req.on('error', reject);
      req.end();
    });
}

interface Parsed {
  words: string[];
  flags: Map<string, string>;
}

const VALUE_FLAGS = new Map([
  ['-n', 'nodes'],
  ['--nodes', 'nodes'],
  ['-e', 'endpoints'],
  ['--endpoints', 'endpoints'],
  ['--talosconfig', 'talosconfig'],
  ['-f', 'file'],
  ['--file', 'file'],
  ['-o', 'output'],
  ['--output', 'output'],
  ['-m', 'mode'],
  ['--mode', 'mode'],
  ['--wait-timeout', 'wait-timeout'],
  ['--control-plane-nodes', 'control-plane-nodes'],
  ['--worker-nodes', 'worker-nodes'],
  ['--init-node', 'init-node'],
  ['--k8s-endpoint', 'k8s-endpoint'],
  ['--timeout', 'timeout'],
  ['--cert-fingerprint', 'cert-fingerprint'],
  ['--recover-from', 'recover-from'],
  ['--system-labels-to-wipe', 'system-labels-to-wipe'],
]);

function parseArgs(argv: string[]): Parsed {
  const words: string[] = [];
  const flags = new Map<string, string>();
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const eq = a.indexOf('=');
    if (a.startsWith('--') && eq > 0) {
      const key = VALUE_FLAGS.get(a.slice(0, eq)) ?? a.slice(2, eq);
      flags.set(key, a.slice(eq + 1));
    } else if (VALUE_FLAGS.has(a)) {
      flags.set(VALUE_FLAGS.get(a)!, argv[++i] ?? '');
    } else if (a === '-i' || a === '--insecure') flags.set('insecure', 'true');
    else if (a.startsWith('-')) flags.set(a.replace(/^-+/, ''), 'true');
    else words.push(a);
  }
  return { words, flags };
}

interface Answer {
  node?: string;
  stdout?: string;
  stderr?: string;
  code?: number;
  write?: Record<string, string>;
  /** Files written as bytes (base64), e.g. an etcd snapshot. */
  writeBase64?: Record<string, string>;
}

const fail = (stderr: string): Answer => ({ stderr: `${stderr}\n`, code: 1 });
/** Whether a talosconfig's current context holds the CA of a node's machine config. */
function talosconfigTrusts(talosconfig: string | undefined, machineConfig: string): boolean {
  try {
    const tc = parseYaml(talosconfig ?? '') as { context?: string; contexts?: Record<string, { ca?: string }> };
    // A machine config may hold more documents than the v1alpha1 one (multi-doc configs).
    const docs = parseAllDocuments(machineConfig).map((d) => d.toJS() as { machine?: { ca?: { crt?: string } } });
    const ca = tc.contexts?.[tc.context ?? '']?.ca;
    return ca !== undefined && docs.some((d) => d?.machine?.ca?.crt === ca);
  } catch {
    return false;
  }
}

const refused = (address: string): string =>
  `rpc error: code = Unavailable desc = connection error: desc = "transport: Error while dialing: dial tcp ${address}:50000: connect: connection refused"`;
const tlsRequired =
  'rpc error: code = Unavailable desc = connection error: desc = "error reading server preface: remote error: tls: certificate required"';
const unknownAuthority =
  'rpc error: code = Unavailable desc = connection error: desc = "transport: authentication handshake failed: tls: failed to verify certificate: x509: certificate signed by unknown authority"';

function memberId(name: string): string {
  let h = 0x811c9dc5;
  for (const ch of name) h = Math.imul(h ^ ch.charCodeAt(0), 0x01000193) >>> 0;
  return (h.toString(16) + '00000000').slice(0, 8) + (h ^ 0x5bd1e995).toString(16).padStart(8, '0').slice(0, 8);
}

export async function startTalosStandin(opts: TalosStandinOptions): Promise<TalosStandin> {
  await fs.mkdir(opts.dir, { recursive: true });
  const bootMs = opts.bootMs ?? 300;
  const nodes = new Map<string, NodeState>();
  for (const spec of opts.nodes) {
    nodes.set(spec.address, { spec, labels: {}, nvidia: false, registered: false, metalPowered: true });
  }
  const byName = (name: string): NodeState | undefined => [...nodes.values()].find((n) => n.spec.name === name);
  const members = new Set<string>();
  const calls: StandinCall[] = [];
  const bootstraps: TalosStandin['bootstraps'] = [];
  let loseReply = false;
  // issue 7: etcd's data, modelled as a revision and a key count; snapshots carry them, a recovery restores them.
  let etcd: { revision: number; keys: number; recoveredFrom?: StandinSnapshotStatus } | undefined;
  const recoveries: StandinRecovery[] = [];
  const holds: Array<{
    matches: (c: StandinCall) => boolean;
    reached: (c: StandinCall) => void;
    released: Promise<void>;
  }> = [];
  const releases: Array<() => void> = [];
  let callLatencyMs = opts.callLatencyMs ?? 0;
  const kubeconfig = opts.kubeconfigPath ? await fs.readFile(opts.kubeconfigPath, 'utf8') : undefined;

  /** Powered nodes, by PVE's VM state; a VM that is gone wipes its node (a fresh VM boots into maintenance). */
  async function refresh(): Promise<Set<string>> {
    const vms = await opts.listVms();
    const running = new Set<string>();
    for (const n of nodes.values()) {
      if (n.spec.kind === 'metal') {
        if (n.metalPowered) running.add(n.spec.address);
        continue;
      }
      const vm = vms.find((v) => v.vmid === n.spec.vm!.vmid && v.node === n.spec.vm!.node);
      if (!vm) {
        n.config = undefined;
        n.role = undefined;
        n.configuredAt = undefined;
        n.registered = false;
        n.gpuReported = false;
        n.hostname = undefined;
        n.etcd = undefined;
        members.delete(n.spec.name);
      } else if (vm.status === 'running') running.add(n.spec.address);
    }
    return running;
  }

  const booted = (n: NodeState): boolean => n.config !== undefined && Date.now() - (n.configuredAt ?? 0) >= bootMs;

  /** What kubelets and joining etcd members do on their own once etcd exists. */
  async function reconcile(running: Set<string>): Promise<void> {
    for (const n of nodes.values()) if (n.spec.scratch && n.etcd) n.etcd.revision += 1; // its own cluster writes
    if (members.size === 0) {
      etcd = undefined; // no member left: the data went with the last one
      return;
    }
    if (etcd) etcd.revision += 1; // a running cluster writes (leases)
    for (const n of nodes.values()) {
      if (!running.has(n.spec.address) || !booted(n) || n.spec.scratch) continue;
      if (n.role === 'controlplane') members.add(n.spec.name);
      if (!n.registered && !n.registering && opts.kubeconfigPath) {
        n.registering = markNodeReady(opts.kubeconfigPath, n.spec.name, {
          labels: { ...n.labels, 'kubernetes.io/arch': n.spec.arch },
        })
          .then(() => {
            n.registered = true;
          })
          .catch(() => undefined)
          .finally(() => {
            n.registering = undefined;
          });
      } else if (n.registered && n.nvidia && opts.playGpuNodes && opts.kubeconfigPath && !n.registering) {
        n.registering = playGpu(opts.kubeconfigPath, n)
          .catch(() => undefined)
          .finally(() => {
            n.registering = undefined;
          });
      }
    }
  }

  /** The device plugin's nvidia.com/gpu, and the smoke Job's pod finishing, for the simulated lab. */
  async function playGpu(kubeconfigPath: string, n: NodeState): Promise<void> {
    if (!n.gpuReported) {
      await markNodeReady(kubeconfigPath, n.spec.name, {
        gpus: 1,
        labels: { ...n.labels, 'kubernetes.io/arch': n.spec.arch },
      });
      n.gpuReported = true;
    }
    const batch = kubeConfigFor(kubeconfigPath).makeApiClient(BatchV1Api);
    // gpuNodeJoin names each run's smoke Job apart, and labels it with its node.
    const jobs = await batch.listJobForAllNamespaces({ labelSelector: `${SMOKE_NODE_LABEL}=${n.spec.name}` });
    for (const job of jobs.items) {
      if ((job.status?.conditions ?? []).some((c) => c.status === 'True')) continue;
      await completeJob(kubeconfigPath, job.metadata!.namespace!, job.metadata!.name!, true);
    }
  }

  const timer = setInterval(() => {
    refresh()
      .then(reconcile)
      .catch(() => undefined);
  }, 200);

  function stageOf(n: NodeState, running: Set<string>): string {
    if (!running.has(n.spec.address)) return 'off';
    if (n.config === undefined) return 'maintenance';
    return booted(n) ? 'running' : 'installing';
  }

  function machineStatus(n: NodeState, stage: string, address: string): string {
    const member = n.spec.scratch ? n.etcd !== undefined : members.has(n.spec.name);
    const ready = stage === 'running' && n.registered && (n.role !== 'controlplane' || member);
    const unmet = ready ? [] : [{ name: 'nodeReady', reason: 'node is not ready' }];
    return `${JSON.stringify(
      {
        node: address,
        metadata: {
          namespace: 'runtime',
          type: 'MachineStatuses.runtime.talos.dev',
          id: 'machine',
          version: 1,
          owner: 'runtime.MachineStatusController',
          phase: 'running',
        },
        spec: { stage, status: { ready, unmetConditions: unmet } },
      },
      null,
      4,
    )}\n`;
  }

  async function answer(
    argv: string[],
    files: Record<string, string>,
    uploads: Record<string, string> = {},
  ): Promise<Answer> {
    const { words, flags } = parseArgs(argv);
    const command = words.join(' ');
    const insecure = flags.get('insecure') === 'true';
    const target = (flags.get('nodes') ?? flags.get('endpoints') ?? '').split(',')[0] ?? '';
    const n = nodes.get(target);
    const running = await refresh();
    await reconcile(running);
    if (!n) return fail(`${words[0]}: ${refused(target)}`);
    const stage = stageOf(n, running);
    const withNode = { node: n.spec.name };
    if (!insecure && !(flags.get('talosconfig') && files[flags.get('talosconfig')!])) {
      return { ...withNode, ...fail(`failed to open config file "${flags.get('talosconfig') ?? ''}": no such file`) };
    }
    // Talos's API is mutual TLS: a configured node answers only a talosconfig signed by its own CA
    // (machine.ca.crt of its config), so another cluster's or a lost store's talosconfig fails.
    const trusted = insecure || n.config === undefined || talosconfigTrusts(files[flags.get('talosconfig')!], n.config);
    const reach = (prefix: string): Answer | undefined => {
      if (stage === 'off' || stage === 'installing') return fail(`${prefix}${refused(target)}`);
      if (insecure && stage !== 'maintenance') return fail(`${prefix}${tlsRequired}`);
      if (!insecure && (stage === 'maintenance' || !trusted)) return fail(`${prefix}${unknownAuthority}`);
      return undefined;
    };

    if (words[0] === 'get' && words[1]?.toLowerCase().startsWith('machinestatus')) {
      const err = reach('');
      if (err) return { ...withNode, ...err };
      if (flags.get('output') === 'json') return { ...withNode, stdout: machineStatus(n, stage, target) };
      return {
        ...withNode,
        stdout: `NODE         NAMESPACE   TYPE            ID        VERSION   STAGE   READY\n${target}   runtime     MachineStatus   machine   1         ${stage}   ${stage === 'running'}\n`,
      };
    }

    if (words[0] === 'version') {
      const err = reach('error getting version: ');
      if (err) return { ...withNode, ...err };
      if (insecure) {
        return {
          ...withNode,
          ...fail(
            'error getting version: rpc error: code = Unimplemented desc = API is not implemented in maintenance mode',
          ),
        };
      }
      const msg = {
        metadata: { hostname: target },
        version: { tag: 'v1.11.5', sha: 'standin', goVersion: 'go1.24.9', os: 'linux', arch: n.spec.arch },
        platform: { name: n.spec.kind === 'vm' ? 'nocloud' : 'metal', mode: 'metal' },
        features: { rbac: true },
      };
      if (flags.get('json') === 'true') return { ...withNode, stdout: `${JSON.stringify(msg)}\n` };
      return {
        ...withNode,
        stdout: `Client:\n\tTag:         v1.11.5\nServer:\n\tNODE:        ${target}\n\tTag:         v1.11.5\n`,
      };
    }

    if (words[0] === 'apply-config') {
      const file = flags.get('file');
      const text = file ? files[file] : undefined;
      if (!file || text === undefined)
        return { ...withNode, ...fail(`failed to read configuration from "${file}": no such file`) };
      const err = reach('error applying new configuration: ');
      if (err) return { ...withNode, ...err };
      let doc: { machine?: { type?: string; nodeLabels?: Record<string, string> } };
      try {
        doc = parseYaml(text) as typeof doc;
      } catch (e) {
        return {
          ...withNode,
          ...fail(
            `error applying new configuration: rpc error: code = InvalidArgument desc = configuration validation failed: ${(e as Error).message}`,
          ),
        };
      }
      const role =
        doc?.machine?.type === 'controlplane' ? 'controlplane' : doc?.machine?.type === 'worker' ? 'worker' : undefined;
      if (!role) {
        return {
          ...withNode,
          ...fail(
            'error applying new configuration: rpc error: code = InvalidArgument desc = configuration validation failed: machine type is not set',
          ),
        };
      }
      if (flags.get('dry-run') === 'true') {
        const diff = n.config === text ? 'No changes.' : '--- a\n+++ b\n(config changed)';
        return {
          ...withNode,
          stderr: `Dry run summary:\nApplied configuration without a reboot (skipped in dry-run).\nConfig diff:\n\n${diff}\n`,
        };
      }
      const first = n.config === undefined;
      n.config = text;
      n.role = role;
      // Talos patches the Node with its kubelet identity: NodeRestriction refuses the whole patch
      // when one label is outside what a node may set, so the node gets none of them.
      const labels = doc.machine?.nodeLabels ?? {};
      n.labels = Object.keys(labels).some((key) => kubeletLabelProblem(key)) ? {} : labels;
      n.hostname = (doc.machine as { network?: { hostname?: string } } | undefined)?.network?.hostname;
      n.nvidia = /(^|\n)\s*- name: nvidia\s*(\n|$)/.test(text);
      if (first) n.configuredAt = Date.now();
      return { ...withNode, stderr: first ? '' : 'Applied configuration without a reboot\n' };
    }

    if (command === 'etcd members') {
      const err = reach('error getting members: ');
      if (err) return { ...withNode, ...err };
      if (n.role !== 'controlplane') {
        return {
          ...withNode,
          ...fail(
            `error getting members: 1 error occurred:\n\t* ${target}: rpc error: code = Unimplemented desc = member list is only available on control plane nodes\n`,
          ),
        };
      }
      if (n.spec.scratch ? !n.etcd : !members.has(n.spec.name)) {
        return {
          ...withNode,
          stderr: `WARNING: 1 error occurred:\n\t* ${target}: rpc error: code = Unavailable desc = connection error: desc = "transport: Error while dialing: dial tcp 127.0.0.1:2379: connect: connection refused"\n\n`,
        };
      }
      if (n.spec.scratch) {
        const name = n.hostname ?? n.spec.name;
        const row = `${target}   ${memberId(name)}   ${name}   https://${n.spec.ip}:2380   https://${n.spec.ip}:2379   false`;
        return { ...withNode, stdout: `NODE   ID   HOSTNAME   PEER URLS   CLIENT URLS   LEARNER\n${row}\n` };
      }
      const rows = [...members].map((name) => {
        const m = byName(name)!;
        return `${target}   ${memberId(name)}   ${name}   https://${m.spec.ip}:2380   https://${m.spec.ip}:2379   false`;
      });
      return { ...withNode, stdout: `NODE   ID   HOSTNAME   PEER URLS   CLIENT URLS   LEARNER\n${rows.join('\n')}\n` };
    }

    if (words[0] === 'bootstrap') {
      const err = reach('error executing bootstrap: ');
      if (err) return { ...withNode, ...err };
      // issue 7: --recover-from: talosctl reads the snapshot's status, prints it, uploads the file;
      // the bootstrap then starts etcd from it (etcd checks the appended sha256 as it restores).
      const recoverFrom = flags.get('recover-from');
      let recovery: { file: Buffer; status: StandinSnapshotStatus; stdout: string } | undefined;
      if (recoverFrom !== undefined) {
        const b64 = uploads[recoverFrom];
        if (b64 === undefined) return { ...withNode, ...fail(`open ${recoverFrom}: no such file or directory`) };
        const file = Buffer.from(b64, 'base64');
        const status = standinSnapshotStatus(file);
        if (typeof status === 'string') return { ...withNode, ...fail(status) };
        const stdout = `recovering from snapshot "${recoverFrom}": hash ${status.hash}, revision ${status.revision}, total keys ${status.totalKeys}, total size ${status.totalSize}\n`;
        recovery = { file, status, stdout };
        if (n.role === 'controlplane' && (n.spec.scratch ? n.etcd !== undefined : members.has(n.spec.name))) {
          recoveries.push({
            node: n.spec.name,
            outcome: 'AlreadyExists',
            snapshot: status,
            skipHashCheck: flags.has('recover-skip-hash-check'),
          });
        }
      }
      if (n.role !== 'controlplane') {
        bootstraps.push({ node: n.spec.name, outcome: 'refused' });
        return {
          ...withNode,
          ...fail(
            `error executing bootstrap: 1 error occurred:\n\t* ${target}: rpc error: code = FailedPrecondition desc = bootstrap can only be performed on a control plane node\n`,
          ),
        };
      }
      if (n.spec.scratch ? n.etcd !== undefined : members.has(n.spec.name)) {
        bootstraps.push({ node: n.spec.name, outcome: 'AlreadyExists' });
        return {
          ...withNode,
          ...fail(
            `error executing bootstrap: 1 error occurred:\n\t* ${target}: rpc error: code = AlreadyExists desc = etcd data directory is not empty\n`,
          ),
        };
      }
      if (recovery) {
        const skip = flags.get('recover-skip-hash-check') === 'true';
        const error = snapshotHashError(recovery.file, skip);
        recoveries.push({
          node: n.spec.name,
          outcome: error ? 'failed' : 'recovered',
          snapshot: recovery.status,
          skipHashCheck: skip,
          ...(error ? { error } : {}),
        });
        bootstraps.push({ node: n.spec.name, outcome: 'bootstrapped' });
        // machined answers the bootstrap, then the etcd service restores: a bad snapshot leaves etcd down.
        if (error) return { ...withNode, stdout: recovery.stdout };
        if (n.spec.scratch) {
          n.etcd = {
            revision: recovery.status.revision,
            keys: recovery.status.totalKeys,
            recoveredFrom: recovery.status,
          };
          return { ...withNode, stdout: recovery.stdout };
        }
        etcd = { revision: recovery.status.revision, keys: recovery.status.totalKeys, recoveredFrom: recovery.status };
        members.add(n.spec.name);
        await reconcile(running);
        return { ...withNode, stdout: recovery.stdout };
      }
      bootstraps.push({ node: n.spec.name, outcome: 'bootstrapped' });
      if (n.spec.scratch) {
        n.etcd = { revision: 1, keys: 312 };
        return withNode;
      }
      members.add(n.spec.name);
      etcd ??= { revision: 1, keys: 312 };
      await reconcile(running);
      if (loseReply) {
        loseReply = false;
        return {
          ...withNode,
          ...fail('error executing bootstrap: rpc error: code = Unavailable desc = error reading from server: EOF'),
        };
      }
      return withNode;
    }

    // issue 7: `etcd snapshot <path>`: the file as talosctl writes it (database + sha256).
    if (command.startsWith('etcd snapshot')) {
      const err = reach('error reading file: ');
      if (err) return { ...withNode, ...err };
      const out = words[2];
      if (!out) return { ...withNode, ...fail('accepts 1 arg(s), received 0') };
      const data = n.spec.scratch ? n.etcd : members.has(n.spec.name) ? etcd : undefined;
      if (n.role !== 'controlplane' || !data) {
        return {
          ...withNode,
          ...fail(
            'error reading file: rpc error: code = Unavailable desc = connection error: desc = "transport: Error while dialing: dial tcp 127.0.0.1:2379: connect: connection refused"',
          ),
        };
      }
      const file = standinSnapshot(data);
      const st = standinSnapshotStatus(file) as StandinSnapshotStatus;
      return {
        ...withNode,
        stdout:
          `etcd snapshot saved to "${out}" (${file.length} bytes)\n` +
          `snapshot info: hash ${st.hash}, revision ${st.revision}, total keys ${st.totalKeys}, total size ${st.totalSize}\n`,
        writeBase64: { [out]: file.toString('base64') },
      };
    }

    // issue 7: `reset`: --system-labels-to-wipe=EPHEMERAL wipes etcd's data and keeps the config
    // (STATE); a full reset wipes both (maintenance mode after the reboot).
    if (words[0] === 'reset') {
      const err = reach('error executing reset: ');
      if (err) return { ...withNode, ...err };
      if (n.spec.scratch) n.etcd = undefined;
      else {
        members.delete(n.spec.name);
        if (members.size === 0) etcd = undefined;
      }
      n.registered = false;
      if ((flags.get('system-labels-to-wipe') ?? '').split(',').includes('EPHEMERAL')) {
        n.configuredAt = Date.now(); // reboots
      } else {
        n.config = undefined;
        n.role = undefined;
        n.configuredAt = undefined;
      }
      return withNode;
    }

    if (words[0] === 'health') {
      const err = reach('');
      if (err) return { ...withNode, ...err };
      const waitMs = Math.min(parseDuration(flags.get('wait-timeout') ?? '20m'), 60_000);
      const cps = (flags.get('control-plane-nodes') ?? '').split(',').filter(Boolean);
      const workers = (flags.get('worker-nodes') ?? '').split(',').filter(Boolean);
      const deadline = Date.now() + waitMs;
      let problem = '';
      for (;;) {
        const now = await refresh();
        await reconcile(now);
        problem = healthProblem(cps, workers, now);
        if (!problem || Date.now() > deadline) break;
        await new Promise((r) => setTimeout(r, 200));
      }
      const lines = [
        `discovered nodes: ["${[...cps, ...workers].join('" "')}"]`,
        `waiting for etcd to be healthy: ${members.size > 0 ? 'OK' : '...'}`,
        `waiting for etcd members to be consistent across nodes: ${problem.startsWith('etcd') ? '...' : 'OK'}`,
        `waiting for all k8s nodes to report ready: ${problem ? '...' : 'OK'}`,
      ];
      if (problem) return { ...withNode, stderr: `${lines.join('\n')}\nhealthcheck error: ${problem}\n`, code: 1 };
      return { ...withNode, stderr: `${lines.join('\n')}\n` };
    }

    if (words[0] === 'kubeconfig') {
      const err = reach('');
      if (err) return { ...withNode, ...err };
      if (n.role !== 'controlplane' || members.size === 0 || !kubeconfig) {
        return {
          ...withNode,
          ...fail(
            `1 error occurred:\n\t* ${target}: rpc error: code = FailedPrecondition desc = kubeconfig is not available yet\n`,
          ),
        };
      }
      const out = words[1] ?? path.join(process.cwd(), 'kubeconfig');
      return { ...withNode, write: { [out]: kubeconfig } };
    }

    return {
      ...withNode,
      ...fail(`unknown command "${words[0] ?? ''}" for "talosctl" (the stand-in answers: ${command})`),
    };
  }

  function healthProblem(cps: string[], workers: string[], running: Set<string>): string {
    if (members.size === 0) return 'etcd is not bootstrapped';
    for (const a of [...cps, ...workers]) {
      const n = nodes.get(a);
      if (!n) return `node ${a} is not known`;
      if (!running.has(a) || !booted(n)) return `node ${a} is not running`;
      if (cps.includes(a) && !members.has(n.spec.name)) return `etcd member ${n.spec.name} has not joined`;
      if (!n.registered) return `k8s node ${n.spec.name} is not ready`;
    }
    return '';
  }

  const server = http.createServer((req, res) => {
    let text = '';
    req.setEncoding('utf8');
    req.on('data', (c: string) => (text += c));
    req.on('end', () => {
      const { argv, files, uploads } = JSON.parse(text) as {
        argv: string[];
        files: Record<string, string>;
        uploads?: Record<string, string>;
      };
      const latency = callLatencyMs ? new Promise((r) => setTimeout(r, callLatencyMs)) : undefined;
      answer(argv, files, uploads)
        .catch((err: unknown) => fail(`talos stand-in: ${(err as Error).message}`))
        .then(async (a) => (await latency, a))
        .then(async (a) => {
          const { words } = parseArgs(argv);
          const call = { argv, command: words.join(' '), node: a.node, code: a.code ?? 0, stderr: a.stderr ?? '' };
          calls.push(call);
          const hold = holds.findIndex((h) => h.matches(call));
          if (hold >= 0) {
            const [h] = holds.splice(hold, 1);
            h!.reached(call);
            await h!.released;
          }
          res.writeHead(200, { 'content-type': 'application/json' });
          res.end(
            JSON.stringify({
              stdout: a.stdout,
              stderr: a.stderr,
              code: a.code ?? 0,
              write: a.write,
              writeBase64: a.writeBase64,
            }),
          );
        })
        .catch(() => res.destroy());
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const url = `http://127.0.0.1:${(server.address() as { port: number }).port}`;

  const talosctl = path.join(opts.dir, 'talosctl');
  const cli = path.join(projectRoot, 'sim', 'talos-standin-cli.mjs');
  await fs.writeFile(
    talosctl,
    `#!/bin/sh\n# talosctl for labwright's tests and simulated lab: see sim/talos-standin.ts\n` +
      `LABWRIGHT_TALOS_STANDIN_URL='${url}' LABWRIGHT_TALOSCTL_REAL='${opts.realTalosctl}' exec '${process.execPath}' '${cli}' "$@"\n`,
    { mode: 0o755 },
  );

  return {
    talosctl,
    url,
    addressMap: Object.fromEntries(opts.nodes.map((n) => [n.ip, n.address])),
    calls,
    bootstraps,
    etcdMembers: () => [...members],
    recoveries,
    etcdState: () => (etcd ? { ...etcd } : undefined),
    scratchEtcd: (name) => {
      const n = byName(name);
      if (!n?.spec.scratch) throw new Error(`no scratch node ${name}`);
      return n.etcd ? { ...n.etcd, member: n.hostname ?? n.spec.name } : undefined;
    },
    nodeState: (name) => {
      const n = byName(name);
      if (!n) throw new Error(`no node ${name}`);
      return {
        stage: n.config === undefined ? 'maintenance' : booted(n) ? 'running' : 'installing',
        configured: n.config !== undefined,
        ...(n.role ? { role: n.role } : {}),
        registered: n.registered,
      };
    },
    loseNextBootstrapReply: () => {
      loseReply = true;
    },
    holdNextAnswer: (matches) => {
      let reached!: (c: StandinCall) => void;
      let release!: () => void;
      const arrived = new Promise<StandinCall>((r) => (reached = r));
      holds.push({ matches, reached, released: new Promise<void>((r) => (release = r)) });
      releases.push(release);
      return { reached: arrived, release };
    },
    setCallLatency: (ms) => {
      callLatencyMs = ms;
    },
    setMetalPower: (name, on) => {
      const n = byName(name);
      if (!n || n.spec.kind !== 'metal') throw new Error(`no metal node ${name}`);
      n.metalPowered = on;
    },
    stop: async () => {
      clearInterval(timer);
      for (const release of releases) release();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await Promise.allSettled([...nodes.values()].map((n) => n.registering ?? Promise.resolve()));
    },
  };
}

function parseDuration(text: string): number {
  let ms = 0;
  for (const m of text.matchAll(/(\d+(?:\.\d+)?)(ms|s|m|h)/g)) {
    ms += Number(m[1]) * ({ ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[m[2] as 'ms' | 's' | 'm' | 'h'] ?? 0);
  }
  return ms;
}
