// Smoke test of the real kube-apiserver harness and the controller-playing helpers.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  ApiextensionsV1Api,
  BatchV1Api,
  CoreV1Api,
  CustomObjectsApi,
  KubeConfig,
  PatchStrategy,
  setHeaderOptions,
} from '@kubernetes/client-node';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { installCrds, startKube, type KubeHandle } from './harness/kube.js';
import {
  completeJob,
  completeReplicationDestination,
  markNodeReady,
  setFluxReady,
} from './harness/kube-controllers.js';

describe('test kube-apiserver', () => {
  let kube: KubeHandle;
  let kc: KubeConfig;

  beforeAll(async () => {
    // A cold build of the binaries takes minutes; a cached start a few seconds.
    kube = await startKube();
    kc = new KubeConfig();
    kc.loadFromFile(kube.kubeconfigPath);
  }, 20 * 60_000);

  afterAll(async () => {
    await kube?.stop();
  }, 30_000);

  it('serves the API and the pinned CRDs (scripts/crds.txt)', async () => {
    const core = kc.makeApiClient(CoreV1Api);
    await core.createNamespace({ body: { metadata: { name: 'flux-system' } } });
    const ns = await core.readNamespace({ name: 'flux-system' });
    expect(ns.metadata?.name).toBe('flux-system');
    const crd = kc.makeApiClient(CustomObjectsApi);
    const list = await crd.listClusterCustomObject({
      group: 'volsync.backube',
      version: 'v1alpha1',
      plural: 'replicationdestinations',
    });
    expect(list.items).toEqual([]);
    // Every CRD the workflows write, fetched from the Go module proxy (nothing outside the repository).
    const ext = kc.makeApiClient(ApiextensionsV1Api);
    const names = (await ext.listCustomResourceDefinition()).items.map((c) => c.metadata?.name).sort();
    expect(names).toEqual([
      'gitrepositories.source.toolkit.fluxcd.io',
      'kustomizations.kustomize.toolkit.fluxcd.io',
      'ocirepositories.source.toolkit.fluxcd.io',
      'replicationdestinations.volsync.backube',
      'replicationsources.volsync.backube',
      'volumesnapshots.snapshot.storage.k8s.io',
    ]);
  });

  it('rejects objects the CRD schema rejects', async () => {
    const api = kc.makeApiClient(CustomObjectsApi);
    await expect(
      api.createNamespacedCustomObject({
        group: 'source.toolkit.fluxcd.io',
        version: 'v1',
        namespace: 'flux-system',
        plural: 'gitrepositories',
        body: {
          apiVersion: 'source.toolkit.fluxcd.io/v1',
          kind: 'GitRepository',
          metadata: { name: 'bad' },
          spec: { interval: 'not-a-duration', url: 'https://example.invalid/repo.git' },
        },
      }),
    ).rejects.toMatchObject({ code: 422 });
  });

  it('markNodeReady creates a Ready node with GPUs', async () => {
    const node = await markNodeReady(kc, 'gpu-1', { gpus: 2, labels: { 'labwright.dev/pool': 'gpu' } });
    expect(node.status?.conditions?.find((c) => c.type === 'Ready')?.status).toBe('True');
    expect(node.status?.allocatable?.['nvidia.com/gpu']).toBe('2');
    expect(node.metadata?.labels?.['labwright.dev/pool']).toBe('gpu');
    // Idempotent on an existing node.
    await markNodeReady(kube, 'gpu-1', { gpus: 1 });
    const again = await kc.makeApiClient(CoreV1Api).readNode({ name: 'gpu-1' });
    expect(again.status?.capacity?.['nvidia.com/gpu']).toBe('1');
  });

  it('setFluxReady marks a GitRepository and a Kustomization Ready', async () => {
    const api = kc.makeApiClient(CustomObjectsApi);
    const src = {
      group: 'source.toolkit.fluxcd.io',
      version: 'v1',
      namespace: 'flux-system',
      plural: 'gitrepositories',
    };
    await api.createNamespacedCustomObject({
      ...src,
      body: {
        apiVersion: 'source.toolkit.fluxcd.io/v1',
        kind: 'GitRepository',
        metadata: { name: 'homelab' },
        spec: { interval: '1m', url: 'https://git.example.invalid/homelab.git', ref: { branch: 'main' } },
      },
    });
    const rev = 'main@sha1:0123456789abcdef0123456789abcdef01234567';
    await setFluxReady(kc, { kind: 'GitRepository', namespace: 'flux-system', name: 'homelab', revision: rev });
    const repo = (await api.getNamespacedCustomObject({ ...src, name: 'homelab' })) as {
      metadata: { generation: number };
      status: {
        artifact: { revision: string };
        observedGeneration: number;
        conditions: { type: string; status: string }[];
      };
    };
    expect(repo.status.artifact.revision).toBe(rev);
    expect(repo.status.observedGeneration).toBe(repo.metadata.generation);
    expect(repo.status.conditions.find((c) => c.type === 'Ready')?.status).toBe('True');

    const ks = {
      group: 'kustomize.toolkit.fluxcd.io',
      version: 'v1',
      namespace: 'flux-system',
      plural: 'kustomizations',
    };
    await api.createNamespacedCustomObject({
      ...ks,
      body: {
        apiVersion: 'kustomize.toolkit.fluxcd.io/v1',
        kind: 'Kustomization',
        metadata: { name: 'apps' },
        spec: { interval: '10m', path: './apps', prune: true, sourceRef: { kind: 'GitRepository', name: 'homelab' } },
      },
    });
    await setFluxReady(kc, {
      kind: 'Kustomization',
      namespace: 'flux-system',
      name: 'apps',
      revision: rev,
      ready: false,
      message: 'boom',
    });
    await setFluxReady(kc, { kind: 'Kustomization', namespace: 'flux-system', name: 'apps', revision: rev });
    const k = (await api.getNamespacedCustomObject({ ...ks, name: 'apps' })) as {
      status: {
        lastAppliedRevision: string;
        lastAttemptedRevision: string;
        conditions: { type: string; status: string }[];
      };
    };
    expect(k.status.lastAppliedRevision).toBe(rev);
    expect(k.status.lastAttemptedRevision).toBe(rev);
    expect(k.status.conditions.find((c) => c.type === 'Ready')?.status).toBe('True');
  });

  it('completeReplicationDestination answers a manual trigger', async () => {
    const core = kc.makeApiClient(CoreV1Api);
    await core.createNamespace({ body: { metadata: { name: 'apps' } } });
    const api = kc.makeApiClient(CustomObjectsApi);
    const rd = { group: 'volsync.backube', version: 'v1alpha1', namespace: 'apps', plural: 'replicationdestinations' };
    await api.createNamespacedCustomObject({
      ...rd,
      body: {
        apiVersion: 'volsync.backube/v1alpha1',
        kind: 'ReplicationDestination',
        metadata: { name: 'db-restore' },
        spec: {
          trigger: { manual: 'restore-1' },
          restic: { repository: 'db-restic', copyMethod: 'Snapshot', capacity: '1Gi', accessModes: ['ReadWriteOnce'] },
        },
      },
    });
    await completeReplicationDestination(kc, {
      namespace: 'apps',
      name: 'db-restore',
      manualTrigger: 'restore-1',
      result: 'Failed',
    });
    let got = (await api.getNamespacedCustomObject({ ...rd, name: 'db-restore' })) as {
      status: {
        lastManualSync?: string;
        latestMoverStatus: { result: string };
        latestImage?: { kind: string; name: string };
      };
    };
    expect(got.status.latestMoverStatus.result).toBe('Failed');
    expect(got.status.lastManualSync).toBeUndefined();
    await completeReplicationDestination(kc, {
      namespace: 'apps',
      name: 'db-restore',
      manualTrigger: 'restore-1',
      result: 'Successful',
    });
    got = (await api.getNamespacedCustomObject({ ...rd, name: 'db-restore' })) as typeof got;
    expect(got.status.lastManualSync).toBe('restore-1');
    expect(got.status.latestMoverStatus.result).toBe('Successful');
    expect(got.status.latestImage?.kind).toBe('VolumeSnapshot');
    const snap = (await api.getNamespacedCustomObject({
      group: 'snapshot.storage.k8s.io',
      version: 'v1',
      namespace: 'apps',
      plural: 'volumesnapshots',
      name: got.status.latestImage?.name ?? '',
    })) as { status: { readyToUse: boolean } };
    expect(snap.status.readyToUse).toBe(true);
  });

  it('completeJob satisfies the real Job status rules', async () => {
    const batch = kc.makeApiClient(BatchV1Api);
    const job = (name: string) => ({
      metadata: { name },
      spec: {
        backoffLimit: 2,
        template: { spec: { restartPolicy: 'Never', containers: [{ name: 'c', image: 'busybox' }] } },
      },
    });
    await batch.createNamespacedJob({ namespace: 'apps', body: job('ok') });
    await batch.createNamespacedJob({ namespace: 'apps', body: job('bad') });
    const ok = await completeJob(kc, 'apps', 'ok', true);
    expect(ok.status?.conditions?.map((c) => `${c.type}=${c.status}`)).toEqual(
      expect.arrayContaining(['SuccessCriteriaMet=True', 'Complete=True']),
    );
    expect(ok.status?.succeeded).toBe(1);
    const bad = await completeJob(kc, 'apps', 'bad', false);
    expect(bad.status?.conditions?.map((c) => `${c.type}=${c.status}`)).toEqual(
      expect.arrayContaining(['FailureTarget=True', 'Failed=True']),
    );
    // Idempotent; a finished Job can't be flipped.
    await completeJob(kc, 'apps', 'ok', true);
    await expect(completeJob(kc, 'apps', 'ok', false)).rejects.toThrow(/already finished/);
    // The server really enforces the status rules the helper satisfies.
    await batch.createNamespacedJob({ namespace: 'apps', body: job('naive') });
    const t = new Date().toISOString().replace(/\.\d+Z$/, 'Z');
    await expect(
      batch.patchNamespacedJobStatus(
        {
          namespace: 'apps',
          name: 'naive',
          body: {
            status: {
              startTime: t,
              conditions: [{ type: 'Failed', status: 'True', reason: 'X', message: '', lastTransitionTime: t }],
            },
          },
        },
        setHeaderOptions('Content-Type', PatchStrategy.MergePatch),
      ),
    ).rejects.toMatchObject({ code: 422 });
  });

  it('installCrds waits for an apiserver that does not accept connections yet', async () => {
    // What a slow start looks like to the CRD installer: connection refused, then a server.
    const port = await new Promise<number>((resolve) => {
      const probe = net.createServer().listen(0, '127.0.0.1', () => {
        const p = (probe.address() as net.AddressInfo).port;
        probe.close(() => resolve(p));
      });
    });
    const upstream = new URL(kube.server);
    const late = net.createServer((client) => {
      const up = net.connect(Number(upstream.port), upstream.hostname);
      client.pipe(up).pipe(client);
      const drop = () => (client.destroy(), up.destroy());
      client.on('error', drop);
      up.on('error', drop);
    });
    const opened = new Promise<void>((resolve) => setTimeout(() => late.listen(port, '127.0.0.1', resolve), 1_500));
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'late-crds-'));
    try {
      const kubeconfig = JSON.parse(fs.readFileSync(kube.kubeconfigPath, 'utf8')) as {
        clusters: { cluster: { server: string } }[];
      };
      kubeconfig.clusters[0]!.cluster.server = `https://127.0.0.1:${port}`;
      fs.writeFileSync(path.join(dir, 'kubeconfig'), JSON.stringify(kubeconfig), { mode: 0o600 });
      fs.writeFileSync(
        path.join(dir, 'widgets.json'),
        JSON.stringify({
          apiVersion: 'apiextensions.k8s.io/v1',
          kind: 'CustomResourceDefinition',
          metadata: { name: 'widgets.late.labwright.dev' },
          spec: {
            group: 'late.labwright.dev',
            scope: 'Namespaced',
            names: { plural: 'widgets', singular: 'widget', kind: 'Widget' },
            versions: [
              {
                name: 'v1',
                served: true,
                storage: true,
                schema: { openAPIV3Schema: { type: 'object', 'x-kubernetes-preserve-unknown-fields': true } },
              },
            ],
          },
        }),
      );
      await expect(installCrds(path.join(dir, 'kubeconfig'), dir, 20_000)).resolves.toEqual([
        'widgets.late.labwright.dev',
      ]);
      await opened;
      const listed = await kc
        .makeApiClient(CustomObjectsApi)
        .listClusterCustomObject({ group: 'late.labwright.dev', version: 'v1', plural: 'widgets' });
      expect(listed.items).toEqual([]);
    } finally {
      await opened;
      await new Promise((resolve) => late.close(resolve));
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }, 60_000);
});
