/**
 * Kubernetes activities on @kubernetes/client-node, one API operation (or one wait) each. The
 * kubeconfig comes from a secret reference, resolved per call; nothing of it is returned.
 *
 * HTTP answers are classified by status (common/errors.ts): 404 NotFound, 409 Conflict, 5xx and
 * 429 retried; dropped connections retried.
 *
 * (Seeded by issue 6 with the node and Job operations that talos-bootstrap and gpu-node-join
 * need; the rest of the Kubernetes activities extend this factory.)
 */
import { Context } from '@temporalio/activity';
import type { ApiException, V1Job, V1Node, V1Pod } from '@kubernetes/client-node';
import { classifyUnknown, failureForHttpStatus, nonRetryable, retryable } from '../common/errors.js';
import {
  FLUX_NAME,
  FLUX_NAMESPACE,
  fluxSyncSettled,
  fluxSyncState,
  type FluxObjectView,
  type FluxSyncState,
} from '../common/flux-bootstrap.js';
import type { SecretRef } from '../common/secret-ref.js';
import type { SecretStore } from '../lib/secrets.js';
import type { DynamicApi, KubeClients, KubeObject } from '../clients/kube-api.js';
// Issue 5: generic objects (server-side apply, condition waits, get/delete), node maintenance, Secrets from references.
import { parseAllDocuments } from 'yaml';
// Issue 7: applying a manifest file read on the worker; scaling a PVC's workloads for an in-place restore.
import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import { ApplicationFailure } from '@temporalio/common';

export interface KubernetesDeps {
  secrets: Pick<SecretStore, 'resolve'>;
  /** Poll interval of the waits (default 2 s). */
  pollMs?: number;
}

export interface NodeTaint {
  key: string;
  value?: string;
  effect: string;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function activityContext(): Context | undefined {
  try {
    return Context.current();
  } catch {
    return undefined;
  }
}

type KubeApi = typeof import('../clients/kube-api.js');
let kubeApi: Promise<KubeApi> | undefined;
/** clients/kube-api.ts, imported once, when the first Kubernetes activity runs. */
const loadKubeApi = (): Promise<KubeApi> => (kubeApi ??= import('../clients/kube-api.js'));

/** client-node's ApiException (an HTTP answer), known by its shape so that the check needs no import of the library. */
function isApiException(err: unknown): err is ApiException<unknown> {
  return (
    err instanceof Error && typeof (err as { code?: unknown }).code === 'number' && 'body' in err && 'headers' in err
  );
}

/** Classifies what a client-node call threw: the API's status, or a connection problem. */
export function classifyKubeError(err: unknown, what: string): Error {
  if (isApiException(err)) {
    const body = typeof err.body === 'string' ? err.body : JSON.stringify(err.body);
    let message = body;
    try {
      message = (JSON.parse(body) as { message?: string }).message ?? body;
    } catch {
      // not JSON
    }
    return failureForHttpStatus(err.code, `${what}: ${message}`);
  }
  return classifyUnknown(err, what);
}

async function call<T>(what: string, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    throw classifyKubeError(err, what);
  }
}

function isReady(node: V1Node): boolean {
  return (node.status?.conditions ?? []).some((c) => c.type === 'Ready' && c.status === 'True');
}

// ------------------------------------------------------------------ generic objects (issue 5)

export type { KubeObject };

/** Names one object of any kind. `namespace` defaults to the kubeconfig context's (else `default`) for namespaced kinds. */
export interface ObjectRef {
  apiVersion: string;
  kind: string;
  namespace?: string;
  name: string;
}

export type ApplyResult = 'created' | 'configured' | 'unchanged';

export interface AppliedObject extends ObjectRef {
  result: ApplyResult;
  resourceVersion: string;
  generation?: number;
  /** The field manager that applies this object instead (see k8sApply's yieldTo). */
  heldBy?: string;
}

export interface ObservedCondition {
  type: string;
  status: string;
  reason?: string;
  message?: string;
  observedGeneration?: number;
}

export interface NodeSummary {
  name: string;
  ready: boolean;
  unschedulable: boolean;
  labels: Record<string, string>;
  taints: NodeTaint[];
  allocatable: Record<string, string>;
}

/** Whether apiVersion/kind is served and namespaced; NotFoundError names what is missing. */
async function scopeOf(
  api: DynamicApi,
  apiVersion: string,
  kind: string,
  what: string,
): Promise<{ namespaced: boolean }> {
  let resource;
  try {
    resource = await api.served(apiVersion, kind);
  } catch (err) {
    if (isApiException(err) && err.code === 404) resource = undefined;
    else throw classifyKubeError(err, what);
  }
  if (!resource) {
    throw nonRetryable(
      'notFound',
      `${what}: the cluster serves no ${kind} in ${apiVersion} (a typo, or its CRD is not installed or not Established yet)`,
    );
  }
  return { namespaced: resource.namespaced };
}

/** `Kustomization flux-system/apps`, `Node gpu-1`. */
function describeObject(ref: { kind: string; namespace?: string; name: string }): string {
  return `${ref.kind} ${ref.namespace ? `${ref.namespace}/` : ''}${ref.name}`;
}

interface StatusCause {
  reason?: string;
  message?: string;
  field?: string;
}

/** The metav1.Status a failed request answered with (message, causes), if it was one. */
function statusBody(err: ApiException<unknown>): { message?: string; causes: StatusCause[] } {
  let body: unknown = err.body;
  if (typeof err.body === 'string') {
    try {
      body = JSON.parse(err.body);
    } catch {
      return { message: err.body, causes: [] };
    }
  }
  const status = (body ?? {}) as { message?: string; details?: { causes?: StatusCause[] } };
  return { message: status.message, causes: status.details?.causes ?? [] };
}

export interface FieldConflict {
  field: string;
  manager: string;
}

/**
 * Classifies what a server-side apply answered: 409 field-manager conflicts name each field and
 * its manager and say how to take ownership; 400/422 (schema, strict field validation) are
 * invalid input with the server's words, which name the field; the rest as any API call.
 */
export function classifyApplyError(err: unknown, what: string, fieldManager: string, appliedBefore: number): Error {
  if (!isApiException(err)) return classifyKubeError(err, what);
  const { message, causes } = statusBody(err);
  const earlier = appliedBefore > 0 ? ` (the ${appliedBefore} object(s) before it in the manifests were applied)` : '';
  if (err.code === 409) {
    const conflicts: FieldConflict[] = causes
      .filter((c) => c.reason === 'FieldManagerConflict' || c.field)
      .map((c) => ({
        field: c.field ?? '?',
        manager: /conflict with "([^"]*)"/.exec(c.message ?? '')?.[1] ?? '?',
      }));
    if (conflicts.length === 0) return nonRetryable('conflict', `${what}: ${message ?? 'conflict'}${earlier}`);
    const managers = [...new Set(conflicts.map((c) => c.manager))].map((m) => `"${m}"`).join(', ');
    const list = conflicts.map((c) => `${c.field} (managed by "${c.manager}")`).join(', ');
    return nonRetryable(
      'conflict',
      `${what} as field manager "${fieldManager}": ${conflicts.length} field(s) are owned by another field manager ` +
        `(${managers}): ${list}. To take ownership apply again with force: true (the manifest's values win and ` +
        `"${fieldManager}" becomes their manager), or leave those fields out of the manifest${earlier}`,
      { conflicts },
    );
  }
  // A field the schema does not declare fails the apply with HTTP 500 "failed to create typed
  // patch object ... field not declared in schema" (kubernetes/kubernetes#139253, open in 1.35):
  // invalid input all the same, which no retry cures.
  const undeclared = err.code === 500 && /failed to create typed patch object/.test(message ?? '');
  if (err.code === 422 || err.code === 400 || undeclared) {
    const fields = causes.filter((c) => c.field).map((c) => ({ field: c.field!, message: c.message ?? '' }));
    return nonRetryable(
      'validation',
      `${what}: the API server rejected it as invalid: ${message ?? err.message}${earlier}`,
      {
        fields,
      },
    );
  }
  return classifyKubeError(err, `${what}${earlier}`);
}

/** Splits multi-document YAML into objects (`kind: *List` flattened, empty documents skipped), checking each names itself. */
export function parseManifests(text: string): KubeObject[] {
  const out: KubeObject[] = [];
  const docs = parseAllDocuments(text);
  docs.forEach((doc, i) => {
    const where = `manifests document ${i + 1}`;
    if (doc.errors.length > 0) throw nonRetryable('validation', `${where}: invalid YAML: ${doc.errors[0]!.message}`);
    const value = doc.toJS() as unknown;
    if (value === null || value === undefined) return;
    const items =
      typeof value === 'object' &&
      Array.isArray((value as { items?: unknown }).items) &&
      /List$/.test(String((value as { kind?: unknown }).kind))
        ? (value as { items: unknown[] }).items
        : [value];
    items.forEach((item, j) => {
      const at = items.length > 1 || item !== value ? `${where} item ${j + 1}` : where;
      if (typeof item !== 'object' || item === null || Array.isArray(item)) {
        throw nonRetryable('validation', `${at}: expected a Kubernetes object (a mapping)`);
      }
      const obj = item as Partial<KubeObject>;
      if (typeof obj.apiVersion !== 'string' || !obj.apiVersion)
        throw nonRetryable('validation', `${at}: apiVersion is missing`);
      if (typeof obj.kind !== 'string' || !obj.kind) throw nonRetryable('validation', `${at}: kind is missing`);
      if (typeof obj.metadata?.name !== 'string' || !obj.metadata.name) {
        throw nonRetryable(
          'validation',
          `${at} (${obj.kind}): metadata.name is missing (server-side apply needs a name)`,
        );
      }
      out.push(obj as KubeObject);
    });
  });
  return out;
}

/** The object as it may go into results and history: no managedFields, and a Secret's values left out. */
function redactObject(obj: KubeObject): KubeObject {
  const metadata = { ...obj.metadata };
  delete metadata.managedFields;
  const out: KubeObject = { ...obj, metadata };
  if (obj.kind === 'Secret' && obj.apiVersion === 'v1') {
    out.dataKeys = Object.keys({ ...((obj.data as object) ?? {}), ...((obj.stringData as object) ?? {}) }).sort();
    delete out.data;
    delete out.stringData;
  }
  return out;
}

const MAX_STATUS_CHARS = 2000;

/** An object's status as one line for errors and heartbeats (trimmed). */
function statusText(obj: KubeObject | undefined): string {
  if (!obj) return 'the object does not exist';
  const text = JSON.stringify(obj.status ?? {});
  return text.length > MAX_STATUS_CHARS ? `${text.slice(0, MAX_STATUS_CHARS)}…` : text;
}

const MIRROR_POD = 'kubernetes.io/config.mirror';

/** Why a pod on a draining Node is left alone (undefined: it is to be evicted). */
function drainSkipReason(pod: V1Pod, ignoreDaemonSets: boolean): string | undefined {
  if (pod.metadata?.annotations?.[MIRROR_POD] !== undefined) return 'mirror pod';
  const controller = pod.metadata?.ownerReferences?.find((o) => o.controller);
  if (controller?.kind === 'DaemonSet' && ignoreDaemonSets) return 'DaemonSet pod';
  return undefined;
}

const podName = (p: V1Pod): string => `${p.metadata?.namespace ?? ''}/${p.metadata?.name ?? ''}`;

export function createKubernetesActivities(deps: KubernetesDeps) {
  const pollMs = deps.pollMs ?? 2000;

  /** The API clients of a kubeconfig reference (client-node loaded on the first call). */
  async function kube(ref: SecretRef): Promise<KubeClients> {
    const { kubeClients } = await loadKubeApi();
    try {
      return kubeClients(await deps.secrets.resolve(ref));
    } catch (err) {
      if (err instanceof Error && 'type' in err) throw err;
      throw nonRetryable(
        'validation',
        `the kubeconfig ${JSON.stringify(ref)} cannot be read: ${(err as Error).message}`,
      );
    }
  }

  /** Server-side applies one object that was `before` (undefined: absent) and says what that did. */
  async function applyOne(
    api: DynamicApi,
    body: KubeObject,
    before: KubeObject | undefined,
    what: string,
    fieldManager: string,
    force: boolean,
  ): Promise<ApplyResult> {
    let after: KubeObject;
    try {
      after = await api.apply(body, fieldManager, force);
    } catch (err) {
      throw classifyApplyError(err, what, fieldManager, 0);
    }
    return before === undefined
      ? 'created'
      : before.metadata.resourceVersion === after.metadata.resourceVersion
        ? 'unchanged'
        : 'configured';
  }

  /** Reads an object of any kind as plain JSON; undefined when it does not exist. */
  async function readObject(api: DynamicApi, ref: ObjectRef, what: string): Promise<KubeObject | undefined> {
    try {
      return (await api.read({
        apiVersion: ref.apiVersion,
        kind: ref.kind,
        metadata: { name: ref.name, namespace: ref.namespace },
      })) as KubeObject;
    } catch (err) {
      if (isApiException(err) && err.code === 404) return undefined;
      throw classifyKubeError(err, what);
    }
  }

  /** Checks the kind is served and fills in the namespace of a namespaced kind (context default), drops it for cluster-scoped ones. */
  async function resolveRef(api: DynamicApi, ref: ObjectRef, verb: string): Promise<ObjectRef> {
    const { namespaced } = await scopeOf(api, ref.apiVersion, ref.kind, `${verb} ${describeObject(ref)}`);
    return {
      apiVersion: ref.apiVersion,
      kind: ref.kind,
      ...(namespaced ? { namespace: ref.namespace ?? api.fallbackNamespace } : {}),
      name: ref.name,
    };
  }

  /** Polls `check` until it returns a value, heartbeating; TimeoutError (retryable) after the deadline. */
  async function poll<T>(what: string, timeoutSeconds: number, check: () => Promise<T | undefined>): Promise<T> {
    const deadline = Date.now() + timeoutSeconds * 1000;
    const ctx = activityContext();
    let last = 'not asked yet';
    for (;;) {
      try {
        const value = await check();
        if (value !== undefined) return value;
        last = 'not yet';
      } catch (err) {
        const failure = classifyKubeError(err, what);
        if (
          (failure as { nonRetryable?: boolean }).nonRetryable &&
          (failure as { type?: string }).type !== 'NotFoundError'
        ) {
          throw failure;
        }
        last = failure.message;
      }
      ctx?.heartbeat({ waiting: what, last });
      if (Date.now() > deadline) throw retryable('timeout', `${what}: not reached after ${timeoutSeconds}s (${last})`);
      await (ctx ? Promise.race([sleep(pollMs), ctx.cancelled]) : sleep(pollMs));
    }
  }

  const activities = {
    /**
     * Whether the kubeconfig still reaches its cluster: one GET /version. Refused, unreachable,
     * a server certificate its CA does not trust, credentials the server refuses (401/403) or no
     * answer in 10 s is an answer, not an error: the caller fetches a fresh kubeconfig at once
     * instead of waiting on a cluster this one cannot reach. Any other HTTP answer is reachable.
     */
    async k8sProbe(args: { kubeconfig: SecretRef }): Promise<{ reachable: boolean; reason?: string }> {
      const k = await kube(args.kubeconfig);
      const server = k.config.getCurrentCluster()?.server ?? '(no server)';
      let timer: NodeJS.Timeout | undefined;
      const timeout = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error('no answer in 10 s')), 10_000);
      });
      try {
        await Promise.race([k.version.getCode(), timeout]);
        return { reachable: true };
      } catch (err) {
        if (isApiException(err) && err.code !== 401 && err.code !== 403) return { reachable: true };
        // The fetch error's code (ECONNREFUSED, DEPTH_ZERO_SELF_SIGNED_CERT, ...), or its cause's.
        const e = err as { code?: string; cause?: { code?: string } };
        const why = isApiException(err) ? `HTTP ${err.code}` : (e.code ?? e.cause?.code ?? (err as Error).message);
        return { reachable: false, reason: `does not reach ${server} (${why})` };
      } finally {
        clearTimeout(timer);
      }
    },

    /** Waits until every named Node exists and is Ready. */
    async k8sWaitNodesReady(args: {
      kubeconfig: SecretRef;
      nodes: string[];
      timeoutSeconds: number;
    }): Promise<string[]> {
      const core = (await kube(args.kubeconfig)).core;
      return poll(`nodes ${args.nodes.join(', ')} Ready`, args.timeoutSeconds, async () => {
        const list = await core.listNode();
        const ready = new Set(list.items.filter(isReady).map((n) => n.metadata?.name ?? ''));
        return args.nodes.every((n) => ready.has(n)) ? args.nodes : undefined;
      });
    },

    /** Whether a Node exists and is Ready (no wait). */
    async k8sGetNode(args: { kubeconfig: SecretRef; node: string }): Promise<{ exists: boolean; ready: boolean }> {
      const core = (await kube(args.kubeconfig)).core;
      try {
        const node = await core.readNode({ name: args.node });
        return { exists: true, ready: isReady(node) };
      } catch (err) {
        if (isApiException(err) && err.code === 404) return { exists: false, ready: false };
        throw classifyKubeError(err, `read Node ${args.node}`);
      }
    },

    /**
     * Sets labels and taints on a Node: labels merged, the given taints added or updated by key
     * and effect (other taints kept). Nothing is written when the Node has them already.
     */
    async k8sLabelTaintNode(args: {
      kubeconfig: SecretRef;
      node: string;
      labels: Record<string, string>;
      taints: NodeTaint[];
    }): Promise<{ changed: boolean }> {
      const k = await kube(args.kubeconfig);
      const core = k.core;
      const what = `label and taint Node ${args.node}`;
      // The patch carries the resourceVersion it was computed from (the taint list is replaced
      // whole); a 409 means the kubelet or someone else wrote in between: read again and redo.
      for (let attempt = 1; ; attempt++) {
        const node = await call(what, () => core.readNode({ name: args.node }));
        const labels = node.metadata?.labels ?? {};
        const taints = [...(node.spec?.taints ?? [])];
        const labelsChanged = Object.entries(args.labels).some(([k, v]) => labels[k] !== v);
        let taintsChanged = false;
        for (const t of args.taints) {
          const i = taints.findIndex((x) => x.key === t.key && x.effect === t.effect);
          const want = { key: t.key, effect: t.effect, ...(t.value !== undefined ? { value: t.value } : {}) };
          if (i < 0) {
            taints.push(want);
            taintsChanged = true;
          } else if ((taints[i]!.value ?? undefined) !== t.value) {
            taints[i] = want;
            taintsChanged = true;
          }
        }
        if (!labelsChanged && !taintsChanged) return { changed: false };
        try {
          await core.patchNode(
            {
              name: args.node,
              body: {
                metadata: { labels: args.labels, resourceVersion: node.metadata?.resourceVersion },
                ...(taintsChanged ? { spec: { taints } } : {}),
              },
            },
            k.mergePatch,
          );
          return { changed: true };
        } catch (err) {
          if (isApiException(err) && err.code === 409 && attempt < 5) continue;
          throw classifyKubeError(err, what);
        }
      }
    },

    /** Waits until a Node's allocatable `resource` (e.g. nvidia.com/gpu) is at least `atLeast`. */
    async k8sWaitAllocatable(args: {
      kubeconfig: SecretRef;
      node: string;
      resource: string;
      atLeast: number;
      timeoutSeconds: number;
    }): Promise<number> {
      const core = (await kube(args.kubeconfig)).core;
      return poll(`${args.resource} allocatable on Node ${args.node}`, args.timeoutSeconds, async () => {
        const node = await core.readNode({ name: args.node });
        const have = Number(node.status?.allocatable?.[args.resource] ?? 0);
        return have >= args.atLeast ? have : undefined;
      });
    },

    /**
     * (issue 13) Waits, heartbeating, until a ReplicationDestination's manual sync `trigger` has
     * completed (status.lastManualSync is it, latestMoverStatus.result Successful); returns the
     * status. A failed mover is reported in the heartbeat (VolSync retries it). `deadlineAt` (epoch
     * ms) holds across attempts; reaching it is final (TimeoutError, not retried). At `returnAt`
     * (before the deadline) it returns `synced: false`, so that each call stays within its
     * activity timeout and the caller asks again.
     */
    async k8sWaitReplicationDestination(args: {
      kubeconfig: SecretRef;
      namespace: string;
      name: string;
      trigger: string;
      deadlineAt: number;
      returnAt?: number;
    }): Promise<{ synced: boolean; latestImage?: { kind?: string; name?: string }; lastSyncTime?: string }> {
      const api = (await kube(args.kubeconfig)).dynamic;
      const ref = {
        apiVersion: 'volsync.backube/v1alpha1',
        kind: 'ReplicationDestination',
        namespace: args.namespace,
        name: args.name,
      };
      const what = `ReplicationDestination ${args.namespace}/${args.name} sync ${args.trigger}`;
      const ctx = activityContext();
      let mover = 'not reported yet';
      for (;;) {
        const rd = await readObject(api, ref, `wait for ${what}`);
        const status = (rd?.status ?? {}) as {
          lastManualSync?: string;
          lastSyncTime?: string;
          latestMoverStatus?: { result?: string; logs?: string };
          latestImage?: { kind?: string; name?: string };
        };
        if (status.lastManualSync === args.trigger && status.latestMoverStatus?.result === 'Successful') {
          return {
            synced: true,
            ...(status.latestImage ? { latestImage: status.latestImage } : {}),
            ...(status.lastSyncTime ? { lastSyncTime: status.lastSyncTime } : {}),
          };
        }
        const result = status.latestMoverStatus?.result;
        mover =
          result === 'Failed'
            ? `Failed: ${status.latestMoverStatus?.logs ?? ''}; Volsync retries`
            : (result ?? 'not reported yet');
        ctx?.heartbeat({ waiting: what, mover });
        if (args.returnAt !== undefined && Date.now() >= args.returnAt && args.returnAt < args.deadlineAt) {
          return { synced: false };
        }
        if (Date.now() >= args.deadlineAt) {
          throw ApplicationFailure.create({
            type: 'TimeoutError',
            nonRetryable: true,
            message: `${what} did not complete by its deadline (mover ${mover})`,
          });
        }
        await (ctx ? Promise.race([sleep(pollMs), ctx.cancelled]) : sleep(pollMs));
      }
    },

    /**
     * Waits until Flux's GitRepository and Kustomization `flux-system` are settled (both Ready at
     * the wanted revision, or one failed terminally), heartbeating, looking every `pollMs`.
     * Returns their states then, or at `returnAt` unsettled (a bound on one call: the workflow
     * reports progress and decides about slowness and its deadline).
     */
    async k8sWaitFluxReady(args: {
      kubeconfig: SecretRef;
      expectedRevision?: string;
      terminal: { GitRepository: string[]; Kustomization: string[] };
      returnAt: number;
      pollMs?: number;
    }): Promise<FluxSyncState> {
      const api = (await kube(args.kubeconfig)).dynamic;
      const ctx = activityContext();
      const read = (apiVersion: string, kind: string) =>
        readObject(
          api,
          { apiVersion, kind, namespace: FLUX_NAMESPACE, name: FLUX_NAME },
          `wait for ${kind} ${FLUX_NAMESPACE}/${FLUX_NAME}`,
        );
      for (;;) {
        const [repo, ks] = await Promise.all([
          read('source.toolkit.fluxcd.io/v1', 'GitRepository'),
          read('kustomize.toolkit.fluxcd.io/v1', 'Kustomization'),
        ]);
        const state = fluxSyncState(
          (repo ?? null) as FluxObjectView | null,
          (ks ?? null) as FluxObjectView | null,
          args.expectedRevision,
          args.terminal,
        );
        ctx?.heartbeat({ gitRepository: state.gitRepository.detail, kustomization: state.kustomization.detail });
        if (fluxSyncSettled(state) || Date.now() >= args.returnAt) return state;
        // A long poll interval still heartbeats every few seconds.
        const next = Math.min(args.returnAt, Date.now() + (args.pollMs ?? pollMs));
        while (Date.now() < next) {
          const slice = Math.min(next - Date.now(), 5000);
          await (ctx ? Promise.race([sleep(slice), ctx.cancelled]) : sleep(slice));
          ctx?.heartbeat({ waiting: 'Flux Ready' });
        }
      }
    },

    /** Creates a Job; one that exists with the same name is kept (returned as existing). */
    async k8sCreateJob(args: { kubeconfig: SecretRef; job: V1Job }): Promise<{ created: boolean }> {
      const batch = (await kube(args.kubeconfig)).batch;
      const namespace = args.job.metadata?.namespace ?? 'default';
      const name = args.job.metadata?.name ?? '';
      try {
        await batch.createNamespacedJob({ namespace, body: args.job });
        return { created: true };
      } catch (err) {
        if (isApiException(err) && err.code === 409) return { created: false };
        throw classifyKubeError(err, `create Job ${namespace}/${name}`);
      }
    },

    /** Waits until a Job is Complete (returns) or Failed (PreconditionFailed with its reason). */
    async k8sWaitJob(args: {
      kubeconfig: SecretRef;
      namespace: string;
      name: string;
      timeoutSeconds: number;
    }): Promise<{ succeeded: number }> {
      const batch = (await kube(args.kubeconfig)).batch;
      const what = `Job ${args.namespace}/${args.name}`;
      return poll(`${what} complete`, args.timeoutSeconds, async () => {
        const job = await batch.readNamespacedJob({ namespace: args.namespace, name: args.name });
        const cond = (type: string) =>
          (job.status?.conditions ?? []).find((c) => c.type === type && c.status === 'True');
        const failed = cond('Failed');
        if (failed) {
          throw nonRetryable('precondition', `${what} failed: ${failed.reason ?? ''} ${failed.message ?? ''}`.trim());
        }
        return cond('Complete') ? { succeeded: job.status?.succeeded ?? 1 } : undefined;
      });
    },

    /** Deletes a Job and its pods; a Job that is gone already is done. */
    async k8sDeleteJob(args: {
      kubeconfig: SecretRef;
      namespace: string;
      name: string;
    }): Promise<{ deleted: boolean }> {
      const batch = (await kube(args.kubeconfig)).batch;
      try {
        await batch.deleteNamespacedJob({
          namespace: args.namespace,
          name: args.name,
          propagationPolicy: 'Background',
        });
        return { deleted: true };
      } catch (err) {
        if (isApiException(err) && err.code === 404) return { deleted: false };
        throw classifyKubeError(err, `delete Job ${args.namespace}/${args.name}`);
      }
    },

    /** Deletes a Node object; one that is gone already is done. */
    async k8sDeleteNode(args: { kubeconfig: SecretRef; node: string }): Promise<{ deleted: boolean }> {
      const core = (await kube(args.kubeconfig)).core;
      try {
        await core.deleteNode({ name: args.node });
        return { deleted: true };
      } catch (err) {
        if (isApiException(err) && err.code === 404) return { deleted: false };
        throw classifyKubeError(err, `delete Node ${args.node}`);
      }
    },

    // ---------------------------------------------------------------- generic objects (issue 5)

    /**
     * Server-side apply of multi-document YAML, object by object in document order, as
     * `fieldManager`. Each object is read first, to report it `created`, `configured` or
     * `unchanged` (same resourceVersion after the apply). Namespaced objects without a namespace
     * go to `namespace` (default: the kubeconfig context's). Conflicts with other field managers
     * fail with ConflictError naming the fields and managers (`force: true` takes ownership);
     * objects the server rejects fail with ValidationError quoting it (the field is named).
     * (A CRD whose schema defaults status fields, like Flux's observedGeneration: -1, is written
     * once more by the first re-apply after its creation: that one reports `configured`.)
     */
    async k8sApply(args: {
      kubeconfig: SecretRef;
      manifests: string;
      fieldManager: string;
      force?: boolean;
      namespace?: string;
      /** Field managers whose applied objects are left as they are (reported unchanged, `heldBy`). */
      yieldTo?: string[];
    }): Promise<{ objects: AppliedObject[] }> {
      if (!/^[\x21-\x7e][\x20-\x7e]{0,127}$/.test(args.fieldManager)) {
        throw nonRetryable(
          'validation',
          `fieldManager ${JSON.stringify(args.fieldManager)}: expected 1-128 printable characters`,
        );
      }
      const objects = parseManifests(args.manifests);
      const api = (await kube(args.kubeconfig)).dynamic;
      const applied: AppliedObject[] = [];
      for (const obj of objects) {
        const what = `apply ${describeObject({ kind: obj.kind, namespace: obj.metadata.namespace, name: obj.metadata.name })}`;
        const { namespaced } = await scopeOf(api, obj.apiVersion, obj.kind, what);
        if (namespaced) obj.metadata.namespace ??= args.namespace ?? api.fallbackNamespace;
        else delete obj.metadata.namespace;
        const ref: ObjectRef = {
          apiVersion: obj.apiVersion,
          kind: obj.kind,
          ...(namespaced ? { namespace: obj.metadata.namespace } : {}),
          name: obj.metadata.name,
        };
        const label = `apply ${describeObject(ref)}`;
        const before = await readObject(api, ref, label);
        // An object another applier took over (kustomize-controller applying it from Git) is its:
        // left as it is, not fought over.
        const heldBy = (before?.metadata.managedFields as Array<{ manager?: string; operation?: string }> | undefined)
          ?.filter((f) => f.operation === 'Apply' && args.yieldTo?.includes(f.manager ?? ''))
          .map((f) => f.manager!)[0];
        if (before && heldBy) {
          const resourceVersion = String(before.metadata.resourceVersion ?? '');
          applied.push({ ...ref, result: 'unchanged', resourceVersion, heldBy });
          continue;
        }
        let after: KubeObject;
        try {
          after = await api.apply(obj, args.fieldManager, args.force ?? false);
        } catch (err) {
          throw classifyApplyError(err, label, args.fieldManager, applied.length);
        }
        const resourceVersion = String(after.metadata.resourceVersion ?? '');
        const result: ApplyResult =
          before === undefined
            ? 'created'
            : before.metadata.resourceVersion === resourceVersion
              ? 'unchanged'
              : 'configured';
        const generation = after.metadata.generation as number | undefined;
        applied.push({ ...ref, result, resourceVersion, ...(generation !== undefined ? { generation } : {}) });
      }
      return { objects: applied };
    },

    /**
     * Waits until an object of any kind has condition `conditionType` at `status` (default
     * 'True'), heartbeating the latest state. With `currentGeneration`, the condition (or the
     * status) must have observed the object's current metadata.generation, so a Ready left from
     * the previous spec does not count. An object that does not exist yet is waited for. After
     * `timeoutSeconds`: TimeoutError carrying the object's last status.
     */
    async k8sWaitCondition(
      args: ObjectRef & {
        kubeconfig: SecretRef;
        conditionType: string;
        status?: 'True' | 'False' | 'Unknown';
        timeoutSeconds: number;
        currentGeneration?: boolean;
        /**
         * (issue 7) An absolute deadline (epoch ms) across attempts: a retried attempt waits only
         * for what is left of it, and reaching it fails for good (TimeoutError, not retried).
         */
        deadlineAt?: number;
      },
    ): Promise<{ condition: ObservedCondition; generation?: number; resourceVersion: string }> {
      const want = args.status ?? 'True';
      const api = (await kube(args.kubeconfig)).dynamic;
      const ref = await resolveRef(api, args, 'wait for');
      const what = `${describeObject(ref)} ${args.conditionType}=${want}${args.currentGeneration ? ' at its current generation' : ''}`;
      const deadline = Math.min(Date.now() + args.timeoutSeconds * 1000, args.deadlineAt ?? Infinity);
      const ctx = activityContext();
      let last: KubeObject | undefined;
      let lastError = '';
      for (;;) {
        try {
          last = await readObject(api, ref, `wait for ${what}`);
          lastError = '';
        } catch (err) {
          if ((err as { nonRetryable?: boolean }).nonRetryable) throw err;
          lastError = (err as Error).message;
        }
        const status = (last?.status ?? {}) as { conditions?: ObservedCondition[]; observedGeneration?: number };
        const cond = (status.conditions ?? []).find((c) => c.type === args.conditionType);
        const generation = last?.metadata.generation as number | undefined;
        const observed = cond?.observedGeneration ?? status.observedGeneration;
        const current =
          !args.currentGeneration || generation === undefined || (observed !== undefined && observed >= generation);
        if (last && cond?.status === want && current) {
          return {
            condition: {
              type: cond.type,
              status: cond.status,
              ...(cond.reason !== undefined ? { reason: cond.reason } : {}),
              ...(cond.message !== undefined ? { message: cond.message } : {}),
              ...(observed !== undefined ? { observedGeneration: observed } : {}),
            },
            ...(generation !== undefined ? { generation } : {}),
            resourceVersion: String(last.metadata.resourceVersion ?? ''),
          };
        }
        const now = !last
          ? 'not found'
          : cond
            ? `${cond.type}=${cond.status}${cond.reason ? ` (${cond.reason})` : ''}${current ? '' : ` at generation ${observed ?? '?'} of ${generation}`}`
            : `no ${args.conditionType} condition yet`;
        ctx?.heartbeat({ waiting: what, now, ...(lastError ? { error: lastError } : {}) });
        if (Date.now() > deadline) {
          const message = `${what}: not reached after ${args.timeoutSeconds}s (now ${now}${lastError ? `; last error: ${lastError}` : ''}). Last status: ${statusText(last)}`;
          // A deadline the caller set across attempts has passed: final, another attempt cannot help.
          if (args.deadlineAt !== undefined && Date.now() >= args.deadlineAt) {
            throw ApplicationFailure.create({
              type: 'TimeoutError',
              message,
              nonRetryable: true,
              details: [{ lastStatus: last?.status ?? null }],
            });
          }
          throw retryable('timeout', message, { lastStatus: last?.status ?? null });
        }
        await (ctx ? Promise.race([sleep(pollMs), ctx.cancelled]) : sleep(pollMs));
      }
    },

    /** Reads an object of any kind: `{ exists: false }` when absent. managedFields and a Secret's values are left out. */
    async k8sGetObject(args: ObjectRef & { kubeconfig: SecretRef }): Promise<{ exists: boolean; object?: KubeObject }> {
      const api = (await kube(args.kubeconfig)).dynamic;
      const ref = await resolveRef(api, args, 'get');
      const obj = await readObject(api, ref, `get ${describeObject(ref)}`);
      return obj ? { exists: true, object: redactObject(obj) } : { exists: false };
    },

    /** Deletes an object of any kind (dependents in the background); one that is gone already is done. */
    async k8sDeleteObject(args: ObjectRef & { kubeconfig: SecretRef }): Promise<{ deleted: boolean }> {
      const api = (await kube(args.kubeconfig)).dynamic;
      const ref = await resolveRef(api, args, 'delete');
      const spec = {
        apiVersion: ref.apiVersion,
        kind: ref.kind,
        metadata: { name: ref.name, namespace: ref.namespace },
      };
      try {
        await api.delete(spec, undefined, undefined, undefined, undefined, 'Background');
        return { deleted: true };
      } catch (err) {
        if (isApiException(err) && err.code === 404) return { deleted: false };
        throw classifyKubeError(err, `delete ${describeObject(ref)}`);
      }
    },

    /**
     * Creates or updates (server-side apply) a Secret whose values come from secret references,
     * resolved here: values never travel through inputs, results or history. Returns only the
     * outcome and the key names.
     */
    async k8sCreateSecretFromRef(args: {
      kubeconfig: SecretRef;
      namespace: string;
      name: string;
      data: Record<string, SecretRef>;
      /** Keys whose values are not secret (a Git username): given as they are. */
      literals?: Record<string, string>;
      type?: string;
      labels?: Record<string, string>;
      fieldManager?: string;
      force?: boolean;
    }): Promise<{ result: ApplyResult; keys: string[] }> {
      const keys = [...Object.keys(args.data), ...Object.keys(args.literals ?? {})].sort();
      const what = `apply Secret ${args.namespace}/${args.name}`;
      if (keys.length === 0) throw nonRetryable('validation', `${what}: data names no keys`);
      for (const key of keys) {
        if (!/^[-._a-zA-Z0-9]{1,253}$/.test(key)) {
          throw nonRetryable(
            'validation',
            `${what}: data key ${JSON.stringify(key)} is not a valid Secret key ([-._a-zA-Z0-9]+)`,
          );
        }
      }
      const data: Record<string, string> = {};
      for (const key of keys) {
        const value = args.data[key] ? await deps.secrets.resolve(args.data[key]) : args.literals![key]!;
        data[key] = Buffer.from(value).toString('base64');
      }
      const api = (await kube(args.kubeconfig)).dynamic;
      const ref = { apiVersion: 'v1', kind: 'Secret', namespace: args.namespace, name: args.name };
      const before = await readObject(api, ref, what);
      const fieldManager = args.fieldManager ?? 'labwright';
      const body: KubeObject = {
        apiVersion: 'v1',
        kind: 'Secret',
        metadata: { name: args.name, namespace: args.namespace, ...(args.labels ? { labels: args.labels } : {}) },
        type: args.type ?? 'Opaque',
        data,
      };
      const result = await applyOne(api, body, before, what, fieldManager, args.force ?? false);
      return { result, keys };
    },

    /**
     * (issue 7) Copies a Secret's data to another namespace and name (server-side apply): the
     * values stay inside this activity. NotFoundError when the source is missing.
     */
    async k8sCopySecret(args: {
      kubeconfig: SecretRef;
      from: { namespace: string; name: string };
      to: { namespace: string; name: string };
      labels?: Record<string, string>;
      fieldManager?: string;
    }): Promise<{ result: ApplyResult; keys: string[] }> {
      const what = `copy Secret ${args.from.namespace}/${args.from.name} to ${args.to.namespace}/${args.to.name}`;
      const api = (await kube(args.kubeconfig)).dynamic;
      const source = await readObject(api, { apiVersion: 'v1', kind: 'Secret', ...args.from }, what);
      if (!source)
        throw nonRetryable('notFound', `${what}: Secret ${args.from.namespace}/${args.from.name} does not exist`);
      const toRef = { apiVersion: 'v1', kind: 'Secret', ...args.to };
      const before = await readObject(api, toRef, what);
      const body: KubeObject = {
        apiVersion: 'v1',
        kind: 'Secret',
        metadata: { name: args.to.name, namespace: args.to.namespace, ...(args.labels ? { labels: args.labels } : {}) },
        type: (source.type as string | undefined) ?? 'Opaque',
        data: (source.data as Record<string, string> | undefined) ?? {},
      };
      const fieldManager = args.fieldManager ?? 'labwright';
      const result = await applyOne(api, body, before, what, fieldManager, false);
      return { result, keys: Object.keys(body.data as object).sort() };
    },

    // ---------------------------------------------------------------- node maintenance (issue 5)

    /** Lists Nodes (optionally by label selector) with readiness, cordon state, labels, taints and allocatable. */
    async k8sListNodes(args: { kubeconfig: SecretRef; labelSelector?: string }): Promise<NodeSummary[]> {
      const core = (await kube(args.kubeconfig)).core;
      const list = await call('list Nodes', () =>
        core.listNode(args.labelSelector ? { labelSelector: args.labelSelector } : {}),
      );
      return list.items.map((n) => ({
        name: n.metadata?.name ?? '',
        ready: isReady(n),
        unschedulable: n.spec?.unschedulable === true,
        labels: { ...(n.metadata?.labels ?? {}) },
        taints: (n.spec?.taints ?? []).map((t) => ({
          key: t.key,
          effect: t.effect,
          ...(t.value !== undefined ? { value: t.value } : {}),
        })),
        allocatable: { ...(n.status?.allocatable ?? {}) },
      }));
    },

    /** A Node's allocatable resources as the kubelet reported them (quantities as strings). */
    async k8sReadAllocatable(args: { kubeconfig: SecretRef; node: string }): Promise<Record<string, string>> {
      const core = (await kube(args.kubeconfig)).core;
      const node = await call(`read allocatable of Node ${args.node}`, () => core.readNode({ name: args.node }));
      return { ...(node.status?.allocatable ?? {}) };
    },

    /** Cordons a Node (unschedulable) or, with `cordon: false`, uncordons it. Nothing is written when it is so already. */
    async k8sCordonNode(args: {
      kubeconfig: SecretRef;
      node: string;
      cordon?: boolean;
    }): Promise<{ changed: boolean }> {
      const want = args.cordon ?? true;
      const k = await kube(args.kubeconfig);
      const core = k.core;
      const what = `${want ? 'cordon' : 'uncordon'} Node ${args.node}`;
      const node = await call(what, () => core.readNode({ name: args.node }));
      if ((node.spec?.unschedulable === true) === want) return { changed: false };
      await call(what, () =>
        core.patchNode(
          {
            name: args.node,
            body: {
              metadata: { resourceVersion: node.metadata?.resourceVersion },
              spec: { unschedulable: want ? true : null },
            },
          },
          k.mergePatch,
        ),
      );
      return { changed: true };
    },

    /**
     * Drains a cordoned Node: evicts its pods through the Eviction API (so PodDisruptionBudgets
     * hold) and waits until they are gone, heartbeating. DaemonSet pods (unless
     * `ignoreDaemonSets: false`) and mirror pods stay. Like kubectl, it refuses (PreconditionFailed,
     * before evicting anything) pods no controller would recreate unless `force`, and pods with
     * emptyDir data unless `deleteEmptyDirData`. Evictions a PDB refuses are retried until
     * `timeoutSeconds`; then TimeoutError names the pods left and why.
     */
    async k8sDrainNode(args: {
      kubeconfig: SecretRef;
      node: string;
      timeoutSeconds: number;
      gracePeriodSeconds?: number;
      ignoreDaemonSets?: boolean;
      deleteEmptyDirData?: boolean;
      force?: boolean;
    }): Promise<{ evicted: string[]; skipped: string[] }> {
      const core = (await kube(args.kubeconfig)).core;
      const what = `drain Node ${args.node}`;
      const node = await call(what, () => core.readNode({ name: args.node }));
      if (node.spec?.unschedulable !== true) {
        throw nonRetryable(
          'precondition',
          `${what}: it is not cordoned; cordon it first (k8sCordonNode) so no new pods land on it`,
        );
      }
      const ignoreDaemonSets = args.ignoreDaemonSets ?? true;
      const podsOnNode = async (): Promise<V1Pod[]> =>
        (await core.listPodForAllNamespaces({ fieldSelector: `spec.nodeName=${args.node}` })).items;
      const first = await call(what, podsOnNode);
      const skipped = first.filter((p) => drainSkipReason(p, ignoreDaemonSets)).map(podName);
      const toEvict = first.filter((p) => !drainSkipReason(p, ignoreDaemonSets));
      const finished = (p: V1Pod) => p.status?.phase === 'Succeeded' || p.status?.phase === 'Failed';
      const problems: string[] = [];
      const unmanaged = toEvict.filter((p) => !finished(p) && !p.metadata?.ownerReferences?.some((o) => o.controller));
      if (unmanaged.length > 0 && !args.force) {
        problems.push(
          `no controller would recreate ${unmanaged.map(podName).join(', ')} (force: true evicts them anyway)`,
        );
      }
      const daemons = toEvict.filter((p) =>
        p.metadata?.ownerReferences?.some((o) => o.controller && o.kind === 'DaemonSet'),
      );
      if (daemons.length > 0)
        problems.push(`DaemonSet pods ${daemons.map(podName).join(', ')} (ignoreDaemonSets: true leaves them)`);
      const emptyDir = toEvict.filter((p) => !finished(p) && (p.spec?.volumes ?? []).some((v) => v.emptyDir));
      if (emptyDir.length > 0 && !args.deleteEmptyDirData) {
        problems.push(
          `${emptyDir.map(podName).join(', ')} use emptyDir data that eviction deletes (deleteEmptyDirData: true allows it)`,
        );
      }
      if (problems.length > 0) throw nonRetryable('precondition', `${what}: nothing evicted: ${problems.join('; ')}`);

      const evicted = new Set<string>();
      const deadline = Date.now() + args.timeoutSeconds * 1000;
      const ctx = activityContext();
      for (;;) {
        const blocked = new Map<string, string>();
        let remaining: V1Pod[] = [];
        try {
          const skip = new Set(skipped);
          remaining = (await podsOnNode()).filter(
            (p) => !skip.has(podName(p)) && !drainSkipReason(p, ignoreDaemonSets),
          );
          for (const pod of remaining) {
            if (pod.metadata?.deletionTimestamp) continue; // evicted, terminating
            const name = pod.metadata?.name ?? '';
            const namespace = pod.metadata?.namespace ?? '';
            try {
              await core.createNamespacedPodEviction({
                name,
                namespace,
                body: {
                  apiVersion: 'policy/v1',
                  kind: 'Eviction',
                  metadata: { name, namespace },
                  ...(args.gracePeriodSeconds !== undefined
                    ? { deleteOptions: { gracePeriodSeconds: args.gracePeriodSeconds } }
                    : {}),
                },
              });
              evicted.add(podName(pod));
            } catch (err) {
              if (isApiException(err) && err.code === 404) continue; // gone meanwhile
              if (isApiException(err) && err.code === 429) {
                blocked.set(podName(pod), statusBody(err).message ?? 'eviction refused (429)');
                continue;
              }
              const failure = classifyKubeError(err, `${what}: evict pod ${podName(pod)}`);
              if ((failure as { nonRetryable?: boolean }).nonRetryable) throw failure;
              blocked.set(podName(pod), failure.message);
            }
          }
        } catch (err) {
          const failure = classifyKubeError(err, what);
          if ((failure as { nonRetryable?: boolean }).nonRetryable) throw failure;
          blocked.set('(list)', failure.message);
        }
        if (remaining.length === 0 && !blocked.has('(list)'))
          return { evicted: [...evicted].sort(), skipped: skipped.sort() };
        const left = remaining.map((p) => {
          const why = blocked.get(podName(p)) ?? (p.metadata?.deletionTimestamp ? 'terminating' : 'not evicted yet');
          return `${podName(p)}: ${why}`;
        });
        ctx?.heartbeat({ draining: args.node, remaining: left.length, evicted: evicted.size });
        if (Date.now() > deadline) {
          throw retryable(
            'timeout',
            `${what}: ${left.length} pod(s) still on it after ${args.timeoutSeconds}s: ${left.join('; ')}`,
          );
        }
        await (ctx ? Promise.race([sleep(pollMs), ctx.cancelled]) : sleep(pollMs));
      }
    },
    // ---------------------------------------------------------------- issue 7

    /**
     * Server-side apply (as k8sApply) of a manifest file on the worker, e.g. the Flux components
     * from the lab's repository checkout: it is read here, so the manifest never passes through
     * workflow history. Returns k8sApply's result plus the file's sha256 and size.
     */
    async k8sApplyFile(args: {
      kubeconfig: SecretRef;
      path: string;
      fieldManager: string;
      force?: boolean;
      namespace?: string;
    }): Promise<{ objects: AppliedObject[]; sha256: string; bytes: number }> {
      let data: Buffer;
      try {
        data = await fsp.readFile(args.path);
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code === 'ENOENT' || code === 'ENOTDIR' || code === 'EISDIR')
          throw nonRetryable('notFound', `manifest ${args.path} does not exist on the worker (${code})`);
        if (code === 'EACCES')
          throw nonRetryable('client', `manifest ${args.path}: the worker may not read it (EACCES)`);
        throw classifyUnknown(err, `read manifest ${args.path}`);
      }
      const sha256 = createHash('sha256').update(data).digest('hex');
      const { objects } = await activities.k8sApply({
        kubeconfig: args.kubeconfig,
        manifests: data.toString('utf8'),
        fieldManager: args.fieldManager,
        ...(args.force !== undefined ? { force: args.force } : {}),
        ...(args.namespace !== undefined ? { namespace: args.namespace } : {}),
      });
      return { objects, sha256, bytes: data.length };
    },

    /**
     * What uses a PVC: the Deployments and StatefulSets whose pods mount it (pod template volume,
     * or a StatefulSet's volumeClaimTemplate `<template>-<set>-<ordinal>`) with their replicas, and
     * the pods (not finished) that mount it, each with the Deployment or StatefulSet owning it.
     */
    async k8sPvcUsers(args: { kubeconfig: SecretRef; namespace: string; pvc: string }): Promise<{
      workloads: PvcWorkload[];
      pods: Array<{ name: string; phase: string; owner?: string }>;
    }> {
      const k = await kube(args.kubeconfig);
      const apps = k.apps;
      const core = k.core;
      const namespace = args.namespace;
      const [deployments, sets, replicaSets, pods] = await call(`find what uses PVC ${namespace}/${args.pvc}`, () =>
        Promise.all([
          apps.listNamespacedDeployment({ namespace }),
          apps.listNamespacedStatefulSet({ namespace }),
          apps.listNamespacedReplicaSet({ namespace }),
          core.listNamespacedPod({ namespace }),
        ]),
      );
      const workloads: PvcWorkload[] = [];
      for (const d of deployments.items) {
        if (mountsPvc(d.spec?.template.spec, args.pvc))
          workloads.push({ kind: 'Deployment', name: d.metadata!.name!, replicas: d.spec?.replicas ?? 1 });
      }
      for (const set of sets.items) {
        const fromTemplate = (set.spec?.volumeClaimTemplates ?? []).some((t) => {
          const prefix = `${t.metadata?.name ?? ''}-${set.metadata?.name ?? ''}-`;
          return args.pvc.startsWith(prefix) && /^\d+$/.test(args.pvc.slice(prefix.length));
        });
        if (fromTemplate || mountsPvc(set.spec?.template.spec, args.pvc))
          workloads.push({ kind: 'StatefulSet', name: set.metadata!.name!, replicas: set.spec?.replicas ?? 1 });
      }
      const rsOwner = new Map(
        replicaSets.items.map((rs) => [rs.metadata?.name, rs.metadata?.ownerReferences?.find((o) => o.controller)]),
      );
      const users = pods.items
        .filter((p) => mountsPvc(p.spec, args.pvc) && !['Succeeded', 'Failed'].includes(p.status?.phase ?? ''))
        .map((p) => {
          const ctl = p.metadata?.ownerReferences?.find((o) => o.controller);
          const deployment = ctl?.kind === 'ReplicaSet' ? rsOwner.get(ctl.name) : undefined;
          const owner =
            ctl?.kind === 'StatefulSet'
              ? `StatefulSet ${ctl.name}`
              : deployment?.kind === 'Deployment'
                ? `Deployment ${deployment.name}`
                : undefined;
          return { name: p.metadata!.name!, phase: p.status?.phase ?? 'Pending', ...(owner ? { owner } : {}) };
        });
      return { workloads, pods: users };
    },

    /**
     * Sets a Deployment's or StatefulSet's replicas through its scale subresource; nothing is
     * written when it has them already. Returns the replicas it had.
     */
    async k8sScaleWorkload(args: {
      kubeconfig: SecretRef;
      namespace: string;
      kind: 'Deployment' | 'StatefulSet';
      name: string;
      replicas: number;
    }): Promise<{ changed: boolean; before: number }> {
      const k = await kube(args.kubeconfig);
      const apps = k.apps;
      const ref = { namespace: args.namespace, name: args.name };
      const what = `scale ${args.kind} ${args.namespace}/${args.name} to ${args.replicas}`;
      const scale = await call(what, () =>
        args.kind === 'Deployment' ? apps.readNamespacedDeploymentScale(ref) : apps.readNamespacedStatefulSetScale(ref),
      );
      const before = scale.spec?.replicas ?? 0;
      if (before === args.replicas) return { changed: false, before };
      const body = { spec: { replicas: args.replicas } };
      await call(what, () =>
        args.kind === 'Deployment'
          ? apps.patchNamespacedDeploymentScale({ ...ref, body }, k.mergePatch)
          : apps.patchNamespacedStatefulSetScale({ ...ref, body }, k.mergePatch),
      );
      return { changed: true, before };
    },

    /**
     * Waits until nothing uses a PVC: each given workload reports no pods (status.replicas 0 at
     * its current generation) and no pod that has not finished mounts it. TimeoutError after
     * `timeoutSeconds`.
     */
    async k8sWaitPvcUnused(args: {
      kubeconfig: SecretRef;
      namespace: string;
      pvc: string;
      workloads: Array<{ kind: 'Deployment' | 'StatefulSet'; name: string }>;
      timeoutSeconds: number;
    }): Promise<{ waitedMs: number }> {
      const k = await kube(args.kubeconfig);
      const apps = k.apps;
      const core = k.core;
      const started = Date.now();
      return poll(`PVC ${args.namespace}/${args.pvc} unused`, args.timeoutSeconds, async () => {
        for (const w of args.workloads) {
          const ref = { namespace: args.namespace, name: w.name };
          const o =
            w.kind === 'Deployment'
              ? await apps.readNamespacedDeployment(ref)
              : await apps.readNamespacedStatefulSet(ref);
          if ((o.status?.observedGeneration ?? 0) < (o.metadata?.generation ?? 0)) return undefined;
          if ((o.status?.replicas ?? 0) > 0) return undefined;
        }
        const pods = await core.listNamespacedPod({ namespace: args.namespace });
        const using = pods.items.some(
          (p) => mountsPvc(p.spec, args.pvc) && !['Succeeded', 'Failed'].includes(p.status?.phase ?? ''),
        );
        return using ? undefined : { waitedMs: Date.now() - started };
      });
    },
  };
  return activities;
}

export type KubernetesActivities = ReturnType<typeof createKubernetesActivities>;

/** (issue 7) A Deployment or StatefulSet whose pods mount a PVC, with its replicas. */
export interface PvcWorkload {
  kind: 'Deployment' | 'StatefulSet';
  name: string;
  replicas: number;
}

/** Whether a pod spec mounts the PVC. */
function mountsPvc(
  spec: { volumes?: Array<{ persistentVolumeClaim?: { claimName?: string } }> } | undefined,
  pvc: string,
): boolean {
  return (spec?.volumes ?? []).some((v) => v.persistentVolumeClaim?.claimName === pvc);
}
