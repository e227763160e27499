/**
 * The simulated lab's Talos: the stand-in nodes of every cluster in the inventory (sim/talos-standin.ts)
 * behind a talosctl whose gen/validate are the real talosctl. The clusters' Kubernetes is the
 * simulated lab's kube-apiserver (sim/kube.ts, which starts before this peer; its kubeconfig is
 * in the store as `kubeconfig/home`): nodes register there as they boot, and `talosctl kubeconfig`
 * hands out its kubeconfig. Without that peer, this one starts its own kube-apiserver. Every node address of the inventory is mapped to a loopback address
 * (LABWRIGHT_TALOS_ADDRESS_MAP), and the worker dials loopback only.
 *
 * It runs after the Proxmox peer and adds to its fakepve what talos-bootstrap and gpu-node-join
 * need from a PVE host: the clusters' templates on every node, and the GPUs' PCI devices and
 * resource mappings as the inventory describes them.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { passthroughAddress } from '../common/talos.js';
import type { Gpu } from '../hardware/schema.js';
import { ensureTool } from '../lib/processes.js';
import { SecretStore } from '../lib/secrets.js';
import { startKube } from './kube-apiserver.js';
import type { PeerStarter } from './index.js';
import { pveCaller } from './proxmox.js';
import { loopbackFor, pveVmLister, startTalosStandin, type StandinNodeSpec } from './talos-standin.js';

type Draft = Record<string, unknown>;

export const talosPeer: PeerStarter = async (ctx) => {
  const inv = ctx.inventory as Draft & {
    proxmox: { hosts: Array<Draft> };
    clusters?: Record<string, Draft>;
    gpus?: Array<Draft>;
    templates?: Array<Draft>;
  };
  const host = inv.proxmox.hosts[0]!;
  const secrets: SecretStore = ctx.secrets;
  const token = await secrets.resolve(host.token as { store: string });
  const ca = await fs.readFile(String(host.caFile));
  const url = String(host.apiUrl);
  const call = pveCaller(url, token, ca);
  const pve = async (method: string, apiPath: string, body?: Record<string, unknown>, json = false) => {
    const out = await call(method, apiPath, body, json);
    return out ? (JSON.parse(out) as { data: unknown }).data : null;
  };

  // The clusters' templates, on every PVE node (a clone never crosses hosts).
  const nodeNames = [...new Set(inv.proxmox.hosts.flatMap((h) => (h.nodes as string[]) ?? []))];
  const wanted = new Set(Object.values(inv.clusters ?? {}).map((c) => String(c.template)));
  let vmid = 9050;
  for (const name of wanted) {
    for (const node of nodeNames) {
      const id = vmid++;
      await pve('POST', `/api2/json/nodes/${node}/qemu`, { vmid: id, name, memory: 2048, cores: 2 });
      await pve('POST', `/api2/json/nodes/${node}/qemu/${id}/template`);
    }
  }
  // The GPUs as the inventory has them (fakepve has no hardware data of its own).
  const byNode = new Map<string, Array<Record<string, string | number>>>();
  for (const g of inv.gpus ?? []) {
    const list = byNode.get(String(g.node)) ?? [];
    list.push({
      id: String(g.pciAddress),
      class: '0x030000',
      vendor: '0x10de',
      device: '0x0000',
      device_name: String(g.model),
      iommugroup: Number(g.iommuGroup),
    });
    byNode.set(String(g.node), list);
  }
  for (const [node, devices] of byNode) {
    await pve('POST', '/_labwright/control', { op: 'pci_devices', node, devices }, true);
  }
  const mappings = (inv.gpus ?? [])
    .filter((g) => g.mappingId)
    .map((g) => ({
      id: String(g.mappingId),
      // The whole device (every function), as gpu-node-join passes it unless the inventory names one.
      map: [`node=${g.node},path=${passthroughAddress(g as unknown as Gpu)},iommugroup=${g.iommuGroup}`],
    }));
  if (mappings.length > 0) await pve('POST', '/_labwright/control', { op: 'pci_mappings', mappings }, true);

  let kubeconfigPath = path.join(ctx.dir, 'talos-kubeconfig');
  let ownKube: { stop(): Promise<void> } | undefined;
  if (await secrets.exists({ store: 'kubeconfig/home' })) {
    await fs.writeFile(kubeconfigPath, await secrets.resolve({ store: 'kubeconfig/home' }), { mode: 0o600 });
  } else {
    const kube = await startKube({ dataDir: path.join(ctx.dir, 'talos-kube') });
    kubeconfigPath = kube.kubeconfigPath;
    ownKube = kube;
  }
  const nodes: StandinNodeSpec[] = [];
  for (const cluster of Object.values(inv.clusters ?? {})) {
    for (const n of [...((cluster.controlPlane as Draft[]) ?? []), ...((cluster.workers as Draft[]) ?? [])]) {
      nodes.push({
        name: String(n.name),
        ip: String(n.ip),
        address: loopbackFor(String(n.ip)),
        kind: n.kind === 'metal' ? 'metal' : 'vm',
        arch: n.arch === 'arm64' ? 'arm64' : 'amd64',
        ...(n.kind === 'vm' ? { vm: { node: String(n.node), vmid: Number(n.vmid) } } : {}),
      });
    }
  }
  try {
    const standin = await startTalosStandin({
      dir: path.join(ctx.dir, 'talos'),
      nodes,
      realTalosctl: ensureTool('ensure-talosctl.sh'),
      listVms: pveVmLister({ url, token, ca }),
      kubeconfigPath,
      bootMs: 3000,
      playGpuNodes: true,
    });
    return {
      name: 'talos',
      summary: `Talos stand-in: ${nodes.length} nodes on loopback (${nodes.map((n) => n.name).join(', ')}), real talosctl for gen/validate`,
      env: {
        LABWRIGHT_TALOSCTL: standin.talosctl,
        LABWRIGHT_TALOS_ADDRESS_MAP: JSON.stringify(standin.addressMap),
      },
      handle: standin,
      stop: async () => {
        await standin.stop();
        await ownKube?.stop();
      },
    };
  } catch (err) {
    await ownKube?.stop();
    throw err;
  }
};
