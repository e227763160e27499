// fluxBootstrap on the real dev server and the run's shared kube-apiserver; the test plays the
// Deployment controller, source-controller and kustomize-controller through the status subresource.
import { createHash, generateKeyPairSync } from 'node:crypto';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { AppsV1Api, CoreV1Api, CustomObjectsApi, PatchStrategy, setHeaderOptions } from '@kubernetes/client-node';
import { WorkflowFailedError, type WorkflowHandle } from '@temporalio/client';
import { ApplicationFailure } from '@temporalio/common';
import { parse as parseYaml } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createDrReportActivities } from '../activities/dr-reports.js';
import { createKubernetesActivities } from '../activities/kubernetes.js';
import type { FluxBootstrapResult, FluxStatus } from '../common/flux-bootstrap.js';
import type { Progress } from '../common/progress.js';
import { projectRoot } from '../lib/paths.js';
import { SecretStore } from '../lib/secrets.js';
import { recordHistory } from './harness/histories.js';
import { kubeConfigFor, setFluxReady } from './harness/kube-controllers.js';
import { sharedKube } from './harness/kube.js';
import { testClient, testDataConverter, uniqueName, withWorker } from './harness/temporal.js';

const REV = 'main@sha1:1111111111111111111111111111111111111111';
const REV2 = 'main@sha1:2222222222222222222222222222222222222222';
const MANIFEST = path.join(
  projectRoot,
  'docs',
  'examples',
  'lab-repo',
  'clusters',
  'home',
  'flux-system',
  'gotk-components.yaml',
);
const mergePatch = setHeaderOptions('Content-Type', PatchStrategy.MergePatch);

let dir: string;
let secrets: SecretStore;
let activities: Record<string, (...args: never[]) => Promise<unknown>>;
let inventory: Record<string, unknown>;

beforeAll(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'labwright-flux-test-'));
  secrets = new SecretStore(path.join(dir, 'secrets'));
  // A real deploy key: source-controller (played by setFluxReady) parses it.
  const { privateKey } = generateKeyPairSync('ed25519');
  await secrets.put('flux/deploy-key', privateKey.export({ type: 'pkcs8', format: 'pem' }).toString());
  await secrets.put('flux/token', 'github_pat_test_only');
  await secrets.put(
    'flux/known-hosts',
    'github.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n',
  );
  await secrets.put('flux/age.key', 'AGE-SECRET-KEY-1TESTONLY\n');
  activities = {
    ...createKubernetesActivities({ secrets, pollMs: 100 }),
    ...createDrReportActivities({ dir: path.join(dir, 'reports') }),
  };
  inventory = parseYaml(await fs.readFile(path.join(projectRoot, 'hardware', 'lab.example.yaml'), 'utf8')) as Record<
    string,
    unknown
  >;
  // The example's credentials, as references into this test's store.
  const flux = (inventory.clusters as { home: { flux: Record<string, unknown> } }).home.flux;
  flux.gitCredentials = { identity: { store: 'flux/deploy-key' }, knownHosts: { store: 'flux/known-hosts' } };
});
afterAll(async () => {
  await fs.rm(dir, { recursive: true, force: true });
});

function input(over: Record<string, unknown> = {}) {
  return {
    cluster: 'home',
    inventory,
    kubeconfig: sharedKube().kubeconfig,
    componentsManifest: MANIFEST,
    sopsAgeKey: { store: 'flux/age.key' },
    expectedRevision: REV,
    pollSeconds: 0.2,
    controllersTimeoutSeconds: 30,
    readyTimeoutSeconds: 60,
    slowAfterSeconds: 2,
    ...over,
  };
}

/** The Deployment controller: every Deployment in flux-system Available at its generation. */
async function makeDeploymentsAvailable(names: string[]): Promise<void> {
  const apps = kubeConfigFor(sharedKube().kubeconfigPath).makeApiClient(AppsV1Api);
  for (const name of names) {
    const d = await apps.readNamespacedDeployment({ namespace: 'flux-system', name });
    const t = new Date().toISOString().replace(/\.\d+Z$/, 'Z');
    await apps.patchNamespacedDeploymentStatus(
      {
        namespace: 'flux-system',
        name,
        body: {
          status: {
            observedGeneration: d.metadata?.generation,
            replicas: 1,
            updatedReplicas: 1,
            readyReplicas: 1,
            availableReplicas: 1,
            conditions: [
              {
                type: 'Available',
                status: 'True',
                reason: 'MinimumReplicasAvailable',
                message: 'Deployment has minimum availability.',
                lastUpdateTime: t,
                lastTransitionTime: t,
              },
              {
                type: 'Progressing',
                status: 'True',
                reason: 'NewReplicaSetAvailable',
                message: `ReplicaSet "${name}-1" has successfully progressed.`,
                lastUpdateTime: t,
                lastTransitionTime: t,
              },
            ],
          },
        },
      },
      mergePatch,
    );
  }
}

async function exists(kind: 'GitRepository' | 'Kustomization'): Promise<boolean> {
  const api = kubeConfigFor(sharedKube().kubeconfigPath).makeApiClient(CustomObjectsApi);
  const res =
    kind === 'GitRepository'
      ? { group: 'source.toolkit.fluxcd.io', version: 'v1', plural: 'gitrepositories' }
      : { group: 'kustomize.toolkit.fluxcd.io', version: 'v1', plural: 'kustomizations' };
  return api.getNamespacedCustomObject({ ...res, namespace: 'flux-system', name: 'flux-system' }).then(
    () => true,
    () => false,
  );
}

async function until(what: string, check: () => Promise<boolean>, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check().catch(() => false))) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Every payload of a run's history (inputs, results, details), decoded to text. */
async function historyTexts(handle: WorkflowHandle): Promise<{ activities: string[]; texts: string[] }> {
  const history = await handle.fetchHistory();
  const payloads: Array<{ metadata?: Record<string, Uint8Array> | null; data?: Uint8Array | null }> = [];
  const activities: string[] = [];
  const walk = (value: unknown): void => {
    if (!value || typeof value !== 'object') return;
    if (Array.isArray(value)) return value.forEach(walk);
    const rec = value as Record<string, unknown>;
    if (Array.isArray(rec.payloads)) payloads.push(...(rec.payloads as typeof payloads));
    for (const v of Object.values(rec)) if (v && typeof v === 'object' && !(v instanceof Uint8Array)) walk(v);
  };
  for (const e of history.events ?? []) {
    const name = e.activityTaskScheduledEventAttributes?.activityType?.name;
    if (name) activities.push(name);
    walk(e);
  }
  const decoded = await testDataConverter.payloadCodecs![0]!.decode(payloads);
  return { activities, texts: decoded.map((p) => Buffer.from(p.data ?? new Uint8Array()).toString('utf8')) };
}

describe('fluxBootstrap', () => {
  let first: FluxBootstrapResult;

  it('applies the components, waits for the controllers, makes the secrets, and is Ready at the revision (slow reported, not failed)', async () => {
    const client = await testClient();
    await withWorker({ activities }, async ({ taskQueue }) => {
      const handle = await client.workflow.start('fluxBootstrap', {
        taskQueue,
        workflowId: `flux-bootstrap/home-${uniqueName('t')}`,
        args: [input()],
      });
      // The Deployment controller: the controllers come up once the manifest is applied.
      const apps = kubeConfigFor(sharedKube().kubeconfigPath).makeApiClient(AppsV1Api);
      await until('the controllers Deployments', async () => {
        const list = await apps.listNamespacedDeployment({ namespace: 'flux-system' });
        return list.items.length === 2;
      });
      // Nothing is Ready before the controllers are Available.
      expect(await exists('GitRepository')).toBe(false);
      await makeDeploymentsAvailable(['source-controller', 'kustomize-controller']);

      // The controllers take their time: past slowAfterSeconds the run says slow, and goes on.
      await until('the sync objects', async () => (await exists('GitRepository')) && (await exists('Kustomization')));
      await until(
        'the slow warning',
        async () => (await handle.query<FluxStatus>('fluxStatus')).state === 'slow',
        15_000,
      );
      const progress = await handle.query<Progress>('progress');
      expect(progress.steps.find((s) => s.name === 'wait for Ready')?.detail).toMatch(/^SLOW /);
      expect((await handle.describe()).status.name).toBe('RUNNING');

      // source-controller fetches an old revision first: not Ready at the expected one yet.
      await setFluxReady(sharedKube(), {
        kind: 'GitRepository',
        namespace: 'flux-system',
        name: 'flux-system',
        revision: 'main@sha1:0000000000000000000000000000000000000000',
      });
      await new Promise((r) => setTimeout(r, 600));
      expect((await handle.describe()).status.name).toBe('RUNNING');
      // A long wait (about 8 s, 40 looks at pollSeconds 0.2) is a few heartbeating activities:
      // no timer, no look and no search-attribute update per poll in the history.
      await new Promise((r) => setTimeout(r, 5000));
      const waiting = (await handle.fetchHistory()).events ?? [];
      expect(waiting.filter((e) => e.timerStartedEventAttributes)).toEqual([]);
      expect(waiting.length).toBeLessThan(150);
      await setFluxReady(sharedKube(), {
        kind: 'GitRepository',
        namespace: 'flux-system',
        name: 'flux-system',
        revision: REV,
      });
      await setFluxReady(sharedKube(), {
        kind: 'Kustomization',
        namespace: 'flux-system',
        name: 'flux-system',
        revision: REV,
      });
      first = await handle.result();
      await recordHistory(handle as WorkflowHandle, 'flux-bootstrap');

      // The manifest never passed through history: the worker read and applied the file.
      const { activities: scheduled, texts } = await historyTexts(handle as WorkflowHandle);
      expect(scheduled).toContain('k8sApplyFile');
      expect(scheduled).not.toContain('drReadManifest');
      expect(scheduled.filter((a) => a === 'k8sWaitFluxReady').length).toBeLessThanOrEqual(3);
      expect(scheduled.filter((a) => a === 'k8sApply')).toHaveLength(1); // the sync objects only
      expect(texts.length).toBeGreaterThan(10);
      expect(texts.some((t) => t.includes(MANIFEST))).toBe(true); // the path does
      expect(texts.filter((t) => t.includes('ghcr.io/fluxcd/source-controller'))).toEqual([]);
    });

    expect(first.revision).toBe(REV);
    expect(first.slow).toBe(true);
    expect(first.unchanged).toEqual([]);
    expect(first.changed).toEqual(
      expect.arrayContaining([
        'Namespace flux-system created',
        'Deployment flux-system/source-controller created',
        'Deployment flux-system/kustomize-controller created',
        'Secret flux-system/flux-system created',
        'Secret flux-system/sops-age created',
        'GitRepository flux-system/flux-system created',
        'Kustomization flux-system/flux-system created',
      ]),
    );
    expect(first.controllers.sort()).toEqual(['kustomize-controller', 'source-controller']);
    expect(first.componentsSha256).toBe(
      createHash('sha256')
        .update(await fs.readFile(MANIFEST))
        .digest('hex'),
    );

    // What the API server has: secrets with the referenced values, the sync objects as wanted.
    const kc = kubeConfigFor(sharedKube().kubeconfigPath);
    const git = await kc
      .makeApiClient(CoreV1Api)
      .readNamespacedSecret({ namespace: 'flux-system', name: 'flux-system' });
    expect(Object.keys(git.data ?? {}).sort()).toEqual(['identity', 'known_hosts']);
    expect(Buffer.from(git.data!.identity!, 'base64').toString()).toContain('-----BEGIN PRIVATE KEY-----');
    const ks = (await kc.makeApiClient(CustomObjectsApi).getNamespacedCustomObject({
      group: 'kustomize.toolkit.fluxcd.io',
      version: 'v1',
      plural: 'kustomizations',
      namespace: 'flux-system',
      name: 'flux-system',
    })) as { spec: Record<string, unknown> };
    expect(ks.spec).toMatchObject({
      path: './clusters/home',
      prune: true,
      sourceRef: { kind: 'GitRepository', name: 'flux-system' },
      decryption: { provider: 'sops', secretRef: { name: 'sops-age' } },
    });
  });

  it('changes nothing when run again (the upgrade path) and lists every object unchanged', async () => {
    expect(first).toBeDefined();
    const client = await testClient();
    const again = await withWorker({ activities }, async ({ taskQueue }) =>
      client.workflow.execute('fluxBootstrap', {
        taskQueue,
        workflowId: `flux-bootstrap/home-${uniqueName('again')}`,
        args: [input()],
      }),
    );
    expect(again.changed).toEqual([]);
    expect(again.unchanged).toHaveLength(first.changed.length);
    expect(again.unchanged).toEqual(
      expect.arrayContaining(['Namespace flux-system', 'Kustomization flux-system/flux-system']),
    );
    expect(again.revision).toBe(REV);
    expect(again.slow).toBe(false);
    expect(again.summary).toMatch(/nothing changed/);
  });

  it("a re-run after kustomize-controller took over the sync objects (the repository's gotk-sync.yaml) changes nothing and does not conflict", async () => {
    expect(first).toBeDefined();
    // kustomize-controller applies the repository's flux-system/gotk-sync.yaml, as its own field
    // manager and with the repository's intervals (flux bootstrap writes 1m0s and 10m0s).
    const api = kubeConfigFor(sharedKube().kubeconfigPath).makeApiClient(CustomObjectsApi);
    const gotkSync = [
      {
        group: 'source.toolkit.fluxcd.io',
        plural: 'gitrepositories',
        body: {
          apiVersion: 'source.toolkit.fluxcd.io/v1',
          kind: 'GitRepository',
          metadata: { name: 'flux-system', namespace: 'flux-system' },
          spec: {
            interval: '1m0s',
            ref: { branch: 'main' },
            secretRef: { name: 'flux-system' },
            url: 'ssh://git@github.com/example/home-ops.git',
          },
        },
      },
      {
        group: 'kustomize.toolkit.fluxcd.io',
        plural: 'kustomizations',
        body: {
          apiVersion: 'kustomize.toolkit.fluxcd.io/v1',
          kind: 'Kustomization',
          metadata: { name: 'flux-system', namespace: 'flux-system' },
          spec: {
            interval: '10m0s',
            path: './clusters/home',
            prune: true,
            sourceRef: { kind: 'GitRepository', name: 'flux-system' },
            decryption: { provider: 'sops', secretRef: { name: 'sops-age' } },
          },
        },
      },
    ];
    for (const o of gotkSync) {
      await api.patchNamespacedCustomObject(
        {
          group: o.group,
          version: 'v1',
          plural: o.plural,
          namespace: 'flux-system',
          name: 'flux-system',
          body: o.body,
          fieldManager: 'kustomize-controller',
          force: true,
        },
        setHeaderOptions('Content-Type', PatchStrategy.ServerSideApply),
      );
    }
    // ... and the controllers reconcile what Git now says.
    for (const kind of ['GitRepository', 'Kustomization'] as const) {
      await setFluxReady(sharedKube(), { kind, namespace: 'flux-system', name: 'flux-system', revision: REV });
    }
    const client = await testClient();
    const again = await withWorker({ activities }, async ({ taskQueue }) =>
      client.workflow.execute('fluxBootstrap', {
        taskQueue,
        workflowId: `flux-bootstrap/home-${uniqueName('taken-over')}`,
        args: [input()],
      }),
    );
    expect(again.changed).toEqual([]);
    expect(again.unchanged).toEqual(
      expect.arrayContaining(['GitRepository flux-system/flux-system', 'Kustomization flux-system/flux-system']),
    );
    // Git's values stay: labwright's 1m interval did not override the repository's 10m0s.
    const ks = (await api.getNamespacedCustomObject({
      group: 'kustomize.toolkit.fluxcd.io',
      version: 'v1',
      plural: 'kustomizations',
      namespace: 'flux-system',
      name: 'flux-system',
    })) as { spec: { interval: string } };
    expect(ks.spec.interval).toBe('10m0s');
  });

  it('source-controller (played) refuses credentials Flux refuses: ssh without known_hosts, a password without a username', async () => {
    const core = kubeConfigFor(sharedKube().kubeconfigPath).makeApiClient(CoreV1Api);
    const custom = kubeConfigFor(sharedKube().kubeconfigPath).makeApiClient(CustomObjectsApi);
    const ns = uniqueName('flux-auth');
    await core.createNamespace({ body: { metadata: { name: ns } } });
    const cases: Array<[string, string, Record<string, string>, string | undefined]> = [
      [
        'ssh://git@github.com/example/home-ops.git',
        'no-known-hosts',
        { identity: (await secrets.resolve({ store: 'flux/deploy-key' })).toString() },
        "invalid 'ssh' auth option: 'known_hosts' is required",
      ],
      [
        'https://github.com/example/home-ops.git',
        'no-username',
        { password: 'github_pat_test_only' },
        "invalid 'https' auth option: 'password' requires 'username' to be set",
      ],
      [
        'https://github.com/example/home-ops.git',
        'basic',
        { username: 'git', password: 'github_pat_test_only' },
        undefined,
      ],
    ];
    for (const [url, name, stringData, refusal] of cases) {
      await core.createNamespacedSecret({ namespace: ns, body: { metadata: { name }, stringData } });
      await custom.createNamespacedCustomObject({
        group: 'source.toolkit.fluxcd.io',
        version: 'v1',
        plural: 'gitrepositories',
        namespace: ns,
        body: {
          apiVersion: 'source.toolkit.fluxcd.io/v1',
          kind: 'GitRepository',
          metadata: { name, namespace: ns },
          spec: { interval: '1m', url, ref: { branch: 'main' }, secretRef: { name } },
        },
      });
      const after = (await setFluxReady(sharedKube(), {
        kind: 'GitRepository',
        namespace: ns,
        name,
        revision: REV,
      })) as {
        status: { conditions: Array<{ type: string; status: string; reason: string; message: string }> };
      };
      const ready = after.status.conditions.find((c) => c.type === 'Ready')!;
      if (refusal) {
        expect(ready).toMatchObject({
          status: 'False',
          reason: 'AuthenticationFailed',
          message: `failed to configure authentication options: ${refusal}`,
        });
      } else {
        expect(ready.status).toBe('True');
      }
    }
  });

  it('an https repository gets a Secret with username and password, which source-controller accepts', async () => {
    const client = await testClient();
    const https = structuredClone(inventory) as { clusters: { home: { flux: Record<string, unknown> } } };
    https.clusters.home.flux.url = 'https://github.com/example/home-ops.git';
    https.clusters.home.flux.gitCredentials = { username: 'git', password: { store: 'flux/token' } };
    // A deploy key for an https URL is refused before anything is applied, naming the field.
    const refused = await withWorker({ activities }, async ({ taskQueue }) =>
      client.workflow
        .execute('fluxBootstrap', {
          taskQueue,
          workflowId: `flux-bootstrap/home-${uniqueName('https-bad')}`,
          args: [
            input({
              inventory: https,
              gitCredentials: { identity: { store: 'flux/deploy-key' }, knownHosts: { store: 'flux/known-hosts' } },
            }),
          ],
        })
        .catch((e: unknown) => e),
    );
    expect(((refused as WorkflowFailedError).cause as Error).message).toBe(
      'invalid flux-bootstrap input: gitCredentials: an https:// URL needs { username, password } or { bearerToken }, not a deploy key',
    );
    const kc = kubeConfigFor(sharedKube().kubeconfigPath);
    await withWorker({ activities }, async ({ taskQueue }) => {
      const handle = await client.workflow.start('fluxBootstrap', {
        taskQueue,
        workflowId: `flux-bootstrap/home-${uniqueName('https')}`,
        args: [input({ inventory: https, expectedRevision: undefined })],
      });
      await until('the Secret', async () => {
        const s = await kc
          .makeApiClient(CoreV1Api)
          .readNamespacedSecret({ namespace: 'flux-system', name: 'flux-system' })
          .catch(() => undefined);
        return s?.data?.username !== undefined;
      });
      await handle.cancel();
      await handle.result().catch(() => undefined);
    });
    const git = await kc
      .makeApiClient(CoreV1Api)
      .readNamespacedSecret({ namespace: 'flux-system', name: 'flux-system' });
    expect(Buffer.from(git.data!.username!, 'base64').toString()).toBe('git');
    expect(Buffer.from(git.data!.password!, 'base64').toString()).toBe('github_pat_test_only');
  });

  it('fails with the controller message when the Kustomization reports Ready=False at the revision', async () => {
    const client = await testClient();
    const err = await withWorker({ activities }, async ({ taskQueue }) => {
      const handle = await client.workflow.start('fluxBootstrap', {
        taskQueue,
        workflowId: `flux-bootstrap/home-${uniqueName('bad')}`,
        args: [input({ expectedRevision: REV2 })],
      });
      await until('the wait', async () => (await handle.query<FluxStatus>('fluxStatus')).state === 'waiting');
      await setFluxReady(sharedKube(), {
        kind: 'GitRepository',
        namespace: 'flux-system',
        name: 'flux-system',
        revision: REV2,
      });
      await setFluxReady(sharedKube(), {
        kind: 'Kustomization',
        namespace: 'flux-system',
        name: 'flux-system',
        revision: REV2,
        ready: false,
        message: 'kustomize build failed: accumulating resources: open apps/missing.yaml: no such file or directory',
      });
      return handle.result().catch((e: unknown) => e);
    });
    expect(err).toBeInstanceOf(WorkflowFailedError);
    const cause = (err as WorkflowFailedError).cause as ApplicationFailure;
    expect(cause.type).toBe('PreconditionFailed');
    expect(cause.message).toContain('Kustomization flux-system/flux-system Ready=False (ReconciliationFailed)');
    expect(cause.message).toContain('open apps/missing.yaml: no such file or directory');
  });
  it('a controllers wait that reaches its deadline fails once, at the deadline, without retrying', async () => {
    // A manifest whose Deployment nobody makes Available (its own namespace: the others stay as they are).
    const ns = uniqueName('flux-stuck');
    const manifest = path.join(dir, `${ns}.yaml`);
    await fs.writeFile(
      manifest,
      [
        `apiVersion: v1\nkind: Namespace\nmetadata:\n  name: ${ns}`,
        `apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: stuck-controller\n  namespace: ${ns}\nspec:\n` +
          `  selector:\n    matchLabels: { app: stuck }\n  template:\n    metadata:\n      labels: { app: stuck }\n` +
          `    spec:\n      containers:\n        - name: manager\n          image: ghcr.io/fluxcd/source-controller:v1.7.3`,
      ].join('\n---\n'),
    );
    const client = await testClient();
    const started = Date.now();
    const { err, handle } = await withWorker({ activities }, async ({ taskQueue }) => {
      const h = await client.workflow.start('fluxBootstrap', {
        taskQueue,
        workflowId: `flux-bootstrap/home-${uniqueName('stuck')}`,
        args: [input({ componentsManifest: manifest, controllersTimeoutSeconds: 3 })],
      });
      return { err: await h.result().catch((e: unknown) => e), handle: h };
    });
    const took = Date.now() - started;
    expect(err).toBeInstanceOf(WorkflowFailedError);
    let cause = (err as WorkflowFailedError).cause as Error;
    while (cause.cause instanceof Error && !(cause instanceof ApplicationFailure)) cause = cause.cause;
    expect((cause as ApplicationFailure).type).toBe('TimeoutError');
    expect(cause.message).toMatch(
      new RegExp(`Deployment ${ns}/stuck-controller Available=True .*not reached after 3s`),
    );
    // One attempt: 5 attempts with backoff would take 3 s x 5 + 2+4+8+16 s.
    const history = await handle.fetchHistory();
    const started_ = (history.events ?? []).filter((e) => e.activityTaskStartedEventAttributes);
    const attempts = started_.map((e) => e.activityTaskStartedEventAttributes!.attempt ?? 0);
    expect(Math.max(...attempts)).toBe(1);
    expect(took).toBeLessThan(15_000);
  });
});
