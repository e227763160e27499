/**
 * All activities the worker registers, built by per-system factories from the lab's clients.
 * Tests call the same factories with clients pointed at the local peers.
 */
import { createEc2Activities } from '../activities/ec2.js';
import { createPackerActivities, packerDepsFromLab } from '../activities/packer.js';
import { createProxmoxActivities, proxmoxDepsFromInventory } from '../activities/proxmox.js';
import { createKubernetesActivities } from '../activities/kubernetes.js';
import { createTalosActivities, talosDepsFromEnv } from '../activities/talos.js';
import { createDrReportActivities, drReportDepsFromEnv } from '../activities/dr-reports.js';
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
  return {
    ...createEc2Activities({ secrets: _deps.secrets, env: _deps.env }),
    ...createProxmoxActivities(proxmoxDepsFromInventory(_deps.inventory, _deps.secrets)),
    ...createPackerActivities(packerDepsFromLab(_deps)),
    ...createTalosActivities(talosDepsFromEnv(_deps)),
    ...createKubernetesActivities({ secrets: _deps.secrets }),
    ...createDrReportActivities(drReportDepsFromEnv(_deps.env)),
  };
}
