/**
 * All activities the worker registers, built by per-system factories from the lab's clients.
 * Tests call the same factories with clients pointed at the local peers.
 */
import { createEc2Activities } from '../activities/ec2.js';
import { createPackerActivities, packerDepsFromLab } from '../activities/packer.js';
import { createProxmoxActivities } from '../activities/proxmox.js';
import { proxmoxDepsFromInventory } from '../clients/proxmox.js';
import { createKubernetesActivities } from '../activities/kubernetes.js';
import { createTalosActivities, talosDepsFromEnv } from '../activities/talos.js';
import { createDrReportActivities, drReportDepsFromEnv } from '../activities/dr-reports.js';
import { createTemporalActivities } from '../activities/temporal.js';
import type { Inventory } from '../hardware/schema.js';
import type { SecretStore } from '../lib/secrets.js';

export interface LabDeps {
  inventory: Inventory;
  secrets: SecretStore;
  env: NodeJS.ProcessEnv;
}

type Activities = Record<string, (...args: never[]) => Promise<unknown>>;

export async function createLabActivities(deps: LabDeps): Promise<Activities> {
  return mergeActivities([
    createEc2Activities({ secrets: deps.secrets, env: deps.env }),
    createProxmoxActivities(proxmoxDepsFromInventory(deps.inventory, deps.secrets)),
    createPackerActivities(packerDepsFromLab(deps)),
    createTalosActivities(talosDepsFromEnv(deps)),
    createKubernetesActivities({ secrets: deps.secrets }),
    createDrReportActivities(drReportDepsFromEnv(deps.env)),
    createTemporalActivities(),
  ]);
}

/** Activities are registered by name: two systems using one name would silently replace each other. */
export function mergeActivities(groups: Activities[]): Activities {
  const merged: Activities = {};
  for (const group of groups) {
    for (const [name, fn] of Object.entries(group)) {
      if (name in merged) throw new Error(`activity ${name} is defined by two factories`);
      merged[name] = fn;
    }
  }
  return merged;
}
