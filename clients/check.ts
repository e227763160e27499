/**
 * `labwright check`: the inventory's offline checks (hardware/lab-rules.ts), then, with `live`,
 * a preflight against the lab the workflows will touch: each API token works and holds what the
 * workflows need, and what the inventory names (PVE nodes, storages, bridges, GPUs with their
 * IOMMU groups, templates, VMIDs, Talos nodes) is there. Changes nothing anywhere.
 */
import { promises as fs } from 'node:fs';
import { DescribeInstancesCommand, RunInstancesCommand, type _InstanceType } from '@aws-sdk/client-ec2';
import { AuthorizationV1Api, KubeConfig } from '@kubernetes/client-node';
import { parse as parseYaml } from 'yaml';
import { ec2ClientsFor } from '../activities/ec2.js';
import { createProxmoxActivities } from '../activities/proxmox.js';
import { createTalosActivities, talosDepsFromEnv } from '../activities/talos.js';
import { gpuProblems } from '../common/gpu-node-join.js';
import { templateFor, talosStore } from '../common/talos.js';
import { describeIssues } from '../common/validation.js';
import { labInventorySchema } from '../hardware/lab-rules.js';
import type { Inventory, ProxmoxHost } from '../hardware/schema.js';
import type { SecretStore } from '../lib/secrets.js';
import { proxmoxDepsFromInventory } from './proxmox.js';

export type CheckStatus = 'ok' | 'problem' | 'skipped';

export interface CheckItem {
  /** `inventory`, `proxmox`, `ec2`, `kubernetes`, `talos`. */
  area: string;
  /** What was checked: a field path, `pve1 token`, `pve1/pve1 storage local-lvm`, ... */
  subject: string;
  status: CheckStatus;
  detail: string;
}

export interface CheckReport {
  file: string;
  live: boolean;
  items: CheckItem[];
  /** Problems found; the command exits non-zero when there is one. */
  problems: number;
}

/**
 * The privileges an API token needs on each path for what the workflows do: clone, configure,
 * start, stop, migrate, restore and delete VMs, allocate disks on storages, read nodes' hardware,
 * use PCI mappings and attach to bridges (PVE's privilege names, as /access/permissions lists them).
 */
export const PVE_VM_PRIVILEGES = [
  'VM.Allocate',
  'VM.Audit',
  'VM.Backup',
  'VM.Clone',
  'VM.Config.CDROM',
  'VM.Config.CPU',
  'VM.Config.Cloudinit',
  'VM.Config.Disk',
  'VM.Config.HWType',
  'VM.Config.Memory',
  'VM.Config.Network',
  'VM.Config.Options',
  'VM.GuestAgent.Audit',
  'VM.Migrate',
  'VM.PowerMgmt',
];

export function requiredPvePrivileges(inv: Inventory, host: ProxmoxHost): Array<{ path: string; privs: string[] }> {
  const out = [{ path: '/vms', privs: PVE_VM_PRIVILEGES }];
  for (const s of host.storages)
    out.push({ path: `/storage/${s.name}`, privs: ['Datastore.AllocateSpace', 'Datastore.Audit'] });
  for (const node of host.nodes) out.push({ path: `/nodes/${node}`, privs: ['Sys.Audit'] });
  for (const b of host.bridges) out.push({ path: `/sdn/zones/localnetwork/${b.name}`, privs: ['SDN.Use'] });
  for (const g of inv.gpus) {
    if (g.mappingId && host.nodes.includes(g.node))
      out.push({ path: `/mapping/pci/${g.mappingId}`, privs: ['Mapping.Use'] });
  }
  return out;
}

/** What /access/permissions grants lacks from `needed`: a privilege on a path or one above it (ACLs propagate). */
export function missingPrivileges(
  held: Record<string, Record<string, unknown>>,
  needed: Array<{ path: string; privs: string[] }>,
): string[] {
  const missing: string[] = [];
  for (const { path, privs } of needed) {
    const parts = path.split('/').filter(Boolean);
    const above = ['/', ...parts.map((_, i) => `/${parts.slice(0, i + 1).join('/')}`)];
    for (const priv of privs) {
      if (!above.some((p) => Boolean(held[p]?.[priv]))) missing.push(`${priv} on ${path}`);
    }
  }
  return missing;
}

/** The offline checks: the file parses and satisfies every rule of the lab. */
export async function checkInventoryFile(file: string): Promise<{ inventory?: Inventory; items: CheckItem[] }> {
  let data: unknown;
  try {
    data = parseYaml(await fs.readFile(file, 'utf8'), { prettyErrors: true });
  } catch (err) {
    return { items: [{ area: 'inventory', subject: file, status: 'problem', detail: (err as Error).message }] };
  }
  const result = labInventorySchema.safeParse(data);
  if (!result.success) {
    return {
      items: describeIssues(result.error).map((line) => {
        const at = line.indexOf(': ');
        return { area: 'inventory', subject: line.slice(0, at), status: 'problem', detail: line.slice(at + 2) };
      }),
    };
  }
  const inv = result.data;
  const clusters = Object.entries(inv.clusters);
  const nodes = clusters.reduce((n, [, c]) => n + c.controlPlane.length + c.workers.length, 0);
  return {
    inventory: inv,
    items: [
      {
        area: 'inventory',
        subject: file,
        status: 'ok',
        detail: `${inv.proxmox.hosts.length} Proxmox hosts, ${inv.templates.length} templates, ${clusters.length} cluster(s) with ${nodes} nodes, ${inv.gpus.length} GPUs, ${inv.burstPools.length} burst pool(s): every rule holds`,
      },
    ],
  };
}

export interface LiveDeps {
  secrets: SecretStore;
  env: NodeJS.ProcessEnv;
}

const message = (err: unknown): string => (err instanceof Error ? err.message : String(err));

/** The live preflight; each item is one thing a workflow relies on. */
export async function checkLive(inv: Inventory, deps: LiveDeps): Promise<CheckItem[]> {
  const [pve, ec2, kube, talos] = await Promise.all([
    checkProxmox(inv, deps),
    checkEc2(inv, deps),
    checkKubernetes(inv, deps),
    checkTalos(inv, deps),
  ]);
  return [...pve, ...ec2, ...kube, ...talos];
}

async function checkProxmox(inv: Inventory, deps: LiveDeps): Promise<CheckItem[]> {
  const pveDeps = proxmoxDepsFromInventory(inv, deps.secrets, { timeoutMs: 10_000 });
  const pve = createProxmoxActivities(pveDeps);
  const items: CheckItem[] = [];
  const add = (subject: string, status: CheckStatus, detail: string): void => {
    items.push({ area: 'proxmox', subject, status, detail });
  };
  try {
    for (const [hostIndex, host] of inv.proxmox.hosts.entries()) {
      let api;
      try {
        api = (await pveDeps.clientFor(host.name)).api;
        const version = await api.version.$get();
        add(`${host.name} token`, 'ok', `the API token works (PVE ${String(version.version)})`);
      } catch (err) {
        add(`${host.name} token`, 'problem', `proxmox.hosts[${hostIndex}].token: ${message(err)}`);
        continue;
      }
      const held = (await api.access.permissions.$get()) as Record<string, Record<string, unknown>>;
      const missing = missingPrivileges(held, requiredPvePrivileges(inv, host));
      const needed = requiredPvePrivileges(inv, host).reduce((n, p) => n + p.privs.length, 0);
      add(
        `${host.name} privileges`,
        missing.length === 0 ? 'ok' : 'problem',
        missing.length === 0
          ? `the token holds the ${needed} privileges the workflows need`
          : `proxmox.hosts[${hostIndex}].token lacks ${missing.join(', ')}`,
      );

      const online = new Map((await api.nodes.$get()).map((n) => [String(n.node), String(n.status ?? 'unknown')]));
      for (const node of host.nodes) {
        const status = online.get(node);
        add(
          `${host.name}/${node}`,
          status === 'online' ? 'ok' : 'problem',
          status === undefined
            ? `PVE has no node ${node} (it has ${[...online.keys()].join(', ')})`
            : `node is ${status}`,
        );
        if (status !== 'online') continue;
        const storages = new Set((await pve.pveNodeStorages({ host: host.name, node })).map((s) => s.storage));
        for (const s of host.storages) {
          add(
            `${host.name}/${node} storage ${s.name}`,
            storages.has(s.name) ? 'ok' : 'problem',
            storages.has(s.name) ? 'exists' : `no storage ${s.name} on ${node} (it has ${[...storages].join(', ')})`,
          );
        }
        const networks = await api.nodes.$(node).network.$get();
        const bridges = new Set(networks.filter((n) => n.type === 'bridge').map((n) => String(n.iface)));
        for (const b of host.bridges) {
          add(
            `${host.name}/${node} bridge ${b.name}`,
            bridges.has(b.name) ? 'ok' : 'problem',
            bridges.has(b.name)
              ? 'exists'
              : `no bridge ${b.name} on ${node} (it has ${[...bridges].join(', ') || 'none'})`,
          );
        }
      }
    }

    // GPUs: the device at its address, in the IOMMU group and mapping the inventory says.
    for (const [gpuIndex, gpu] of inv.gpus.entries()) {
      const host = inv.proxmox.hosts.find((h) => h.name === gpu.host)!;
      try {
        const [devices, mappings] = await Promise.all([
          pve.pvePciDevices({ host: host.name, node: gpu.node }),
          pve.pvePciMappings({ host: host.name }),
        ]);
        // A GPU no node is given needs no mapping yet: only its address and IOMMU group are checked.
        const assigned = Object.values(inv.clusters).some((c) =>
          [...c.controlPlane, ...c.workers].some((n) => n.gpu === gpu.name),
        );
        const problems = gpuProblems({ gpu, gpuIndex, devices, mappings, vms: [], ownVmid: -1 }).filter(
          (p) => assigned || !p.startsWith(`gpus[${gpuIndex}].mappingId`),
        );
        add(
          `GPU ${gpu.name}`,
          problems.length === 0 ? 'ok' : 'problem',
          problems.length === 0
            ? `${gpu.pciAddress} on ${gpu.node}, IOMMU group ${gpu.iommuGroup}${gpu.mappingId ? `, mapping ${gpu.mappingId}` : ''}`
            : problems.join('; '),
        );
      } catch (err) {
        add(`GPU ${gpu.name}`, 'problem', message(err));
      }
    }

    // Templates, and VMIDs that are free or already ours (same name).
    for (const [i, t] of inv.templates.entries()) {
      const list = await pve.pveListTemplates({ host: t.host }).catch(() => []);
      const found = templateFor(list, t.name, t.node);
      add(
        `template ${t.name}`,
        found ? 'ok' : 'skipped',
        found
          ? `VM ${found.vmid} on ${found.node}`
          : `templates[${i}]: not built yet on ${t.host} (packerImageBuild makes it)`,
      );
    }
    for (const [clusterName, cluster] of Object.entries(inv.clusters)) {
      for (const [role, nodes] of [
        ['controlPlane', cluster.controlPlane],
        ['workers', cluster.workers],
      ] as const) {
        for (const [i, n] of nodes.entries()) {
          if (n.kind !== 'vm') continue;
          const vms = await pve.pveListVms({ host: n.host }).catch(() => []);
          const taken = vms.find((vm) => vm.vmid === n.vmid);
          const field = `clusters.${clusterName}.${role}[${i}].vmid`;
          add(
            `VMID ${n.vmid}`,
            !taken || taken.name === n.name ? 'ok' : 'problem',
            !taken
              ? `free for ${n.name}`
              : taken.name === n.name
                ? `${n.name}'s own VM on ${taken.node}`
                : `${field}: VMID ${n.vmid} is VM ${taken.name} on ${taken.node}, not ${n.name}: pick a free VMID`,
          );
        }
      }
    }
  } catch (err) {
    add('API', 'problem', message(err));
  } finally {
    pveDeps.close();
  }
  return items;
}

async function checkEc2(inv: Inventory, deps: LiveDeps): Promise<CheckItem[]> {
  const clientFor = ec2ClientsFor(deps.secrets, deps.env);
  const items: CheckItem[] = [];
  for (const [i, pool] of inv.burstPools.entries()) {
    const client = await clientFor(pool);
    // EC2's DryRun: DryRunOperation means the call would have succeeded; UnauthorizedOperation that it may not.
    const dryRun = async (what: string, send: () => Promise<unknown>): Promise<void> => {
      try {
        await send();
        items.push({
          area: 'ec2',
          subject: `${pool.name} ${what}`,
          status: 'problem',
          detail: 'answered without DryRun',
        });
      } catch (err) {
        const code = (err as { name?: string }).name;
        items.push({
          area: 'ec2',
          subject: `${pool.name} ${what}`,
          status: code === 'DryRunOperation' ? 'ok' : 'problem',
          detail:
            code === 'DryRunOperation'
              ? `allowed in ${pool.region} (DryRun)`
              : `burstPools[${i}]: ${code ?? 'error'}: ${message(err)}`,
        });
      }
    };
    await dryRun('DescribeInstances', () => client.send(new DescribeInstancesCommand({ DryRun: true })));
    await dryRun('RunInstances', () =>
      client.send(
        new RunInstancesCommand({
          DryRun: true,
          MinCount: 1,
          MaxCount: 1,
          InstanceType: pool.instanceTypes[0] as _InstanceType,
          ...(pool.launchTemplate
            ? { LaunchTemplate: { LaunchTemplateName: pool.launchTemplate.name, Version: pool.launchTemplate.version } }
            : { ImageId: pool.ami }),
          ...(pool.subnetId ? { SubnetId: pool.subnetId } : {}),
          ...(pool.securityGroupIds.length > 0 ? { SecurityGroupIds: pool.securityGroupIds } : {}),
        }),
      ),
    );
  }
  return items;
}

/** What the workflows do in a cluster, as SelfSubjectAccessReview attributes. */
export const KUBE_ACCESS = [
  { verb: 'patch', resource: 'nodes' },
  { verb: 'create', resource: 'jobs', group: 'batch', namespace: 'default' },
  { verb: 'create', resource: 'namespaces' },
  { verb: 'create', resource: 'secrets', namespace: 'flux-system' },
  { verb: 'create', resource: 'customresourcedefinitions', group: 'apiextensions.k8s.io' },
];

async function checkKubernetes(inv: Inventory, deps: LiveDeps): Promise<CheckItem[]> {
  const items: CheckItem[] = [];
  for (const name of Object.keys(inv.clusters)) {
    const ref = { store: talosStore.kubeconfig(name) };
    if (!(await deps.secrets.exists(ref))) {
      items.push({
        area: 'kubernetes',
        subject: name,
        status: 'skipped',
        detail: `no kubeconfig in the store (${ref.store}) yet: talosBootstrap makes it`,
      });
      continue;
    }
    try {
      const kc = new KubeConfig();
      kc.loadFromString(await deps.secrets.resolve(ref));
      const authz = kc.makeApiClient(AuthorizationV1Api);
      const denied: string[] = [];
      for (const a of KUBE_ACCESS) {
        const review = await authz.createSelfSubjectAccessReview({
          body: { spec: { resourceAttributes: a } },
        });
        if (!review.status?.allowed) denied.push(`${a.verb} ${a.resource}${a.namespace ? ` in ${a.namespace}` : ''}`);
      }
      items.push({
        area: 'kubernetes',
        subject: name,
        status: denied.length === 0 ? 'ok' : 'problem',
        detail:
          denied.length === 0
            ? `the kubeconfig may ${KUBE_ACCESS.map((a) => `${a.verb} ${a.resource}`).join(', ')}`
            : `denied: ${denied.join(', ')}`,
      });
    } catch (err) {
      items.push({ area: 'kubernetes', subject: name, status: 'problem', detail: message(err) });
    }
  }
  return items;
}

async function checkTalos(inv: Inventory, deps: LiveDeps): Promise<CheckItem[]> {
  const talos = createTalosActivities(talosDepsFromEnv({ inventory: inv, secrets: deps.secrets, env: deps.env }));
  const items: CheckItem[] = [];
  for (const [name, cluster] of Object.entries(inv.clusters)) {
    const ref = { store: talosStore.talosconfig(name) };
    const talosconfig = (await deps.secrets.exists(ref)) ? ref : undefined;
    for (const n of [...cluster.controlPlane, ...cluster.workers]) {
      const probe = await talos
        .talosProbe({ address: n.ip, ...(talosconfig ? { talosconfig } : {}) })
        .catch((err: unknown) => ({
          mode: 'error' as const,
          detail: message(err),
        }));
      const answers = probe.mode === 'maintenance' || probe.mode === 'configured';
      // A VM that does not exist yet cannot answer: talosBootstrap creates it.
      items.push({
        area: 'talos',
        subject: `${name}/${n.name} ${n.ip}`,
        status: answers ? 'ok' : n.kind === 'vm' ? 'skipped' : 'problem',
        detail: answers
          ? `Talos answers (${probe.mode})`
          : `${n.kind === 'vm' ? 'not answering (a VM not started yet?)' : 'not answering'}: ${probe.detail}`,
      });
    }
  }
  return items;
}

/** Offline checks, then (with `live`) the preflight; a broken inventory stops before the live part. */
export async function runCheck(file: string, opts: { live: boolean; deps?: LiveDeps }): Promise<CheckReport> {
  const { inventory, items } = await checkInventoryFile(file);
  if (opts.live && inventory && opts.deps) items.push(...(await checkLive(inventory, opts.deps)));
  return { file, live: opts.live, items, problems: items.filter((i) => i.status === 'problem').length };
}

export function renderCheck(report: CheckReport): string {
  const mark = { ok: '[ok]', problem: '[!!]', skipped: '[--]' } as const;
  const lines = report.items.map((i) => `${mark[i.status]} ${i.area}: ${i.subject}: ${i.detail}`);
  lines.push(
    report.problems === 0
      ? `${report.file}: no problems${report.live ? ' (offline and live)' : ' (offline; --live checks the lab)'}`
      : `${report.file}: ${report.problems} problem${report.problems === 1 ? '' : 's'}`,
  );
  return lines.join('\n');
}
