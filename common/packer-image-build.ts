/**
 * Input and result of the `packerImageBuild` workflow, shared by the workflow, `labwright start`
 * and the catalog. Pure: workflows import it.
 */
import { z } from 'zod';
import { nameSchema, vmidRangeSchema } from '../hardware/schema.js';
import { secretRefSchema } from './secret-ref.js';

/**
 * Variables labwright gives every template (as PKR_VAR_* environment variables); a template
 * declares those it uses. Inputs may not set them.
 */
export const LABWRIGHT_PACKER_VARIABLES = [
  'vm_id',
  'template_name',
  'proxmox_url',
  'proxmox_username',
  'proxmox_token',
  'proxmox_node',
  'storage_pool',
  'build_password',
] as const;

const variableName = z.string().regex(/^[A-Za-z_][A-Za-z0-9_-]*$/, 'expected a Packer variable name');

export const packerImageBuildInput = z
  .strictObject({
    /** The image, e.g. `debian-12`: names the workflow, the template VM and its tags. */
    image: nameSchema.max(50, 'an image name has at most 50 characters (the template VM name adds a hash)'),
    /** Packer HCL template, relative to the project root or absolute. */
    template: z
      .string()
      .regex(/\.pkr\.hcl$/, 'expected a Packer HCL2 template file (*.pkr.hcl)')
      .refine((p) => !p.split('/').includes('..'), 'must not contain .. segments'),
    /** Template variables (-var-file); part of the build's hash. */
    variables: z.record(variableName, z.union([z.string(), z.number(), z.boolean()])).default({}),
    /** Secret template variables, by reference; given to Packer as PKR_VAR_* environment variables. */
    secretVariables: z.record(variableName, secretRefSchema).default({}),
    /** Inventory Proxmox host, PVE node and storage the template is built on. */
    host: nameSchema,
    node: nameSchema,
    storage: z.string().regex(/^[a-z][a-z0-9_.-]*$/i, 'expected a PVE storage id like local-lvm'),
    /** VMIDs the template (and the canary) may take, usually the inventory's vmidRanges.templates. */
    vmidRange: vmidRangeSchema,
    /**
     * Seconds without a heartbeat after which a Packer build whose worker died is given to
     * another worker (default: the longProgram profile's minute).
     */
    heartbeatSeconds: z.int().min(5).max(600).optional(),
    /** How many templates of this image to keep, the new one included. */
    keep: z.int().min(1).max(50).default(2),
    /** Boot a linked clone of the new template and wait for its guest agent before promoting it. */
    canary: z
      .strictObject({
        agentTimeoutSeconds: z.int().min(1).max(3600).default(300),
        /** Seconds the canary gets to power off through ACPI before it is stopped hard. */
        shutdownTimeoutSeconds: z.int().min(1).max(600).default(60),
      })
      .optional(),
  })
  .superRefine((input, ctx) => {
    for (const field of ['variables', 'secretVariables'] as const) {
      for (const name of Object.keys(input[field])) {
        if ((LABWRIGHT_PACKER_VARIABLES as readonly string[]).includes(name)) {
          ctx.addIssue({ code: 'custom', path: [field, name], message: `${name} is set by labwright` });
        }
      }
    }
    for (const name of Object.keys(input.secretVariables)) {
      if (name in input.variables) {
        ctx.addIssue({ code: 'custom', path: ['secretVariables', name], message: 'also set in variables' });
      }
    }
  });

export type PackerImageBuildInput = z.input<typeof packerImageBuildInput>;
export type PackerImageBuildParams = z.output<typeof packerImageBuildInput>;

export interface PackerImageBuildResult {
  image: string;
  /** sha256 of the template file and its variables (hex). */
  hash: string;
  templateVmid: number;
  templateName: string;
  /** False when a template with this hash existed and nothing was built. */
  built: boolean;
  /** `removed: false` with PVE's reason when the canary VM could not be deleted: remove it by hand. */
  canary?: { vmid: number; ipv4: string[]; removed: boolean; removalError?: string };
  retention: { kept: number[]; deleted: number[]; inUse: number[] };
}

export function packerImageBuildWorkflowId(image: string): string {
  return `packer-image-build/${image}`;
}

/** The part of the hash that names and tags a build. */
export function shortHash(hash: string): string {
  return hash.slice(0, 12);
}

/** The template VM's name: deterministic per image and inputs, so a rerun finds its own VM. */
export function templateVmName(image: string, hash: string): string {
  return `${image}-${shortHash(hash)}`;
}

export const LABWRIGHT_TAG = 'labwright';
export const imageTag = (image: string): string => `image-${image}`;
export const hashTag = (hash: string): string => `sha-${shortHash(hash)}`;
/** `built-20250101t120000`: orders templates by build time without reading their configs. */
export function builtTag(at: Date): string {
  return `built-${at
    .toISOString()
    .replace(/[-:]/g, '')
    .replace(/\.\d+Z$/, '')
    .toLowerCase()}`;
}
export function builtAtOf(tags: string[]): string | undefined {
  return tags.find((t) => t.startsWith('built-'))?.slice('built-'.length);
}
