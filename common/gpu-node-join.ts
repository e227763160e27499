/**
 * The GPU node join's contract: input schema, workflow ID, the PCI checks (pure, so the workflow
 * decides from what the host reports), and the smoke Job.
 */
import { z } from 'zod';
import { nameSchema, type Gpu } from '../hardware/schema.js';
import { schematicSchema } from './talos.js';

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
}

export interface VmPci {
  vmid: number;
  name: string;
  node: string;
  /** hostpciN values of the VM's config. */
  hostpci: string[];
}

/** `0000:01:00.0` and `01:00.0` name the same function; `01:00` names all functions of a device. */
export function normalizePci(address: string): string {
  const a = address.toLowerCase();
  return a.length <= 7 ? `0000:${a}` : a;
}

/** Does a `hostpciN` value (`0000:01:00,pcie=1`, `mapping=a5000,pcie=1`) take this GPU? */
export function hostpciTakes(value: string, gpu: Gpu): boolean {
  const first = value.split(',')[0] ?? '';
  if (first.startsWith('mapping='))
    return gpu.mappingId !== undefined && first.slice('mapping='.length) === gpu.mappingId;
  const want = normalizePci(gpu.pciAddress);
  return first
    .split(';')
    .map(normalizePci)
    .some(
      (have) =>
        have === want ||
        want.startsWith(`${have}.`) ||
        have.startsWith(`${want}.`) ||
        have === want.replace(/\.\d$/, ''),
    );
}

/**
 * The checks before anything is touched: the device exists on the host, its IOMMU group holds
 * nothing but its own functions (or a resource mapping covers it), and no other VM takes it.
 * Returns the problems, each naming the inventory field it is about.
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
  const want = normalizePci(gpu.pciAddress);
  const slot = want.replace(/\.\d$/, '');
  const device = args.devices.find((d) => normalizePci(d.id) === want || normalizePci(d.id) === `${slot}.0`);
  if (!device) {
    problems.push(`${at}.pciAddress: GPU ${gpu.name}: no PCI device ${gpu.pciAddress} on ${gpu.host}/${gpu.node}`);
    return problems;
  }
  if (device.iommuGroup !== gpu.iommuGroup) {
    problems.push(
      `${at}.iommuGroup: GPU ${gpu.name}: ${gpu.pciAddress} is in IOMMU group ${device.iommuGroup} on ${gpu.node}, the inventory says ${gpu.iommuGroup}`,
    );
  }
  const mapping = gpu.mappingId ? args.mappings.find((m) => m.id === gpu.mappingId) : undefined;
  if (gpu.mappingId && !mapping) {
    problems.push(`${at}.mappingId: GPU ${gpu.name}: no PCI resource mapping ${gpu.mappingId} on ${gpu.host}`);
  }
  const covered =
    mapping?.map.some((entry) => {
      const fields = Object.fromEntries(entry.split(',').map((kv) => kv.split('=') as [string, string]));
      return fields.node === gpu.node && fields.path !== undefined && normalizePci(fields.path).startsWith(slot);
    }) ?? false;
  if (gpu.mappingId && mapping && !covered) {
    problems.push(
      `${at}.mappingId: GPU ${gpu.name}: mapping ${gpu.mappingId} has no entry for ${gpu.node} ${gpu.pciAddress}`,
    );
  }
  const others = args.devices.filter(
    (d) => d.iommuGroup === device.iommuGroup && !normalizePci(d.id).startsWith(`${slot}.`),
  );
  if (others.length > 0 && !covered) {
    problems.push(
      `${at}.iommuGroup: GPU ${gpu.name}: IOMMU group ${device.iommuGroup} also holds ${others.map((d) => d.id).join(', ')} and no resource mapping covers it`,
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

/** The smoke Job: one pod on the node that asks for one GPU and runs nvidia-smi. */
export function smokeJob(
  node: string,
  namespace: string,
  image: string,
  taints: Array<{ key: string; value?: string; effect: string }>,
) {
  return {
    apiVersion: 'batch/v1',
    kind: 'Job',
    metadata: {
      name: `gpu-smoke-${node}`.slice(0, 63),
      namespace,
      labels: { 'app.kubernetes.io/managed-by': 'labwright' },
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
