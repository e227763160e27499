import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { inventoryJsonSchema } from '../hardware/json-schema.js';
import { InventoryError, loadInventory } from '../hardware/load.js';
import { projectRoot } from '../lib/paths.js';

const example = path.join(projectRoot, 'hardware', 'lab.example.yaml');

async function withEdited(edit: (text: string) => string): Promise<unknown> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'inventory-'));
  const file = path.join(dir, 'lab.yaml');
  await fs.writeFile(file, edit(await fs.readFile(example, 'utf8')));
  try {
    return await loadInventory(file).catch((e: unknown) => e);
  } finally {
    await fs.rm(dir, { recursive: true });
  }
}

describe('the lab inventory', () => {
  it('loads the example lab: hosts, three GPUs, a Raspberry Pi worker, VLANs and a g5 pool', async () => {
    const inv = await loadInventory(example);
    expect(inv.proxmox.hosts.map((h) => h.name)).toEqual(['pve1', 'pve2']);
    expect(inv.gpus.map((g) => g.model)).toEqual(['RTX A5000', 'RTX A2000', 'RTX 4080 SUPER']);
    expect(inv.proxmox.vlans.map((v) => v.name)).toEqual(['iot', 'dmz']);
    const pi = inv.clusters.home?.workers.find((n) => n.kind === 'metal');
    expect(pi).toMatchObject({ name: 'rpi5', arch: 'arm64' });
    expect(inv.burstPools[0]).toMatchObject({ name: 'g5-llm', idleTimeoutMinutes: 15 });
  });

  it('lists every problem of a malformed file with its path', async () => {
    const err = await withEdited((t) =>
      t
        .replace('ip: 192.168.1.102', 'ip: 192.168.1.300')
        .replace('vmid: 203', 'vmid: 201')
        .replace("pciAddress: '0000:0b:00.0'", "pciAddress: '0000:0b:zz.0'")
        .replace('gpu: rtx-a2000', 'gpu: rtx-9090')
        .replace('token: { env: PVE2_API_TOKEN }', 'token: hunter2'),
    );
    expect(err).toBeInstanceOf(InventoryError);
    const problems = (err as InventoryError).problems;
    expect(problems).toEqual(
      expect.arrayContaining([
        'clusters.home.controlPlane[1].ip: expected an IPv4 address',
        'gpus[2].pciAddress: expected a PCI address like 0000:01:00.0',
        'proxmox.hosts[1].token: expected a secret reference ({ env: NAME }, { file: /abs/path } or { store: name }), never the secret itself',
      ]),
    );
    expect((err as Error).message).toContain('is not a valid inventory');
  });

  it('names a key no schema knows by its own path, not the root', async () => {
    const err = await withEdited(
      (t) =>
        `Proxmox: {}\n${t.replace('    idleTimeoutMinutes: 15\n', '    idleTimeoutMinutes: 15\n    idleTimeout: 15\n')}`,
    );
    expect((err as InventoryError).problems).toEqual([
      'burstPools[0].idleTimeout: not a field here (names are case-sensitive); remove it',
      'Proxmox: not a field here (names are case-sensitive); remove it',
    ]);
  });

  it('refuses a secret written as a value instead of a reference', async () => {
    const err = await withEdited((t) => t.replace('token: { env: PVE1_API_TOKEN }', 'token: { value: s3cret }'));
    expect((err as InventoryError).problems.join('\n')).toMatch(/^proxmox\.hosts\[0\]\.token/m);
  });

  it('checks cross-references once the fields themselves are valid: unknown names, duplicate VMIDs', async () => {
    const err = await withEdited((t) => t.replace('gpu: rtx-a2000', 'gpu: rtx-9090').replace('vmid: 203', 'vmid: 201'));
    expect((err as InventoryError).problems).toEqual([
      'clusters.home.controlPlane[2].vmid: duplicate vmid 201, also at clusters.home.controlPlane[0].vmid',
      'clusters.home.workers[1].gpu: unknown GPU rtx-9090',
    ]);
  });

  it('refuses a cluster endpoint that nothing serves: neither its VIP, a load balancer, nor the one control plane', async () => {
    // Inventory text only: nothing here connects to these lab addresses.
    const apiUrl = (host: string) => `https://${host}:6443`;
    const noVip = await withEdited((t) => t.replace('    apiEndpoint: { kind: vip, ip: 192.168.1.100 }\n', ''));
    expect((noVip as InventoryError).problems).toEqual([
      "clusters.home.endpoint: nothing answers at 192.168.1.100: declare what serves the endpoint, apiEndpoint: { kind: vip, ip: 192.168.1.100 } (a Talos VIP on the control planes' interface) or apiEndpoint: { kind: loadBalancer }",
    ]);
    const otherVip = await withEdited((t) => t.replace('ip: 192.168.1.100 }', 'ip: 192.168.1.99 }'));
    expect((otherVip as InventoryError).problems).toEqual([
      `clusters.home.endpoint: the endpoint's host 192.168.1.100 is not the VIP 192.168.1.99 of apiEndpoint: use ${apiUrl('192.168.1.99')}`,
    ]);
    const nodesVip = await withEdited((t) =>
      t
        .replace(`endpoint: ${apiUrl('192.168.1.100')}`, `endpoint: ${apiUrl('192.168.1.101')}`)
        .replace('ip: 192.168.1.100 }', 'ip: 192.168.1.101 }'),
    );
    expect((nodesVip as InventoryError).problems).toEqual([
      "clusters.home.apiEndpoint.ip: VIP 192.168.1.101 is talos-cp-1's own address: a VIP is an address no node has",
    ]);
    const lb = await withEdited((t) =>
      t
        .replace(`endpoint: ${apiUrl('192.168.1.100')}`, `endpoint: ${apiUrl('k8s.lab')}`)
        .replace('{ kind: vip, ip: 192.168.1.100 }', '{ kind: loadBalancer }'),
    );
    expect(lb).not.toBeInstanceOf(Error);
  });

  it('ships a JSON Schema for editors that matches the zod schema', async () => {
    const committed = await fs.readFile(path.join(projectRoot, 'hardware', 'inventory.schema.json'), 'utf8');
    expect(committed).toBe(inventoryJsonSchema());
  });
});
