/**
 * The rules the lab itself enforces that can be known from the inventory alone: what Proxmox,
 * Talos, etcd and Kubernetes would refuse, and what would break the lab half way through a
 * workflow (a node on a storage its host lacks, the same GPU given to two VMs). Each problem names
 * its path and says what is allowed. Pure, so workflows apply the same rules at their boundary.
 *
 * `inventorySchema` (schema.ts) is the shape and the references recorded runs were validated
 * with; `labInventorySchema` adds these rules. Workflows apply them to new runs only (a
 * wf.patched() gate), so that histories recorded before a rule existed still replay.
 */
import type { z } from 'zod';
import { formatPath } from '../common/validation.js';
import { cidrContains, cidrRange, cidrsOverlap, intToIp, ipToInt, networkOf, pciSlot } from './addresses.js';
import { fluxCredentialsProblem, inventorySchema, type ClusterNode, type Inventory } from './schema.js';

type Path = PropertyKey[];

/** PVE's storage ids (pve-storage-id): a letter, then letters, digits, `-`, `_`, `.`, not ending in `-_.`. */
const STORAGE_ID = /^[a-z][a-z0-9._-]*[a-z0-9]$/i;
/** Kubernetes qualified names (label and taint keys): an optional DNS-subdomain prefix and a name of ≤63. */
const QUALIFIED_NAME = /^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)$/;
const DNS_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
/** Talos's default pod and service subnets (cluster.network.podSubnets / serviceSubnets). */
const TALOS_POD_SUBNET = '10.244.0.0/16';
const TALOS_SERVICE_SUBNET = '10.96.0.0/12';

/** Why `key` is not a Kubernetes label or taint key; undefined when it is one. */
export function qualifiedNameProblem(key: string): string | undefined {
  const slash = key.lastIndexOf('/');
  const prefix = slash < 0 ? undefined : key.slice(0, slash);
  const name = slash < 0 ? key : key.slice(slash + 1);
  if (prefix !== undefined && (prefix.length > 253 || !DNS_SUBDOMAIN.test(prefix))) {
    return `the prefix ${JSON.stringify(prefix)} is not a DNS subdomain (lowercase letters, digits, - and ., at most 253)`;
  }
  if (name.length === 0 || name.length > 63 || !QUALIFIED_NAME.test(name)) {
    return `the name ${JSON.stringify(name)} must be 1-63 letters, digits, -, _ or ., beginning and ending with a letter or digit`;
  }
  return undefined;
}

/** Why `value` is not a Kubernetes label value; undefined when it is one (empty is allowed). */
export function labelValueProblem(value: string): string | undefined {
  if (value === '') return undefined;
  if (value.length > 63 || !QUALIFIED_NAME.test(value)) {
    return `${JSON.stringify(value)} must be empty or 1-63 letters, digits, -, _ or ., beginning and ending with a letter or digit`;
  }
  return undefined;
}

/**
 * The labels a kubelet may set on its own Node under the kubernetes.io and k8s.io namespaces
 * (Kubernetes' NodeRestriction admission, `IsKubeletLabel`): Talos writes machine.nodeLabels with
 * the node's kubelet identity, so the API server refuses any other label of those namespaces.
 */
const KUBELET_LABELS = new Set([
  'kubernetes.io/hostname',
  'kubernetes.io/arch',
  'kubernetes.io/os',
  'beta.kubernetes.io/arch',
  'beta.kubernetes.io/os',
  'beta.kubernetes.io/instance-type',
  'node.kubernetes.io/instance-type',
  'topology.kubernetes.io/region',
  'topology.kubernetes.io/zone',
  'failure-domain.beta.kubernetes.io/region',
  'failure-domain.beta.kubernetes.io/zone',
]);
const KUBELET_LABEL_NAMESPACES = ['kubelet.kubernetes.io', 'node.kubernetes.io'];
const inNamespace = (prefix: string, namespace: string): boolean =>
  prefix === namespace || prefix.endsWith(`.${namespace}`);

/** Why a node may not give itself the label `key` (NodeRestriction); undefined when it may. */
export function kubeletLabelProblem(key: string): string | undefined {
  const slash = key.lastIndexOf('/');
  const prefix = slash < 0 ? '' : key.slice(0, slash);
  if (!inNamespace(prefix, 'kubernetes.io') && !inNamespace(prefix, 'k8s.io')) return undefined;
  if (KUBELET_LABELS.has(key) || KUBELET_LABEL_NAMESPACES.some((ns) => inNamespace(prefix, ns))) return undefined;
  return (
    "Talos sets machine.nodeLabels with the node's own kubelet identity, and Kubernetes' NodeRestriction admission refuses " +
    `a node its own ${prefix} label: of the kubernetes.io and k8s.io namespaces a node may set only ${[...KUBELET_LABELS].join(', ')} ` +
    'and labels under kubelet.kubernetes.io/ and node.kubernetes.io/; use a prefix of your own (for example labwright.dev/)'
  );
}

/** Talos v1.N supports Kubernetes 1.(N+18) to 1.(N+23) (the Talos support matrix, from v1.6 on). */
export function supportedKubernetes(talosVersion: string): { min: number; max: number } | undefined {
  const minor = Number(/^v1\.(\d+)\./.exec(talosVersion)?.[1]);
  return Number.isInteger(minor) && minor >= 6 ? { min: minor + 18, max: minor + 23 } : undefined;
}

export function checkLabRules(inv: Inventory, ctx: z.RefinementCtx): void {
  const problem = (path: Path, message: string): void => ctx.addIssue({ code: 'custom', path, message });
  const hosts = new Map(inv.proxmox.hosts.map((h) => [h.name, h]));

  // Names unique per kind: a second entry would silently shadow the first in every lookup.
  const uniqueBy = <T>(items: readonly T[], key: (t: T) => string, path: (i: number) => Path, what: string): void => {
    const first = new Map<string, number>();
    items.forEach((item, i) => {
      const k = key(item);
      const at = first.get(k);
      if (at === undefined) first.set(k, i);
      else problem(path(i), `duplicate ${what} ${k}, also at ${formatPath('', path(at))}: each ${what} must be unique`);
    });
  };

  // ---------------------------------------------------------------- Proxmox hosts
  const hostsList = inv.proxmox.hosts;
  uniqueBy(
    hostsList,
    (h) => h.name,
    (i) => ['proxmox', 'hosts', i, 'name'],
    'host name',
  );
  hostsList.forEach((h, i) => {
    // The same PVE node may be served by two host entries (two API endpoints of one PVE cluster).
    uniqueBy(
      h.nodes,
      (n) => n,
      (j) => ['proxmox', 'hosts', i, 'nodes', j],
      'PVE node',
    );
    uniqueBy(
      h.storages,
      (s) => s.name,
      (k) => ['proxmox', 'hosts', i, 'storages', k, 'name'],
      'storage',
    );
    uniqueBy(
      h.bridges,
      (b) => b.name,
      (k) => ['proxmox', 'hosts', i, 'bridges', k, 'name'],
      'bridge',
    );
    h.storages.forEach((s, k) => {
      if (!STORAGE_ID.test(s.name)) {
        problem(
          ['proxmox', 'hosts', i, 'storages', k, 'name'],
          `${JSON.stringify(s.name)} is not a PVE storage id: a letter, then letters, digits, -, _ or ., ending in a letter or digit`,
        );
      }
    });
  });

  // ---------------------------------------------------------------- VLANs
  const vlans = inv.proxmox.vlans;
  uniqueBy(
    vlans,
    (v) => String(v.id),
    (i) => ['proxmox', 'vlans', i, 'id'],
    'VLAN id',
  );
  uniqueBy(
    vlans,
    (v) => v.name,
    (i) => ['proxmox', 'vlans', i, 'name'],
    'VLAN name',
  );
  vlans.forEach((v, i) => {
    const { start, prefix } = cidrRange(v.cidr);
    if (intToIp(start) !== v.cidr.split('/')[0]) {
      problem(
        ['proxmox', 'vlans', i, 'cidr'],
        `${v.cidr} has host bits set: use the network address ${intToIp(start)}/${prefix}`,
      );
    }
    if (prefix > 30) {
      problem(
        ['proxmox', 'vlans', i, 'cidr'],
        `${v.cidr} leaves no room for a gateway and nodes: use a prefix of /30 or shorter`,
      );
    }
    if (!hostsList.some((h) => h.bridges.some((b) => b.name === v.bridge))) {
      problem(['proxmox', 'vlans', i, 'bridge'], `no host has bridge ${v.bridge}: use one of ${bridgeNames(inv)}`);
    }
    vlans.slice(0, i).forEach((w, j) => {
      if (cidrsOverlap(v.cidr, w.cidr)) {
        problem(
          ['proxmox', 'vlans', i, 'cidr'],
          `${v.cidr} overlaps ${w.cidr} of proxmox.vlans[${j}]: VLAN networks must be disjoint`,
        );
      }
    });
  });

  // ---------------------------------------------------------------- VMID ranges
  const ranges = Object.entries(inv.proxmox.vmidRanges);
  ranges.forEach(([name, r], i) => {
    for (const [other, s] of ranges.slice(0, i)) {
      if (r.from <= s.to && s.from <= r.to) {
        problem(
          ['proxmox', 'vmidRanges', name],
          `${name} (${r.from}-${r.to}) overlaps ${other} (${s.from}-${s.to}): the VMID ranges must be disjoint`,
        );
      }
    }
  });

  // ---------------------------------------------------------------- storages and bridges a VM names
  const storageOn = (host: string, storage: string, path: Path, content: 'images'): void => {
    const h = hosts.get(host);
    if (!h) return; // checkReferences reports the unknown host
    const s = h.storages.find((x) => x.name === storage);
    if (!s) {
      problem(path, `host ${host} has no storage ${storage}: use one of ${h.storages.map((x) => x.name).join(', ')}`);
    } else if (!s.content.includes(content)) {
      const fit = h.storages.filter((x) => x.content.includes(content)).map((x) => x.name);
      problem(
        path,
        `storage ${storage} on ${host} does not hold ${content} (content: ${s.content.join(', ')}): use ${fit.length > 0 ? `one of ${fit.join(', ')}` : `a storage with content ${content}`}`,
      );
    }
  };

  // ---------------------------------------------------------------- templates
  uniqueBy(
    inv.templates,
    (t) => t.name,
    (i) => ['templates', i, 'name'],
    'template name',
  );
  inv.templates.forEach((t, i) => storageOn(t.host, t.storage, ['templates', i, 'storage'], 'images'));

  // ---------------------------------------------------------------- GPUs
  const gpus = inv.gpus;
  uniqueBy(
    gpus,
    (g) => g.name,
    (i) => ['gpus', i, 'name'],
    'GPU name',
  );
  gpus.forEach((g, i) => {
    if (g.onlyFunction !== undefined && /\.\d$/.test(g.pciAddress) && !g.pciAddress.endsWith(`.${g.onlyFunction}`)) {
      problem(
        ['gpus', i, 'onlyFunction'],
        `function ${g.onlyFunction} is not the function of ${g.pciAddress}: give the device without a function (${pciSlot(g.pciAddress)}) or the same function`,
      );
    }
    gpus.slice(0, i).forEach((o, j) => {
      if (o.node !== g.node) return;
      if (o.mappingId !== undefined && o.mappingId === g.mappingId) {
        problem(
          ['gpus', i, 'mappingId'],
          `mapping ${g.mappingId} is also gpus[${j}]'s on ${g.node}: one PCI mapping per device and node`,
        );
      }
      if (pciSlot(o.pciAddress) === pciSlot(g.pciAddress) && o.pciAddress !== g.pciAddress) {
        problem(
          ['gpus', i, 'pciAddress'],
          `${g.pciAddress} is a function of gpus[${j}]'s device ${o.pciAddress} on ${g.node}: one entry per device`,
        );
      }
    });
  });

  // ---------------------------------------------------------------- clusters
  const nodeNames = new Map<string, string>();
  const gpuHolder = new Map<string, string>();
  const apiHosts = new Map(hostsList.map((h, i) => [hostnameOf(h.apiUrl), `proxmox.hosts[${i}].apiUrl`]));
  for (const [clusterName, cluster] of Object.entries(inv.clusters)) {
    const base: Path = ['clusters', clusterName];
    const all: Array<{ node: ClusterNode; path: Path }> = [
      ...cluster.controlPlane.map((node, i) => ({ node, path: [...base, 'controlPlane', i] })),
      ...cluster.workers.map((node, i) => ({ node, path: [...base, 'workers', i] })),
    ];

    // etcd keeps quorum through one loss only with three members or more.
    const cps = cluster.controlPlane.length;
    if (cps < 3 && !cluster.allowNoQuorumTolerance) {
      problem(
        [...base, 'controlPlane'],
        `${cps} control plane${cps === 1 ? '' : 's'}: etcd loses quorum when ${cps === 1 ? 'it goes' : 'one goes'} down; use 3 (or 5), or set allowNoQuorumTolerance: true to accept that`,
      );
    }

    const range = supportedKubernetes(cluster.talosVersion);
    const k8sMinor = Number(/^v?1\.(\d+)\./.exec(cluster.kubernetesVersion)?.[1]);
    if (range && (!Number.isInteger(k8sMinor) || k8sMinor < range.min || k8sMinor > range.max)) {
      problem(
        [...base, 'kubernetesVersion'],
        `Talos ${cluster.talosVersion} runs Kubernetes 1.${range.min} to 1.${range.max}, not ${cluster.kubernetesVersion}`,
      );
    }

    if (cluster.flux) {
      const why = cluster.flux.gitCredentials
        ? fluxCredentialsProblem(cluster.flux.url, cluster.flux.gitCredentials)
        : undefined;
      if (why) problem([...base, 'flux', 'gitCredentials'], why);
      else if (!/^(ssh|https?):\/\//.test(cluster.flux.url)) {
        problem(
          [...base, 'flux', 'url'],
          `${cluster.flux.url} is neither ssh:// nor http(s)://, which source-controller needs`,
        );
      }
    }

    const customSubnets = cluster.patches.some((p) => /podSubnets|serviceSubnets/.test(p));
    const vip = cluster.apiEndpoint?.kind === 'vip' ? cluster.apiEndpoint.ip : undefined;
    if (vip !== undefined) {
      const net = networkOf(vip, vlans);
      if (vip === net.gateway) {
        problem(
          [...base, 'apiEndpoint', 'ip'],
          `VIP ${vip} is the gateway of ${net.cidr}: use a free address of that network`,
        );
      }
      const outside = cluster.controlPlane.find((n) => networkOf(n.ip, vlans).cidr !== net.cidr);
      if (outside) {
        problem(
          [...base, 'apiEndpoint', 'ip'],
          `VIP ${vip} is not in ${outside.name}'s network ${networkOf(outside.ip, vlans).cidr}: Talos puts the VIP on the control planes' own network, so use an address there`,
        );
      }
      const at = apiHosts.get(vip);
      if (at)
        problem(
          [...base, 'apiEndpoint', 'ip'],
          `VIP ${vip} is the Proxmox API's address (${at}): use an address no host has`,
        );
    }

    for (const { node, path } of all) {
      const seen = nodeNames.get(node.name);
      if (seen !== undefined) {
        problem(
          [...path, 'name'],
          `duplicate node name ${node.name}, also at ${seen}: Kubernetes node names must be unique`,
        );
      } else nodeNames.set(node.name, formatPath('', [...path, 'name']));

      // The address labwright configures: in its VLAN's network or its /24, never the gateway.
      const net = networkOf(node.ip, vlans);
      const { start, end } = cidrRange(net.cidr);
      const addr = ipToInt(node.ip);
      if (node.ip === net.gateway) {
        problem([...path, 'ip'], `${node.ip} is the gateway of ${net.cidr}: use another address of that network`);
      } else if (addr === start || addr === end) {
        problem([...path, 'ip'], `${node.ip} is the network or broadcast address of ${net.cidr}: use a host address`);
      }
      if (vip !== undefined && node.ip === vip) continue; // checkReferences reports a node on the VIP
      const api = apiHosts.get(node.ip);
      if (api) problem([...path, 'ip'], `${node.ip} is the Proxmox API's address (${api}): use an address no host has`);
      if (!customSubnets) {
        for (const [what, subnet] of [
          ['pod', TALOS_POD_SUBNET],
          ['service', TALOS_SERVICE_SUBNET],
        ] as const) {
          if (cidrContains(subnet, node.ip)) {
            problem(
              [...path, 'ip'],
              `${node.ip} is in Talos's ${what} subnet ${subnet}: nodes must not share it; use another network or set cluster.network.${what}Subnets in patches`,
            );
          }
        }
      }

      node.taints.forEach((t, k) => {
        const why = qualifiedNameProblem(t.key);
        if (why) problem([...path, 'taints', k, 'key'], `not a Kubernetes taint key: ${why}`);
        const bad = t.value === undefined ? undefined : labelValueProblem(t.value);
        if (bad) problem([...path, 'taints', k, 'value'], `not a Kubernetes taint value: ${bad}`);
        const twin = node.taints.findIndex((o) => o.key === t.key && o.effect === t.effect);
        if (twin < k) {
          problem(
            [...path, 'taints', k],
            `a second ${t.key}:${t.effect} taint: Kubernetes allows one taint per key and effect`,
          );
        }
      });
      for (const [key, value] of Object.entries(node.labels)) {
        const why = qualifiedNameProblem(key);
        if (why) problem([...path, 'labels', key], `not a Kubernetes label key: ${why}`);
        const bad = labelValueProblem(value);
        if (bad) problem([...path, 'labels', key], `not a Kubernetes label value: ${bad}`);
        const refused = why ? undefined : kubeletLabelProblem(key);
        if (refused) problem([...path, 'labels', key], refused);
      }

      if (node.gpu !== undefined) checkGpuNode(node, path);
      if (node.kind !== 'vm') continue;

      // PVE refuses a multicast MAC address (pve-macaddr: the first octet even).
      if (parseInt(node.mac.slice(0, 2), 16) % 2 === 1) {
        problem(
          [...path, 'mac'],
          `${node.mac} is a multicast address, which PVE refuses: the first octet must be even (bc:24:11:... is PVE's own prefix)`,
        );
      }
      storageOn(node.host, node.storage, [...path, 'storage'], 'images');
      const h = hosts.get(node.host);
      const bridge = h?.bridges.find((b) => b.name === node.bridge);
      if (h && !bridge) {
        problem(
          [...path, 'bridge'],
          `host ${node.host} has no bridge ${node.bridge}: use one of ${h.bridges.map((b) => b.name).join(', ')}`,
        );
      }
      const vlan = node.vlan === undefined ? undefined : vlans.find((v) => v.id === node.vlan);
      if (node.vlan !== undefined && !vlan) {
        problem(
          [...path, 'vlan'],
          `VLAN ${node.vlan} is not declared in proxmox.vlans: use one of ${vlans.map((v) => v.id).join(', ') || '(none declared)'}`,
        );
      }
      if (vlan) {
        if (vlan.bridge !== node.bridge) {
          problem(
            [...path, 'bridge'],
            `VLAN ${vlan.id} (${vlan.name}) is on bridge ${vlan.bridge}, not ${node.bridge}: use ${vlan.bridge}`,
          );
        } else if (bridge && !bridge.vlanAware) {
          problem(
            [...path, 'vlan'],
            `bridge ${node.bridge} on ${node.host} is not VLAN aware: PVE cannot tag VLAN ${vlan.id} on it; set vlanAware: true`,
          );
        }
        if (!cidrContains(vlan.cidr, node.ip)) {
          problem(
            [...path, 'ip'],
            `${node.ip} is not in VLAN ${vlan.id}'s network ${vlan.cidr}: use an address of ${vlan.cidr}`,
          );
        }
      } else if (node.vlan === undefined) {
        const tagged = vlans.find((v) => cidrContains(v.cidr, node.ip));
        if (tagged) {
          problem(
            [...path, 'vlan'],
            `${node.ip} is in VLAN ${tagged.id}'s network ${tagged.cidr} but the node is untagged: set vlan: ${tagged.id} or use an address outside ${tagged.cidr}`,
          );
        }
      }
    }
  }

  function checkGpuNode(node: ClusterNode, path: Path): void {
    const gpu = gpus.find((g) => g.name === node.gpu);
    if (!gpu) return; // checkReferences reports the unknown GPU
    const holder = gpuHolder.get(gpu.name);
    if (holder !== undefined) {
      problem([...path, 'gpu'], `GPU ${gpu.name} is already given to ${holder}: a GPU passes through to one VM`);
    } else gpuHolder.set(gpu.name, formatPath('', path));
    if (node.kind !== 'vm') {
      problem([...path, 'gpu'], `${node.name} is bare metal: only a VM (kind: vm) gets a GPU passed through`);
      return;
    }
    if (gpu.node !== node.node) {
      problem(
        [...path, 'gpu'],
        `GPU ${gpu.name} is in PVE node ${gpu.node}, not in ${node.node} where this VM runs: put the VM on ${gpu.node} or give it a GPU of ${node.node}`,
      );
    }
    // VFIO hands an IOMMU group to one VM as a whole.
    const sharer = gpus.find(
      (o) => o.name !== gpu.name && o.node === gpu.node && o.iommuGroup === gpu.iommuGroup && gpuHolder.has(o.name),
    );
    if (sharer && gpuHolder.get(sharer.name) !== formatPath('', path)) {
      problem(
        [...path, 'gpu'],
        `GPU ${gpu.name} shares IOMMU group ${gpu.iommuGroup} on ${gpu.node} with ${sharer.name} (given to ${gpuHolder.get(sharer.name)}): a group passes through to one VM only`,
      );
    }
  }

  // ---------------------------------------------------------------- burst pools
  inv.burstPools.forEach((p, i) => {
    for (const type of Object.keys(p.prices ?? {})) {
      if (!p.instanceTypes.includes(type)) {
        problem(
          ['burstPools', i, 'prices', type],
          `${type} is not one of the pool's instanceTypes (${p.instanceTypes.join(', ')}): price only those`,
        );
      }
    }
    uniqueBy(
      p.instanceTypes,
      (t) => t,
      (k) => ['burstPools', i, 'instanceTypes', k],
      'instance type',
    );
    if (p.maxRunningHours !== undefined && p.maxRunningHours * 60 <= p.idleTimeoutMinutes) {
      problem(
        ['burstPools', i, 'maxRunningHours'],
        `${p.maxRunningHours} h is not longer than the idle timeout (${p.idleTimeoutMinutes} min): make it longer`,
      );
    }
  });
}

function hostnameOf(url: string): string {
  try {
    return new URL(url).hostname;
  } catch {
    return url; // the URL's own check reports it
  }
}

function bridgeNames(inv: Inventory): string {
  return [...new Set(inv.proxmox.hosts.flatMap((h) => h.bridges.map((b) => b.name)))].join(', ');
}

/** The inventory with every rule of the lab: what `loadInventory`, `labwright check` and new workflow runs use. */
export const labInventorySchema = inventorySchema.superRefine(checkLabRules);
