/**
 * The workflows people start by name: input schema, deterministic workflow ID and resource name.
 * `labwright start <name>` validates against the schema before it starts anything.
 */
import type { z } from 'zod';
import { llmBurstInputSchema, llmBurstWorkflowId } from '../common/llm-burst.js';
import { gpuNodeJoinInputSchema, gpuNodeJoinWorkflowId } from '../common/gpu-node-join.js';
import { talosBootstrapInputSchema, talosBootstrapWorkflowId } from '../common/talos.js';
import { packerImageBuildInput, packerImageBuildWorkflowId } from '../common/packer-image-build.js';
import { fluxBootstrapInputSchema, fluxBootstrapWorkflowId } from '../common/flux-bootstrap.js';
import { drRestoreInputSchema, drRestoreWorkflowId } from '../common/dr-restore.js';

export interface CatalogEntry<S extends z.ZodType = z.ZodType> {
  description: string;
  input: S;
  /** One workflow ID per resource, e.g. `talos-bootstrap/home`. */
  workflowId(input: z.output<S>): string;
}

function entry<S extends z.ZodType>(e: CatalogEntry<S>): CatalogEntry {
  return e as unknown as CatalogEntry;
}

export const CATALOG: Record<string, CatalogEntry> = {
  talosBootstrap: entry({
    description:
      'Talos cluster on Proxmox from the inventory: VMs, configs, etcd bootstrapped once, kubeconfig (one per cluster)',
    input: talosBootstrapInputSchema,
    workflowId: (input) => talosBootstrapWorkflowId(input.cluster),
  }),
  gpuNodeJoin: entry({
    description:
      'GPU worker VM with PCI passthrough joined to its Talos cluster, smoke-tested, undone on failure (one per node)',
    input: gpuNodeJoinInputSchema,
    workflowId: (input) => gpuNodeJoinWorkflowId(input.node),
  }),
  llmBurst: entry({
    description: 'LLM burst pool on EC2: starts on demand, stops when idle (one per pool)',
    input: llmBurstInputSchema,
    workflowId: (input) => llmBurstWorkflowId(input.pool.name),
  }),
  packerImageBuild: entry({
    description:
      'Golden VM template built with Packer on Proxmox: verified, promoted, old ones retired (one per image)',
    input: packerImageBuildInput,
    workflowId: (input) => packerImageBuildWorkflowId(input.image),
  }),
  fluxBootstrap: entry({
    description:
      'Flux from the lab repo: components, secrets from refs, Ready at the revision; re-run upgrades (one per cluster)',
    input: fluxBootstrapInputSchema,
    workflowId: (input) => fluxBootstrapWorkflowId(input.cluster),
  }),
  drRestore: entry({
    description:
      'DR restore of PVCs, VMs, etcd: drill in scratch space, or restore after approval (one per plan and mode)',
    input: drRestoreInputSchema,
    workflowId: (input) => drRestoreWorkflowId(input.plan, input.mode),
  }),
};

export { entry as catalogEntry };
