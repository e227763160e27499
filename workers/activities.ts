/**
 * All activities the worker registers, built by per-system factories from the lab's clients.
 * Tests call the same factories with clients pointed at the local peers.
 */
import type { Inventory } from '../hardware/schema.js';
import type { SecretStore } from '../lib/secrets.js';

export interface LabDeps {
  inventory: Inventory;
  secrets: SecretStore;
  env: NodeJS.ProcessEnv;
}

export async function createLabActivities(
  _deps: LabDeps,
): Promise<Record<string, (...args: never[]) => Promise<unknown>>> {
  return {};
}
