/**
 * The lab the DR tests run on: fakepve (a VM with backups on `unraid-backup`), the run's shared
 * kube-apiserver with an app namespace whose PVCs Volsync backs up, a secret store, and the
 * activities wired to them. `volumes` is VolSync's restic mover, the CSI snapshotter and the Job
 * runner on real bytes (sim/volume-lab.ts): `appWithData` writes files into the PVCs and backs
 * them up with the real restic; `appWithBackups` only writes the status of backups of a given
 * age, for the checks that never restore.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { CoreV1Api, CustomObjectsApi, PatchStrategy, setHeaderOptions } from '@kubernetes/client-node';
import { createDrReportActivities } from '../../activities/dr-reports.js';
import { createKubernetesActivities } from '../../activities/kubernetes.js';
import { createTemporalActivities } from '../../activities/temporal.js';
import { startFakePveLab, type FakePveLab } from './fakepve.js';
import { kubeConfigFor, VolumeLab } from './kube-controllers.js';
import { sharedKube, testNamespace } from './kube.js';

const mergePatch = setHeaderOptions('Content-Type', PatchStrategy.MergePatch);

export interface DrLab {
  pve: FakePveLab;
  reportsDir: string;
  volumes: VolumeLab;
  activities: Record<string, (...args: never[]) => Promise<unknown>>;
  /** The inventory the workflows get: fakepve's hosts and the VMID ranges. */
  inventory: Record<string, unknown>;
  stop(): Promise<void>;
}

/** VM 120 `hass` on pve1, running, with a NIC on VLAN 80, the guest agent, a mapped PCI device and a USB stick. */
export async function startDrLab(): Promise<DrLab> {
  const pve = await startFakePveLab({
    guests: [
      {
        vmid: 120,
        name: 'hass',
        node: 'pve1',
        status: 'running',
        config: {
          net0: 'virtio=BC:24:11:00:01:20,bridge=vmbr0,tag=80',
          cores: 2,
          memory: 2048,
          agent: '1',
          onboot: 1,
          hostpci0: 'mapping=coral-tpu,pcie=1',
          usb0: 'host=10c4:ea60',
        },
        agent: {},
      },
    ],
  });
  // VMs restored from archives boot with a guest agent that answers.
  await pve.fake.control({ op: 'vm_defaults', defaults: { agent: {} } });
  const reportsDir = path.join(pve.dir, 'reports');
  const volumes = new VolumeLab({ kube: sharedKube(), root: path.join(pve.dir, 'volumes') });
  return {
    pve,
    reportsDir,
    volumes,
    activities: {
      ...pve.proxmox,
      ...createKubernetesActivities({ secrets: pve.secrets, pollMs: 100 }),
      ...createDrReportActivities({ dir: reportsDir }),
      ...createTemporalActivities(),
    },
    inventory: { proxmox: pve.inventory.proxmox },
    stop: async () => {
      await volumes.stop();
      await pve.stop();
    },
  };
}

/** The input of a drill of VM 120 `hass` alone (its newest backup, no older than a day). */
export function hassDrill(lab: DrLab, plan: string): Record<string, unknown> {
  return {
    plan,
    mode: 'drill',
    inventory: lab.inventory,
    targets: [{ kind: 'vm', name: 'hass', host: 'pve1', node: 'pve1', vmid: 120, backupStorage: 'unraid-backup' }],
    maxBackupAge: '1d',
    pollSeconds: 0.2,
    agentTimeoutSeconds: 30,
  };
}

/** A vzdump archive of `vmid` taken `ageSeconds` ago. */
export async function storeVmBackup(
  lab: DrLab,
  vmid: number,
  ageSeconds: number,
  size = 64 * 1024 ** 2,
): Promise<string> {
  const ctime = Math.floor(Date.now() / 1000) - ageSeconds;
  const stamp = new Date(ctime * 1000).toISOString().replace(/[-:]/g, '_').replace('T', '-').slice(0, 19);
  const name = `vzdump-qemu-${vmid}-${stamp}.vma.zst`;
  await lab.pve.fake.control({ op: 'store_backup', storage: 'unraid-backup', name, size, ctime });
  return `unraid-backup:backup/${name}`;
}

/**
 * An app namespace with PVCs backed up by Volsync (restic): each PVC, its restic repository
 * Secret and its ReplicationSource whose last sync was `ageSeconds` ago.
 */
export async function appWithBackups(pvcs: string[], ageSeconds: number): Promise<string> {
  const ns = await testNamespace('app');
  const kc = kubeConfigFor(sharedKube().kubeconfigPath);
  const core = kc.makeApiClient(CoreV1Api);
  const custom = kc.makeApiClient(CustomObjectsApi);
  for (const pvc of pvcs) {
    await createAppPvc(core, ns, pvc);
    await core.createNamespacedSecret({
      namespace: ns,
      body: {
        metadata: { name: `${pvc}-restic` },
        stringData: { RESTIC_REPOSITORY: `s3:http://minio.invalid/volsync/${pvc}`, RESTIC_PASSWORD: 'test-only' },
      },
    });
    const ref = { group: 'volsync.backube', version: 'v1alpha1', plural: 'replicationsources', namespace: ns };
    await custom.createNamespacedCustomObject({
      ...ref,
      body: {
        apiVersion: 'volsync.backube/v1alpha1',
        kind: 'ReplicationSource',
        metadata: { name: pvc, namespace: ns },
        spec: {
          sourcePVC: pvc,
          trigger: { schedule: '0 * * * *' },
          restic: { repository: `${pvc}-restic`, copyMethod: 'Snapshot', pruneIntervalDays: 7 },
        },
      },
    });
    const last = new Date(Date.now() - ageSeconds * 1000).toISOString().replace(/\.\d+Z$/, 'Z');
    await custom.patchNamespacedCustomObjectStatus(
      {
        ...ref,
        name: pvc,
        body: {
          status: {
            lastSyncTime: last,
            lastSyncDuration: '42s',
            latestMoverStatus: { result: 'Successful', logs: 'snapshot saved' },
          },
        },
      },
      mergePatch,
    );
  }
  return ns;
}

/** A 2Gi ceph-block PVC, as the app's. */
async function createAppPvc(core: CoreV1Api, ns: string, pvc: string): Promise<void> {
  await core.createNamespacedPersistentVolumeClaim({
    namespace: ns,
    body: {
      metadata: { name: pvc },
      spec: {
        accessModes: ['ReadWriteOnce'],
        resources: { requests: { storage: '2Gi' } },
        storageClassName: 'ceph-block',
      },
    },
  });
}

export async function readdirOrEmpty(dir: string): Promise<string[]> {
  return fs.readdir(dir).catch(() => []);
}

/**
 * An app namespace whose PVCs hold `files` (path -> content) and are backed up once by the real
 * restic into a local repository (`<root>/repos/<ns>/<pvc>`), through their ReplicationSource.
 * `kustomization`: the Flux Kustomization (in the app's namespace) that applies the ReplicationSources.
 */
export async function appWithData(
  lab: DrLab,
  pvcs: Record<string, Record<string, string>>,
  opts: { kustomization?: string } = {},
): Promise<string> {
  const ns = await testNamespace('app');
  const kc = kubeConfigFor(sharedKube().kubeconfigPath);
  const core = kc.makeApiClient(CoreV1Api);
  const custom = kc.makeApiClient(CustomObjectsApi);
  for (const [pvc, files] of Object.entries(pvcs)) {
    await createAppPvc(core, ns, pvc);
    await writeVolume(lab, ns, pvc, files);
    await core.createNamespacedSecret({
      namespace: ns,
      body: {
        metadata: { name: `${pvc}-restic` },
        stringData: {
          RESTIC_REPOSITORY: path.join(lab.pve.dir, 'volumes', 'repos', ns, pvc),
          RESTIC_PASSWORD: 'test-only',
        },
      },
    });
    await custom.createNamespacedCustomObject({
      group: 'volsync.backube',
      version: 'v1alpha1',
      plural: 'replicationsources',
      namespace: ns,
      body: {
        apiVersion: 'volsync.backube/v1alpha1',
        kind: 'ReplicationSource',
        metadata: {
          name: pvc,
          namespace: ns,
          ...(opts.kustomization
            ? {
                labels: {
                  'kustomize.toolkit.fluxcd.io/name': opts.kustomization,
                  'kustomize.toolkit.fluxcd.io/namespace': ns,
                },
              }
            : {}),
        },
        spec: {
          sourcePVC: pvc,
          trigger: { schedule: '0 * * * *' },
          restic: { repository: `${pvc}-restic`, copyMethod: 'Snapshot', pruneIntervalDays: 7 },
        },
      },
    });
    await lab.volumes.backup(ns, pvc);
  }
  return ns;
}

/** Replaces what PVC `ns/pvc` holds with `files` (path -> content). */
export async function writeVolume(lab: DrLab, ns: string, pvc: string, files: Record<string, string>): Promise<void> {
  const dir = lab.volumes.volumeDir(ns, pvc);
  await fs.rm(dir, { recursive: true, force: true });
  for (const [file, content] of Object.entries(files)) {
    await fs.mkdir(path.dirname(path.join(dir, file)), { recursive: true });
    await fs.writeFile(path.join(dir, file), content);
  }
}

/** What PVC `ns/pvc` holds now (path -> content). */
export async function readVolume(lab: DrLab, ns: string, pvc: string): Promise<Record<string, string>> {
  const dir = lab.volumes.volumeDir(ns, pvc);
  const out: Record<string, string> = {};
  const walk = async (rel: string): Promise<void> => {
    for (const e of await fs.readdir(path.join(dir, rel), { withFileTypes: true })) {
      const p = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory()) await walk(p);
      else out[p] = await fs.readFile(path.join(dir, p), 'utf8');
    }
  };
  await walk('');
  return out;
}
