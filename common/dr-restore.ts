/**
 * The DR restore's contract: input (a plan of targets), workflow IDs, the approval signal and the
 * queries, the objects it creates (ReplicationDestination, restored PVC, verification Job), the
 * scratch names of a drill, the backup checks, and the report with RTO and RPO.
 *
 * Pure: no I/O, so the workflow plans deterministically before anything is touched.
 */
import * as wf from '@temporalio/workflow';
import { z } from 'zod';
import { ipv4Schema, nameSchema, vmidSchema } from '../hardware/schema.js';
import { durationSchema, formatDuration } from './llm-burst.js';
import { secretRefSchema } from './secret-ref.js';

// ------------------------------------------------------------------ quantities

const QUANTITY_UNITS: Record<string, number> = {
  '': 1,
  k: 1e3,
  M: 1e6,
  G: 1e9,
  T: 1e12,
  Ki: 1024,
  Mi: 1024 ** 2,
  Gi: 1024 ** 3,
  Ti: 1024 ** 4,
};

/** A Kubernetes quantity (`1Gi`, `500M`, `1073741824`) in bytes; undefined when malformed. */
export function quantityBytes(value: string | number | undefined): number | undefined {
  if (value === undefined) return undefined;
  if (typeof value === 'number') return value;
  const m = /^(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?$/.exec(value.trim());
  if (!m) return undefined;
  return Math.round(Number(m[1]) * QUANTITY_UNITS[m[2] ?? '']!);
}

export const quantitySchema = z
  .string()
  .refine((v) => quantityBytes(v) !== undefined, { message: 'expected a quantity like 1Gi, 500Mi or 10G' });

export function formatBytes(bytes: number): string {
  for (const [unit, size] of [
    ['Ti', 1024 ** 4],
    ['Gi', 1024 ** 3],
    ['Mi', 1024 ** 2],
    ['Ki', 1024],
  ] as const) {
    if (bytes >= size) return `${Math.round((bytes / size) * 10) / 10}${unit}`;
  }
  return `${bytes}B`;
}

// ------------------------------------------------------------------ input

const sha256Schema = z.string().regex(/^[0-9a-f]{64}$/, 'expected a sha256 hex digest (64 hex digits)');

export const pvcTargetSchema = z.strictObject({
  kind: z.literal('pvc'),
  /** The PVC's namespace and name. */
  namespace: nameSchema,
  pvc: nameSchema,
  /** The Volsync ReplicationSource that backs it up (restic); default: named like the PVC. */
  replicationSource: nameSchema.optional(),
  /** The restored data must be at least this big (the mover's restore size, the PVC's capacity). */
  minSize: quantitySchema.default('1Mi'),
  /** Capacity of the drill's restored volume; default the source PVC's request. */
  capacity: quantitySchema.optional(),
  storageClassName: z.string().optional(),
  volumeSnapshotClassName: z.string().optional(),
  /** A file in the volume whose sha256 the verification Job checks. */
  sentinel: z.strictObject({
    path: z.string().min(1).regex(/^[^/]/, 'a path inside the volume'),
    sha256: sha256Schema,
  }),
});

export const vmTargetSchema = z.strictObject({
  kind: z.literal('vm'),
  /** Label of the target in the plan and report, e.g. `home-assistant`. */
  name: nameSchema,
  /** The inventory's Proxmox host, the PVE node and the VM's VMID (its backups are of this VMID). */
  host: nameSchema,
  node: nameSchema,
  vmid: vmidSchema,
  /** Storage holding the vzdump archives. */
  backupStorage: z.string().min(1),
  /** Storage the disks are restored to (PVE's default when left out). */
  restoreStorage: z.string().optional(),
  /** Archives smaller than this are refused as empty. */
  minArchiveSize: quantitySchema.default('1Mi'),
});

export const etcdTargetSchema = z.strictObject({
  kind: z.literal('etcd'),
  /** The inventory's cluster. */
  cluster: nameSchema,
  /** Folder on the worker with `talosctl etcd snapshot` files (`*.snapshot`, `*.db`); the newest is used. */
  snapshotDir: z.string().startsWith('/', 'expected an absolute path'),
  /** Control plane to recover on (restore mode); default the cluster's first. */
  node: nameSchema.optional(),
  minSize: quantitySchema.default('1Mi'),
  /**
   * The snapshot is a raw copy of `member/snap/db` (no sha256 appended, as `talosctl etcd
   * snapshot` appends): recover with `--recover-skip-hash-check`. Otherwise such a file is refused.
   */
  skipHashCheck: z.boolean().default(false),
  /**
   * A drill's scratch control plane: a VM cloned from the cluster's template into a VMID of the
   * drill range, with the cluster's secrets, that etcd is recovered on. `ip` is its static address
   * (the Talos API the worker dials); `net` its NIC's PVE network (`bridge=vmbr9,tag=999`: a drill
   * network only the worker reaches); without `net` the NIC is the cluster's bridge with the link
   * down and no VLAN, as a drill VM's. Required for a drill of this target.
   */
  drill: z
    .strictObject({
      ip: ipv4Schema,
      net: z
        .string()
        .regex(/^bridge=[^,]+(,[a-z_]+=[^,]+)*$/, 'expected a PVE net value without model, like bridge=vmbr9,tag=999')
        .optional(),
    })
    .optional(),
});

export const drTargetSchema = z.discriminatedUnion('kind', [pvcTargetSchema, vmTargetSchema, etcdTargetSchema]);
export type DrTarget = z.infer<typeof drTargetSchema>;

export const DR_MODES = ['drill', 'restore'] as const;
export type DrMode = (typeof DR_MODES)[number];

export const drRestoreInputSchema = z.strictObject({
  /** The plan's name: one workflow per plan and mode (`dr-restore/<plan>`, `dr-drill/<plan>`). */
  plan: nameSchema,
  /** drill: restore into scratch space, verify, always clean up. restore: replace the real targets after approval. */
  mode: z.enum(DR_MODES),
  /** The cluster whose kubeconfig and talosconfig are used (default `home`). */
  cluster: nameSchema.default('home'),
  /** Admin kubeconfig; default `talos/<cluster>/kubeconfig` in the secret store. */
  kubeconfig: secretRefSchema.optional(),
  /** talosconfig for etcd targets; default `talos/<cluster>/talosconfig`. */
  talosconfig: secretRefSchema.optional(),
  /** The lab inventory; the worker's own when left out. */
  inventory: z.record(z.string(), z.unknown()).optional(),
  targets: z.array(drTargetSchema).min(1),
  /** A backup older than this fails the run before anything is touched (seconds, or `26h`, `7d`). */
  maxBackupAge: durationSchema.prefault('26h'),
  /** How long a restore waits for its approval signal before giving up, touching nothing. */
  approvalTimeout: durationSchema.prefault('24h'),
  /** Image of the verification Job. */
  verifyImage: z.string().min(1).default('docker.io/library/busybox:1.37'),
  /** Deadlines (seconds): a Volsync sync, the verification Job, a VM's guest agent. */
  syncTimeoutSeconds: z.int().min(1).max(86_400).default(3600),
  jobTimeoutSeconds: z.int().min(1).max(86_400).default(1800),
  agentTimeoutSeconds: z.int().min(1).max(86_400).default(600),
  /** A PVC restore in place: how long the app's pods may take to go after it is scaled to 0. */
  scaleDownTimeoutSeconds: z.int().min(1).max(86_400).default(600),
  /** An etcd recovery: how long etcd may take to come up with a member after the bootstrap. */
  etcdTimeoutSeconds: z.int().min(1).max(86_400).default(600),
  /** How often the workflow looks at a sync, in seconds. */
  pollSeconds: z.number().min(0.2).max(600).default(10),
});
export type DrRestoreInput = z.input<typeof drRestoreInputSchema>;
export type DrRestoreParsed = z.output<typeof drRestoreInputSchema>;

export function drRestoreWorkflowId(plan: string, mode: DrMode): string {
  return mode === 'drill' ? `dr-drill/${plan}` : `dr-restore/${plan}`;
}

/** The Temporal Schedule that runs a plan's drill weekly. */
export function drDrillScheduleId(plan: string): string {
  return `dr-drill/${plan}`;
}

// ------------------------------------------------------------------ names

/** A DNS label of at most 63 characters: long names keep their start and a hash of the whole. */
export function dnsLabel(text: string): string {
  const clean = text
    .toLowerCase()
    .replace(/[^a-z0-9-]+/g, '-')
    .replace(/^-+|-+$/g, '');
  if (clean.length <= 63) return clean;
  return `${clean.slice(0, 54).replace(/-+$/, '')}-${fnv1a(clean).slice(0, 8)}`;
}

/** FNV-1a (32 bit) in hex: a deterministic short hash for names and plan digests. */
export function fnv1a(text: string): string {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h.toString(16).padStart(8, '0');
}

/**
 * The scratch namespace a drill restores a plan's PVCs into: one per run, so that a drill never
 * meets the previous one's namespace still terminating, nor removes another run's objects.
 */
export function drillNamespace(plan: string, runId: string, unique = true): string {
  return dnsLabel(`dr-drill-${plan}-${runTag(runId, unique)}`);
}

/**
 * The part of a run's scratch names, Volsync triggers and Job names that tells runs apart: the
 * random end of its run ID. Run IDs are UUIDv7, whose first 8 hex digits are the start time's
 * top bits, shared by all runs started within about a minute; runs started before
 * `run-unique-names` used them (`unique` false) and keep them.
 */
export function runTag(runId: string, unique = true): string {
  return unique ? runId.replace(/-/g, '').slice(-8) : runId.slice(0, 8);
}

/** The name of a drill VM (PVE name, and the ownership guard when it is deleted). */
export function drillVmName(plan: string, target: string): string {
  return dnsLabel(`drill-${plan}-${target}`);
}

/**
 * The scratch control plane of an etcd drill: its VM name, hostname and scratch cluster name (the
 * secret store's `talos/<name>/`). Always starts with `drill-`: only such names are ever removed.
 */
export function drillEtcdName(plan: string, cluster: string): string {
  return drillVmName(plan, `etcd-${cluster}`);
}

/** A locally administered MAC for a scratch VM, derived from its name (02:4c:57 + 24 bits of a hash). */
export function drillMac(name: string): string {
  const h = fnv1a(name);
  return `02:4c:57:${h.slice(0, 2)}:${h.slice(2, 4)}:${h.slice(4, 6)}`;
}

/**
 * The patch a scratch control plane gets on top of the cluster's: no cluster discovery, so that a
 * node carrying the cluster's ID and secret never registers as one of the real cluster's members.
 */
export const DRILL_CONTROL_PLANE_PATCH = JSON.stringify({ cluster: { discovery: { enabled: false } } });

export function targetLabel(t: DrTarget): string {
  if (t.kind === 'pvc') return `pvc ${t.namespace}/${t.pvc}`;
  if (t.kind === 'vm') return `vm ${t.name} (${t.vmid})`;
  return `etcd ${t.cluster}`;
}

export const DR_LABELS = { 'app.kubernetes.io/managed-by': 'labwright', 'labwright.dev/dr': 'true' };

// ------------------------------------------------------------------ objects

export function replicationDestinationObject(args: {
  name: string;
  namespace: string;
  trigger: string;
  repository: string;
  plan: string;
  /** Direct: restore into `destinationPVC` (restore mode); Snapshot: a new VolumeSnapshot (drill). */
  direct?: { destinationPVC: string };
  /** The approved backup's time: Volsync restores the newest snapshot at or before it, not the latest. */
  restoreAsOf: string;
  capacity: string;
  accessModes: string[];
  storageClassName?: string;
  volumeSnapshotClassName?: string;
}) {
  return {
    apiVersion: 'volsync.backube/v1alpha1',
    kind: 'ReplicationDestination',
    metadata: { name: args.name, namespace: args.namespace, labels: { ...DR_LABELS, 'labwright.dev/plan': args.plan } },
    spec: {
      trigger: { manual: args.trigger },
      restic: {
        repository: args.repository,
        restoreAsOf: args.restoreAsOf,
        ...(args.direct
          ? // In place, files created after the backup (a SQLite -wal) must go: restic restore --delete.
            { copyMethod: 'Direct', destinationPVC: args.direct.destinationPVC, enableFileDeletion: true }
          : {
              copyMethod: 'Snapshot',
              capacity: args.capacity,
              accessModes: args.accessModes,
              ...(args.storageClassName ? { storageClassName: args.storageClassName } : {}),
              ...(args.volumeSnapshotClassName ? { volumeSnapshotClassName: args.volumeSnapshotClassName } : {}),
            }),
      },
    },
  };
}

export function restoredPvcObject(args: {
  name: string;
  namespace: string;
  snapshot: string;
  capacity: string;
  accessModes: string[];
  storageClassName?: string;
  plan: string;
}) {
  return {
    apiVersion: 'v1',
    kind: 'PersistentVolumeClaim',
    metadata: { name: args.name, namespace: args.namespace, labels: { ...DR_LABELS, 'labwright.dev/plan': args.plan } },
    spec: {
      accessModes: args.accessModes,
      resources: { requests: { storage: args.capacity } },
      ...(args.storageClassName ? { storageClassName: args.storageClassName } : {}),
      dataSource: { apiGroup: 'snapshot.storage.k8s.io', kind: 'VolumeSnapshot', name: args.snapshot },
    },
  };
}

/**
 * The verification Job: mounts the restored PVC read-only, checks the sentinel's sha256 and that
 * the volume holds at least `minBytes`; its exit code is the verdict.
 */
export function verifyJobObject(args: {
  name: string;
  namespace: string;
  pvc: string;
  image: string;
  sentinelPath: string;
  sha256: string;
  minBytes: number;
  plan: string;
}) {
  const minKiB = Math.ceil(args.minBytes / 1024);
  const file = `/data/${args.sentinelPath}`;
  const script = [
    'set -eu',
    `echo "${args.sha256}  ${file}" | sha256sum -c -`,
    `used=$(du -sk /data | cut -f1)`,
    `if [ "$used" -lt ${minKiB} ]; then echo "restored volume holds $used KiB, less than ${minKiB} KiB"; exit 3; fi`,
    `echo "sentinel ok; $used KiB"`,
  ].join('\n');
  return {
    apiVersion: 'batch/v1',
    kind: 'Job',
    metadata: { name: args.name, namespace: args.namespace, labels: { ...DR_LABELS, 'labwright.dev/plan': args.plan } },
    spec: {
      backoffLimit: 0,
      ttlSecondsAfterFinished: 86_400,
      template: {
        metadata: { labels: DR_LABELS },
        spec: {
          restartPolicy: 'Never',
          containers: [
            {
              name: 'verify',
              image: args.image,
              command: ['sh', '-c', script],
              volumeMounts: [{ name: 'data', mountPath: '/data', readOnly: true }],
            },
          ],
          volumes: [{ name: 'data', persistentVolumeClaim: { claimName: args.pvc, readOnly: true } }],
        },
      },
    },
  };
}

/** A PVE net value with the link down (`link_down=1`) and no VLAN tag: the drill VM is cut off. */
export function isolatedNet(value: string): string {
  const parts = value.split(',').filter((p) => !/^(link_down|tag)=/.test(p));
  return [...parts, 'link_down=1'].join(',');
}

// ------------------------------------------------------------------ plan, approval, report

export interface BackupInfo {
  /** What was found: a ReplicationSource's last sync, an archive's volid, a snapshot file. */
  id: string;
  /** When the backup was taken (ISO time). */
  takenAt: string;
  ageMs: number;
  /** Bytes, when the backup system says. */
  size?: number;
}

export interface PlanItem {
  target: string;
  kind: DrTarget['kind'];
  backup: BackupInfo;
  /** What a restore overwrites, or where a drill restores to. */
  overwrites?: string;
  into: string;
}

export interface DrPlan {
  plan: string;
  mode: DrMode;
  /** A digest of the items: an approval must carry it. */
  digest: string;
  items: PlanItem[];
  computedAt: string;
}

export function planDigest(items: PlanItem[]): string {
  return fnv1a(JSON.stringify(items.map((i) => [i.target, i.backup.id, i.backup.takenAt, i.overwrites ?? i.into])));
}

export interface Approval {
  /** The digest of the plan the approver read (the `plan` query). */
  digest: string;
  /** The Temporal identity of the client that sent the update, as the server recorded it. */
  by: string;
  comment?: string;
}

/** The `approve` update: approve (or reject) the plan with this digest. */
export interface ApproveRequest {
  digest: string;
  approve: boolean;
  reason?: string;
}

export interface ApproveResult {
  decision: 'approved' | 'rejected';
  digest: string;
  by: string;
}

export const approveUpdate = wf.defineUpdate<ApproveResult, [ApproveRequest]>('approve');

/** Why an approve update is refused before it is accepted; undefined when it may proceed. */
export function approvalProblem(
  req: ApproveRequest,
  plan: DrPlan | null,
  phase: DrStatus['phase'],
  decided: boolean,
): string | undefined {
  if (typeof req?.digest !== 'string' || typeof req.approve !== 'boolean') {
    return 'expected { digest: string, approve: boolean, reason?: string }';
  }
  if (!plan) return 'no plan computed yet: the backups are still being checked';
  if (plan.mode !== 'restore') return `${plan.plan} is a drill: it needs no approval`;
  if (decided || phase !== 'awaiting-approval') return `the plan is no longer awaiting approval (${phase})`;
  if (req.digest !== plan.digest) {
    return `digest ${req.digest} is not the plan's ${plan.digest}: read the plan again (labwright plan) and approve what it shows`;
  }
  if (!req.approve && !req.reason) return 'a rejection needs a reason';
  return undefined;
}
export const planQuery = wf.defineQuery<DrPlan | null>('plan');
export const drStatusQuery = wf.defineQuery<DrStatus>('drStatus');

export interface DrStatus {
  phase: 'checking' | 'awaiting-approval' | 'restoring' | 'verifying' | 'cleaning-up' | 'done' | 'failed';
  approval?: Approval;
  rejection?: { by: string; reason: string };
  detail?: string;
}

export interface TargetReport {
  target: string;
  kind: DrTarget['kind'];
  ok: boolean;
  backup: BackupInfo;
  /** Time from the start of this target's restore to its verified data. */
  rtoMs?: number;
  /** The age of the backup used when the restore began. */
  rpoMs: number;
  /** Where it was restored to. */
  restoredTo: string;
  verification?: string;
  /** Bytes of the restored data, as the mover or the backup reports. */
  restoredBytes?: number;
  error?: string;
  /** What the drill created and removed again. */
  cleanedUp?: string[];
}

export interface DrReport {
  plan: string;
  mode: DrMode;
  workflowId: string;
  runId: string;
  ok: boolean;
  startedAt: string;
  finishedAt: string;
  /** From the start of the restore (restore: the approval) to the last target verified. */
  totalRtoMs: number;
  /** The drill's cleanup after the last verification, reported apart from the RTO. */
  cleanupMs: number;
  /** The oldest backup used. */
  maxRpoMs: number;
  targets: TargetReport[];
  error?: string;
  /** Everything a drill created and removed again (or could not: marked `LEFT`). */
  cleanedUp: string[];
  /** The previous report of the same plan and mode, for the trend. */
  previous?: { workflowId: string; finishedAt: string; ok: boolean; totalRtoMs: number; maxRpoMs: number };
  /** totalRtoMs minus the previous run's (negative: faster). */
  rtoTrendMs?: number;
  summary: string;
}

export function summarize(r: Omit<DrReport, 'summary'>): string {
  const verb = r.mode === 'drill' ? 'drill' : 'restore';
  const head = r.ok
    ? `${verb} ${r.plan}: ${r.targets.length} target(s) restored and verified`
    : `${verb} ${r.plan} FAILED: ${r.error ?? 'see targets'}`;
  const trend =
    r.rtoTrendMs === undefined
      ? ''
      : `; RTO ${r.rtoTrendMs <= 0 ? 'down' : 'up'} ${formatDuration(Math.abs(r.rtoTrendMs))} from the last run`;
  return `${head}; RTO ${formatDuration(r.totalRtoMs)}, RPO ${formatDuration(r.maxRpoMs)}${trend}`;
}

export { formatDuration };
