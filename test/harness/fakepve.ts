/**
 * A lab around one fakepve for the Proxmox and Packer tests: an inventory slice whose hosts pve1
 * and pve2 point at the fake (token by secret reference, CA file), the activity factories built
 * on it, and Packer from scripts/ensure-packer.sh.
 */
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createPackerActivities, packerAccessFrom, type PackerDeps } from '../../activities/packer.js';
import { createProxmoxActivities } from '../../activities/proxmox.js';
import { proxmoxDepsFromInventory } from '../../clients/proxmox.js';
import type { Inventory } from '../../hardware/schema.js';
import { projectRoot } from '../../lib/paths.js';
import { ensureTool } from '../../lib/processes.js';
import { SecretStore } from '../../lib/secrets.js';
import { startFakePve, type FakeGuest, type FakePve } from '../../sim/proxmox.js';

export interface FakePveLab {
  fake: FakePve;
  dir: string;
  inventory: Pick<Inventory, 'proxmox'>;
  secrets: SecretStore;
  packerWorkDir: string;
  proxmox: ReturnType<typeof createProxmoxActivities>;
  packer: ReturnType<typeof createPackerActivities>;
  packerDeps: PackerDeps;
  /** Every activity, for a test worker. */
  activities: Record<string, (...args: never[]) => Promise<unknown>>;
  stop(): Promise<void>;
}

export async function startFakePveLab(opts: { guests?: FakeGuest[]; timeScale?: number } = {}): Promise<FakePveLab> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'labwright-pve-'));
  const fake = await startFakePve({
    dir: path.join(dir, 'fakepve'),
    nodes: ['pve1', 'pve2'],
    guests: opts.guests,
    timeScale: opts.timeScale ?? 0,
    // fakepve's local-lvm is thin LVM, whose linked clones it does not mark; a directory storage
    // shows a linked clone's base volume in its disk, as every PVE storage does.
    storages: [
      { storage: 'vmdata', type: 'dir', path: '/var/lib/vmdata', content: 'images' },
      { storage: 'unraid-backup', type: 'dir', path: '/mnt/unraid-backup', content: 'backup' },
    ],
  });
  const secrets = new SecretStore(path.join(dir, 'secrets'));
  const tokenRef = await secrets.put('proxmox/token', fake.token);
  const host = (name: string) => ({
    name,
    apiUrl: fake.url,
    nodes: [name],
    token: tokenRef,
    caFile: fake.caFile,
    storages: [{ name: 'vmdata', content: ['images' as const] }],
    bridges: [{ name: 'vmbr0', vlanAware: false }],
  });
  const inventory = {
    proxmox: {
      hosts: [host('pve1'), host('pve2')],
      vlans: [],
      vmidRanges: {
        templates: { from: 9000, to: 9099 },
        nodes: { from: 200, to: 299 },
        drills: { from: 8900, to: 8999 },
      },
    },
  } satisfies Pick<Inventory, 'proxmox'>;
  const pveDeps = proxmoxDepsFromInventory(inventory, secrets);
  const packerWorkDir = path.join(dir, 'packer');
  const packerDeps: PackerDeps = {
    packerBin: () => ensureTool('ensure-packer.sh'),
    projectRoot,
    workDir: packerWorkDir,
    secrets,
    interruptGraceMs: 30_000,
    proxmoxAccess: async (name) => {
      const h = inventory.proxmox.hosts.find((x) => x.name === name);
      if (!h) throw new Error(`no host ${name}`);
      return packerAccessFrom(h, await secrets.resolve(h.token));
    },
  };
  const proxmox = createProxmoxActivities(pveDeps);
  const packer = createPackerActivities(packerDeps);
  return {
    fake,
    dir,
    inventory,
    secrets,
    packerWorkDir,
    proxmox,
    packer,
    packerDeps,
    activities: { ...proxmox, ...packer },
    stop: async () => {
      pveDeps.close();
      await fake.stop();
      await fs.rm(dir, { recursive: true, force: true });
    },
  };
}
