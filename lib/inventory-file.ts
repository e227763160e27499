/**
 * Where programs beside the worker (the `labwright` command, the LLM proxy) find the lab inventory:
 * LABWRIGHT_INVENTORY, as the worker reads it; without it, the simulated lab's that `npm start`
 * writes, so commands work in another terminal without setting anything.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { loadInventory } from '../hardware/load.js';
import type { Inventory } from '../hardware/schema.js';
import { stateDir } from './paths.js';

/** scripts/start.ts runs the simulated lab in `<state>/sim`, which writes its inventory here. */
export const SIMULATED_INVENTORY_FILE = path.join(stateDir, 'sim', 'inventory.yaml');

export async function findInventoryFile(env: NodeJS.ProcessEnv = process.env): Promise<string> {
  if (env.LABWRIGHT_INVENTORY) return env.LABWRIGHT_INVENTORY;
  const simulated = await fs.access(SIMULATED_INVENTORY_FILE).then(
    () => true,
    () => false,
  );
  if (simulated) return SIMULATED_INVENTORY_FILE;
  throw new Error(
    'no lab inventory: set LABWRIGHT_INVENTORY to the inventory file the worker uses, or run `npm start` for the simulated lab',
  );
}

export async function loadLabInventory(
  env: NodeJS.ProcessEnv = process.env,
): Promise<{ file: string; inventory: Inventory }> {
  const file = await findInventoryFile(env);
  return { file, inventory: await loadInventory(file) };
}
