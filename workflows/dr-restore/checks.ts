/**
 * Steps 2 and 3 of a DR restore: every target's backup checked before anything is touched, and
 * the plan computed from what the checks found (drill VMIDs chosen once, recorded with it).
 */
import * as wf from '@temporalio/workflow';
import {
  drillEtcdName,
  formatBytes,
  formatDuration,
  planDigest,
  quantityBytes,
  targetLabel,
  type DrPlan,
  type DrTarget,
  type PlanItem,
} from '../../common/dr-restore.js';
import { nonRetryable } from '../../common/errors.js';
import { recordBackupAge } from '../../common/metrics.js';
import { planCluster } from '../../common/talos.js';
import { describeUsers, type Checked, type CheckedPvc, type CheckedVm, type DrContext } from './context.js';

/**
 * All targets checked, every problem named, before anything is touched. A drill first makes sure
 * it is the only drill of its plan.
 */
export async function checkBackups(ctx: DrContext): Promise<Checked[]> {
  const { input, drill, info, act } = ctx;
  // One drill per plan at a time, whoever starts it (a manual run, the weekly schedule's
  // `dr-drill/<plan>-<time>`): the one that started later gives way, touching nothing.
  if (drill && wf.patched('one-drill-per-plan')) {
    const others = await act.temporal.temporalRunningWorkflows({ workflowType: 'drRestore', resource: input.plan });
    const mine = info.startTime.getTime();
    const earlier = others.find(
      (o) =>
        o.workflowId.startsWith('dr-drill/') &&
        o.runId !== info.runId &&
        (Date.parse(o.startTime) < mine || (Date.parse(o.startTime) === mine && o.runId < info.runId)),
    );
    if (earlier) {
      throw nonRetryable(
        'precondition',
        `drill ${input.plan}: another drill of this plan is running (${earlier.workflowId}, started ${earlier.startTime}): one drill per plan at a time; nothing was touched`,
      );
    }
  }
  const results = await Promise.all(input.targets.map((t) => checkBackup(ctx, t)));
  const problems = results.filter((r): r is { problem: string } => 'problem' in r).map((r) => r.problem);
  if (problems.length > 0) {
    throw nonRetryable('precondition', `${input.mode} ${input.plan}: ${problems.join('; ')}; nothing was touched`, {
      problems,
    });
  }
  return results as Checked[];
}

/** The plan: drill VMs get free VMIDs of the drill range here, once (indexed like `checked`). */
export async function computePlan(
  ctx: DrContext,
  checked: Checked[],
): Promise<{ plan: DrPlan; drillVmids: Map<number, number> }> {
  const { input, drill, inventory, scratchEtcd } = ctx;
  const drillVmids = new Map<number, number>();
  if (drill) {
    for (const [i, c] of checked.entries()) {
      if (c.target.kind !== 'vm' && !(c.target.kind === 'etcd' && scratchEtcd)) continue;
      const vmid = await ctx.act.pve.pveNextFreeVmid({
        host: c.target.kind === 'vm' ? c.target.host : planCluster(inventory!, c.target.cluster).template.host,
        range: inventory!.proxmox.vmidRanges.drills,
        exclude: [...drillVmids.values()],
      });
      drillVmids.set(i, vmid);
    }
  }
  const items = checked.map((c, i) => planItem(ctx, c, drillVmids.get(i)));
  const plan: DrPlan = {
    plan: input.plan,
    mode: input.mode,
    digest: planDigest(items),
    items,
    computedAt: new Date(ctx.clock.now()).toISOString(),
  };
  return { plan, drillVmids };
}

async function checkBackup(ctx: DrContext, t: DrTarget): Promise<Checked | { problem: string }> {
  const { input, kubeconfig, talosconfig, inventory } = ctx;
  const { kube, pve, talos, files } = ctx.act;
  const now = ctx.clock.now();
  const label = targetLabel(t);
  const tooOld = (takenAt: number): string | undefined => {
    recordBackupAge({ plan: input.plan, mode: input.mode }, label, t.kind, now - takenAt);
    return now - takenAt > input.maxBackupAge
      ? `${label}: the newest backup is ${formatDuration(now - takenAt)} old, older than maxBackupAge ${formatDuration(input.maxBackupAge)}`
      : undefined;
  };
  if (t.kind === 'pvc') {
    const rsName = t.replicationSource ?? t.pvc;
    const rs = await kube.k8sGetObject({
      kubeconfig,
      apiVersion: 'volsync.backube/v1alpha1',
      kind: 'ReplicationSource',
      namespace: t.namespace,
      name: rsName,
    });
    if (!rs.exists) return { problem: `${label}: no ReplicationSource ${t.namespace}/${rsName}: no backup` };
    const o = rs.object as {
      metadata?: { labels?: Record<string, string> };
      spec?: { restic?: { repository?: string } };
      status?: { lastSyncTime?: string };
    };
    const fluxName = o.metadata?.labels?.['kustomize.toolkit.fluxcd.io/name'];
    const fluxNamespace = o.metadata?.labels?.['kustomize.toolkit.fluxcd.io/namespace'];
    const last = o.status?.lastSyncTime;
    if (!last) return { problem: `${label}: ReplicationSource ${t.namespace}/${rsName} has never completed a backup` };
    const old = tooOld(Date.parse(last));
    if (old) return { problem: old };
    const repository = o.spec?.restic?.repository;
    if (!repository) return { problem: `${label}: ReplicationSource ${t.namespace}/${rsName} is not a restic source` };
    const pvc = await kube.k8sGetObject({
      kubeconfig,
      apiVersion: 'v1',
      kind: 'PersistentVolumeClaim',
      namespace: t.namespace,
      name: t.pvc,
    });
    const spec = (pvc.object?.spec ?? {}) as {
      accessModes?: string[];
      storageClassName?: string;
      resources?: { requests?: { storage?: string } };
    };
    const capacity = t.capacity ?? spec.resources?.requests?.storage;
    if (!capacity) return { problem: `${label}: PVC ${t.namespace}/${t.pvc} does not exist and no capacity was given` };
    // In place, the PVC must not be in use while Volsync writes into it: the Deployments and
    // StatefulSets mounting it are scaled to 0 and back; a pod nothing would scale is refused.
    let users: CheckedPvc['users'];
    if (input.mode === 'restore') {
      if (!pvc.exists)
        return { problem: `${label}: PVC ${t.namespace}/${t.pvc} does not exist: nothing to restore into` };
      const found = await kube.k8sPvcUsers({ kubeconfig, namespace: t.namespace, pvc: t.pvc });
      const unowned = found.pods.filter((p) => !p.owner);
      if (unowned.length > 0) {
        return {
          problem: `${label}: pod(s) ${unowned.map((p) => `${t.namespace}/${p.name} (${p.phase})`).join(', ')} mount the PVC and no Deployment or StatefulSet owns them: stop them first`,
        };
      }
      users = found.workloads;
    }
    return {
      target: t,
      backup: {
        id: `ReplicationSource ${t.namespace}/${rsName} sync of ${last}`,
        takenAt: new Date(Date.parse(last)).toISOString(),
        ageMs: now - Date.parse(last),
      },
      replicationSource: rsName,
      ...(fluxName && fluxNamespace ? { kustomization: { namespace: fluxNamespace, name: fluxName } } : {}),
      repository,
      capacity,
      accessModes: spec.accessModes ?? ['ReadWriteOnce'],
      ...(spec.storageClassName ? { storageClassName: spec.storageClassName } : {}),
      ...(users ? { users } : {}),
    };
  }
  if (t.kind === 'vm') {
    const backups = await pve.pveListBackups({ host: t.host, node: t.node, storage: t.backupStorage, vmid: t.vmid });
    const newest = backups[0];
    if (!newest) return { problem: `${label}: no backup of VM ${t.vmid} on ${t.host}/${t.backupStorage}` };
    const takenAt = newest.ctime * 1000;
    const old = tooOld(takenAt);
    if (old) return { problem: old };
    const min = quantityBytes(t.minArchiveSize)!;
    if (newest.size < min) {
      return {
        problem: `${label}: the newest backup ${newest.volid} holds ${formatBytes(newest.size)}, less than ${formatBytes(min)}: empty`,
      };
    }
    const current = input.mode === 'restore' ? await pve.pveGetVm({ host: t.host, node: t.node, vmid: t.vmid }) : null;
    return {
      target: t,
      backup: { id: newest.volid, takenAt: new Date(takenAt).toISOString(), ageMs: now - takenAt, size: newest.size },
      archive: newest.volid,
      ...(current ? { currentName: current.name } : {}),
    };
  }
  const snap = await files.drNewestEtcdSnapshot({ dir: t.snapshotDir });
  if (!snap) return { problem: `${label}: no etcd snapshot (*.snapshot, *.db) in ${t.snapshotDir}` };
  const old = tooOld(snap.mtimeMs);
  if (old) return { problem: old };
  const min = quantityBytes(t.minSize)!;
  if (snap.size < min)
    return { problem: `${label}: ${snap.path} holds ${formatBytes(snap.size)}, less than ${formatBytes(min)}` };
  // What talosctl (bbolt status) and etcd (the appended sha256) check on a recovery, checked now.
  const integrity = await files.drCheckEtcdSnapshot({ path: snap.path, skipHashCheck: t.skipHashCheck });
  if (!integrity.ok) return { problem: `${label}: etcd snapshot ${snap.path}: ${integrity.detail}` };
  let address: string | undefined;
  if (input.mode === 'drill' && ctx.scratchEtcd) {
    // The scratch control plane: an address of its own, outside the cluster.
    if (!t.drill) {
      return {
        problem: `${label}: a drill recovers the snapshot on a scratch control plane: give the target drill.ip (its address; drill.net its isolated network)`,
      };
    }
    const cluster = planCluster(inventory!, t.cluster);
    const taken = [...cluster.controlPlane, ...cluster.workers].find((n) => n.ip === t.drill!.ip);
    if (taken)
      return {
        problem: `${label}: drill.ip ${t.drill.ip} is ${taken.name}'s address: the scratch control plane needs its own`,
      };
  }
  if (input.mode === 'restore') {
    const cluster = planCluster(inventory!, t.cluster);
    const node = t.node ? cluster.controlPlane.find((n) => n.name === t.node) : cluster.controlPlane[0];
    if (!node) return { problem: `${label}: ${t.node} is not a control plane of ${t.cluster}` };
    address = node.ip;
    // Talos recovers only into an empty etcd (all control planes reset, EPHEMERAL wiped).
    const members = await talos.talosEtcdMembers({ address, talosconfig });
    if (members.members.length > 0) {
      return {
        problem:
          `${label}: etcd on ${node.name} (${address}) has ${members.members.length} member(s) ` +
          `(${members.members.map((m) => m.hostname).join(', ')}): Talos recovers only into an empty etcd; ` +
          'reset every control plane with --system-labels-to-wipe=EPHEMERAL first',
      };
    }
  }
  return {
    target: t,
    backup: {
      id: snap.path,
      takenAt: new Date(snap.mtimeMs).toISOString(),
      ageMs: now - snap.mtimeMs,
      size: snap.size,
    },
    snapshot: snap.path,
    integrity: integrity.detail,
    ...(address ? { address } : {}),
  };
}

function planItem(ctx: DrContext, c: Checked, drillVmid: number | undefined): PlanItem {
  const { drill, namespace } = ctx;
  const base = { target: targetLabel(c.target), kind: c.target.kind, backup: c.backup };
  const t = c.target;
  if (t.kind === 'pvc') {
    const p = c as CheckedPvc;
    const users = p.users ?? [];
    const holds = [
      ...(p.kustomization ? [`suspends Kustomization ${p.kustomization.namespace}/${p.kustomization.name}`] : []),
      `pauses ReplicationSource ${t.namespace}/${p.replicationSource}`,
      ...(users.length > 0 ? [`scales ${describeUsers(users, 0)}`] : []),
    ];
    const scale = `; restores the snapshot as of ${c.backup.takenAt}, deleting files it does not hold; ${holds.join(', ')} during the restore, and resumes them after`;
    return drill
      ? { ...base, into: `PVC ${namespace}/${t.pvc} (scratch namespace)` }
      : {
          ...base,
          overwrites: `the data of PVC ${t.namespace}/${t.pvc}${scale}`,
          into: `PVC ${t.namespace}/${t.pvc}`,
        };
  }
  if (t.kind === 'vm') {
    const name = (c as CheckedVm).currentName;
    return drill
      ? { ...base, into: `VM ${drillVmid} on ${t.host}/${t.node}, network isolated` }
      : {
          ...base,
          overwrites: name
            ? `VM ${t.vmid} (${name}) on ${t.host}/${t.node}: stopped and restored over (keeps its backup jobs, replication and HA)`
            : `nothing (VM ${t.vmid} is absent)`,
          into: `VM ${t.vmid} on ${t.host}/${t.node}`,
        };
  }
  if (drill && ctx.scratchEtcd) {
    const tpl = planCluster(ctx.inventory!, t.cluster).template;
    return {
      ...base,
      into: `scratch control plane ${drillEtcdName(ctx.input.plan, t.cluster)} (VM ${drillVmid} on ${tpl.host}/${tpl.node}, ${t.drill?.ip}, ${t.drill?.net ? `network ${t.drill.net}` : 'network isolated'}), with the secrets of ${t.cluster}`,
    };
  }
  return drill
    ? { ...base, into: 'nowhere: the snapshot is checked, not recovered' }
    : {
        ...base,
        overwrites: `etcd of cluster ${t.cluster} (must be empty: EPHEMERAL wiped)`,
        into: `etcd of ${t.cluster}`,
      };
}
