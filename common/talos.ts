/**
 * The Talos contract shared by the `talosBootstrap` and `gpuNodeJoin` workflows and the Talos
 * activities: input schema, the per-node plan derived from the inventory, the machine-config
 * patches each node gets, and the names under which secrets live in the secret store.
 *
 * Pure: no I/O, so workflows validate and plan deterministically before any side effect.
 */
import { z } from 'zod';
import {
  inventorySchema,
  nameSchema,
  type Cluster,
  type ClusterNode,
  type Gpu,
  type Inventory,
} from '../hardware/schema.js';
import { networkOf, normalizePci, pciSlot } from '../hardware/addresses.js';
import { labInventorySchema } from '../hardware/lab-rules.js';
import { nonRetryable } from './errors.js';
import { parseInput } from './validation.js';

export { networkOf, normalizePci, pciSlot };

// ------------------------------------------------------------------ inputs

/** An Image Factory schematic ID: sha256 hex of the schematic (its extensions). */
export const schematicSchema = z
  .string()
  .regex(/^[0-9a-f]{64}$/, 'expected an Image Factory schematic ID (64 hex digits)');

export const talosBootstrapInputSchema = z.strictObject({
  /** The inventory's cluster to bootstrap, e.g. `home`. */
  cluster: nameSchema,
  /**
   * The lab inventory as YAML or JSON gives it. Left out: the worker's own inventory
   * (LABWRIGHT_INVENTORY), read by an activity. Validated in full by the workflow either way.
   */
  inventory: z.record(z.string(), z.unknown()).optional(),
  /**
   * Schematic with the NVIDIA extensions (nonfree-kmod-nvidia, nvidia-container-toolkit) for GPU
   * workers' installer image; its tag is always the cluster's talosVersion, so extension and
   * Talos versions match.
   */
  nvidiaSchematic: schematicSchema.optional(),
  /** How long to wait for each node's Talos API and for the cluster to become healthy (seconds). */
  waitSeconds: z.int().min(10).max(7200).default(1800),
  /**
   * Heartbeat timeout (seconds) of the Talos calls and the Talos and Kubernetes waits, which all
   * heartbeat while they run: how soon a call in flight on a worker (or server) that died is
   * retried. Left out: the profiles' (30 s for waits, 10 s for the etcd bootstrap; none for the
   * other Talos calls, which a dead worker then holds until their 60 s start-to-close timeout).
   * At least 5: heartbeats reach the server every 0.8 × this, or every 5 s.
   */
  heartbeatSeconds: z.int().min(5).max(600).optional(),
});
export type TalosBootstrapInput = z.input<typeof talosBootstrapInputSchema>;

export function talosBootstrapWorkflowId(cluster: string): string {
  return `talos-bootstrap/${cluster}`;
}

// ------------------------------------------------------------------ plan

export type TalosRole = 'controlplane' | 'worker';

export interface VmPlacement {
  host: string;
  node: string;
  vmid: number;
  mac: string;
  cores: number;
  memoryMiB: number;
  diskGiB: number;
  storage: string;
  bridge: string;
  vlan?: number;
}

/** One node as the workflows work with it. */
export interface NodePlan {
  name: string;
  role: TalosRole;
  /** The node's address in the inventory (the Talos API and kubelet address). */
  ip: string;
  /** Prefix length of the node's network (from a VLAN's CIDR that holds the IP; 24 otherwise). */
  prefix: number;
  gateway: string;
  kind: 'vm' | 'metal';
  arch: 'amd64' | 'arm64';
  /** What boots a metal node (e.g. metal-arm64.raw.xz); VMs boot the cluster's template. */
  image?: string;
  installDisk: string;
  labels: Record<string, string>;
  taints: Array<{ key: string; value?: string; effect: string }>;
  vm?: VmPlacement;
  gpu?: Gpu;
}

export interface ClusterPlan {
  name: string;
  talosVersion: string;
  kubernetesVersion: string;
  endpoint: string;
  /** The VIP the control planes share at the endpoint (Talos moves it between them). */
  vip?: string;
  /** The inventory's template (name, host, node) VMs are cloned from. */
  template: { name: string; host: string; node: string };
  /** What to do when a VM's node lacks the template and it is on local storage (the inventory's). */
  templatePlacement: 'same-node' | 'full-clone-then-migrate';
  controlPlane: NodePlan[];
  workers: NodePlan[];
  /** Extra patches (YAML) from the inventory, applied to every node. */
  patches: string[];
}

/**
 * Validates a raw inventory in full; a failure names every offending field. `labRules`: also the
 * rules of the lab (hardware/lab-rules.ts); workflows pass `wf.patched(LAB_RULES_PATCH)`, so that
 * runs recorded before those rules replay as they ran.
 */
export function parseInventory(raw: unknown, labRules: boolean): Inventory {
  return parseInput(labRules ? labInventorySchema : inventorySchema, raw, 'inventory');
}

/** The patch that turned on the lab's rules (hardware/lab-rules.ts) for an inventory a workflow reads. */
export const LAB_RULES_PATCH = 'inventory-lab-rules';

function planNode(node: ClusterNode, role: TalosRole, inv: Inventory): NodePlan {
  const net = networkOf(node.ip, inv.proxmox.vlans);
  const gpu = node.gpu === undefined ? undefined : inv.gpus.find((g) => g.name === node.gpu);
  const common = {
    name: node.name,
    role,
    ip: node.ip,
    prefix: net.prefix,
    gateway: net.gateway,
    installDisk: node.installDisk,
    labels: node.labels,
    taints: node.taints,
    ...(gpu ? { gpu } : {}),
  };
  if (node.kind === 'metal') {
    return { ...common, kind: 'metal', arch: node.arch, ...(node.image ? { image: node.image } : {}) };
  }
  return {
    ...common,
    kind: 'vm',
    arch: 'amd64',
    vm: {
      host: node.host,
      node: node.node,
      vmid: node.vmid,
      mac: node.mac.toLowerCase(),
      cores: node.cores,
      memoryMiB: node.memoryMiB,
      diskGiB: node.diskGiB,
      storage: node.storage,
      bridge: node.bridge,
      ...(node.vlan !== undefined ? { vlan: node.vlan } : {}),
    },
  };
}

/** The plan of one cluster of a validated inventory; an unknown cluster is a ValidationError. */
export function planCluster(inv: Inventory, clusterName: string): ClusterPlan {
  const cluster: Cluster | undefined = inv.clusters[clusterName];
  if (!cluster) {
    const known = Object.keys(inv.clusters).join(', ') || 'none';
    throw nonRetryable(
      'validation',
      `invalid input: cluster: no cluster ${clusterName} in the inventory (known: ${known})`,
    );
  }
  const template = inv.templates.find((t) => t.name === cluster.template)!;
  return {
    name: clusterName,
    talosVersion: cluster.talosVersion,
    kubernetesVersion: cluster.kubernetesVersion.replace(/^v/, ''),
    endpoint: cluster.endpoint,
    ...(cluster.apiEndpoint?.kind === 'vip' ? { vip: cluster.apiEndpoint.ip } : {}),
    template: { name: template.name, host: template.host, node: template.node },
    templatePlacement: cluster.templatePlacement,
    controlPlane: cluster.controlPlane.map((n) => planNode(n, 'controlplane', inv)),
    workers: cluster.workers.map((n) => planNode(n, 'worker', inv)),
    patches: cluster.patches,
  };
}

// ------------------------------------------------------------------ VM config

/** Tags every VM labwright made for a Talos cluster carries (PVE tags). */
export function vmTags(cluster: string, role: TalosRole): string[] {
  return ['labwright', 'talos', `cluster-${cluster}`, role];
}

/** What is passed through: the whole device (all functions) unless the inventory names one. */
export function passthroughAddress(gpu: Gpu): string {
  const slot = pciSlot(gpu.pciAddress);
  return gpu.onlyFunction === undefined ? slot : `${slot}.${gpu.onlyFunction}`;
}

/**
 * The `hostpci0` value for a GPU: by resource mapping (gpu-node-join refuses a GPU without one
 * before any change: PVE takes a raw address from root@pam only), by its address otherwise.
 */
export function hostpciValue(gpu: Gpu): string {
  return gpu.mappingId ? `mapping=${gpu.mappingId},pcie=1` : `${passthroughAddress(gpu)},pcie=1`;
}

/** The PVE config keys a node's VM must have (compared before writing, so a re-run writes nothing). */
export function vmConfigFor(
  plan: NodePlan,
  cluster: string,
): {
  name: string;
  tags: string[];
  cores: number;
  memoryMiB: number;
  net: Record<number, string>;
  machine?: string;
  bios?: 'ovmf';
  hostpci?: Record<number, string>;
  onboot: boolean;
  agent: string;
} {
  const vm = plan.vm!;
  const net = `virtio=${vm.mac.toUpperCase()},bridge=${vm.bridge}${vm.vlan !== undefined ? `,tag=${vm.vlan}` : ''}`;
  return {
    name: plan.name,
    tags: vmTags(cluster, plan.role),
    cores: vm.cores,
    memoryMiB: vm.memoryMiB,
    net: { 0: net },
    onboot: true,
    agent: '1',
    ...(plan.gpu ? { machine: 'q35', bios: 'ovmf' as const, hostpci: { 0: hostpciValue(plan.gpu) } } : {}),
  };
}

// ------------------------------------------------------------------ machine config patches

/** The NVIDIA kernel modules Talos's nonfree-kmod-nvidia extension ships. */
export const NVIDIA_KERNEL_MODULES = ['nvidia', 'nvidia_uvm', 'nvidia_drm', 'nvidia_modeset'];

/** containerd drop-in that makes the nvidia runtime (nvidia-container-toolkit extension) the default. */
export const NVIDIA_RUNTIME_PART = `[plugins]
  [plugins."io.containerd.cri.v1.runtime"]
    [plugins."io.containerd.cri.v1.runtime".containerd]
      default_runtime_name = "nvidia"
`;

export function installerImage(plan: NodePlan, talosVersion: string, nvidiaSchematic?: string): string {
  if (plan.gpu?.vendor === 'nvidia' && nvidiaSchematic) {
    return `factory.talos.dev/installer/${nvidiaSchematic}:${talosVersion}`;
  }
  return `ghcr.io/siderolabs/installer:${talosVersion}`;
}

/** What `talosGenNodeConfig` is asked for one node: the cluster's versions, the node's patches first. */
export function nodeConfigRequest(plan: ClusterPlan, node: NodePlan, nvidiaSchematic?: string) {
  return {
    cluster: plan.name,
    endpoint: plan.endpoint,
    kubernetesVersion: plan.kubernetesVersion,
    talosVersion: plan.talosVersion,
    node: { name: node.name, role: node.role },
    patches: [...nodePatches(node, plan.talosVersion, nvidiaSchematic, plan.vip), ...plan.patches],
  };
}

/** The template a VM on PVE node `node` clones from: the one on its own node, else any of that name. */
export function templateFor<T extends { name: string; node: string }>(
  templates: T[],
  name: string,
  node: string,
): T | undefined {
  return templates.find((t) => t.name === name && t.node === node) ?? templates.find((t) => t.name === name);
}

/**
 * The strategic-merge patches (JSON, which Talos reads as YAML) that make the generic role config
 * this node's: hostname, install disk and image, static address (and on control planes the
 * cluster's VIP), node labels and taints, and for
 * NVIDIA GPU workers the kernel modules, the BPF sysctl and the nvidia default runtime.
 */
export function nodePatches(plan: NodePlan, talosVersion: string, nvidiaSchematic?: string, vip?: string): string[] {
  const iface =
    plan.kind === 'vm' ? { deviceSelector: { hardwareAddr: plan.vm!.mac } } : { deviceSelector: { physical: true } };
  const machine: Record<string, unknown> = {
    install: { disk: plan.installDisk, image: installerImage(plan, talosVersion, nvidiaSchematic) },
    network: {
      hostname: plan.name,
      interfaces: [
        {
          ...iface,
          dhcp: false,
          addresses: [`${plan.ip}/${plan.prefix}`],
          routes: [{ network: '0.0.0.0/0', gateway: plan.gateway }],
          // The cluster's VIP rides on every control plane's interface (one holds it at a time).
          ...(vip !== undefined && plan.role === 'controlplane' ? { vip: { ip: vip } } : {}),
        },
      ],
    },
  };
  if (Object.keys(plan.labels).length > 0) machine.nodeLabels = plan.labels;
  if (plan.taints.length > 0) {
    machine.nodeTaints = Object.fromEntries(
      plan.taints.map((t) => [t.key, t.value === undefined ? t.effect : `${t.value}:${t.effect}`]),
    );
  }
  const patches = [JSON.stringify({ machine })];
  if (plan.gpu?.vendor === 'nvidia') {
    patches.push(
      JSON.stringify({
        machine: {
          kernel: { modules: NVIDIA_KERNEL_MODULES.map((name) => ({ name })) },
          sysctls: { 'net.core.bpf_jit_harden': '1' },
          files: [{ op: 'create', path: '/etc/cri/conf.d/20-customization.part', content: NVIDIA_RUNTIME_PART }],
        },
      }),
    );
  }
  return patches;
}

// ------------------------------------------------------------------ secret store names

/** Where a cluster's Talos material lives in the secret store; only these names travel. */
export const talosStore = {
  secrets: (cluster: string) => `talos/${cluster}/secrets.yaml`,
  talosconfig: (cluster: string) => `talos/${cluster}/talosconfig`,
  nodeConfig: (cluster: string, node: string) => `talos/${cluster}/nodes/${node}.yaml`,
  kubeconfig: (cluster: string) => `talos/${cluster}/kubeconfig`,
};

// ------------------------------------------------------------------ results

export interface TalosBootstrapResult {
  cluster: string;
  /** The Kubernetes API endpoint of the cluster. */
  endpoint: string;
  kubeconfig: { store: string };
  talosconfig: { store: string };
  /** Which control plane etcd was bootstrapped on, and whether this run did it. */
  etcd: { node: string; bootstrappedByThisRun: boolean };
  /** Everything this run changed; empty when the cluster was already as the inventory says. */
  changes: string[];
  /** Things an operator should know (metal images, GPU workers left to gpu-node-join). */
  notes: string[];
  summary: string;
}
