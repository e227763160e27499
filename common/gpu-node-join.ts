/**
 * The GPU node join's contract: input schema, workflow ID, the PCI checks (pure, so the workflow
 * decides from what the host reports), and the smoke Job.
 */
import { z } from 'zod';
import { nameSchema, type Gpu } from '../hardware/schema.js';
import { normalizePci, passthroughAddress, pciSlot, schematicSchema } from './talos.js';

export const gpuNodeJoinInputSchema = z.strictObject({
  /** The inventory's cluster the node joins. */
  cluster: nameSchema,
  /** The GPU worker (a VM worker with `gpu` in the inventory). */
  node: nameSchema,
  /** The lab inventory; the worker's own when left out. Validated in full either way. */
  inventory: z.record(z.string(), z.unknown()).optional(),
  /** Image Factory schematic with the NVIDIA extensions (see talos-bootstrap). */
  nvidiaSchematic: schematicSchema.optional(),
  /** Image of the smoke Job; it runs `nvidia-smi` with one GPU. */
  smokeImage: z.string().min(1).default('nvcr.io/nvidia/cuda:12.4.1-base-ubuntu22.04'),
  /** Namespace of the smoke Job. */
  smokeNamespace: nameSchema.default('default'),
  /** How long each wait (Talos API, Node Ready, GPU allocatable, smoke Job) may take (seconds). */
  waitSeconds: z.int().min(10).max(7200).default(1200),
});
export type GpuNodeJoinInput = z.input<typeof gpuNodeJoinInputSchema>;

export function gpuNodeJoinWorkflowId(node: string): string {
  return `gpu-node-join/${node}`;
}

/**
 * The `efidisk0` a GPU worker's OVMF VM gets when it has none: a new EFI vars disk on `storage`
 * (`<storage>:1` allocates one; PVE sizes it itself), 4m type, no pre-enrolled Secure Boot keys
 * (Talos's images boot without them).
 */
export function efiDisk(storage: string): string {
  return `${storage}:1,efitype=4m,pre-enrolled-keys=0`;
}

export interface PciDeviceView {
  id: string;
  iommuGroup: number;
  /** PCI class as PVE lists it (`0x030000` display, `0x060400` PCI bridge). */
  class?: string;
  /** `0x10de` */
  vendor?: string;
  device?: string;
}

export interface VmPci {
  vmid: number;
  name: string;
  node: string;
  /** hostpciN values of the VM's config. */
  hostpci: string[];
}

/** Does a `hostpciN` value (`0000:01:00,pcie=1`, `mapping=a5000,pcie=1`) take this GPU? */
export function hostpciTakes(value: string, gpu: Gpu): boolean {
  const first = value.split(',')[0] ?? '';
  if (first.startsWith('mapping='))
    return gpu.mappingId !== undefined && first.slice('mapping='.length) === gpu.mappingId;
  const slot = pciSlot(gpu.pciAddress);
  return first
    .split(';')
    .map(normalizePci)
    .some((have) => have === slot || have.startsWith(`${slot}.`));
}

/** PCI bridges (class 06xx) share a GPU's IOMMU group on many boards; they are never passed through. */
function isBridge(device: PciDeviceView): boolean {
  return /^(0x)?06/i.test(device.class ?? '');
}

const hex4 = (id: string | undefined): string => (id ?? '').toLowerCase().replace(/^0x/, '');

/**
 * The checks before anything is touched: the device exists on the host, a resource mapping on its
 * node covers what is passed (PVE refuses a raw hostpci to an API token), its IOMMU group holds
 * nothing but its own functions and bridges, and no other VM takes it. Returns the problems, each
 * naming the inventory field it is about.
 */
export function gpuProblems(args: {
  gpu: Gpu;
  gpuIndex: number;
  devices: PciDeviceView[];
  mappings: Array<{ id: string; map: string[] }>;
  vms: VmPci[];
  ownVmid: number;
}): string[] {
  const { gpu } = args;
  const at = `gpus[${args.gpuIndex}]`;
  const problems: string[] = [];
  const slot = pciSlot(gpu.pciAddress);
  const passed = passthroughAddress(gpu);
  const device =
    args.devices.find((d) => normalizePci(d.id) === normalizePci(gpu.pciAddress)) ??
    args.devices.find((d) => normalizePci(d.id) === `${slot}.0`);
  if (!device) {
    problems.push(`${at}.pciAddress: GPU ${gpu.name}: no PCI device ${gpu.pciAddress} on ${gpu.host}/${gpu.node}`);
    return problems;
  }
  if (device.iommuGroup !== gpu.iommuGroup) {
    problems.push(
      `${at}.iommuGroup: GPU ${gpu.name}: ${gpu.pciAddress} is in IOMMU group ${device.iommuGroup} on ${gpu.node}, the inventory says ${gpu.iommuGroup}`,
    );
  }
  const mapEntry = `node=${gpu.node},path=${passed},id=${hex4(device.vendor)}:${hex4(device.device)},iommugroup=${device.iommuGroup}`;
  if (!gpu.mappingId) {
    problems.push(
      `${at}.mappingId: GPU ${gpu.name}: PVE passes a raw PCI device (hostpci ${passed}) only for root@pam itself, not for an API token ("only root can set 'hostpci0' config for non-mapped devices"): create a PCI resource mapping (Datacenter > Resource Mappings > PCI devices, or pvesh create /cluster/mapping/pci --id ${gpu.name} --map ${mapEntry}) and set ${at}.mappingId: ${gpu.name}`,
    );
  }
  const mapping = gpu.mappingId ? args.mappings.find((m) => m.id === gpu.mappingId) : undefined;
  if (gpu.mappingId && !mapping) {
    problems.push(
      `${at}.mappingId: GPU ${gpu.name}: no PCI resource mapping ${gpu.mappingId} on ${gpu.host} (create it with --map ${mapEntry})`,
    );
  }
  const entry = mapping?.map
    .map((e) => Object.fromEntries(e.split(',').map((kv) => kv.split('=') as [string, string])))
    .find((fields) => fields.node === gpu.node && fields.path !== undefined);
  const paths = (entry?.path ?? '').split(';').filter(Boolean).map(normalizePci);
  const covered = paths.includes(passed) || (passed !== slot && paths.includes(slot));
  if (mapping && !covered) {
    problems.push(
      entry && paths.some((p) => p.startsWith(slot))
        ? `${at}.mappingId: GPU ${gpu.name}: mapping ${gpu.mappingId} passes ${paths.join(';')} on ${gpu.node}, not all functions of ${slot}: set its path to ${slot}, or ${at}.onlyFunction`
        : `${at}.mappingId: GPU ${gpu.name}: mapping ${gpu.mappingId} has no entry for ${gpu.node} ${passed}`,
    );
  }
  const others = args.devices.filter(
    (d) => d.iommuGroup === device.iommuGroup && pciSlot(d.id) !== slot && !isBridge(d),
  );
  if (others.length > 0) {
    problems.push(
      `${at}.iommuGroup: GPU ${gpu.name}: IOMMU group ${device.iommuGroup} also holds ${others.map((d) => d.id).join(', ')}, which would be passed with it`,
    );
  }
  for (const vm of args.vms) {
    if (vm.vmid === args.ownVmid) continue;
    if (vm.hostpci.some((v) => hostpciTakes(v, gpu))) {
      problems.push(
        `${at}: GPU ${gpu.name} (${gpu.pciAddress}) is attached to VM ${vm.vmid} (${vm.name}) on ${vm.node}`,
      );
    }
  }
  return problems;
}

/** The label every smoke Job carries: the node it tests. */
export const SMOKE_NODE_LABEL = 'gpu.labwright.dev/smoke-node';

/**
 * The smoke Job: one pod on the node that asks for one GPU and runs nvidia-smi. Named after the
 * run (`runId`), so that a re-run never waits on an earlier run's Job kept for its TTL.
 */
export function smokeJob(
  node: string,
  namespace: string,
  image: string,
  taints: Array<{ key: string; value?: string; effect: string }>,
  runId?: string,
) {
  // The run ID's last digits: its first ones are a timestamp (UUIDv7), shared by runs a minute apart.
  const suffix =
    runId === undefined
      ? ''
      : `-${runId
          .replace(/[^a-z0-9]/gi, '')
          .toLowerCase()
          .slice(-8)}`;
  return {
    apiVersion: 'batch/v1',
    kind: 'Job',
    metadata: {
      name: `gpu-smoke-${node}`.slice(0, 63 - suffix.length) + suffix,
      namespace,
      labels: { 'app.kubernetes.io/managed-by': 'labwright', [SMOKE_NODE_LABEL]: node },
    },
    spec: {
      backoffLimit: 0,
      ttlSecondsAfterFinished: 3600,
      template: {
        spec: {
          restartPolicy: 'Never',
          nodeSelector: { 'kubernetes.io/hostname': node },
          tolerations: taints.map((t) => ({
            key: t.key,
            operator: t.value === undefined ? 'Exists' : 'Equal',
            ...(t.value !== undefined ? { value: t.value } : {}),
            effect: t.effect,
          })),
          containers: [
            {
              name: 'nvidia-smi',
              image,
              command: ['nvidia-smi'],
              resources: { limits: { 'nvidia.com/gpu': '1' } },
            },
          ],
        },
      },
    },
  };
}

export interface GpuNodeJoinResult {
  cluster: string;
  node: string;
  vmid: number;
  gpu: string;
  changes: string[];
  summary: string;
}
