/**
 * The controllers that the test kube-apiserver lacks (kubelet, Flux, VolSync,
 * the Job controller), played by writing what those controllers would write,
 * through the status subresource, so the real API server validates it against
 * the real schemas and status rules. Tests (test/harness/kube-controllers.ts
 * re-exports this file) and the simulated lab's peers (sim/talos-standin.ts,
 * sim/flux-dr.ts) play them.
 */
import { createHash, createPrivateKey } from 'node:crypto';
import {
  ApiException,
  BatchV1Api,
  CoreV1Api,
  CustomObjectsApi,
  KubeConfig,
  PatchStrategy,
  setHeaderOptions,
  type V1Job,
  type V1Node,
} from '@kubernetes/client-node';

/** A client-node KubeConfig, a kubeconfig path, or anything with kubeconfigPath (a KubeHandle). */
export type KubeTarget = KubeConfig | string | { kubeconfigPath: string };

export function kubeConfigFor(target: KubeTarget): KubeConfig {
  if (target instanceof KubeConfig) return target;
  const kc = new KubeConfig();
  kc.loadFromFile(typeof target === 'string' ? target : target.kubeconfigPath);
  return kc;
}

const mergePatch = setHeaderOptions('Content-Type', PatchStrategy.MergePatch);

/** Seconds-precision RFC 3339, as metav1.Time serializes. */
function now(): string {
  return new Date(Math.floor(Date.now() / 1000) * 1000).toISOString().replace('.000Z', 'Z');
}

/** client-node hands times back as Date objects. */
function iso(d: Date | string): string {
  return new Date(d).toISOString().replace('.000Z', 'Z');
}

function isNotFound(err: unknown): boolean {
  return err instanceof ApiException && err.code === 404;
}

/** Wraps client-node's ApiException so a test failure shows the server's words. */
async function explain<T>(what: string, p: Promise<T>): Promise<T> {
  try {
    return await p;
  } catch (err) {
    if (err instanceof ApiException) {
      const body = typeof err.body === 'string' ? err.body : JSON.stringify(err.body);
      throw new Error(`${what}: HTTP ${err.code}: ${body}`, { cause: err });
    }
    throw err;
  }
}

interface Condition {
  type: string;
  status: 'True' | 'False' | 'Unknown';
  reason: string;
  message: string;
  lastTransitionTime: string;
  observedGeneration?: number;
}

/** Like apimeta.SetStatusCondition: keeps lastTransitionTime when the status does not change. */
function setCondition(list: Condition[] | undefined, c: Omit<Condition, 'lastTransitionTime'>): Condition[] {
  const out = [...(list ?? [])];
  const i = out.findIndex((x) => x.type === c.type);
  const prev = i >= 0 ? out[i] : undefined;
  const next: Condition = {
    ...c,
    lastTransitionTime: prev && prev.status === c.status ? prev.lastTransitionTime : now(),
  };
  if (i >= 0) out[i] = next;
  else out.push(next);
  return out;
}

// ---------------------------------------------------------------- kubelet

export interface MarkNodeReadyOptions {
  /** nvidia.com/gpu capacity and allocatable. */
  gpus?: number;
  /** Labels merged into the Node's (besides kubernetes.io/hostname, os and arch). */
  labels?: Record<string, string>;
  cpu?: string;
  memory?: string;
  pods?: string;
}

/** Creates the Node if missing and makes it look like a Ready kubelet reported it. */
export async function markNodeReady(
  target: KubeTarget,
  nodeName: string,
  opts: MarkNodeReadyOptions = {},
): Promise<V1Node> {
  const core = kubeConfigFor(target).makeApiClient(CoreV1Api);
  const labels = {
    'kubernetes.io/hostname': nodeName,
    'kubernetes.io/os': 'linux',
    'kubernetes.io/arch': 'amd64',
    ...(opts.labels ?? {}),
  };
  let node: V1Node;
  try {
    node = await core.readNode({ name: nodeName });
    node = await explain(
      `labelling Node ${nodeName}`,
      core.patchNode({ name: nodeName, body: { metadata: { labels } } }, mergePatch),
    );
  } catch (err) {
    if (!isNotFound(err)) throw err;
    node = await explain(
      `creating Node ${nodeName}`,
      core.createNode({ body: { apiVersion: 'v1', kind: 'Node', metadata: { name: nodeName, labels } } }),
    );
  }
  const resources: Record<string, string> = {
    cpu: opts.cpu ?? '8',
    memory: opts.memory ?? '32Gi',
    pods: opts.pods ?? '110',
    'ephemeral-storage': '100Gi',
  };
  if (opts.gpus !== undefined) resources['nvidia.com/gpu'] = String(opts.gpus);
  const t = now();
  // Plain JSON (times as strings): a patch body is not run through client-node's serializer.
  const cond = (type: string, status: 'True' | 'False', reason: string, message: string) => {
    const prev = node.status?.conditions?.find((c) => c.type === type);
    const since = prev && prev.status === status && prev.lastTransitionTime ? iso(prev.lastTransitionTime) : t;
    return { type, status, reason, message, lastHeartbeatTime: t, lastTransitionTime: since };
  };
  const status = {
    capacity: resources,
    allocatable: resources,
    conditions: [
      cond('MemoryPressure', 'False', 'KubeletHasSufficientMemory', 'kubelet has sufficient memory available'),
      cond('DiskPressure', 'False', 'KubeletHasNoDiskPressure', 'kubelet has no disk pressure'),
      cond('PIDPressure', 'False', 'KubeletHasSufficientPID', 'kubelet has sufficient PID available'),
      cond('Ready', 'True', 'KubeletReady', 'kubelet is posting ready status'),
    ],
    addresses: [{ type: 'Hostname', address: nodeName }],
    nodeInfo: {
      architecture: 'amd64',
      operatingSystem: 'linux',
      osImage: 'Talos (labwright test)',
      kernelVersion: '6.12.0-talos',
      containerRuntimeVersion: 'containerd://2.0.0',
      kubeletVersion: 'v1.35.4',
      kubeProxyVersion: '',
      machineID: '',
      systemUUID: '',
      bootID: '',
    },
  };
  return explain(
    `patching Node ${nodeName} status`,
    core.patchNodeStatus({ name: nodeName, body: { status } }, mergePatch),
  );
}

// ---------------------------------------------------------------- Flux

export type FluxKind = 'GitRepository' | 'Kustomization' | 'OCIRepository';

const fluxResource: Record<FluxKind, { group: string; version: string; plural: string }> = {
  GitRepository: { group: 'source.toolkit.fluxcd.io', version: 'v1', plural: 'gitrepositories' },
  OCIRepository: { group: 'source.toolkit.fluxcd.io', version: 'v1', plural: 'ocirepositories' },
  Kustomization: { group: 'kustomize.toolkit.fluxcd.io', version: 'v1', plural: 'kustomizations' },
};

export interface SetFluxReadyOptions {
  kind: FluxKind;
  namespace: string;
  name: string;
  /** e.g. "main@sha1:0123…" (Git) or "latest@sha256:…" (OCI). */
  revision: string;
  /** Default true. False: Ready=False with message; the artifact / lastAppliedRevision stay as they were. */
  ready?: boolean;
  message?: string;
}

interface FluxObject {
  metadata: { generation?: number };
  spec?: { url?: string; secretRef?: { name?: string } };
  status?: { conditions?: Condition[]; lastAppliedRevision?: string };
}

/**
 * Why source-controller refuses a GitRepository's credentials Secret (fluxcd/pkg/git's
 * AuthOptions.Validate, its messages); undefined when it accepts them. The transport is the URL's
 * scheme: ssh needs the host, an `identity` that parses as a private key (`password` its
 * passphrase) and `known_hosts`; http(s) refuses a `password` without a `username`.
 */
export function gitAuthProblem(url: string, data: Record<string, string>): string | undefined {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    return `failed to parse URL to determine auth strategy: ${url}`;
  }
  const transport = u.protocol.replace(/:$/, '');
  if (transport === 'https' || transport === 'http') {
    if (!data.username && data.password) {
      return `invalid '${transport}' auth option: 'password' requires 'username' to be set`;
    }
    return undefined;
  }
  if (transport !== 'ssh') return `unknown transport '${transport}'`;
  if (!u.host) return "invalid 'ssh' auth option: 'host' is required";
  if (!data.identity) return "invalid 'ssh' auth option: 'identity' is required";
  if (!parsesAsPrivateKey(data.identity, data.password)) {
    return "invalid 'ssh' auth option 'identity': ssh: no key found";
  }
  if (!data.known_hosts) return "invalid 'ssh' auth option: 'known_hosts' is required";
  return undefined;
}

function parsesAsPrivateKey(pem: string, passphrase?: string): boolean {
  const openssh = /-----BEGIN OPENSSH PRIVATE KEY-----\s*([A-Za-z0-9+/=\s]+)-----END OPENSSH PRIVATE KEY-----/.exec(
    pem,
  );
  if (openssh)
    return (
      Buffer.from(openssh[1]!.replace(/\s+/g, ''), 'base64').subarray(0, 15).toString('latin1') === 'openssh-key-v1\0'
    );
  try {
    createPrivateKey({ key: pem, ...(passphrase ? { passphrase } : {}) });
    return true;
  } catch {
    return false;
  }
}

/**
 * Writes what source-controller (GitRepository, OCIRepository) or
 * kustomize-controller (Kustomization) writes after a reconcile: Ready
 * condition, observedGeneration = metadata.generation, and the artifact
 * (sources) or lastAttemptedRevision / lastAppliedRevision (Kustomization).
 */
export async function setFluxReady(target: KubeTarget, o: SetFluxReadyOptions): Promise<unknown> {
  const api = kubeConfigFor(target).makeApiClient(CustomObjectsApi);
  const res = fluxResource[o.kind];
  const ref = { ...res, namespace: o.namespace, name: o.name };
  const what = `${o.kind} ${o.namespace}/${o.name}`;
  const obj = (await explain(`reading ${what}`, api.getNamespacedCustomObject(ref))) as FluxObject;
  const generation = obj.metadata.generation ?? 1;
  let ready = o.ready ?? true;
  let message = o.message;
  // source-controller reads the credentials first: a Secret it refuses fails the fetch.
  const secretName = o.kind === 'GitRepository' ? obj.spec?.secretRef?.name : undefined;
  if (ready && secretName) {
    const core = kubeConfigFor(target).makeApiClient(CoreV1Api);
    const secret = await core.readNamespacedSecret({ namespace: o.namespace, name: secretName }).catch(() => undefined);
    const data = Object.fromEntries(
      Object.entries(secret?.data ?? {}).map(([k, v]) => [k, Buffer.from(v, 'base64').toString('utf8')]),
    );
    const problem = secret ? gitAuthProblem(obj.spec?.url ?? '', data) : `secrets "${secretName}" not found`;
    if (problem) {
      ready = false;
      message = `failed to configure authentication options: ${problem}`;
    }
  }
  const status: Record<string, unknown> = { observedGeneration: generation };
  let conditions = obj.status?.conditions;

  if (o.kind === 'Kustomization') {
    status.lastAttemptedRevision = o.revision;
    if (ready) status.lastAppliedRevision = o.revision;
    conditions = setCondition(conditions, {
      type: 'Ready',
      status: ready ? 'True' : 'False',
      reason: ready ? 'ReconciliationSucceeded' : 'ReconciliationFailed',
      message:
        message ?? (ready ? `Applied revision: ${o.revision}` : `kustomize build failed for revision ${o.revision}`),
      observedGeneration: generation,
    });
  } else {
    const digest = `sha256:${createHash('sha256').update(`${what}@${o.revision}`).digest('hex')}`;
    const dir = o.kind === 'GitRepository' ? 'gitrepository' : 'ocirepository';
    const file = `${digest.slice(7, 47)}.tar.gz`;
    if (ready) {
      status.artifact = {
        revision: o.revision,
        digest,
        lastUpdateTime: now(),
        path: `${dir}/${o.namespace}/${o.name}/${file}`,
        url: `http://source-controller.flux-system.svc.cluster.local./${dir}/${o.namespace}/${o.name}/${file}`,
        size: 1024,
      };
      conditions = setCondition(conditions, {
        type: 'ArtifactInStorage',
        status: 'True',
        reason: 'Succeeded',
        message: `stored artifact for revision '${o.revision}'`,
        observedGeneration: generation,
      });
    }
    conditions = setCondition(conditions, {
      type: 'Ready',
      status: ready ? 'True' : 'False',
      reason: ready
        ? 'Succeeded'
        : message?.startsWith('failed to configure authentication')
          ? 'AuthenticationFailed'
          : o.kind === 'GitRepository'
            ? 'GitOperationFailed'
            : 'OCIArtifactPullFailed',
      message:
        message ?? (ready ? `stored artifact for revision '${o.revision}'` : `failed to fetch revision ${o.revision}`),
      observedGeneration: generation,
    });
  }
  status.conditions = conditions;
  return explain(
    `patching ${what} status`,
    api.patchNamespacedCustomObjectStatus({ ...ref, body: { status } }, mergePatch),
  );
}

// ---------------------------------------------------------------- VolSync

export interface CompleteReplicationDestinationOptions {
  namespace: string;
  name: string;
  /** The spec.trigger.manual value this sync answers. */
  manualTrigger: string;
  result: 'Successful' | 'Failed';
  logs?: string;
  /**
   * status.latestImage on success. Default: with copyMethod Direct, the
   * destination PVC; otherwise a VolumeSnapshot that this helper creates
   * (readyToUse) named volsync-<name>-dst-<yyyymmddhhmmss>. null: leave unset.
   */
  latestImage?: { apiGroup?: string; kind: string; name: string } | null;
}

interface ReplicationDestination {
  metadata: { name: string; namespace: string; generation?: number };
  spec?: Record<string, unknown> & { trigger?: { manual?: string } };
  status?: { conditions?: Condition[]; lastSyncStartTime?: string };
}

/** The mover section of an RD's spec (restic, rsync, rsyncTLS, rclone, external, syncthing). */
function moverSpec(rd: ReplicationDestination): { copyMethod?: string; destinationPVC?: string } {
  for (const key of ['restic', 'rsync', 'rsyncTLS', 'rclone', 'kopia', 'syncthing', 'external']) {
    const m = rd.spec?.[key];
    if (m && typeof m === 'object') return m as { copyMethod?: string; destinationPVC?: string };
  }
  return {};
}

/**
 * Writes what VolSync writes when the mover job of a manually triggered
 * ReplicationDestination ends.
 *
 * Successful: lastManualSync = manualTrigger, lastSyncTime, lastSyncDuration,
 * latestMoverStatus.result, latestImage, Synchronizing=False/WaitingForManual.
 *
 * Failed: as VolSync does, only latestMoverStatus {result: Failed} and
 * Synchronizing=True/SyncInProgress (VolSync retries the mover); lastManualSync
 * and lastSyncTime are NOT touched, since VolSync sets them only when a sync
 * completes.
 */
export async function completeReplicationDestination(
  target: KubeTarget,
  o: CompleteReplicationDestinationOptions,
): Promise<unknown> {
  const kc = kubeConfigFor(target);
  const api = kc.makeApiClient(CustomObjectsApi);
  const ref = {
    group: 'volsync.backube',
    version: 'v1alpha1',
    plural: 'replicationdestinations',
    namespace: o.namespace,
    name: o.name,
  };
  const what = `ReplicationDestination ${o.namespace}/${o.name}`;
  const rd = (await explain(`reading ${what}`, api.getNamespacedCustomObject(ref))) as ReplicationDestination;
  const t = now();
  const start = rd.status?.lastSyncStartTime ?? t;
  const status: Record<string, unknown> = {};

  if (o.result === 'Successful') {
    let latestImage = o.latestImage;
    if (latestImage === undefined) {
      const mover = moverSpec(rd);
      const pvc = mover.destinationPVC ?? `volsync-${o.name}-dst`;
      if (mover.copyMethod === 'Direct') {
        latestImage = { apiGroup: '', kind: 'PersistentVolumeClaim', name: pvc };
      } else {
        const snapName = `volsync-${o.name}-dst-${t.replace(/[-:TZ]/g, '')}`;
        await createReadySnapshot(api, o.namespace, snapName, pvc);
        latestImage = { apiGroup: 'snapshot.storage.k8s.io', kind: 'VolumeSnapshot', name: snapName };
      }
    }
    const durationS = Math.max(0, (Date.parse(t) - Date.parse(start)) / 1000);
    Object.assign(status, {
      lastManualSync: o.manualTrigger,
      lastSyncTime: t,
      lastSyncStartTime: null,
      lastSyncDuration: `${durationS}s`,
      nextSyncTime: null,
      latestMoverStatus: { result: 'Successful', logs: o.logs ?? 'sync completed' },
      ...(latestImage ? { latestImage } : {}),
      conditions: setCondition(rd.status?.conditions, {
        type: 'Synchronizing',
        status: 'False',
        reason: 'WaitingForManual',
        message: 'Waiting for manual trigger',
      }),
    });
  } else {
    Object.assign(status, {
      lastSyncStartTime: start,
      latestMoverStatus: { result: 'Failed', logs: o.logs ?? 'mover job failed' },
      conditions: setCondition(rd.status?.conditions, {
        type: 'Synchronizing',
        status: 'True',
        reason: 'SyncInProgress',
        message: 'Synchronization in-progress',
      }),
    });
  }
  return explain(
    `patching ${what} status`,
    api.patchNamespacedCustomObjectStatus({ ...ref, body: { status } }, mergePatch),
  );
}

export async function createReadySnapshot(
  api: CustomObjectsApi,
  namespace: string,
  name: string,
  pvc: string,
  restoreSize = '1Gi',
): Promise<void> {
  const ref = { group: 'snapshot.storage.k8s.io', version: 'v1', plural: 'volumesnapshots', namespace };
  await explain(
    `creating VolumeSnapshot ${namespace}/${name}`,
    api.createNamespacedCustomObject({
      ...ref,
      body: {
        apiVersion: 'snapshot.storage.k8s.io/v1',
        kind: 'VolumeSnapshot',
        metadata: { name, namespace, labels: { 'app.kubernetes.io/created-by': 'volsync' } },
        spec: { source: { persistentVolumeClaimName: pvc } },
      },
    }),
  );
  await explain(
    `patching VolumeSnapshot ${namespace}/${name} status`,
    api.patchNamespacedCustomObjectStatus(
      {
        ...ref,
        name,
        body: {
          status: {
            readyToUse: true,
            creationTime: now(),
            restoreSize,
            boundVolumeSnapshotContentName: `snapcontent-${name}`,
          },
        },
      },
      mergePatch,
    ),
  );
}

// ---------------------------------------------------------------- Job controller

/**
 * Finishes a Job the way the Job controller does, satisfying the API server's
 * status rules (1.3x, JobManagedBy validation): every finished Job needs
 * status.startTime; Complete=True needs SuccessCriteriaMet=True and
 * completionTime (>= startTime); Failed=True needs FailureTarget=True and no
 * completionTime; finished Jobs have active=0; counters never decrease; a
 * terminal condition can't be undone.
 */
export async function completeJob(
  target: KubeTarget,
  namespace: string,
  name: string,
  succeeded: boolean,
): Promise<V1Job> {
  const batch = kubeConfigFor(target).makeApiClient(BatchV1Api);
  const job = await explain(`reading Job ${namespace}/${name}`, batch.readNamespacedJob({ name, namespace }));
  const conds = job.status?.conditions ?? [];
  const isTrue = (type: string) => conds.some((c) => c.type === type && c.status === 'True');
  if (isTrue('Complete') || isTrue('Failed')) {
    if (isTrue(succeeded ? 'Complete' : 'Failed')) return job;
    throw new Error(`Job ${namespace}/${name} already finished ${isTrue('Complete') ? 'Complete' : 'Failed'}`);
  }
  const t = now();
  const startTime = job.status?.startTime ? iso(job.status.startTime) : t;
  const cond = (type: string, reason: string, message: string) => ({
    type,
    status: 'True',
    reason,
    message,
    lastProbeTime: t,
    lastTransitionTime: t,
  });
  const keep = conds.filter((c) => !['SuccessCriteriaMet', 'Complete', 'FailureTarget', 'Failed'].includes(c.type));
  const status: Record<string, unknown> = {
    startTime,
    active: 0,
    ready: 0,
    terminating: 0,
    uncountedTerminatedPods: {},
  };
  if (succeeded) {
    status.succeeded = Math.max(job.status?.succeeded ?? 0, job.spec?.completions ?? 1);
    status.completionTime = t;
    status.conditions = [
      ...keep,
      cond('SuccessCriteriaMet', 'CompletionsReached', 'Reached expected number of succeeded pods'),
      cond('Complete', 'CompletionsReached', 'Reached expected number of succeeded pods'),
    ];
  } else {
    status.failed = Math.max(job.status?.failed ?? 0, (job.spec?.backoffLimit ?? 6) + 1);
    status.conditions = [
      ...keep,
      cond('FailureTarget', 'BackoffLimitExceeded', 'Job has reached the specified backoff limit'),
      cond('Failed', 'BackoffLimitExceeded', 'Job has reached the specified backoff limit'),
    ];
  }
  return explain(
    `patching Job ${namespace}/${name} status`,
    batch.patchNamespacedJobStatus({ name, namespace, body: { status } }, mergePatch),
  );
}
