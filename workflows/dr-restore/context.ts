/**
 * What every step of a DR restore works with: the activities, the progress tracker, the input
 * and the clock, passed explicitly (the orchestrator in workflows/dr-restore.ts builds it once).
 */
import * as wf from '@temporalio/workflow';
import type { DrReportActivities } from '../../activities/dr-reports.js';
import type { TemporalActivities } from '../../activities/temporal.js';
import type { createKubernetesActivities, PvcWorkload } from '../../activities/kubernetes.js';
import type { createProxmoxActivities } from '../../activities/proxmox.js';
import type { createTalosActivities } from '../../activities/talos.js';
import { apiCall, oneShot, waitFor } from '../../common/activity-options.js';
import { formatBytes, type BackupInfo, type DrRestoreParsed, type DrTarget } from '../../common/dr-restore.js';
import { nonRetryable } from '../../common/errors.js';
import type { ProgressTracker } from '../../common/progress.js';
import type { SecretRef } from '../../common/secret-ref.js';
import type { Inventory } from '../../hardware/schema.js';

export type Kube = ReturnType<typeof createKubernetesActivities>;
type Pve = ReturnType<typeof createProxmoxActivities>;
type Talos = ReturnType<typeof createTalosActivities>;

/** The activity proxies, one per system and retry profile. */
export function drActivities() {
  return {
    kube: wf.proxyActivities<Kube>(apiCall),
    kubeWait: wf.proxyActivities<Kube>(waitFor),
    pve: wf.proxyActivities<Pve>(apiCall),
    pveWait: wf.proxyActivities<Pve>(waitFor),
    talos: wf.proxyActivities<Talos>(apiCall),
    talosOnce: wf.proxyActivities<Talos>(oneShot),
    talosWait: wf.proxyActivities<Talos>(waitFor),
    files: wf.proxyActivities<DrReportActivities>(apiCall),
    temporal: wf.proxyActivities<TemporalActivities>(apiCall),
  };
}
export type DrActivities = ReturnType<typeof drActivities>;

export interface DrContext {
  input: DrRestoreParsed;
  info: wf.WorkflowInfo;
  drill: boolean;
  /** An etcd drill recovers on a scratch control plane (runs before `etcd-drill-recover` did not). */
  scratchEtcd: boolean;
  kubeconfig: SecretRef;
  talosconfig: SecretRef;
  /** Parsed when a target needs it (VMIDs of the drill range, etcd nodes). */
  inventory: Inventory | undefined;
  /** A drill's scratch namespace for PVCs. */
  namespace: string;
  /** What tells this run's names apart (Volsync trigger, Job names): see runTag. */
  runTag: string;
  act: DrActivities;
  progress: ProgressTracker;
  /** What a drill made, in order; the cleanup removes it newest first. */
  made: Made[];
  /** Workflow time (deterministic in the sandbox): now, and a deadline `seconds` from now. */
  clock: { now(): number; deadline(seconds: number): number };
}

/** The workflow's clock: Date.now() is the workflow task's time in Temporal's sandbox. */
export const workflowClock: DrContext['clock'] = {
  now: () => Date.now(),
  deadline: (seconds) => Date.now() + seconds * 1000,
};

/** One target's progress line in the `restore and verify` step. */
export type StepDetail = (detail: string) => void;

/** What one target's restore verified. */
export interface Restored {
  verification: string;
  restoredBytes?: number;
}

/** What the checks found for one target, used by its restore. */
export type Checked = CheckedPvc | CheckedVm | CheckedEtcd;
export interface CheckedPvc {
  target: Extract<DrTarget, { kind: 'pvc' }>;
  backup: BackupInfo;
  replicationSource: string;
  /** The Flux Kustomization that applies the ReplicationSource (suspended during a restore). */
  kustomization?: { namespace: string; name: string };
  repository: string;
  capacity: string;
  accessModes: string[];
  storageClassName?: string;
  /** restore mode: the Deployments/StatefulSets mounting the PVC, scaled to 0 and back. */
  users?: PvcWorkload[];
}
export interface CheckedVm {
  target: Extract<DrTarget, { kind: 'vm' }>;
  backup: BackupInfo;
  archive: string;
  currentName?: string;
}
export interface CheckedEtcd {
  target: Extract<DrTarget, { kind: 'etcd' }>;
  backup: BackupInfo;
  snapshot: string;
  /** What the integrity check found (bbolt, appended sha256). */
  integrity: string;
  address?: string;
}

/** Something a drill made, removed again at the end. */
export type Made =
  | { kind: 'k8s'; apiVersion: string; k8sKind: string; namespace?: string; name: string }
  | { kind: 'vm'; host: string; node: string; vmid: number; name: string }
  /** A scratch cluster's Talos material in the secret store (`talos/<drill-...>/`). */
  | { kind: 'talos'; cluster: string };

/** `Deployment grafana (1 -> 0)`, or with the replicas they had: `Deployment grafana to 1`. */
export function describeUsers(users: PvcWorkload[], to?: number): string {
  return users
    .map((u) => `${u.kind} ${u.name} ${to === undefined ? `to ${u.replicas}` : `from ${u.replicas} to ${to}`}`)
    .join(', ');
}

export function assertSize(what: string, bytes: number | undefined, min: number): void {
  if (bytes === undefined || bytes === 0)
    throw nonRetryable('precondition', `${what} is empty (no size reported): refused`);
  if (bytes < min) {
    throw nonRetryable(
      'precondition',
      `${what} holds ${formatBytes(bytes)}, less than the minimum ${formatBytes(min)}: refused`,
    );
  }
}

/** The innermost message of an activity failure (`ActivityFailure` wraps the activity's own). */
export function causeMessage(err: unknown): string {
  let e = err as { message?: string; cause?: unknown } | undefined;
  while (e?.cause && typeof e.cause === 'object') e = e.cause as typeof e;
  return e?.message ?? String(err);
}
