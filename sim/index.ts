/**
 * The simulated lab `npm start` runs when no real endpoints are configured: each peer (fakepve for
 * Proxmox, moto for EC2, a kube-apiserver, the Talos stand-in) starts on loopback and points its
 * part of the inventory at itself. The inventory is the example lab's, so the same workflows and
 * inputs work against it.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { parse as parseYaml, stringify } from 'yaml';
import { labInventorySchema } from '../hardware/lab-rules.js';
import type { Inventory } from '../hardware/schema.js';
import { projectRoot } from '../lib/paths.js';
import { SecretStore } from '../lib/secrets.js';

/** The inventory as YAML would give it: peers edit it before it is validated. */
export type InventoryDraft = Record<string, unknown> & {
  proxmox: { hosts: Array<Record<string, unknown>> } & Record<string, unknown>;
};

export interface SimContext {
  dir: string;
  inventory: InventoryDraft;
  secrets: SecretStore;
}

export interface SimPeer {
  name: string;
  /** One line for the startup banner: what runs where. */
  summary: string;
  /** Environment the worker needs to reach this peer (endpoint overrides, address maps). */
  env: Record<string, string>;
  /** The running peer itself (fakepve, the Talos stand-in), for harnesses that check the lab's state. */
  handle?: unknown;
  stop(): Promise<void>;
}

export type PeerStarter = (ctx: SimContext) => Promise<SimPeer>;

export interface SimulatedLab {
  inventory: Inventory;
  inventoryFile: string;
  env: Record<string, string>;
  peers: SimPeer[];
  stop(): Promise<void>;
}

/** Closed loopback port: an endpoint no peer has claimed fails fast instead of reaching the real lab. */
const UNCLAIMED = 'https://127.0.0.1:1';

export async function startSimulatedLab(dir: string, starters: PeerStarter[]): Promise<SimulatedLab> {
  await fs.mkdir(dir, { recursive: true });
  const example = await fs.readFile(path.join(projectRoot, 'hardware', 'lab.example.yaml'), 'utf8');
  const inventory = parseYaml(example) as InventoryDraft;
  for (const host of inventory.proxmox.hosts) host.apiUrl = UNCLAIMED;
  const secrets = new SecretStore(path.join(dir, 'secrets'));
  const ctx: SimContext = { dir, inventory, secrets };

  const peers: SimPeer[] = [];
  const stopAll = async (): Promise<void> => {
    await Promise.allSettled(peers.reverse().map((p) => p.stop()));
  };
  try {
    for (const start of starters) peers.push(await start(ctx));
    const parsed = labInventorySchema.parse(inventory);
    const inventoryFile = path.join(dir, 'inventory.yaml');
    await fs.writeFile(inventoryFile, stringify(inventory));
    const env = Object.assign(
      {
        LABWRIGHT_INVENTORY: inventoryFile,
        LABWRIGHT_SECRETS_DIR: path.join(dir, 'secrets'),
        LABWRIGHT_SIMULATED: '1',
      },
      ...peers.map((p) => p.env),
    ) as Record<string, string>;
    return { inventory: parsed, inventoryFile, env, peers, stop: stopAll };
  } catch (err) {
    await stopAll();
    throw err;
  }
}
