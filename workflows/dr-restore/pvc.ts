/**
 * A PVC target: a Volsync ReplicationDestination pinned to the approved backup, then a Job that
 * checks the sentinel's checksum and the volume's size. A drill restores into the scratch
 * namespace (a new PVC from the mover's VolumeSnapshot); a restore writes into the real PVC with
 * the owning Kustomization suspended, the ReplicationSource paused and the app scaled to 0.
 */
import * as wf from '@temporalio/workflow';
import type { PvcWorkload } from '../../activities/kubernetes.js';
import {
  DR_LABELS,
  dnsLabel,
  formatBytes,
  formatDuration,
  quantityBytes,
  replicationDestinationObject,
  restoredPvcObject,
  verifyJobObject,
} from '../../common/dr-restore.js';
import { nonRetryable } from '../../common/errors.js';
import {
  assertSize,
  causeMessage,
  describeUsers,
  type CheckedPvc,
  type DrContext,
  type Kube,
  type Restored,
  type StepDetail,
} from './context.js';

interface RdStatus {
  lastManualSync?: string;
  lastSyncTime?: string;
  latestMoverStatus?: { result?: string; logs?: string };
  latestImage?: { kind?: string; name?: string };
}

/** A field labwright sets on an object for the length of an in-place restore (suspend, paused). */
interface Held {
  what: string;
  apiVersion: string;
  kind: string;
  namespace: string;
  name: string;
  spec: Record<string, boolean>;
}

export async function restorePvc(ctx: DrContext, c: CheckedPvc, step: StepDetail): Promise<Required<Restored>> {
  const { input, drill, kubeconfig } = ctx;
  const { kube, kubeWait } = ctx.act;
  const t = c.target;
  const ns = drill ? ctx.namespace : t.namespace;
  let repository = c.repository;
  if (drill) {
    repository = dnsLabel(`${c.repository}`);
    ctx.made.push({ kind: 'k8s', apiVersion: 'v1', k8sKind: 'Secret', namespace: ns, name: repository });
    await kube.k8sCopySecret({
      kubeconfig,
      from: { namespace: t.namespace, name: c.repository },
      to: { namespace: ns, name: repository },
      labels: DR_LABELS,
    });
  }
  // In place: Flux must not scale the app back up (its Kustomization suspended), the
  // ReplicationSource must not back up the broken or half-restored volume (paused), and the
  // app's Deployments/StatefulSets are scaled to 0 (Volsync writes into the PVC directly, which
  // must not be in use). All come back once the data is verified.
  const users = drill ? [] : (c.users ?? []);
  const held: Held[] = drill ? [] : heldDuringRestore(c);
  for (const h of held) {
    step(`${h.kind === 'Kustomization' ? 'suspending' : 'pausing'} ${h.what}`);
    await hold(ctx, h, true);
  }
  if (users.length > 0) {
    step(`scaling ${users.map((u) => `${u.kind} ${u.name}`).join(', ')} to 0`);
    for (const u of users) {
      await kube.k8sScaleWorkload({ kubeconfig, namespace: ns, kind: u.kind, name: u.name, replicas: 0 });
    }
    try {
      await kubeWait.k8sWaitPvcUnused({
        kubeconfig,
        namespace: ns,
        pvc: t.pvc,
        workloads: users.map((u) => ({ kind: u.kind, name: u.name })),
        timeoutSeconds: input.scaleDownTimeoutSeconds,
      });
    } catch (err) {
      throw nonRetryable(
        'precondition',
        `PVC ${ns}/${t.pvc} still in use ${formatDuration(input.scaleDownTimeoutSeconds * 1000)} after scaling ${describeUsers(users, 0)}: ${causeMessage(err)}; nothing was restored, ${scaledDownNote(users, held)}`,
      );
    }
  }
  let restored: Required<Restored>;
  try {
    restored = await restorePvcData(ctx, c, repository, users, step);
  } catch (err) {
    if ((users.length === 0 && held.length === 0) || wf.isCancellation(err)) throw err;
    // The data may be half-written: the app stays down, unsynced and unbacked-up until someone looks.
    throw nonRetryable('precondition', `${causeMessage(err)}; ${scaledDownNote(users, held)}`);
  }
  for (const h of [...held].reverse()) await hold(ctx, h, false);
  return held.length > 0
    ? {
        ...restored,
        verification: `${restored.verification}; ${held.map((h) => h.what).join(' and ')} held during the restore, resumed`,
      }
    : restored;
}

/** The sync, the size check and the verification Job; the app scaled back once verified. */
async function restorePvcData(
  ctx: DrContext,
  c: CheckedPvc,
  repository: string,
  users: PvcWorkload[],
  step: StepDetail,
): Promise<Required<Restored>> {
  const { input, drill, kubeconfig } = ctx;
  const { kube, kubeWait } = ctx.act;
  const t = c.target;
  const ns = drill ? ctx.namespace : t.namespace;
  const rdName = dnsLabel(`restore-${t.pvc}`);
  const trigger = `labwright-${ctx.runTag}`;
  const minBytes = quantityBytes(t.minSize)!;
  step(`ReplicationDestination ${ns}/${rdName}, trigger ${trigger}`);
  ctx.made.push({
    kind: 'k8s',
    apiVersion: 'volsync.backube/v1alpha1',
    k8sKind: 'ReplicationDestination',
    namespace: ns,
    name: rdName,
  });
  await kube.k8sApply({
    kubeconfig,
    fieldManager: 'labwright',
    manifests: JSON.stringify(
      replicationDestinationObject({
        name: rdName,
        namespace: ns,
        trigger,
        repository,
        plan: input.plan,
        restoreAsOf: c.backup.takenAt,
        ...(drill ? {} : { direct: { destinationPVC: t.pvc } }),
        capacity: c.capacity,
        accessModes: c.accessModes,
        ...((t.storageClassName ?? c.storageClassName)
          ? { storageClassName: t.storageClassName ?? c.storageClassName }
          : {}),
        ...(t.volumeSnapshotClassName ? { volumeSnapshotClassName: t.volumeSnapshotClassName } : {}),
      }),
    ),
  });

  // The sync: waited for in a heartbeating activity (its history stays a few events however
  // long the mover takes); runs started before replay the workflow-side poll they recorded.
  const deadline = ctx.clock.deadline(input.syncTimeoutSeconds);
  const rd = { namespace: ns, name: rdName, trigger };
  const rdStatus = wf.patched('rd-wait-activity')
    ? await waitForSync(ctx, rd, deadline, step)
    : await pollReplicationDestination(ctx, rd, deadline, step);

  // The size: the mover's VolumeSnapshot (drill) or the restored PVC (restore).
  let restoredBytes: number | undefined;
  let claim = t.pvc;
  if (drill) {
    const image = rdStatus.latestImage;
    if (!image?.name || image.kind !== 'VolumeSnapshot') {
      throw nonRetryable(
        'precondition',
        `ReplicationDestination ${ns}/${rdName} synced but reports no VolumeSnapshot (latestImage)`,
      );
    }
    ctx.made.push({
      kind: 'k8s',
      apiVersion: 'snapshot.storage.k8s.io/v1',
      k8sKind: 'VolumeSnapshot',
      namespace: ns,
      name: image.name,
    });
    const snap = await kube.k8sGetObject({
      kubeconfig,
      apiVersion: 'snapshot.storage.k8s.io/v1',
      kind: 'VolumeSnapshot',
      namespace: ns,
      name: image.name,
    });
    restoredBytes = quantityBytes((snap.object?.status as { restoreSize?: string } | undefined)?.restoreSize);
    assertSize(`VolumeSnapshot ${ns}/${image.name}`, restoredBytes, minBytes);
    claim = t.pvc;
    ctx.made.push({ kind: 'k8s', apiVersion: 'v1', k8sKind: 'PersistentVolumeClaim', namespace: ns, name: claim });
    await kube.k8sApply({
      kubeconfig,
      fieldManager: 'labwright',
      manifests: JSON.stringify(
        restoredPvcObject({
          name: claim,
          namespace: ns,
          snapshot: image.name,
          capacity: c.capacity,
          accessModes: c.accessModes,
          ...((t.storageClassName ?? c.storageClassName)
            ? { storageClassName: t.storageClassName ?? c.storageClassName }
            : {}),
          plan: input.plan,
        }),
      ),
    });
  } else {
    const pvc = await kube.k8sGetObject({
      kubeconfig,
      apiVersion: 'v1',
      kind: 'PersistentVolumeClaim',
      namespace: ns,
      name: t.pvc,
    });
    const o = pvc.object as
      | { status?: { capacity?: { storage?: string } }; spec?: { resources?: { requests?: { storage?: string } } } }
      | undefined;
    restoredBytes = quantityBytes(o?.status?.capacity?.storage ?? o?.spec?.resources?.requests?.storage);
    assertSize(`PVC ${ns}/${t.pvc}`, restoredBytes, minBytes);
  }

  // The data: a Job checks the sentinel's checksum and the volume's size.
  const jobName = dnsLabel(`verify-${t.pvc}-${ctx.runTag}`);
  step(`verification Job ${ns}/${jobName}`);
  ctx.made.push({ kind: 'k8s', apiVersion: 'batch/v1', k8sKind: 'Job', namespace: ns, name: jobName });
  const job = verifyJobObject({
    name: jobName,
    namespace: ns,
    pvc: claim,
    image: input.verifyImage,
    sentinelPath: t.sentinel.path,
    sha256: t.sentinel.sha256,
    minBytes,
    plan: input.plan,
  });
  await kube.k8sCreateJob({ kubeconfig, job: job as Parameters<Kube['k8sCreateJob']>[0]['job'] });
  try {
    await kubeWait.k8sWaitJob({
      kubeconfig,
      namespace: ns,
      name: jobName,
      timeoutSeconds: input.jobTimeoutSeconds,
    });
  } catch (err) {
    throw nonRetryable('precondition', `verification of ${t.namespace}/${t.pvc} failed: ${causeMessage(err)}`);
  }
  let scaledBack = '';
  if (users.length > 0) {
    step(`scaling ${describeUsers(users)} back`);
    for (const u of users) {
      await kube.k8sScaleWorkload({ kubeconfig, namespace: ns, kind: u.kind, name: u.name, replicas: u.replicas });
    }
    scaledBack = `; ${describeUsers(users)} scaled back`;
  }
  return {
    verification: `sentinel ${t.sentinel.path} sha256 ok (Job ${jobName}); ${formatBytes(restoredBytes!)} restored${scaledBack}`,
    restoredBytes: restoredBytes!,
  };
}

interface RdRef {
  namespace: string;
  name: string;
  trigger: string;
}

/**
 * The sync waited for in a heartbeating activity, one call per 20 minutes at most (the waitFor
 * profile allows 30): a day-long sync records a few dozen activities, not one per poll.
 */
async function waitForSync(ctx: DrContext, rd: RdRef, deadline: number, step: StepDetail): Promise<RdStatus> {
  step('syncing (the mover runs)');
  let rdStatus: RdStatus = {};
  try {
    for (let synced = false; !synced;) {
      const r = await ctx.act.kubeWait.k8sWaitReplicationDestination({
        kubeconfig: ctx.kubeconfig,
        ...rd,
        deadlineAt: deadline,
        returnAt: Math.min(deadline, ctx.clock.now() + 20 * 60_000),
      });
      synced = r.synced;
      rdStatus = r;
    }
  } catch (err) {
    if (wf.isCancellation(err)) throw err;
    throw nonRetryable(
      'precondition',
      `ReplicationDestination ${rd.namespace}/${rd.name} did not sync within ${formatDuration(ctx.input.syncTimeoutSeconds * 1000)}: ${causeMessage(err)}`,
    );
  }
  return rdStatus;
}

/** The workflow-side poll of runs started before `rd-wait-activity` (replay only). */
async function pollReplicationDestination(
  ctx: DrContext,
  rd: RdRef,
  deadline: number,
  step: StepDetail,
): Promise<RdStatus> {
  for (;;) {
    const got = await ctx.act.kube.k8sGetObject({
      kubeconfig: ctx.kubeconfig,
      apiVersion: 'volsync.backube/v1alpha1',
      kind: 'ReplicationDestination',
      namespace: rd.namespace,
      name: rd.name,
    });
    const rdStatus = ((got.object?.status ?? {}) as RdStatus) ?? {};
    if (rdStatus.lastManualSync === rd.trigger && rdStatus.latestMoverStatus?.result === 'Successful') return rdStatus;
    const mover = rdStatus.latestMoverStatus?.result;
    step(
      `syncing (mover ${mover ?? 'not reported yet'}${mover === 'Failed' ? `: ${rdStatus.latestMoverStatus?.logs ?? ''}; Volsync retries` : ''})`,
    );
    if (ctx.clock.now() >= deadline) {
      throw wf.ApplicationFailure.create({
        type: 'TimeoutError',
        nonRetryable: true,
        message: `ReplicationDestination ${rd.namespace}/${rd.name} did not sync within ${formatDuration(ctx.input.syncTimeoutSeconds * 1000)} (mover ${mover ?? 'silent'})`,
      });
    }
    await wf.sleep(ctx.input.pollSeconds * 1000);
  }
}

/** What an in-place restore holds: the owning Kustomization suspended, the ReplicationSource paused. */
function heldDuringRestore(c: CheckedPvc): Held[] {
  const t = c.target;
  return [
    ...(c.kustomization
      ? [
          {
            what: `Kustomization ${c.kustomization.namespace}/${c.kustomization.name}`,
            apiVersion: 'kustomize.toolkit.fluxcd.io/v1',
            kind: 'Kustomization',
            namespace: c.kustomization.namespace,
            name: c.kustomization.name,
            spec: { suspend: true },
          },
        ]
      : []),
    {
      what: `ReplicationSource ${t.namespace}/${c.replicationSource}`,
      apiVersion: 'volsync.backube/v1alpha1',
      kind: 'ReplicationSource',
      namespace: t.namespace,
      name: c.replicationSource,
      spec: { paused: true },
    },
  ];
}

/**
 * Sets a Held field (on) or gives it back (off) by server-side apply as labwright's own field
 * manager: giving it back drops the field, so the owner's value (or the default) applies again.
 */
async function hold(ctx: DrContext, h: Held, on: boolean): Promise<void> {
  await ctx.act.kube.k8sApply({
    kubeconfig: ctx.kubeconfig,
    fieldManager: 'labwright-dr-restore',
    ...(on ? { force: true } : {}),
    manifests: JSON.stringify({
      apiVersion: h.apiVersion,
      kind: h.kind,
      metadata: { name: h.name, namespace: h.namespace },
      ...(on ? { spec: h.spec } : {}),
    }),
  });
}

function scaledDownNote(users: PvcWorkload[], held: Held[] = []): string {
  const parts = [
    ...(users.length > 0
      ? [`left scaled to 0: ${users.map((u) => `${u.kind} ${u.name} (was ${u.replicas})`).join(', ')}`]
      : []),
    ...held.map((h) => `${h.what} left ${h.kind === 'Kustomization' ? 'suspended' : 'paused'}`),
  ];
  return `${parts.join('; ')}; resume once the data is right`;
}
