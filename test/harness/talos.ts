/**
 * The Talos lab the talos-bootstrap and gpu-node-join tests run on: fakepve (with the cluster's
 * template on both PVE nodes and the GPUs' PCI devices), a real kube-apiserver, the Talos
 * stand-in behind a talosctl whose gen/validate are the real talosctl, a secret store, and the
 * activities of all three wired to them. Every inventory address is mapped to loopback.
 */
import { inject } from 'vitest';
import type { Client, WorkflowHandle } from '@temporalio/client';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parse as parseYaml } from 'yaml';
import { createKubernetesActivities } from '../../activities/kubernetes.js';
import { createProxmoxActivities } from '../../activities/proxmox.js';
import { proxmoxDepsFromInventory } from '../../clients/proxmox.js';
import { createTalosActivities } from '../../activities/talos.js';
import { inventorySchema } from '../../hardware/schema.js';
import { projectRoot } from '../../lib/paths.js';
import { ensureTool } from '../../lib/processes.js';
import { SecretStore } from '../../lib/secrets.js';
import { startFakePve, type FakePve } from '../../sim/proxmox.js';
import {
  loopbackFor,
  pveVmLister,
  startTalosStandin,
  type StandinNodeSpec,
  type TalosStandin,
} from '../../sim/talos-standin.js';
import { startKube, type KubeHandle } from './kube.js';
import { TEST_CODEC_KEY_FILE } from './processes.js';

export type Draft = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

export interface TalosLab {
  dir: string;
  fake: FakePve;
  kube: KubeHandle;
  standin: TalosStandin;
  secrets: SecretStore;
  /** The inventory the workflows get (raw, as YAML gives it), pointed at fakepve. */
  inventory: Draft;
  /** The name of the lab's cluster (the example's `home`, or `clusterName`). */
  cluster: string;
  activities: Record<string, (...args: never[]) => Promise<unknown>>;
  /** Non-GET requests fakepve has answered so far. */
  pveWrites(): Promise<Array<{ method: string; path: string }>>;
  stop(): Promise<void>;
}

export interface TalosLabOptions {
  /** Edits the example inventory's `home` cluster before anything starts. */
  cluster?: (home: Draft, inventory: Draft) => void;
  /**
   * The cluster's name (default `home`). talos-bootstrap runs only as `talos-bootstrap/<cluster>`,
   * so test files that bootstrap on the shared dev server at the same time each take their own.
   */
  clusterName?: string;
  /**
   * (issue 7) Scratch control planes outside the inventory (a DR drill's), each a one-node cluster
   * of its own on the stand-in, behind a PVE VM; their addresses are mapped to loopback too.
   */
  scratchNodes?: Array<{ name: string; ip: string; node: string; vmid: number }>;
  /** (issue 17) Latency injected into every PVE API request and every node-facing Talos call (benchmarks). */
  latency?: { pveMs?: number; talosMs?: number };
}

/** PCI devices as a PVE host lists them, for the example lab's GPUs (and an audio function). */
export const LAB_PCI_DEVICES = {
  pve1: [
    {
      id: '0000:01:00.0',
      class: '0x030000',
      vendor: '0x10de',
      device: '0x2231',
      vendor_name: 'NVIDIA Corporation',
      device_name: 'GA102GL [RTX A5000]',
      iommugroup: 14,
    },
    {
      id: '0000:01:00.1',
      class: '0x040300',
      vendor: '0x10de',
      device: '0x1aef',
      vendor_name: 'NVIDIA Corporation',
      device_name: 'GA102 High Definition Audio Controller',
      iommugroup: 14,
    },
    {
      id: '0000:0b:00.0',
      class: '0x030000',
      vendor: '0x10de',
      device: '0x2702',
      vendor_name: 'NVIDIA Corporation',
      device_name: 'AD103 [GeForce RTX 4080 SUPER]',
      iommugroup: 27,
    },
  ],
  pve2: [
    {
      id: '0000:01:00.0',
      class: '0x030000',
      vendor: '0x10de',
      device: '0x2531',
      vendor_name: 'NVIDIA Corporation',
      device_name: 'GA106 [RTX A2000]',
      iommugroup: 12,
    },
  ],
};

export async function startTalosLab(opts: TalosLabOptions = {}): Promise<TalosLab> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'labwright-talos-lab-'));
  const inventory = parseYaml(
    await fs.readFile(path.join(projectRoot, 'hardware', 'lab.example.yaml'), 'utf8'),
  ) as Draft;
  opts.cluster?.(inventory.clusters.home, inventory);
  const cluster = opts.clusterName ?? 'home';
  if (cluster !== 'home') {
    inventory.clusters = { [cluster]: inventory.clusters.home };
  }
  const secrets = new SecretStore(path.join(dir, 'secrets'));
  const realTalosctl = ensureTool('ensure-talosctl.sh');

  const stops: Array<() => Promise<void>> = [];
  const stop = async (): Promise<void> => {
    for (const s of stops.reverse()) await s().catch(() => undefined);
    await fs.rm(dir, { recursive: true, force: true });
  };
  try {
    const template = { scsi0: 'local-lvm:base-9000-disk-0,size=8G', ostype: 'l26', cores: 2, memory: 2048 };
    const fake = await startFakePve({
      dir: path.join(dir, 'fakepve'),
      nodes: ['pve1', 'pve2'],
      guests: [
        { vmid: 9000, name: 'talos-v1-11-5', node: 'pve1', template: true, config: template },
        {
          vmid: 9001,
          name: 'talos-v1-11-5',
          node: 'pve2',
          template: true,
          config: { ...template, scsi0: 'local-lvm:base-9001-disk-0,size=8G' },
        },
      ],
    });
    stops.push(() => fake.stop());
    for (const [node, devices] of Object.entries(LAB_PCI_DEVICES)) {
      await fake.control({ op: 'pci_devices', node, devices });
    }
    await fake.control({
      op: 'pci_mappings',
      mappings: [
        { id: 'a5000', description: 'RTX A5000', map: ['node=pve1,path=0000:01:00,id=10de:2231,iommugroup=14'] },
        { id: 'a2000', description: 'RTX A2000', map: ['node=pve2,path=0000:01:00,id=10de:2531,iommugroup=12'] },
      ],
    });
    for (const host of inventory.proxmox.hosts as Draft[]) {
      host.apiUrl = fake.url;
      host.caFile = fake.caFile;
      host.token = await secrets.put(`proxmox/${host.name}-token`, fake.token);
    }

    const kube = await startKube({ crdsDir: false });
    stops.push(() => kube.stop());

    const home = inventory.clusters[cluster] as Draft;
    const nodes: StandinNodeSpec[] = [...(home.controlPlane as Draft[]), ...((home.workers as Draft[]) ?? [])].map(
      (n) => ({
        name: n.name as string,
        ip: n.ip as string,
        address: loopbackFor(n.ip as string),
        kind: n.kind as 'vm' | 'metal',
        arch: (n.arch ?? 'amd64') as 'amd64' | 'arm64',
        ...(n.kind === 'vm' ? { vm: { node: n.node as string, vmid: n.vmid as number } } : {}),
      }),
    );
    for (const s of opts.scratchNodes ?? []) {
      nodes.push({
        name: s.name,
        ip: s.ip,
        address: loopbackFor(s.ip),
        kind: 'vm',
        arch: 'amd64',
        vm: { node: s.node, vmid: s.vmid },
        scratch: true,
      });
    }
    const standin = await startTalosStandin({
      dir: path.join(dir, 'talos'),
      nodes,
      realTalosctl,
      listVms: pveVmLister({ url: fake.url, token: fake.token, ca: await fs.readFile(fake.caFile) }),
      kubeconfigPath: kube.kubeconfigPath,
      callLatencyMs: opts.latency?.talosMs,
    });
    stops.push(() => standin.stop());
    if (opts.latency?.pveMs) await fake.control({ op: 'latency', ms: opts.latency.pveMs });

    const { activities, close } = talosLabActivities({ inventory, standin, dir }, secrets);
    stops.push(close);

    return {
      dir,
      fake,
      kube,
      standin,
      secrets,
      inventory,
      cluster,
      activities,
      pveWrites: async () =>
        (await fake.control<Array<{ method: string; path: string }>>({ op: 'requests' })).filter(
          (r) => r.method !== 'GET' && !r.path.startsWith('/_labwright'),
        ),
      stop,
    };
  } catch (err) {
    await stop();
    throw err;
  }
}

/**
 * The activities of the lab's Proxmox, Talos and Kubernetes on a secret store: the lab's own, or
 * that of another state directory (a DR test's fresh one). Built from the validated inventory, as
 * the worker builds them.
 */
export function talosLabActivities(
  lab: Pick<TalosLab, 'inventory' | 'standin' | 'dir'>,
  secrets: SecretStore,
): { activities: TalosLab['activities']; close: () => Promise<void> } {
  const pveDeps = proxmoxDepsFromInventory(inventorySchema.parse(lab.inventory), secrets);
  const activities = {
    ...createProxmoxActivities(pveDeps),
    ...createTalosActivities({
      talosctl: lab.standin.talosctl,
      secrets,
      addressMap: lab.standin.addressMap,
      loopbackOnly: true,
      pollMs: 200,
      tmpDir: path.join(lab.dir, 'tmp'),
    }),
    ...createKubernetesActivities({ secrets, pollMs: 200 }),
  } as unknown as TalosLab['activities'];
  return { activities, close: async () => pveDeps.close() };
}

/**
 * The environment of a worker process (workers/main.ts) on `lab`, as a deployment gives it: an
 * inventory file (pointed at fakepve, its token a secret-store reference), the secret store, the
 * Talos stand-in's talosctl with its loopback address map, and the test codec key.
 */
export async function labWorkerEnv(
  lab: TalosLab,
  opts: { temporalAddress: string; taskQueue: string; extra?: NodeJS.ProcessEnv },
): Promise<NodeJS.ProcessEnv> {
  const inventoryFile = path.join(lab.dir, 'inventory.json');
  await fs.writeFile(inventoryFile, JSON.stringify(lab.inventory));
  return {
    TEMPORAL_ADDRESS: opts.temporalAddress,
    LABWRIGHT_CODEC_KEY_FILE: TEST_CODEC_KEY_FILE,
    LABWRIGHT_TASK_QUEUE: opts.taskQueue,
    LABWRIGHT_INVENTORY: inventoryFile,
    LABWRIGHT_SECRETS_DIR: path.join(lab.dir, 'secrets'),
    LABWRIGHT_TALOSCTL: lab.standin.talosctl,
    LABWRIGHT_TALOS_ADDRESS_MAP: JSON.stringify(lab.standin.addressMap),
    LABWRIGHT_SIMULATED: '1',
    LABWRIGHT_METRICS_ADDRESS: 'off',
    // The run's bundle, not a fresh bundling of the workflows at every worker start: on a loaded
    // machine that took most of a kill test's time.
    LABWRIGHT_WORKFLOW_BUNDLE: inject('workflowBundlePath'),
    ...opts.extra,
  };
}

/**
 * Starts talosBootstrap of `lab`'s cluster and runs `outage` (Temporal killed and started again)
 * while the node holds its answer to `talosctl bootstrap`: etcd starts there, and the answer comes
 * once the outage is over. Returns the run's handle on a connection made after the outage.
 */
export async function bootstrapThroughOutage(
  lab: TalosLab,
  opts: { connect: () => Promise<Client>; taskQueue: string; outage: () => Promise<void> },
): Promise<WorkflowHandle> {
  const bootstrap = lab.standin.holdNextAnswer((c) => c.command === 'bootstrap' && c.code === 0);
  const workflowId = `talos-bootstrap/${lab.cluster}`;
  await (
    await opts.connect()
  ).workflow.start('talosBootstrap', {
    taskQueue: opts.taskQueue,
    workflowId,
    args: [{ cluster: lab.cluster, inventory: lab.inventory, waitSeconds: 60 }],
  });
  await bootstrap.reached;
  await opts.outage();
  bootstrap.release();
  return (await opts.connect()).workflow.getHandle(workflowId);
}

/** One control plane (no quorum tolerance, said so) and no workers: the step under test is the bootstrap. */
export function oneControlPlane(home: Draft): void {
  home.controlPlane = [(home.controlPlane as Draft[])[0]];
  home.allowNoQuorumTolerance = true;
  home.workers = [];
}
