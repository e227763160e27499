/**
 * What fluxBootstrap and drRestore need in the simulated lab, on top of the Proxmox and Kubernetes
 * peers (it starts after both):
 *
 * - the inventory's Flux credentials as secret-store references (placeholder values); the lab
 *   repository checkout is docs/examples/lab-repo (the Flux components manifest);
 * - something to restore: VM 150 `hass` with a vzdump archive an hour old on `unraid-backup`, and
 *   namespace `home-automation` with PVC `zigbee2mqtt` (a directory with a database and a
 *   sentinel) backed up by a Volsync ReplicationSource into a local restic repository;
 * - the controllers no simulated cluster runs, played every second in its kube-apiserver: Flux's
 *   Deployments Available, GitRepository and Kustomization `flux-system` Ready at SIM_REVISION;
 *   Volsync's mover and labwright's verification Jobs run for real (sim/volume-lab.ts: restic
 *   restores the bytes, the Job's checksum runs on them), in `home-automation` and in each
 *   drill's scratch namespace (labelled `labwright.dev/dr=true`);
 *
 * docs/examples/ holds the inputs that run against it (flux-bootstrap.json, dr-drill.json, dr-restore.json);
 * dr-drill.json's sentinel sha256 is that of SIM_SENTINEL.
 */
import { generateKeyPairSync } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import {
  AppsV1Api,
  CoreV1Api,
  CustomObjectsApi,
  KubeConfig,
  PatchStrategy,
  setHeaderOptions,
} from '@kubernetes/client-node';
import { setFluxReady } from './kube-controllers.js';
import { VolumeLab } from './volume-lab.js';
import type { PeerStarter } from './index.js';
import { pveCaller } from './proxmox.js';

export const SIM_REVISION = 'main@sha1:5e1f0c0ffee5e1f0c0ffee5e1f0c0ffee5e1f0c0';
/** What the app's sentinel file holds (docs/examples/dr-drill.json carries its sha256). */
export const SIM_SENTINEL = 'zigbee2mqtt sentinel, labwright simulated lab\n';
const KUBECONFIG_STORE = 'kubeconfig/home';
const mergePatch = setHeaderOptions('Content-Type', PatchStrategy.MergePatch);

type Draft = Record<string, unknown>;

export const fluxDrSimPeer: PeerStarter = async (ctx) => {
  const inv = ctx.inventory as Draft & { proxmox: { hosts: Draft[] }; clusters?: Record<string, Draft> };
  const dir = path.join(ctx.dir, 'flux-dr');
  await fs.mkdir(dir, { recursive: true });
  // Flux: credentials as store references.
  const flux = inv.clusters?.home?.flux as Draft | undefined;
  if (flux) {
    // A deploy key source-controller would parse, and the host keys it checks the server against.
    const { privateKey } = generateKeyPairSync('ed25519');
    flux.gitCredentials = {
      identity: await ctx.secrets.put(
        'flux/home/deploy-key',
        privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
      ),
      knownHosts: await ctx.secrets.put(
        'flux/home/known-hosts',
        'github.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n',
      ),
    };
    flux.sopsAgeKey = await ctx.secrets.put('flux/home/age.key', 'AGE-SECRET-KEY-1SIMULATED\n');
  }

  // Proxmox: VM 150 and an archive of it, through the fake's API and control endpoint.
  const host = inv.proxmox.hosts[0]!;
  const pve = pveCaller(
    String(host.apiUrl),
    await ctx.secrets.resolve(host.token as { store: string }),
    await fs.readFile(String(host.caFile)),
  );
  await pve('POST', '/api2/json/nodes/pve1/qemu', {
    vmid: 150,
    name: 'hass',
    cores: 2,
    memory: 2048,
    agent: 1,
    net0: 'virtio,bridge=vmbr0,tag=80',
  });
  const ctime = Math.floor(Date.now() / 1000) - 3600;
  await pve(
    'POST',
    '/_labwright/control',
    { op: 'store_backup', storage: 'unraid-backup', name: 'vzdump-qemu-150-sim.vma.zst', size: 2 * 1024 ** 3, ctime },
    true,
  );

  // Kubernetes: an app whose PVC Volsync backs up.
  const kc = new KubeConfig();
  kc.loadFromString(await ctx.secrets.resolve({ store: KUBECONFIG_STORE }));
  const core = kc.makeApiClient(CoreV1Api);
  const custom = kc.makeApiClient(CustomObjectsApi);
  const ns = 'home-automation';
  await core.createNamespace({ body: { metadata: { name: ns } } });
  await core.createNamespacedPersistentVolumeClaim({
    namespace: ns,
    body: {
      metadata: { name: 'zigbee2mqtt' },
      spec: { accessModes: ['ReadWriteOnce'], resources: { requests: { storage: '1Gi' } } },
    },
  });
  await core.createNamespacedSecret({
    namespace: ns,
    body: {
      metadata: { name: 'zigbee2mqtt-restic' },
      stringData: { RESTIC_REPOSITORY: path.join(dir, 'restic', 'zigbee2mqtt'), RESTIC_PASSWORD: 'simulated' },
    },
  });
  // The app's data (a database over the verification's 1 MiB minimum, and the sentinel whose
  // checksum the example drill checks), backed up by the real restic mover below.
  const volumes = new VolumeLab({ kube: kc, root: dir, pollMs: 500 });
  const data = volumes.volumeDir(ns, 'zigbee2mqtt');
  await fs.mkdir(data, { recursive: true });
  await fs.writeFile(path.join(data, 'database.db'), Buffer.alloc(1536 * 1024, 'zigbee2mqtt simulated lab\n'));
  await fs.writeFile(path.join(data, '.labwright-sentinel'), SIM_SENTINEL);
  const rs = { group: 'volsync.backube', version: 'v1alpha1', plural: 'replicationsources', namespace: ns };
  await custom.createNamespacedCustomObject({
    ...rs,
    body: {
      apiVersion: 'volsync.backube/v1alpha1',
      kind: 'ReplicationSource',
      metadata: { name: 'zigbee2mqtt', namespace: ns },
      spec: {
        sourcePVC: 'zigbee2mqtt',
        trigger: { schedule: '0 * * * *' },
        restic: { repository: 'zigbee2mqtt-restic', copyMethod: 'Snapshot' },
      },
    },
  });
  await volumes.backup(ns, 'zigbee2mqtt');
  volumes.watch(ns);

  // The controllers.
  let stopped = false;
  const loop = (async () => {
    while (!stopped) {
      await playControllers(kc, volumes).catch(() => undefined);
      await new Promise((r) => setTimeout(r, 1000));
    }
  })();
  return {
    name: 'flux-dr',
    summary: `VM 150 with a backup; PVC ${ns}/zigbee2mqtt backed up; Flux and Volsync controllers played`,
    env: {},
    stop: async () => {
      stopped = true;
      await loop;
      await volumes.stop();
    },
  };
};

/** One round of the controllers the simulated cluster lacks. */
async function playControllers(kc: KubeConfig, volumes: VolumeLab): Promise<void> {
  const apps = kc.makeApiClient(AppsV1Api);
  const custom = kc.makeApiClient(CustomObjectsApi);
  const t = new Date().toISOString().replace(/\.\d+Z$/, 'Z');
  for (const d of (await apps.listNamespacedDeployment({ namespace: 'flux-system' }).catch(() => ({ items: [] })))
    .items) {
    if (d.status?.observedGeneration === d.metadata?.generation) continue;
    await apps.patchNamespacedDeploymentStatus(
      {
        namespace: 'flux-system',
        name: d.metadata!.name!,
        body: {
          status: {
            observedGeneration: d.metadata?.generation,
            replicas: 1,
            readyReplicas: 1,
            availableReplicas: 1,
            updatedReplicas: 1,
            conditions: [
              {
                type: 'Available',
                status: 'True',
                reason: 'MinimumReplicasAvailable',
                message: 'simulated',
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
  for (const [kind, group, plural] of [
    ['GitRepository', 'source.toolkit.fluxcd.io', 'gitrepositories'],
    ['Kustomization', 'kustomize.toolkit.fluxcd.io', 'kustomizations'],
  ] as const) {
    const obj = (await custom
      .getNamespacedCustomObject({ group, version: 'v1', plural, namespace: 'flux-system', name: 'flux-system' })
      .catch(() => undefined)) as
      { metadata: { generation?: number }; status?: { observedGeneration?: number } } | undefined;
    if (obj && obj.status?.observedGeneration !== obj.metadata.generation) {
      await setFluxReady(kc, { kind, namespace: 'flux-system', name: 'flux-system', revision: SIM_REVISION });
    }
  }
  // A drill's scratch namespaces: the mover restores into them, its Jobs run there.
  const scratch = await kc
    .makeApiClient(CoreV1Api)
    .listNamespace({ labelSelector: 'labwright.dev/dr=true' })
    .catch(() => ({ items: [] }));
  for (const n of scratch.items) volumes.watch(n.metadata!.name!);
}
