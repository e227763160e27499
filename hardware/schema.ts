/**
 * The lab inventory: Proxmox hosts, VM templates, Talos clusters, GPUs and EC2 burst pools.
 * Pure zod, so workflows validate their own slice of it at their boundary. Secrets appear only
 * as references (see common/secret-ref.ts).
 */
import { z } from 'zod';
import { secretRefSchema } from '../common/secret-ref.js';
import { formatPath } from '../common/validation.js';

export const nameSchema = z
  .string()
  .regex(/^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/, 'expected a DNS label: lowercase letters, digits and -');
export const vmidSchema = z.int('expected a whole number').min(100, 'a VMID is at least 100').max(999_999_999);
export const ipv4Schema = z.ipv4('expected an IPv4 address');
export const macSchema = z.mac({ message: 'expected a MAC address like bc:24:11:00:00:01' });
/** `0000:01:00.0`; the domain may be left out and the function too (all functions, as PVE takes it). */
export const pciAddressSchema = z
  .string()
  .regex(/^([0-9a-f]{4}:)?[0-9a-f]{2}:[0-9a-f]{2}(\.[0-7])?$/i, 'expected a PCI address like 0000:01:00.0');

export const vmidRangeSchema = z
  .strictObject({ from: vmidSchema, to: vmidSchema })
  .refine((r) => r.from <= r.to, { message: 'from must not be greater than to' });
export type VmidRange = z.infer<typeof vmidRangeSchema>;

export const storageSchema = z.strictObject({
  name: z.string().min(1),
  content: z.array(z.enum(['images', 'rootdir', 'iso', 'vztmpl', 'backup', 'snippets', 'import'])).min(1),
});

export const bridgeSchema = z.strictObject({
  name: z.string().regex(/^vmbr\d+$/, 'expected a Linux bridge name like vmbr0'),
  vlanAware: z.boolean().default(false),
});

export const vlanSchema = z.strictObject({
  id: z.int().min(1).max(4094),
  name: nameSchema,
  bridge: z.string(),
  cidr: z.cidrv4('expected a CIDR like 192.168.80.0/24'),
});

export const proxmoxHostSchema = z.strictObject({
  name: nameSchema,
  /** Base URL of the API, e.g. https://pve1.lab:8006 */
  apiUrl: z.url({ protocol: /^https?$/, message: 'expected an http(s) URL' }),
  /** PVE node names this endpoint serves (a cluster answers for all of its nodes). */
  nodes: z.array(nameSchema).min(1),
  /** `user@realm!tokenid=secret`, by reference. */
  token: secretRefSchema,
  /** PEM CA bundle to verify the API's certificate; the system store otherwise. */
  caFile: z.string().startsWith('/').optional(),
  storages: z.array(storageSchema).min(1),
  bridges: z.array(bridgeSchema).min(1),
});
export type ProxmoxHost = z.infer<typeof proxmoxHostSchema>;

export const vmidRangesSchema = z.strictObject({
  templates: vmidRangeSchema,
  nodes: vmidRangeSchema,
  drills: vmidRangeSchema,
});

export const templateSchema = z.strictObject({
  name: nameSchema,
  host: nameSchema,
  node: nameSchema,
  storage: z.string(),
  /** Packer template for the image, relative to the project or absolute. */
  packerTemplate: z.string().optional(),
  keep: z.int().min(1).default(2),
});

export const taintSchema = z.strictObject({
  key: z.string().min(1),
  value: z.string().optional(),
  effect: z.enum(['NoSchedule', 'PreferNoSchedule', 'NoExecute']),
});

const nodeCommon = {
  name: nameSchema,
  ip: ipv4Schema,
  labels: z.record(z.string(), z.string()).default({}),
  taints: z.array(taintSchema).default([]),
  /** A GPU from `gpus`, passed through to this node. */
  gpu: nameSchema.optional(),
  installDisk: z.string().startsWith('/dev/').default('/dev/sda'),
};

export const vmNodeSchema = z.strictObject({
  ...nodeCommon,
  kind: z.literal('vm'),
  host: nameSchema,
  node: nameSchema,
  vmid: vmidSchema,
  mac: macSchema,
  cores: z.int().min(1).max(512),
  memoryMiB: z.int().min(512),
  diskGiB: z.int().min(4),
  storage: z.string(),
  bridge: z.string(),
  vlan: z.int().min(1).max(4094).optional(),
});

export const metalNodeSchema = z.strictObject({
  ...nodeCommon,
  kind: z.literal('metal'),
  arch: z.enum(['amd64', 'arm64']),
  /** What boots it, e.g. the Talos metal-arm64 image for a Raspberry Pi. */
  image: z.string().optional(),
});

export const clusterNodeSchema = z.discriminatedUnion('kind', [vmNodeSchema, metalNodeSchema]);
export type ClusterNode = z.infer<typeof clusterNodeSchema>;
export type VmNode = z.infer<typeof vmNodeSchema>;

/**
 * What answers at a cluster's Kubernetes API endpoint when it is not a single control plane's own
 * address: a Talos VIP that the control planes share (Talos puts it on each one's interface, the
 * one selected by its MAC, and moves it to a healthy control plane), or a load balancer outside
 * the cluster that forwards to every control plane's :6443.
 */
export const apiEndpointSchema = z.discriminatedUnion('kind', [
  z.strictObject({ kind: z.literal('vip'), ip: ipv4Schema }),
  z.strictObject({ kind: z.literal('loadBalancer') }),
]);

/**
 * Git credentials in the shapes Flux's source-controller accepts (its Secret keys in brackets):
 * ssh URLs a deploy key [identity] and the server's host keys [known_hosts] (and optionally
 * [identity.pub]); https URLs a username [username] with a password or token [password], or a
 * bearer token [bearerToken]. The username is not a secret; the rest are references.
 */
export const fluxGitCredentialsSchema = z.union(
  [
    z.strictObject({ identity: secretRefSchema, knownHosts: secretRefSchema, identityPub: secretRefSchema.optional() }),
    // Earlier inventories: a bare reference (the deploy key alone, or a password without a
    // username). Still read, so that recorded runs replay; fluxCredentialsProblem refuses it.
    secretRefSchema,
    z.strictObject({ username: z.string().min(1), password: secretRefSchema }),
    z.strictObject({ bearerToken: secretRefSchema }),
  ],
  {
    error:
      'expected ssh credentials { identity, knownHosts } or https credentials { username, password } or { bearerToken }, each secret a reference',
  },
);
export type FluxGitCredentials = z.infer<typeof fluxGitCredentialsSchema>;

/** Why source-controller would refuse `credentials` for `url`; undefined when it accepts them. */
export function fluxCredentialsProblem(url: string, credentials: FluxGitCredentials): string | undefined {
  const ssh = /^ssh:\/\//.test(url);
  if (!ssh && !/^https?:\/\//.test(url)) return `the URL ${url} is neither ssh:// nor http(s)://`;
  if (!('identity' in credentials || 'username' in credentials || 'bearerToken' in credentials)) {
    return ssh
      ? 'a bare reference is a deploy key without host keys, which source-controller refuses: give { identity, knownHosts }'
      : 'a bare reference is a password without a username, which source-controller refuses: give { username, password } or { bearerToken }';
  }
  if (ssh && !('identity' in credentials)) return 'an ssh:// URL needs { identity, knownHosts } (a deploy key)';
  if (!ssh && 'identity' in credentials)
    return 'an https:// URL needs { username, password } or { bearerToken }, not a deploy key';
  return undefined;
}

export const clusterSchema = z.strictObject({
  talosVersion: z.string().regex(/^v\d+\.\d+\.\d+$/, 'expected a Talos version like v1.11.5'),
  kubernetesVersion: z.string().regex(/^v?\d+\.\d+\.\d+$/, 'expected a Kubernetes version like 1.34.1'),
  /**
   * The Kubernetes API endpoint: https://192.168.1.100:6443. Its host is `apiEndpoint`'s VIP, a
   * load balancer's address, or (one control plane only) that control plane's address.
   */
  endpoint: z.url({ protocol: /^https$/, message: 'expected an https URL' }),
  /** What answers at `endpoint`: a VIP of the control planes, or an external load balancer. */
  apiEndpoint: apiEndpointSchema.optional(),
  /** Template (from `templates`) the VMs are cloned from. */
  template: nameSchema,
  /**
   * Where a VM whose PVE node lacks the template comes from, when the template's disks are on
   * local storage (PVE clones to another node only onto shared storage): `same-node` refuses,
   * asking for the template on the VM's node; `full-clone-then-migrate` makes a full clone on the
   * template's node and migrates it, stopped, to the VM's node and storage.
   */
  templatePlacement: z.enum(['same-node', 'full-clone-then-migrate']).default('same-node'),
  controlPlane: z.array(clusterNodeSchema).min(1),
  /**
   * Fewer than three control planes: etcd loses quorum when one goes down. Refused unless this
   * says the operator accepts it (a test or a single-host lab).
   */
  allowNoQuorumTolerance: z.boolean().optional(),
  workers: z.array(clusterNodeSchema).default([]),
  /** Extra Talos machine-config patches (YAML), applied to every node. */
  patches: z.array(z.string()).default([]),
  flux: z
    .strictObject({
      url: z.string().min(1),
      branch: z.string().default('main'),
      path: z.string().default('./clusters/home'),
      gitCredentials: fluxGitCredentialsSchema.optional(),
      sopsAgeKey: secretRefSchema.optional(),
    })
    .optional(),
});
export type Cluster = z.infer<typeof clusterSchema>;

export const gpuSchema = z.strictObject({
  name: nameSchema,
  host: nameSchema,
  node: nameSchema,
  pciAddress: pciAddressSchema,
  iommuGroup: z.int().min(0),
  vendor: z.enum(['nvidia', 'amd', 'intel']),
  model: z.string().min(1),
  /**
   * PVE resource mapping id (Datacenter > Resource Mappings) that covers this device. Required to
   * pass it through: PVE lets only root@pam itself set a raw hostpci, and labwright uses an API token.
   */
  mappingId: z.string().optional(),
  /** Pass only this function of the device; all its functions (GPU, audio, ...) when left out. */
  onlyFunction: z.int().min(0).max(7).optional(),
});
export type Gpu = z.infer<typeof gpuSchema>;

export const burstPoolSchema = z
  .strictObject({
    name: nameSchema,
    region: z.string().regex(/^[a-z]{2}(-[a-z]+)+-\d$/, 'expected an AWS region like us-east-1'),
    instanceTypes: z
      .array(z.string().regex(/^[a-z0-9]+\.[a-z0-9]+$/, 'expected an instance type like g5.xlarge'))
      .min(1),
    market: z.enum(['spot', 'on-demand', 'spot-then-on-demand']).default('spot-then-on-demand'),
    launchTemplate: z
      .strictObject({
        name: z
          .string()
          .regex(
            /^[a-zA-Z0-9()./_-]{3,128}$/,
            'expected a launch template name: 3-128 of letters, digits, ( ) . / _ -',
          ),
        version: z
          .string()
          .regex(/^(\$Latest|\$Default|[1-9]\d*)$/, 'expected $Latest, $Default or a version number')
          .default('$Latest'),
      })
      .optional(),
    ami: z
      .string()
      .regex(/^ami-[0-9a-f]+$/, 'expected an AMI id like ami-0abc1234')
      .optional(),
    subnetId: z
      .string()
      .regex(/^subnet-[0-9a-f]{8}([0-9a-f]{9})?$/, 'expected a subnet id like subnet-0abc1234')
      .optional(),
    securityGroupIds: z
      .array(z.string().regex(/^sg-[0-9a-f]{8}([0-9a-f]{9})?$/, 'expected a security group id like sg-0abc1234'))
      .default([]),
    /** Port and path of the model server's health check (Ollama answers /api/tags). */
    modelPort: z.int().min(1).max(65535).default(11434),
    healthPath: z.string().startsWith('/').default('/api/tags'),
    idleTimeoutMinutes: z.number().positive().default(15),
    maxRunningHours: z.number().positive().optional(),
    dailyBudgetUsd: z.number().positive().optional(),
    /** USD per hour for any instance type and market that `prices` does not name. */
    hourlyPriceUsd: z.number().nonnegative().optional(),
    /** USD per hour per instance type and market (the budget counts what actually runs). */
    prices: z
      .record(
        z.string().regex(/^[a-z0-9]+\.[a-z0-9]+$/, 'expected an instance type like g5.xlarge'),
        z.strictObject({ spot: z.number().nonnegative().optional(), 'on-demand': z.number().nonnegative().optional() }),
      )
      .optional(),
    /** AWS credentials; the default provider chain (env, profile, instance role) when left out. */
    credentials: z.strictObject({ accessKeyId: secretRefSchema, secretAccessKey: secretRefSchema }).optional(),
  })
  .refine((p) => p.launchTemplate !== undefined || p.ami !== undefined, {
    message: 'a burst pool needs a launchTemplate or an ami',
    path: ['ami'],
  })
  .superRefine((p, ctx) => {
    // Every launch the pool may make must have a price, or the daily budget would under-count it.
    if (p.hourlyPriceUsd !== undefined) return;
    const markets = p.market === 'spot-then-on-demand' ? (['spot', 'on-demand'] as const) : [p.market];
    for (const type of p.instanceTypes) {
      for (const market of markets) {
        if (p.prices?.[type]?.[market] === undefined) {
          ctx.addIssue({
            code: 'custom',
            path: ['prices', type, market],
            message: `no price for ${type} ${market}: set ${formatPath('prices', [type, market])} or hourlyPriceUsd`,
          });
        }
      }
    }
  });
export type BurstPool = z.infer<typeof burstPoolSchema>;

const inventoryObject = z.strictObject({
  proxmox: z.strictObject({
    hosts: z.array(proxmoxHostSchema).min(1),
    vlans: z.array(vlanSchema).default([]),
    vmidRanges: vmidRangesSchema,
  }),
  templates: z.array(templateSchema).default([]),
  clusters: z.record(nameSchema, clusterSchema).default({}),
  gpus: z.array(gpuSchema).default([]),
  burstPools: z.array(burstPoolSchema).default([]),
});
export const inventorySchema = inventoryObject.superRefine(checkReferences);
export type Inventory = z.infer<typeof inventorySchema>;

/** Cross-references zod cannot express per field: names that must exist, values that must be unique. */
function checkReferences(inv: z.output<typeof inventoryObject>, ctx: z.RefinementCtx): void {
  const hosts = new Map(inv.proxmox.hosts.map((h) => [h.name, h]));
  const gpus = new Set(inv.gpus.map((g) => g.name));
  const templates = new Set(inv.templates.map((t) => t.name));
  const ranges = inv.proxmox.vmidRanges;
  const seen = {
    vmid: new Map<string, string>(),
    mac: new Map<string, string>(),
    ip: new Map<string, string>(),
    pci: new Map<string, string>(),
  };

  const unique = (kind: keyof typeof seen, value: number | string, path: PropertyKey[]): void => {
    const key = String(value).toLowerCase();
    const first = seen[kind].get(key);
    if (first !== undefined)
      ctx.addIssue({ code: 'custom', path, message: `duplicate ${kind} ${value}, also at ${first}` });
    else seen[kind].set(key, formatPath('', path));
  };
  const hostNode = (host: string, node: string, path: PropertyKey[]): void => {
    const h = hosts.get(host);
    if (!h) ctx.addIssue({ code: 'custom', path: [...path, 'host'], message: `unknown Proxmox host ${host}` });
    else if (!h.nodes.includes(node)) {
      ctx.addIssue({ code: 'custom', path: [...path, 'node'], message: `host ${host} has no node ${node}` });
    }
  };

  inv.templates.forEach((t, i) => hostNode(t.host, t.node, ['templates', i]));
  inv.gpus.forEach((g, i) => {
    hostNode(g.host, g.node, ['gpus', i]);
    unique('pci', `${g.node}/${g.pciAddress}`, ['gpus', i, 'pciAddress']);
  });
  for (const [clusterName, cluster] of Object.entries(inv.clusters)) {
    const base = ['clusters', clusterName];
    if (!templates.has(cluster.template)) {
      ctx.addIssue({ code: 'custom', path: [...base, 'template'], message: `unknown template ${cluster.template}` });
    }
    checkEndpoint(cluster, base, ctx);
    for (const role of ['controlPlane', 'workers'] as const) {
      cluster[role].forEach((node, i) => {
        const path = [...base, role, i];
        unique('ip', node.ip, [...path, 'ip']);
        if (node.gpu !== undefined && !gpus.has(node.gpu)) {
          ctx.addIssue({ code: 'custom', path: [...path, 'gpu'], message: `unknown GPU ${node.gpu}` });
        }
        if (node.kind !== 'vm') return;
        hostNode(node.host, node.node, path);
        unique('vmid', node.vmid, [...path, 'vmid']);
        unique('mac', node.mac, [...path, 'mac']);
        if (node.vmid < ranges.nodes.from || node.vmid > ranges.nodes.to) {
          ctx.addIssue({
            code: 'custom',
            path: [...path, 'vmid'],
            message: `VMID ${node.vmid} is outside proxmox.vmidRanges.nodes (${ranges.nodes.from}-${ranges.nodes.to})`,
          });
        }
      });
    }
  }
  const poolNames = new Set<string>();
  inv.burstPools.forEach((p, i) => {
    if (poolNames.has(p.name))
      ctx.addIssue({ code: 'custom', path: ['burstPools', i, 'name'], message: `duplicate pool ${p.name}` });
    poolNames.add(p.name);
  });
}

/** The endpoint must be served: by the declared VIP or load balancer, or by the one control plane. */
function checkEndpoint(cluster: Cluster, base: PropertyKey[], ctx: z.RefinementCtx): void {
  const path = [...base, 'endpoint'];
  let host: string;
  try {
    host = new URL(cluster.endpoint).hostname;
  } catch {
    // zod's URL check is looser than the WHATWG parser (found by test/properties.test.ts).
    ctx.addIssue({ code: 'custom', path, message: 'expected an https URL like https://192.168.1.100:6443' });
    return;
  }
  const nodes = [...cluster.controlPlane, ...cluster.workers];
  const via = cluster.apiEndpoint;
  if (via?.kind === 'vip') {
    if (host !== via.ip) {
      ctx.addIssue({
        code: 'custom',
        path,
        message: `the endpoint's host ${host} is not the VIP ${via.ip} of apiEndpoint: use https://${via.ip}:6443`,
      });
    }
    const taken = nodes.find((n) => n.ip === via.ip);
    if (taken) {
      ctx.addIssue({
        code: 'custom',
        path: [...base, 'apiEndpoint', 'ip'],
        message: `VIP ${via.ip} is ${taken.name}'s own address: a VIP is an address no node has`,
      });
    }
    return;
  }
  if (via?.kind === 'loadBalancer') return;
  const only = cluster.controlPlane.length === 1 ? cluster.controlPlane[0] : undefined;
  if (only && only.ip === host) return;
  ctx.addIssue({
    code: 'custom',
    path,
    message:
      `nothing answers at ${host}: declare what serves the endpoint, apiEndpoint: { kind: vip, ip: ${host} } ` +
      `(a Talos VIP on the control planes' interface) or apiEndpoint: { kind: loadBalancer }` +
      (cluster.controlPlane.length === 1
        ? `, or use the control plane's own address ${cluster.controlPlane[0]!.ip}`
        : ''),
  });
}
