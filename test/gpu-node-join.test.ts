import { WorkflowFailedError } from '@temporalio/client';
import { ApplicationFailure } from '@temporalio/common';
import { BatchV1Api, CoreV1Api } from '@kubernetes/client-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { GpuNodeJoinResult } from '../common/gpu-node-join.js';
import { recordHistory } from './harness/histories.js';
import { completeJob, kubeConfigFor, markNodeReady } from './harness/kube-controllers.js';
import { LAB_PCI_DEVICES, startTalosLab, type Draft, type TalosLab } from './harness/talos.js';
import { testClient, uniqueName, withWorker } from './harness/temporal.js';

/** One control plane and the two GPU workers of the example lab. */
function oneCpTwoGpus(home: Draft): void {
  home.controlPlane = (home.controlPlane as Draft[]).slice(0, 1);
  home.allowNoQuorumTolerance = true;
  home.workers = (home.workers as Draft[]).filter((w) => w.gpu !== undefined);
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** This file's cluster: talos-bootstrap runs only as talos-bootstrap/<cluster>, one per cluster. */
const CLUSTER = 'gpu-lab';
const smokeJobs = (node: string): string => `gpu.labwright.dev/smoke-node=${node}`;

describe('gpuNodeJoin on fakepve, the Talos stand-in and a real kube-apiserver', () => {
  let lab: TalosLab;
  let core: CoreV1Api;
  let batch: BatchV1Api;

  beforeAll(async () => {
    lab = await startTalosLab({ cluster: oneCpTwoGpus, clusterName: CLUSTER });
    core = kubeConfigFor(lab.kube).makeApiClient(CoreV1Api);
    batch = kubeConfigFor(lab.kube).makeApiClient(BatchV1Api);
    // The cluster the GPU nodes join: bootstrapped by the real workflow.
    const client = await testClient();
    await withWorker({ activities: lab.activities }, ({ taskQueue }) =>
      client.workflow.execute('talosBootstrap', {
        taskQueue,
        workflowId: `talos-bootstrap/${CLUSTER}`,
        args: [{ cluster: CLUSTER, inventory: lab.inventory, waitSeconds: 60 }],
      }),
    );
  });
  afterAll(async () => {
    await lab?.stop();
  });

  /** Plays the NVIDIA device plugin and the Job controller for `node` until `stop` says so. */
  function playCluster(node: string, jobSucceeds: boolean): { stop: () => void; done: Promise<void> } {
    let stopped = false;
    const done = (async () => {
      let gpus = false;
      while (!stopped) {
        const n = await core.readNode({ name: node }).catch(() => undefined);
        if (n && !gpus && (n.status?.conditions ?? []).some((c) => c.type === 'Ready' && c.status === 'True')) {
          await markNodeReady(lab.kube, node, { gpus: 1 });
          gpus = true;
        }
        const jobs = await batch
          .listNamespacedJob({ namespace: 'default', labelSelector: smokeJobs(node) })
          .catch(() => undefined);
        for (const job of jobs?.items ?? []) {
          if (!(job.status?.conditions ?? []).some((c) => c.status === 'True')) {
            await completeJob(lab.kube, 'default', job.metadata!.name!, jobSucceeds);
          }
        }
        await sleep(150);
      }
    })();
    return { stop: () => (stopped = true), done };
  }

  async function join(
    node: string,
    inventory: Draft = lab.inventory,
  ): Promise<GpuNodeJoinResult | WorkflowFailedError> {
    const client = await testClient();
    return withWorker({ activities: lab.activities }, async ({ taskQueue }) => {
      const handle = await client.workflow.start('gpuNodeJoin', {
        taskQueue,
        workflowId: `gpu-node-join/${node}-${uniqueName('j')}`,
        args: [{ cluster: CLUSTER, node, inventory, waitSeconds: 30 }],
      });
      const result = await handle.result().catch((e: unknown) => e as WorkflowFailedError);
      if (!(result instanceof WorkflowFailedError)) await recordHistory(handle, 'gpu-node-join');
      return result;
    });
  }

  it('fails before touching anything when the GPU is attached to another VM', async () => {
    await lab.fake.api('POST', '/nodes/pve1/qemu', {
      vmid: 150,
      name: 'windows-gaming',
      hostpci0: 'mapping=a5000,pcie=1',
      memory: 4096,
    });
    const writesBefore = (await lab.pveWrites()).length;
    const callsBefore = lab.standin.calls.length;
    try {
      const err = await join('talos-gpu-a5000');
      expect(err).toBeInstanceOf(WorkflowFailedError);
      const cause = (err as WorkflowFailedError).cause as ApplicationFailure;
      expect(cause.type).toBe('PreconditionFailed');
      expect(cause.nonRetryable).toBe(true);
      expect(cause.message).toContain(
        'gpus[0]: GPU rtx-a5000 (0000:01:00.0) is attached to VM 150 (windows-gaming) on pve1',
      );
      expect((await lab.pveWrites()).length).toBe(writesBefore);
      expect(lab.standin.calls.slice(callsBefore)).toEqual([]);
      expect((await lab.fake.vms()).some((v) => v.vmid === 211)).toBe(false);
    } finally {
      await lab.fake.api('DELETE', '/nodes/pve1/qemu/150');
    }
  });

  it('joins the GPU worker: passthrough VM, Ready node with labels and taints, GPU allocatable, smoke Job', async () => {
    const player = playCluster('talos-gpu-a5000', true);
    const result = await join('talos-gpu-a5000').finally(() => player.stop());
    await player.done;
    expect(result).not.toBeInstanceOf(WorkflowFailedError);
    const ok = result as GpuNodeJoinResult;
    expect(ok.summary).toBe(`talos-gpu-a5000 joined ${CLUSTER} with RTX A5000 (0000:01:00.0); smoke Job completed`);

    const vm = (await lab.fake.vms()).find((v) => v.vmid === 211)!;
    expect(vm.status).toBe('running');
    expect(vm.config).toMatchObject({ machine: 'q35', bios: 'ovmf', hostpci0: 'mapping=a5000,pcie=1' });
    // An EFI vars disk for OVMF, and the boot disk grown from the template's 8G to the inventory's 200G.
    expect(vm.config.efidisk0).toBe('local-lvm:1,efitype=4m,pre-enrolled-keys=0');
    expect(String(vm.config.scsi0)).toMatch(/(^|,)size=200G(,|$)/);
    expect(ok.changes).toEqual(
      expect.arrayContaining([
        'grew scsi0 of VM 211 (talos-gpu-a5000) from 8G to 200G',
        'added efidisk0 to VM 211 (local-lvm:1,efitype=4m,pre-enrolled-keys=0)',
      ]),
    );

    const node = await core.readNode({ name: 'talos-gpu-a5000' });
    expect(node.metadata?.labels).toMatchObject({
      'nvidia.com/gpu.present': 'true',
      'gpu.labwright.dev/model': 'rtx-a5000',
    });
    // (node.kubernetes.io/not-ready is the API server's own admission taint; no controller lifts it here.)
    expect(node.spec?.taints).toContainEqual({ key: 'nvidia.com/gpu', value: 'true', effect: 'NoSchedule' });
    const jobs = (await batch.listNamespacedJob({ namespace: 'default', labelSelector: smokeJobs('talos-gpu-a5000') }))
      .items;
    expect(jobs).toHaveLength(1);
    expect(jobs[0]!.metadata?.name).toMatch(/^gpu-smoke-talos-gpu-a5000-[a-z0-9]{8}$/);
    expect(jobs[0]!.spec?.template.spec?.containers[0]?.resources?.limits).toEqual({ 'nvidia.com/gpu': '1' });

    // The machine config the node got is the GPU worker's: NVIDIA modules and the nvidia runtime.
    const config = await lab.secrets.resolve({ store: `talos/${CLUSTER}/nodes/talos-gpu-a5000.yaml` });
    expect(config).toMatch(/name: nvidia_uvm/);
    expect(config).toMatch(/default_runtime_name = "nvidia"/);
  });

  it('re-run on the joined node that fails at the smoke Job leaves the VM and Node as they were', async () => {
    const before = (await lab.fake.vms()).find((v) => v.vmid === 211)!;
    const writesBefore = (await lab.pveWrites()).length;
    // The GPU is busy this time: the new run's smoke Job fails. The first run's Job is still there.
    const player = playCluster('talos-gpu-a5000', false);
    const err = await join('talos-gpu-a5000').finally(() => player.stop());
    await player.done;
    expect(err).toBeInstanceOf(WorkflowFailedError);
    const failure = (err as WorkflowFailedError).cause?.cause as ApplicationFailure;
    expect(failure.message).toMatch(/Job default\/gpu-smoke-talos-gpu-a5000-[a-z0-9]{8} failed: BackoffLimitExceeded/);
    // Nothing of the production worker was undone: same VM, running, GPU attached; the Node stays.
    const after = (await lab.fake.vms()).find((v) => v.vmid === 211);
    expect(after).toMatchObject({ name: 'talos-gpu-a5000', status: 'running' });
    expect(after!.config.hostpci0).toBe(before.config.hostpci0);
    expect((await lab.pveWrites()).slice(writesBefore)).toEqual([]);
    expect((await core.readNode({ name: 'talos-gpu-a5000' })).metadata?.name).toBe('talos-gpu-a5000');
    // Only this run's Job was removed; the first run's, which completed, is kept for its TTL.
    const jobs = (await batch.listNamespacedJob({ namespace: 'default', labelSelector: smokeJobs('talos-gpu-a5000') }))
      .items;
    expect(
      jobs.map((j) => (j.status?.conditions ?? []).some((c) => c.type === 'Complete' && c.status === 'True')),
    ).toEqual([true]);
  });

  it('refuses a GPU without a resource mapping before any change, saying which mapping to create', async () => {
    const inventory = structuredClone(lab.inventory);
    delete (inventory.gpus as Draft[]).find((g) => g.name === 'rtx-a2000')!.mappingId;
    const writesBefore = (await lab.pveWrites()).length;
    const callsBefore = lab.standin.calls.length;
    const err = await join('talos-gpu-a2000', inventory);
    expect(err).toBeInstanceOf(WorkflowFailedError);
    const cause = (err as WorkflowFailedError).cause as ApplicationFailure;
    expect(cause.type).toBe('PreconditionFailed');
    expect(cause.message).toContain(
      'gpus[1].mappingId: GPU rtx-a2000: PVE passes a raw PCI device (hostpci 0000:01:00) only for root@pam itself, not for an API token ("only root can set \'hostpci0\' config for non-mapped devices")',
    );
    expect(cause.message).toContain(
      'pvesh create /cluster/mapping/pci --id rtx-a2000 --map node=pve2,path=0000:01:00,id=10de:2531,iommugroup=12) and set gpus[1].mappingId: rtx-a2000',
    );
    expect((await lab.pveWrites()).length).toBe(writesBefore);
    expect(lab.standin.calls.slice(callsBefore)).toEqual([]);
  });

  it('undoes a join that fails after the VM exists: no VM, no node, the GPU free', async () => {
    // The GPU's IOMMU group also holds the PCIe root port above it, as on many boards: PVE's
    // listing leaves bridges out by default, and a bridge is never passed through anyway.
    await lab.fake.control({
      op: 'pci_devices',
      node: 'pve2',
      devices: [
        { id: '0000:00:01.1', class: '0x060400', vendor: '0x1022', device: '0x1483', iommugroup: 12 },
        ...LAB_PCI_DEVICES.pve2,
      ],
    });
    const player = playCluster('talos-gpu-a2000', false);
    const err = await join('talos-gpu-a2000').finally(() => player.stop());
    await player.done;
    expect(err).toBeInstanceOf(WorkflowFailedError);
    const failure = (err as WorkflowFailedError).cause?.cause as ApplicationFailure;
    expect(failure).toBeInstanceOf(ApplicationFailure);
    expect(failure.type).toBe('PreconditionFailed');
    expect(failure.message).toMatch(/Job default\/gpu-smoke-talos-gpu-a2000-[a-z0-9]{8} failed: BackoffLimitExceeded/);

    // It got as far as a running VM and a Ready node before the smoke Job failed...
    expect(lab.standin.calls.some((c) => c.node === 'talos-gpu-a2000' && c.command === 'apply-config')).toBe(true);
    // ...and left nothing behind.
    const vms = await lab.fake.vms();
    expect(vms.some((v) => v.vmid === 212)).toBe(false);
    expect(
      vms.filter((v) => v.node === 'pve2' && Object.values(v.config).some((x) => String(x).includes('0000:01:00'))),
    ).toEqual([]);
    await expect(core.readNode({ name: 'talos-gpu-a2000' })).rejects.toMatchObject({ code: 404 });
    expect(
      (await batch.listNamespacedJob({ namespace: 'default', labelSelector: smokeJobs('talos-gpu-a2000') })).items,
    ).toEqual([]);
    // The other GPU node is untouched.
    expect((await core.readNode({ name: 'talos-gpu-a5000' })).metadata?.name).toBe('talos-gpu-a5000');
  });
});
