/**
 * GPU node join: one GPU worker VM of the inventory, with its GPU passed through, joined to its
 * Talos cluster and proven by a smoke Job. One workflow per node, ID `gpu-node-join/<node>`.
 * The runbook it replaces:
 *
 *   1. Validate the inventory; the node must be a VM worker with a GPU.
 *   2. Check the GPU on its host before touching anything: the PCI device exists, its IOMMU group
 *      holds only its own functions (or a resource mapping covers it), no other VM has it.
 *   3. The cluster's secrets must exist (talos-bootstrap made them); generate and validate the GPU
 *      worker's machine config (NVIDIA modules, nvidia runtime, labels, taints).
 *   4. Clone the VM (q35, OVMF, hostpci with pcie, an EFI disk, the boot disk grown to the
 *      inventory's size) and start it.
 *   5. Wait for maintenance mode, apply the config, wait for it to run.
 *   6. Wait for the Node Ready; label and taint it as the inventory says.
 *   7. Wait for allocatable nvidia.com/gpu (the device plugin); run a smoke Job asking for one GPU.
 *
 * On a failure, what this run created is undone in reverse: its smoke Job, the Node if it first
 * appeared in this run, and the VM if this run cloned it (stopped, GPU detached, deleted). A VM or
 * Node that was there before the run is left as it was: a re-run on a joined node that fails
 * (a busy GPU keeps the smoke Job Pending) must not delete a production worker.
 */
import * as wf from '@temporalio/workflow';
import type { createKubernetesActivities } from '../activities/kubernetes.js';
import type { createProxmoxActivities } from '../activities/proxmox.js';
import type { createTalosActivities } from '../activities/talos.js';
import { apiCall, waitFor } from '../common/activity-options.js';
import {
  efiDisk,
  gpuNodeJoinInputSchema,
  gpuProblems,
  smokeJob,
  type GpuNodeJoinResult,
  type VmPci,
} from '../common/gpu-node-join.js';
import { nonRetryable } from '../common/errors.js';
import { ProgressTracker } from '../common/progress.js';
import { runPveTask } from '../common/pve-tasks.js';
import { RESOURCE_KEY } from '../common/search-attributes.js';
import {
  nodeConfigRequest,
  LAB_RULES_PATCH,
  parseInventory,
  passthroughAddress,
  planCluster,
  talosStore,
  vmConfigFor,
} from '../common/talos.js';
import { parseInput } from '../common/validation.js';
import { cloneSource, ensureVm } from './talos-bootstrap.js';

type Pve = ReturnType<typeof createProxmoxActivities>;
type Talos = ReturnType<typeof createTalosActivities>;
type Kube = ReturnType<typeof createKubernetesActivities>;

const pve = wf.proxyActivities<Pve>(apiCall);
const pveWait = wf.proxyActivities<Pve>(waitFor);
const talos = wf.proxyActivities<Talos>(apiCall);
const talosWait = wf.proxyActivities<Talos>(waitFor);
const kube = wf.proxyActivities<Kube>(apiCall);
const kubeWait = wf.proxyActivities<Kube>(waitFor);

export const GPU_NODE_JOIN_STEPS = [
  'validate inventory',
  'check GPU',
  'generate config',
  'create VM',
  'start VM',
  'apply config',
  'wait for Node Ready',
  'label and taint',
  'wait for GPU allocatable',
  'smoke test',
] as const;

export async function gpuNodeJoin(raw: unknown): Promise<GpuNodeJoinResult> {
  const input = parseInput(gpuNodeJoinInputSchema, raw, 'gpu-node-join input');
  wf.upsertSearchAttributes([{ key: RESOURCE_KEY, value: input.node }]);
  const progress = new ProgressTracker(GPU_NODE_JOIN_STEPS);
  const changes: string[] = [];

  const { plan, node, gpuIndex } = await progress.run('validate inventory', async () => {
    const inventory = parseInventory(input.inventory ?? (await talos.talosLabInventory()), wf.patched(LAB_RULES_PATCH));
    const plan = planCluster(inventory, input.cluster);
    const node = plan.workers.find((n) => n.name === input.node);
    if (!node || node.kind !== 'vm' || !node.gpu) {
      throw nonRetryable(
        'validation',
        `invalid input: node: ${input.node} is not a VM worker with a GPU in clusters.${input.cluster}.workers`,
      );
    }
    return { plan, node, gpuIndex: inventory.gpus.findIndex((g) => g.name === node.gpu!.name) };
  });
  const vm = node.vm!;
  const gpu = node.gpu!;
  const ref = { host: vm.host, node: vm.node, vmid: vm.vmid };

  // Before anything is touched: the device, its IOMMU group, and nobody else using it.
  await progress.run(
    'check GPU',
    async () => {
      const [devices, mappings, list] = await Promise.all([
        pve.pvePciDevices({ host: gpu.host, node: gpu.node }),
        pve.pvePciMappings({ host: gpu.host }),
        pve.pveListVms({ host: gpu.host }),
      ]);
      const vms: VmPci[] = [];
      for (const summary of list.filter((v) => !v.template && v.vmid !== vm.vmid)) {
        const details = await pve.pveGetVm({ host: gpu.host, node: summary.node, vmid: summary.vmid });
        if (!details) continue;
        const hostpci = Object.entries(details.config)
          .filter(([k]) => /^hostpci\d+$/.test(k))
          .map(([, v]) => String(v));
        vms.push({ vmid: summary.vmid, name: summary.name, node: summary.node, hostpci });
      }
      const problems = gpuProblems({ gpu, gpuIndex, devices, mappings, vms, ownVmid: vm.vmid });
      if (problems.length > 0) {
        throw nonRetryable('precondition', `GPU ${gpu.name} cannot be passed to ${node.name}: ${problems.join('; ')}`, {
          problems,
        });
      }
    },
    () => `${passthroughAddress(gpu)} on ${gpu.node} is free (mapping ${gpu.mappingId})`,
  );

  const secrets = await talos.talosEnsureSecrets({ cluster: plan.name, endpoint: plan.endpoint, mustExist: true });
  const kubeconfig = { store: talosStore.kubeconfig(plan.name) };
  const config = await progress.run(
    'generate config',
    () => talos.talosGenNodeConfig(nodeConfigRequest(plan, node, input.nvidiaSchematic)),
    (c) => `valid (${c.sha256.slice(0, 12)})`,
  );

  // From here on, a failure undoes what this run created, in reverse.
  const undo: Array<{ what: string; run: () => Promise<void> }> = [];
  const job = smokeJob(node.name, input.smokeNamespace, input.smokeImage, node.taints, wf.workflowInfo().runId);
  const jobName = job.metadata.name;
  try {
    await progress.run(
      'create VM',
      async () => {
        // Registered before the clone, so that a failure during it also leaves no VM behind;
        // only when there is no VM yet: one that was there before this run is not ours to delete.
        const templates = new Map<string, { vmid: number; node: string }>();
        if ((await pve.pveGetVm(ref)) === null) {
          undo.push({ what: `delete VM ${vm.vmid}`, run: removeVm });
          templates.set(node.name, await cloneSource(plan, node, await pve.pveListTemplates({ host: vm.host })));
        }
        const current = await ensureVm(plan, node, templates, changes);
        // An OVMF VM keeps its EFI variables (boot entries) only on an EFI disk. Histories
        // recorded before it was added replay without it.
        if (wf.patched('disk-size') && current && current.config.efidisk0 === undefined) {
          const efidisk0 = efiDisk(vm.storage);
          await pve.pveSetConfig({ ...ref, config: { disks: { efidisk0 } }, guard: { name: node.name } });
          changes.push(`added efidisk0 to VM ${vm.vmid} (${efidisk0})`);
        }
      },
      () => `VM ${vm.vmid}: q35, OVMF, hostpci0 ${vmConfigFor(node, plan.name).hostpci?.[0] ?? ''}`,
    );

    await progress.run('start VM', async () => {
      const r = await runPveTask(
        `start VM ${vm.vmid} (${node.name})`,
        () => pve.pveStart(ref),
        (upid) => pveWait.pveWaitForTask({ host: vm.host, upid }),
        { okReasons: ['already-running'] },
      );
      if (r.outcome) changes.push(`started VM ${vm.vmid}`);
    });

    if (!(await kube.k8sGetNode({ kubeconfig, node: node.name })).exists) {
      undo.push({
        what: `remove Node ${node.name}`,
        run: async () => {
          await kube.k8sDeleteNode({ kubeconfig, node: node.name });
        },
      });
    }
    await progress.run('apply config', async () => {
      const probe = await talosWait.talosWaitForApi({
        address: node.ip,
        talosconfig: secrets.talosconfig,
        timeoutSeconds: input.waitSeconds,
      });
      const r = await talos.talosApplyConfig({
        address: node.ip,
        config: config.config,
        insecure: probe.mode === 'maintenance',
        talosconfig: secrets.talosconfig,
      });
      if (r.applied) changes.push(`applied the GPU worker config to ${node.name}`);
      await talosWait.talosWaitForApi({
        address: node.ip,
        talosconfig: secrets.talosconfig,
        timeoutSeconds: input.waitSeconds,
        stage: 'running',
      });
    });

    await progress.run('wait for Node Ready', () =>
      kubeWait.k8sWaitNodesReady({ kubeconfig, nodes: [node.name], timeoutSeconds: input.waitSeconds }),
    );

    await progress.run('label and taint', async () => {
      const r = await kube.k8sLabelTaintNode({ kubeconfig, node: node.name, labels: node.labels, taints: node.taints });
      if (r.changed) changes.push(`labelled and tainted Node ${node.name}`);
    });

    await progress.run(
      'wait for GPU allocatable',
      () =>
        kubeWait.k8sWaitAllocatable({
          kubeconfig,
          node: node.name,
          resource: 'nvidia.com/gpu',
          atLeast: 1,
          timeoutSeconds: input.waitSeconds,
        }),
      (n) => `${n} nvidia.com/gpu`,
    );

    await progress.run(
      'smoke test',
      async () => {
        undo.push({
          what: `delete smoke Job ${input.smokeNamespace}/${jobName}`,
          run: async () => {
            await kube.k8sDeleteJob({ kubeconfig, namespace: input.smokeNamespace, name: jobName });
          },
        });
        const created = await kube.k8sCreateJob({ kubeconfig, job });
        if (created.created) changes.push(`ran smoke Job ${input.smokeNamespace}/${jobName}`);
        await kubeWait.k8sWaitJob({
          kubeconfig,
          namespace: input.smokeNamespace,
          name: jobName,
          timeoutSeconds: input.waitSeconds,
        });
      },
      () => `Job ${input.smokeNamespace}/${jobName} completed`,
    );
  } catch (err) {
    await wf.CancellationScope.nonCancellable(async () => {
      for (const step of [...undo].reverse()) {
        progress.start(`undo: ${step.what}`);
        try {
          await step.run();
          progress.done(`undo: ${step.what}`);
        } catch (undoErr) {
          progress.fail(`undo: ${step.what}`, undoErr instanceof Error ? undoErr.message : String(undoErr));
        }
      }
    });
    throw err;
  }

  const summary =
    changes.length === 0
      ? `${node.name} is already a Ready GPU worker of ${plan.name}: nothing changed`
      : `${node.name} joined ${plan.name} with ${gpu.model} (${gpu.pciAddress}); smoke Job completed`;
  progress.finishWith(summary);
  return { cluster: plan.name, node: node.name, vmid: vm.vmid, gpu: gpu.name, changes, summary };

  /** Stop the VM, detach the GPU (freeing it even if the delete fails), delete the VM. */
  async function removeVm(): Promise<void> {
    const current = await pve.pveGetVm(ref);
    if (!current || current.name !== node.name) return;
    await runPveTask(
      `stop VM ${vm.vmid}`,
      () => pve.pveStop(ref),
      (upid) => pveWait.pveWaitForTask({ host: vm.host, upid }),
      { okReasons: ['not-running'] },
    );
    if (current.config.hostpci0 !== undefined) {
      await pve.pveSetConfig({ ...ref, config: { hostpci: { 0: null } }, guard: { name: node.name } });
    }
    await runPveTask(
      `delete VM ${vm.vmid}`,
      () => pve.pveDelete({ ...ref, guard: { name: node.name } }),
      (upid) => pveWait.pveWaitForTask({ host: vm.host, upid }),
    );
  }
}
