/**
 * The simulated lab's state as the matrix compares it: what exists in each system (PVE VMs and
 * templates, EC2 instances and persistent spot requests, Kubernetes objects, secret files,
 * programs still running), each as a key naming the object, plus the etcd bootstraps the Talos
 * stand-in answered. A run's effect is the difference between the state before and after it;
 * a faulted run must have the same effect as a clean run of the same workflow.
 */
import { promises as fs, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { DescribeInstancesCommand, EC2Client } from '@aws-sdk/client-ec2';
import { kubeRequest } from '../sim/kube-apiserver.js';
import { MOTO_CREDENTIALS } from '../sim/ec2.js';
import type { ChaosLab } from './lab.js';

/** Object keys (`pve vm talos-cp-1`) with how many exist; etcd bootstraps counted apart. */
export interface LabState {
  objects: Map<string, number>;
  bootstraps: number;
}

/** What a run changed: keys whose count went up (+n) or down (-n), and the bootstraps it made. */
export interface Effect {
  changed: Map<string, number>;
  bootstraps: number;
}

/** Run-specific parts of a name (hashes, run tags, timestamps, ids) as `#`, so runs compare. */
const normalize = (name: string): string => name.replace(/[0-9a-f]{6,}/g, '#').replace(/\d+/g, '#');

/** Kubernetes collections whose objects a run may make or leak. */
const KUBE_COLLECTIONS: Array<[string, string]> = [
  ['namespace', '/api/v1/namespaces'],
  ['pvc', '/api/v1/persistentvolumeclaims'],
  ['job', '/apis/batch/v1/jobs'],
  ['pod', '/api/v1/pods'],
  ['replicationdestination', '/apis/volsync.backube/v1alpha1/replicationdestinations'],
  ['volumesnapshot', '/apis/snapshot.storage.k8s.io/v1/volumesnapshots'],
];

export async function labState(lab: ChaosLab): Promise<LabState> {
  const objects = new Map<string, number>();
  const add = (key: string) => objects.set(key, (objects.get(key) ?? 0) + 1);

  for (const vm of await lab.pve.vms()) {
    add(`pve ${vm.template ? 'template' : 'vm'} ${normalize(vm.name)}${vm.lock ? ` (locked ${vm.lock})` : ''}`);
    if (!vm.template && vm.status === 'running') add(`pve running ${normalize(vm.name)}`);
  }

  const ec2 = new EC2Client({
    endpoint: lab.sim.env.AWS_ENDPOINT_URL_EC2,
    region: 'us-east-1',
    credentials: MOTO_CREDENTIALS,
  });
  try {
    const out = await ec2.send(new DescribeInstancesCommand({}));
    for (const i of (out.Reservations ?? []).flatMap((r) => r.Instances ?? [])) {
      const state = i.State?.Name ?? 'unknown';
      if (state === 'terminated' || state === 'shutting-down') continue;
      add(`ec2 instance ${state}`);
    }
  } finally {
    ec2.destroy();
  }
  for (const r of lab.ec2.spotRequests()) if (r.state !== 'cancelled') add(`ec2 spot request ${r.state}`);

  // A deleted namespace stays Terminating here (no namespace controller runs), and so does what
  // it holds: the run deleted them, and a real cluster's controllers finish the job.
  const terminating = new Set<string>();
  for (const [kind, collection] of KUBE_COLLECTIONS) {
    const res = await kubeRequest(lab.kube, 'GET', collection);
    if (res.status === 404) continue; // a CRD the cluster lacks
    if (res.status !== 200) throw new Error(`GET ${collection}: ${res.status} ${res.body.slice(0, 200)}`);
    const items = res.json<{
      items: Array<{ metadata: { name: string; namespace?: string; deletionTimestamp?: string } }>;
    }>().items;
    for (const { metadata: m } of items) {
      if (kind === 'namespace' && m.deletionTimestamp) terminating.add(m.name);
      if (m.deletionTimestamp || (m.namespace && terminating.has(m.namespace))) continue;
      add(`k8s ${kind} ${normalize(`${m.namespace ?? ''}/${m.name}`)}`);
    }
  }

  const secretsDir = lab.sim.env.LABWRIGHT_SECRETS_DIR!;
  for (const file of await fs.readdir(secretsDir, { recursive: true, withFileTypes: true })) {
    if (file.isFile()) add(`secret ${normalize(path.relative(secretsDir, path.join(file.parentPath, file.name)))}`);
  }

  for (const program of labPrograms(lab)) add(`process ${program}`);

  return {
    objects,
    bootstraps: lab.standin.bootstraps.filter((b) => b.outcome === 'bootstrapped').length,
  };
}

/**
 * Programs the worker ran for the lab that still run (Packer, talosctl): their command line
 * names the lab's folder (Packer's work folder, the stand-in's talosctl). The peers' own
 * long-running processes are left out (`lab.peerPids`).
 */
function labPrograms(lab: ChaosLab): string[] {
  const found: string[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry) || lab.peerPids.has(Number(entry))) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      if (stat.slice(stat.lastIndexOf(')') + 2)[0] === 'Z') continue;
      const argv = readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0').filter(Boolean);
      if (!argv.some((a) => a.includes(lab.dir))) continue;
      found.push(
        normalize(
          argv
            .slice(0, 2)
            .map((a) => path.basename(a))
            .join(' '),
        ),
      );
    } catch {
      /* exited meanwhile */
    }
  }
  return found;
}

export function effectOf(before: LabState, after: LabState): Effect {
  const changed = new Map<string, number>();
  for (const key of new Set([...before.objects.keys(), ...after.objects.keys()])) {
    const d = (after.objects.get(key) ?? 0) - (before.objects.get(key) ?? 0);
    if (d !== 0) changed.set(key, d);
  }
  return { changed, bootstraps: after.bootstraps - before.bootstraps };
}

export interface Verdict {
  /** Objects the run left that a clean run does not (`pve vm canary-#`). */
  leaked: string[];
  /** Effects done more often than a clean run does them (`2 etcd bootstraps`). */
  duplicated: string[];
}

/** How `effect` differs from `clean`'s: a key a clean run never adds is a leak, more of one is a duplicate. */
export function compareEffects(effect: Effect, clean: Effect): Verdict {
  const leaked: string[] = [];
  const duplicated: string[] = [];
  for (const [key, d] of effect.changed) {
    const expected = clean.changed.get(key) ?? 0;
    if (d <= expected) continue;
    if (expected <= 0) leaked.push(`${key} (${d > 0 ? '+' : ''}${d}, clean run ${expected})`);
    else duplicated.push(`${key} (+${d}, clean run +${expected})`);
  }
  if (effect.bootstraps > clean.bootstraps) {
    duplicated.push(`${effect.bootstraps} etcd bootstraps (clean run ${clean.bootstraps})`);
  }
  return { leaked, duplicated };
}
