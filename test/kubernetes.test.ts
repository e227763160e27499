// The Kubernetes activities against the run's shared, real kube-apiserver (one namespace per test).
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { promises as fs } from 'node:fs';
import type { AddressInfo } from 'node:net';
import {
  CoreV1Api,
  CustomObjectsApi,
  PatchStrategy,
  PolicyV1Api,
  setHeaderOptions,
  type V1Pod,
} from '@kubernetes/client-node';
import { WorkflowFailedError } from '@temporalio/client';
import { ApplicationFailure } from '@temporalio/common';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createKubernetesActivities } from '../activities/kubernetes.js';
import { SecretStore } from '../lib/secrets.js';
import { kubeConfigFor, markNodeReady, setFluxReady } from './harness/kube-controllers.js';
import { sharedKube, testNamespace } from './harness/kube.js';
import { activityFailure } from './harness/failures.js';
import { testClient, uniqueName, withWorker } from './harness/temporal.js';

let dir: string;
let secrets: SecretStore;
let acts: ReturnType<typeof createKubernetesActivities>;

beforeAll(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'labwright-k8s-test-'));
  secrets = new SecretStore(path.join(dir, 'secrets'));
  acts = createKubernetesActivities({ secrets, pollMs: 100 });
});
afterAll(async () => {
  await fs.rm(dir, { recursive: true, force: true });
});

const kube = () => sharedKube();
const kc = () => kubeConfigFor(kube().kubeconfigPath);

/** Applies manifests to a test's namespace, as field manager `labwright` unless another is named. */
const applyIn = (ns: string, manifests: string, fieldManager = 'labwright') =>
  acts.k8sApply({ kubeconfig: kube().kubeconfig, manifests, fieldManager, namespace: ns });

const REV = 'main@sha1:0123456789abcdef0123456789abcdef01234567';

function gitRepository(name: string, url = 'https://git.example.invalid/homelab.git'): string {
  return `apiVersion: source.toolkit.fluxcd.io/v1
kind: GitRepository
metadata:
  name: ${name}
spec:
  interval: 1m
  url: ${url}
  ref: { branch: main }
`;
}

function kustomization(name: string, spec: string): string {
  return `apiVersion: kustomize.toolkit.fluxcd.io/v1
kind: Kustomization
metadata:
  name: ${name}
spec:
  path: ./apps
  prune: true
  sourceRef: { kind: GitRepository, name: homelab }
${spec}`;
}

describe('k8sApply (server-side apply)', () => {
  it('applies multi-document YAML and reports each object created, configured or unchanged', async () => {
    const ns = await testNamespace('apply');
    const manifests = [
      `apiVersion: v1\nkind: ConfigMap\nmetadata: { name: settings }\ndata: { mode: simulated }\n`,
      // Cluster-scoped: the namespace does not apply to it.
      `apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: { name: ${ns}-reader }\nrules: [{ apiGroups: [''], resources: [pods], verbs: [get] }]\n`,
      kustomization('apps', '  interval: 10m\n'),
      '', // an empty document is skipped
    ].join('---\n');
    const first = await applyIn(ns, manifests);
    expect(first.objects.map((o) => `${o.kind} ${o.namespace ?? '-'}/${o.name} ${o.result}`)).toEqual([
      `ConfigMap ${ns}/settings created`,
      `ClusterRole -/${ns}-reader created`,
      `Kustomization ${ns}/apps created`,
    ]);

    // The real server's quirk: Flux's CRDs default status.observedGeneration (-1), and the first
    // re-apply after creation stores that default: a write, at the same generation.
    const second = await applyIn(ns, manifests);
    expect(second.objects.map((o) => o.result)).toEqual(['unchanged', 'unchanged', 'configured']);
    expect(second.objects[2]?.generation).toBe(1);
    const again = await applyIn(ns, manifests);
    expect(again.objects.map((o) => o.result)).toEqual(['unchanged', 'unchanged', 'unchanged']);
    expect(again.objects.map((o) => o.resourceVersion)).toEqual(second.objects.map((o) => o.resourceVersion));

    const changed = manifests.replace('interval: 10m', 'interval: 5m');
    const third = await applyIn(ns, changed);
    expect(third.objects.map((o) => o.result)).toEqual(['unchanged', 'unchanged', 'configured']);
    expect(third.objects[2]?.generation).toBe(2);

    const got = await acts.k8sGetObject({
      kubeconfig: kube().kubeconfig,
      apiVersion: 'kustomize.toolkit.fluxcd.io/v1',
      kind: 'Kustomization',
      namespace: ns,
      name: 'apps',
    });
    expect(got.exists).toBe(true);
    expect((got.object?.spec as { interval: string }).interval).toBe('5m');
    expect(got.object?.metadata.managedFields).toBeUndefined();
  });

  it('fails non-retryably, quoting the real server, on a Kustomization with an invalid field', async () => {
    const ns = await testNamespace('invalid');
    // The CRD's OpenAPI schema: interval must match a duration pattern.
    const bad = await activityFailure(applyIn(ns, kustomization('apps', '  interval: soon\n')));
    expect(bad.type).toBe('ValidationError');
    expect(bad.nonRetryable).toBe(true);
    expect(bad.message).toContain(`apply Kustomization ${ns}/apps: the API server rejected it as invalid`);
    expect(bad.message).toMatch(/spec\.interval: Invalid value: "soon"/);

    // A field the schema does not declare: strict field validation rejects it (nothing is dropped silently).
    const unknown = await activityFailure(applyIn(ns, kustomization('apps', '  interval: 10m\n  prunne: true\n')));
    expect(unknown.type).toBe('ValidationError');
    expect(unknown.nonRetryable).toBe(true);
    expect(unknown.message).toMatch(/\.spec\.prunne: field not declared in schema/);

    // The same for a built-in kind (client-node's typed serializer would have dropped the typo).
    const typo = await activityFailure(
      applyIn(ns, 'apiVersion: v1\nkind: ConfigMap\nmetadata: { name: c }\ndatta: { a: b }\n'),
    );
    expect(typo.type).toBe('ValidationError');
    expect(typo.message).toMatch(/\.datta: field not declared in schema/);

    // Nothing of them was stored.
    const none = await acts.k8sGetObject({
      kubeconfig: kube().kubeconfig,
      apiVersion: 'kustomize.toolkit.fluxcd.io/v1',
      kind: 'Kustomization',
      namespace: ns,
      name: 'apps',
    });
    expect(none).toEqual({ exists: false });

    // A kind the cluster does not serve, and YAML without a name, fail before any write.
    const noKind = await activityFailure(
      applyIn(ns, 'apiVersion: example.invalid/v1\nkind: Widget\nmetadata: { name: w }\n'),
    );
    expect(noKind.type).toBe('NotFoundError');
    expect(noKind.message).toContain('serves no Widget in example.invalid/v1');
    const noName = await activityFailure(
      acts.k8sApply({
        kubeconfig: kube().kubeconfig,
        manifests: 'apiVersion: v1\nkind: ConfigMap\n',
        fieldManager: 'x',
      }),
    );
    expect(noName.type).toBe('ValidationError');
    expect(noName.message).toContain('manifests document 1 (ConfigMap): metadata.name is missing');
  });

  it('reports a conflict between two field managers clearly, and force takes ownership', async () => {
    const ns = await testNamespace('conflict');
    const apply = (fieldManager: string, interval: string, force?: boolean) =>
      acts.k8sApply({
        kubeconfig: kube().kubeconfig,
        manifests: kustomization('apps', `  interval: ${interval}\n`),
        fieldManager,
        namespace: ns,
        ...(force !== undefined ? { force } : {}),
      });
    await apply('labwright-a', '10m');
    // Same values from a second manager: shared ownership, no conflict (its managedFields entry is a write).
    expect((await apply('labwright-b', '10m')).objects[0]?.result).toBe('configured');
    expect((await apply('labwright-b', '10m')).objects[0]?.result).toBe('unchanged');

    const conflict = await activityFailure(
      applyIn(ns, kustomization('apps', '  interval: 5m\n').replace('path: ./apps', 'path: ./other'), 'flux-bootstrap'),
    );
    expect(conflict.type).toBe('ConflictError');
    expect(conflict.nonRetryable).toBe(true);
    expect(conflict.message).toContain(`apply Kustomization ${ns}/apps as field manager "flux-bootstrap"`);
    expect(conflict.message).toContain('.spec.interval (managed by "labwright-a")');
    expect(conflict.message).toContain('.spec.path (managed by "labwright-a")');
    expect(conflict.message).toContain('force: true');
    expect(conflict.details?.[0]).toEqual({
      conflicts: expect.arrayContaining([
        { field: '.spec.interval', manager: 'labwright-a' },
        { field: '.spec.path', manager: 'labwright-a' },
      ]),
    });

    const forced = await acts.k8sApply({
      kubeconfig: kube().kubeconfig,
      manifests: kustomization('apps', '  interval: 5m\n'),
      fieldManager: 'flux-bootstrap',
      namespace: ns,
      force: true,
    });
    expect(forced.objects[0]?.result).toBe('configured');
    const raw = (await kc().makeApiClient(CustomObjectsApi).getNamespacedCustomObject({
      group: 'kustomize.toolkit.fluxcd.io',
      version: 'v1',
      namespace: ns,
      plural: 'kustomizations',
      name: 'apps',
    })) as { spec: { interval: string }; metadata: { managedFields: { manager: string; fieldsV1: object }[] } };
    expect(raw.spec.interval).toBe('5m');
    const owner = raw.metadata.managedFields.find((m) => JSON.stringify(m.fieldsV1).includes('"f:interval"'));
    expect(owner?.manager).toBe('flux-bootstrap');
    // Now the first manager is the one in conflict.
    const back = await activityFailure(apply('labwright-a', '10m'));
    expect(back.type).toBe('ConflictError');
    expect(back.message).toContain('.spec.interval (managed by "flux-bootstrap")');
  });
});

describe('k8sWaitCondition', () => {
  it('through a real worker: waits, heartbeating, until a controller (the test) sets the condition', async () => {
    const ns = await testNamespace('wait');
    const client = await testClient();
    await withWorker({ activities: createKubernetesActivities({ secrets, pollMs: 200 }) }, async ({ taskQueue }) => {
      const handle = await client.workflow.start('kubeApplyAndWait', {
        taskQueue,
        workflowId: uniqueName('kube-wait'),
        args: [
          {
            kubeconfig: kube().kubeconfig,
            manifests: gitRepository('homelab'),
            fieldManager: 'labwright',
            namespace: ns,
            wait: {
              apiVersion: 'source.toolkit.fluxcd.io/v1',
              kind: 'GitRepository',
              namespace: ns,
              name: 'homelab',
              conditionType: 'Ready',
              timeoutSeconds: 60,
              currentGeneration: true,
            },
          },
        ],
      });
      // The wait is running and has heartbeated before the condition is set.
      await expect
        .poll(
          async () => {
            const pending = (await handle.describe()).raw.pendingActivities ?? [];
            return pending.some((a) => a.activityType?.name === 'k8sWaitCondition' && a.lastHeartbeatTime);
          },
          { timeout: 20_000, interval: 200 },
        )
        .toBe(true);
      await setFluxReady(kc(), { kind: 'GitRepository', namespace: ns, name: 'homelab', revision: REV });
      const result = await handle.result();
      expect(result.objects).toEqual([
        expect.objectContaining({ kind: 'GitRepository', namespace: ns, result: 'created' }),
      ]);
      expect(result.condition).toMatchObject({ type: 'Ready', status: 'True', observedGeneration: 1 });
    });
  });

  it('with currentGeneration, a Ready from the previous spec does not count', async () => {
    const ns = await testNamespace('wait-gen');
    const ref = {
      kubeconfig: kube().kubeconfig,
      apiVersion: 'source.toolkit.fluxcd.io/v1',
      kind: 'GitRepository',
      namespace: ns,
      name: 'homelab',
      conditionType: 'Ready',
    };
    await applyIn(ns, gitRepository('homelab'));
    await setFluxReady(kc(), { kind: 'GitRepository', namespace: ns, name: 'homelab', revision: REV });
    await applyIn(ns, gitRepository('homelab', 'https://git.example.invalid/other.git'));
    // Ready=True is there, but for generation 1.
    expect((await acts.k8sWaitCondition({ ...ref, timeoutSeconds: 5 })).condition.status).toBe('True');
    const stale = await activityFailure(acts.k8sWaitCondition({ ...ref, timeoutSeconds: 1, currentGeneration: true }));
    expect(stale.type).toBe('TimeoutError');
    expect(stale.message).toContain('now Ready=True (Succeeded) at generation 1 of 2');
    const waiting = acts.k8sWaitCondition({ ...ref, timeoutSeconds: 20, currentGeneration: true });
    await new Promise((r) => setTimeout(r, 300));
    await setFluxReady(kc(), { kind: 'GitRepository', namespace: ns, name: 'homelab', revision: REV });
    expect(await waiting).toMatchObject({ generation: 2, condition: { status: 'True', observedGeneration: 2 } });
  });

  it('times out, retryably, with the object last status in the error', async () => {
    const ns = await testNamespace('wait-timeout');
    await applyIn(ns, kustomization('apps', '  interval: 10m\n'));
    await setFluxReady(kc(), {
      kind: 'Kustomization',
      namespace: ns,
      name: 'apps',
      revision: REV,
      ready: false,
      message: 'kustomize build failed: accumulating resources from ./apps',
    });
    const started = Date.now();
    const err = await activityFailure(
      acts.k8sWaitCondition({
        kubeconfig: kube().kubeconfig,
        apiVersion: 'kustomize.toolkit.fluxcd.io/v1',
        kind: 'Kustomization',
        namespace: ns,
        name: 'apps',
        conditionType: 'Ready',
        timeoutSeconds: 1,
      }),
    );
    expect(Date.now() - started).toBeGreaterThanOrEqual(1000);
    expect(err.type).toBe('TimeoutError');
    expect(err.nonRetryable).toBe(false);
    expect(err.message).toContain(`Kustomization ${ns}/apps Ready=True: not reached after 1s (now Ready=False`);
    expect(err.message).toContain('Last status: {');
    expect(err.message).toContain('kustomize build failed: accumulating resources from ./apps');
    const last = (err.details?.[0] as { lastStatus: { conditions: { type: string; status: string }[] } }).lastStatus;
    expect(last.conditions.find((c) => c.type === 'Ready')?.status).toBe('False');

    // An object that never appears: the error says so.
    const missing = await activityFailure(
      acts.k8sWaitCondition({
        kubeconfig: kube().kubeconfig,
        apiVersion: 'v1',
        kind: 'ConfigMap',
        namespace: ns,
        name: 'never',
        conditionType: 'Ready',
        timeoutSeconds: 0.3,
      }),
    );
    expect(missing.type).toBe('TimeoutError');
    expect(missing.message).toContain('now not found');
    expect(missing.message).toContain('Last status: the object does not exist');
  });

  it('through a real worker: an invalid object fails the workflow at once, without a retry', async () => {
    const ns = await testNamespace('wait-bad');
    const client = await testClient();
    await withWorker({ activities: createKubernetesActivities({ secrets, pollMs: 200 }) }, async ({ taskQueue }) => {
      const handle = await client.workflow.start('kubeApplyAndWait', {
        taskQueue,
        workflowId: uniqueName('kube-wait-bad'),
        args: [
          {
            kubeconfig: kube().kubeconfig,
            manifests: kustomization('apps', '  interval: never\n'),
            fieldManager: 'labwright',
            wait: {
              apiVersion: 'v1',
              kind: 'ConfigMap',
              namespace: ns,
              name: 'x',
              conditionType: 'Ready',
              timeoutSeconds: 1,
            },
          },
        ],
      });
      const err = await handle.result().catch((e: unknown) => e);
      expect(err).toBeInstanceOf(WorkflowFailedError);
      const cause = (err as WorkflowFailedError).cause?.cause as ApplicationFailure;
      expect(cause.type).toBe('ValidationError');
      expect(cause.message).toMatch(/spec\.interval: Invalid value: "never"/);
      const history = await handle.fetchHistory();
      const started = (history.events ?? []).filter((e) => e.activityTaskStartedEventAttributes);
      expect(started.map((e) => e.activityTaskStartedEventAttributes?.attempt)).toEqual([1]);
    });
  });
});

describe('k8sCreateSecretFromRef', () => {
  it('creates a Secret from references resolved in the activity; no value leaves it', async () => {
    const ns = await testNamespace('secret');
    const token = `ghp_${Math.random().toString(36).slice(2)}`;
    const ref = await secrets.put('flux/git-token', token);
    const args = {
      kubeconfig: kube().kubeconfig,
      namespace: ns,
      name: 'flux-system',
      data: { username: { env: 'LABWRIGHT_TEST_GIT_USER' }, password: ref },
      labels: { 'app.kubernetes.io/managed-by': 'labwright' },
    };
    process.env.LABWRIGHT_TEST_GIT_USER = 'git';
    const created = await acts.k8sCreateSecretFromRef(args);
    expect(created).toEqual({ result: 'created', keys: ['password', 'username'] });
    expect(JSON.stringify(created)).not.toContain(token);
    const stored = await kc().makeApiClient(CoreV1Api).readNamespacedSecret({ namespace: ns, name: 'flux-system' });
    expect(Buffer.from(stored.data?.password ?? '', 'base64').toString()).toBe(token);
    expect(Buffer.from(stored.data?.username ?? '', 'base64').toString()).toBe('git');
    expect(stored.type).toBe('Opaque');

    expect((await acts.k8sCreateSecretFromRef(args)).result).toBe('unchanged');
    await secrets.put('flux/git-token', `${token}-rotated`);
    expect((await acts.k8sCreateSecretFromRef(args)).result).toBe('configured');

    const got = await acts.k8sGetObject({
      kubeconfig: kube().kubeconfig,
      apiVersion: 'v1',
      kind: 'Secret',
      namespace: ns,
      name: 'flux-system',
    });
    expect(got.object?.dataKeys).toEqual(['password', 'username']);
    expect(JSON.stringify(got)).not.toContain(Buffer.from(token).toString('base64').slice(0, 12));
    expect(got.object?.data).toBeUndefined();

    const missing = await activityFailure(
      acts.k8sCreateSecretFromRef({ ...args, data: { x: { store: 'flux/absent' } } }),
    );
    expect(missing.type).toBe('ValidationError');
    expect(missing.message).toContain('does not exist');

    expect(
      await acts.k8sDeleteObject({
        kubeconfig: kube().kubeconfig,
        apiVersion: 'v1',
        kind: 'Secret',
        namespace: ns,
        name: 'flux-system',
      }),
    ).toEqual({ deleted: true });
    expect(
      await acts.k8sDeleteObject({
        kubeconfig: kube().kubeconfig,
        apiVersion: 'v1',
        kind: 'Secret',
        namespace: ns,
        name: 'flux-system',
      }),
    ).toEqual({ deleted: false });
  });
});

describe('node maintenance', () => {
  /** Plays the kubelet: pods that were evicted (terminating) on `node` are finished. */
  async function kubeletFinishesTerminating(node: string): Promise<number> {
    const core = kc().makeApiClient(CoreV1Api);
    const pods = (await core.listPodForAllNamespaces({ fieldSelector: `spec.nodeName=${node}` })).items;
    const terminating = pods.filter((p) => p.metadata?.deletionTimestamp);
    for (const p of terminating) {
      await core
        .deleteNamespacedPod({ namespace: p.metadata!.namespace!, name: p.metadata!.name!, gracePeriodSeconds: 0 })
        .catch(() => undefined);
    }
    return terminating.length;
  }

  function pod(
    name: string,
    node: string,
    owner?: { kind: string; name: string },
    labels: Record<string, string> = {},
  ): V1Pod {
    return {
      metadata: {
        name,
        labels,
        ...(owner
          ? {
              ownerReferences: [
                {
                  apiVersion: 'apps/v1',
                  kind: owner.kind,
                  name: owner.name,
                  uid: '00000000-0000-0000-0000-000000000001',
                  controller: true,
                },
              ],
            }
          : {}),
      },
      spec: { nodeName: node, containers: [{ name: 'c', image: 'busybox' }] },
    };
  }

  it('lists, cordons, reads allocatable and drains a node, honouring PDBs and its deadline', async () => {
    const ns = await testNamespace('drain');
    const node = `${ns}-gpu`;
    await markNodeReady(kc(), node, { gpus: 2, labels: { 'labwright.dev/test-run': ns } });
    await markNodeReady(kc(), `${ns}-other`, { labels: { 'labwright.dev/test-run': ns } });
    const k = kube().kubeconfig;

    const nodes = await acts.k8sListNodes({ kubeconfig: k, labelSelector: `labwright.dev/test-run=${ns}` });
    expect(nodes.map((n) => n.name).sort()).toEqual([`${ns}-gpu`, `${ns}-other`]);
    expect(nodes.find((n) => n.name === node)).toMatchObject({ ready: true, unschedulable: false });
    expect((await acts.k8sReadAllocatable({ kubeconfig: k, node }))['nvidia.com/gpu']).toBe('2');

    const core = kc().makeApiClient(CoreV1Api);
    for (const p of [
      pod('web-1', node, { kind: 'ReplicaSet', name: 'web' }),
      pod('agent-1', node, { kind: 'DaemonSet', name: 'agent' }),
      pod('bare', node),
      pod('db-0', node, { kind: 'StatefulSet', name: 'db' }, { app: 'db' }),
    ]) {
      await core.createNamespacedPod({ namespace: ns, body: p });
    }
    await kc()
      .makeApiClient(PolicyV1Api)
      .createNamespacedPodDisruptionBudget({
        namespace: ns,
        body: { metadata: { name: 'db' }, spec: { minAvailable: 1, selector: { matchLabels: { app: 'db' } } } },
      });

    const uncordoned = await activityFailure(acts.k8sDrainNode({ kubeconfig: k, node, timeoutSeconds: 5 }));
    expect(uncordoned.type).toBe('PreconditionFailed');
    expect(uncordoned.message).toContain('not cordoned');

    expect(await acts.k8sCordonNode({ kubeconfig: k, node })).toEqual({ changed: true });
    expect(await acts.k8sCordonNode({ kubeconfig: k, node })).toEqual({ changed: false });

    // kubectl's rule: a pod no controller recreates is not evicted without force; nothing is touched.
    const bare = await activityFailure(acts.k8sDrainNode({ kubeconfig: k, node, timeoutSeconds: 5 }));
    expect(bare.type).toBe('PreconditionFailed');
    expect(bare.message).toContain(`no controller would recreate ${ns}/bare`);
    expect(
      (await core.listNamespacedPod({ namespace: ns })).items.filter((p) => p.metadata?.deletionTimestamp),
    ).toEqual([]);

    // The kubelet reports db-0 Running (a Pending pod may be evicted whatever its PDB says).
    await core.patchNamespacedPodStatus(
      {
        namespace: ns,
        name: 'db-0',
        body: { status: { phase: 'Running', conditions: [{ type: 'Ready', status: 'True' }] } },
      },
      setHeaderOptions('Content-Type', PatchStrategy.MergePatch),
    );
    // The PDB (no disruption controller runs, so it allows none) holds db-0: the drain reaches its deadline.
    let kubelet = true;
    const kubeletLoop = (async () => {
      while (kubelet) {
        await kubeletFinishesTerminating(node);
        await new Promise((r) => setTimeout(r, 100));
      }
    })();
    try {
      const blocked = await activityFailure(acts.k8sDrainNode({ kubeconfig: k, node, timeoutSeconds: 2, force: true }));
      expect(blocked.type).toBe('TimeoutError');
      expect(blocked.nonRetryable).toBe(false);
      expect(blocked.message).toMatch(new RegExp(`1 pod\\(s\\) still on it after 2s: ${ns}/db-0: .*disruption budget`));

      await kc().makeApiClient(PolicyV1Api).deleteNamespacedPodDisruptionBudget({ namespace: ns, name: 'db' });
      const drained = await acts.k8sDrainNode({ kubeconfig: k, node, timeoutSeconds: 20, force: true });
      expect(drained.evicted).toEqual([`${ns}/db-0`]); // web-1 and bare went in the first, blocked run
      expect(drained.skipped).toEqual([`${ns}/agent-1`]);
    } finally {
      kubelet = false;
      await kubeletLoop;
    }
    const left = (await core.listNamespacedPod({ namespace: ns })).items.map((p) => p.metadata?.name);
    expect(left).toEqual(['agent-1']);

    expect(await acts.k8sCordonNode({ kubeconfig: k, node, cordon: false })).toEqual({ changed: true });
    expect(
      (await acts.k8sListNodes({ kubeconfig: k, labelSelector: `labwright.dev/test-run=${ns}` })).every(
        (n) => !n.unschedulable,
      ),
    ).toBe(true);
  });
});

describe('error classification on HTTP answers', () => {
  it('retries throttling and 5xx, not 4xx', async () => {
    let status = 429;
    const server = http.createServer((_req, res) => {
      res.writeHead(status, { 'content-type': 'application/json' });
      res.end(
        JSON.stringify({
          kind: 'Status',
          apiVersion: 'v1',
          status: 'Failure',
          message: `answer ${status}`,
          code: status,
        }),
      );
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    try {
      const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
      const ref = await secrets.put(
        'kubeconfig/stub',
        JSON.stringify({
          apiVersion: 'v1',
          kind: 'Config',
          clusters: [{ name: 's', cluster: { server: url, 'insecure-skip-tls-verify': true } }],
          users: [{ name: 'u', user: { token: 'stub-token' } }],
          contexts: [{ name: 's', context: { cluster: 's', user: 'u' } }],
          'current-context': 's',
        }),
      );
      const expectations: Array<[number, string, boolean]> = [
        [429, 'ThrottledError', false],
        [503, 'ServerError', false],
        [500, 'ServerError', false],
        [403, 'ClientError', true],
        [401, 'ClientError', true],
      ];
      for (const [code, type, nonRetryable] of expectations) {
        status = code;
        const apply = await activityFailure(
          acts.k8sApply({ kubeconfig: ref, manifests: gitRepository('x'), fieldManager: 'm' }),
        );
        expect([code, apply.type, apply.nonRetryable]).toEqual([code, type, nonRetryable]);
        expect(apply.message).toContain(`answer ${code}`);
        const list = await activityFailure(acts.k8sListNodes({ kubeconfig: ref }));
        expect([code, list.type, list.nonRetryable]).toEqual([code, type, nonRetryable]);
      }
      // A refused connection retries too.
      await new Promise<void>((r) => server.close(() => r()));
      const refused = await activityFailure(acts.k8sListNodes({ kubeconfig: ref }));
      expect(refused.type).toBe('ConnectionError');
      expect(refused.nonRetryable).toBe(false);
    } finally {
      server.close();
    }
  });
});
