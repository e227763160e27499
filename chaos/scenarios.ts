/**
 * How the matrix runs each workflow on the simulated lab: its input (the docs/examples one,
 * with what must differ per run), what brings a run to its end (an approval, an acquire and a
 * shutdown), what a correct result is, and what puts the lab back where a first run starts.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import {
  CancelSpotInstanceRequestsCommand,
  DescribeInstancesCommand,
  TerminateInstancesCommand,
} from '@aws-sdk/client-ec2';
import type { WorkflowHandle } from '@temporalio/client';
import { ApplicationFailure } from '@temporalio/common';
import { workflowIdFor } from '../clients/start.js';
import type { DrPlan, DrReport, DrStatus } from '../common/dr-restore.js';
import { approveUpdate } from '../common/dr-restore.js';
import type { FluxBootstrapResult } from '../common/flux-bootstrap.js';
import type { GpuNodeJoinResult } from '../common/gpu-node-join.js';
import { acquireUpdate, shutdownNowSignal, statusQuery, type LlmBurstStatus } from '../common/llm-burst.js';
import type { PackerImageBuildResult } from '../common/packer-image-build.js';
import type { TalosBootstrapResult } from '../common/talos.js';
import { projectRoot } from '../lib/paths.js';
import { motoClient } from '../sim/ec2.js';
import { SIM_REVISION } from '../sim/flux-dr.js';
import type { ChaosLab } from './lab.js';
import type { LabSystem } from './peer-faults.js';
import { retrying } from './temporal.js';

export interface Scenario {
  /** The matrix's row name. */
  name: string;
  workflow: string;
  /** The systems it works with, whose peer faults it is run under. */
  systems: LabSystem[];
  input(run: number): Promise<unknown>;
  /** Brings the run to its end (approvals, updates, signals) and returns its result. */
  drive(lab: ChaosLab, workflowId: string): Promise<unknown>;
  /** Why `result` is wrong; undefined when it is right. */
  wrong(result: unknown): string | undefined;
  /** Also run twice in a row, the second started the moment the first ends. */
  rerun?: boolean;
  /** Puts the lab back in the state a first run of this workflow starts from. */
  reset?(lab: ChaosLab): Promise<void>;
}

const example = async (file: string): Promise<Record<string, unknown>> =>
  JSON.parse(await fs.readFile(path.join(projectRoot, 'docs', 'examples', file), 'utf8')) as Record<string, unknown>;

export const workflowIdOf = (s: Scenario, input: unknown): string => workflowIdFor(s.workflow, input);

const resultOf = (lab: ChaosLab, workflowId: string): Promise<unknown> =>
  retrying(lab, async (client) => client.workflow.getHandle(workflowId).result());

/** Stops and deletes the cluster's VMs on fakepve: the stand-in wipes their nodes (and etcd with the last). */
async function deleteVms(lab: ChaosLab, which: (name: string) => boolean): Promise<void> {
  const cluster = lab.sim.inventory.clusters.home!;
  const vms = [...cluster.controlPlane, ...(cluster.workers ?? [])].filter(
    (n): n is typeof n & { kind: 'vm'; node: string; vmid: number } => n.kind === 'vm' && which(n.name),
  );
  const present = await lab.pve.vms();
  for (const n of vms) {
    const vm = present.find((v) => v.vmid === n.vmid && v.node === n.node);
    if (!vm) continue;
    if (vm.status === 'running') await lab.pve.api('POST', `/nodes/${n.node}/qemu/${n.vmid}/status/stop`);
    await lab.pve.control({ op: 'settle' });
    await lab.pve.api('DELETE', `/nodes/${n.node}/qemu/${n.vmid}`);
    await lab.pve.control({ op: 'settle' });
  }
}

/**
 * Leaves EC2 with no live instance, as before a pool's first run: its open spot requests
 * cancelled first (else EC2 fulfils them again), then its instances terminated.
 */
async function terminateInstances(lab: ChaosLab): Promise<void> {
  const open = lab.ec2
    .spotRequests()
    .filter((r) => r.state !== 'cancelled')
    .map((r) => r.id);
  const viaProxy = motoClient(lab.ec2.url);
  const moto = motoClient(lab.sim.env.AWS_ENDPOINT_URL_EC2!);
  try {
    if (open.length > 0) await viaProxy.send(new CancelSpotInstanceRequestsCommand({ SpotInstanceRequestIds: open }));
    const out = await moto.send(new DescribeInstancesCommand({}));
    const live = (out.Reservations ?? [])
      .flatMap((r) => r.Instances ?? [])
      .filter((i) => !['terminated', 'shutting-down'].includes(i.State?.Name ?? ''))
      .map((i) => i.InstanceId!);
    if (live.length > 0) await moto.send(new TerminateInstancesCommand({ InstanceIds: live }));
  } finally {
    viaProxy.destroy();
    moto.destroy();
  }
}

const GPU_NODE = 'talos-gpu-a5000';

export const SCENARIOS: Scenario[] = [
  {
    name: 'talosBootstrap',
    workflow: 'talosBootstrap',
    systems: ['pve', 'talos', 'kube'],
    input: () => example('talos-bootstrap.json'),
    drive: resultOf,
    wrong: (r) =>
      /^cluster home is healthy/.test((r as TalosBootstrapResult).summary)
        ? undefined
        : `summary: ${(r as TalosBootstrapResult).summary}`,
    reset: (lab) => deleteVms(lab, () => true),
  },
  {
    name: 'gpuNodeJoin',
    workflow: 'gpuNodeJoin',
    systems: ['pve', 'talos', 'kube'],
    input: () => example('gpu-node-join.json'),
    drive: resultOf,
    wrong: (r) => ((r as GpuNodeJoinResult).node === GPU_NODE ? undefined : `node: ${(r as GpuNodeJoinResult).node}`),
    reset: (lab) => deleteVms(lab, (name) => name === GPU_NODE),
  },
  {
    name: 'packerImageBuild',
    workflow: 'packerImageBuild',
    systems: ['pve'],
    // A new image each run (a first build every time), VMIDs from a range of the matrix's own.
    input: async (run) => ({
      ...(await example('packer-image-build.json')),
      image: `chaos-${run}`,
      vmidRange: { from: 9100, to: 9599 },
    }),
    drive: resultOf,
    wrong: (r) => {
      const b = r as PackerImageBuildResult;
      return b.built && b.canary?.vmid !== undefined
        ? undefined
        : `built ${b.built}, canary ${JSON.stringify(b.canary)}`;
    },
  },
  {
    name: 'fluxBootstrap',
    workflow: 'fluxBootstrap',
    systems: ['kube'],
    input: () => example('flux-bootstrap.json'),
    rerun: true,
    drive: resultOf,
    wrong: (r) =>
      (r as FluxBootstrapResult).revision === SIM_REVISION
        ? undefined
        : `revision ${(r as FluxBootstrapResult).revision}`,
  },
  {
    name: 'drRestore (drill)',
    workflow: 'drRestore',
    systems: ['pve', 'kube'],
    input: () => example('dr-drill.json'),
    rerun: true,
    drive: resultOf,
    wrong: (r) => ((r as DrReport).ok ? undefined : `drill not ok: ${JSON.stringify(r).slice(0, 300)}`),
  },
  {
    name: 'drRestore (restore)',
    workflow: 'drRestore',
    systems: ['pve', 'kube'],
    input: () => example('dr-restore.json'),
    drive: async (lab, workflowId) => {
      await approveOnce(lab, workflowId);
      return resultOf(lab, workflowId);
    },
    wrong: (r) => ((r as DrReport).ok ? undefined : `restore not ok: ${JSON.stringify(r).slice(0, 300)}`),
  },
  {
    name: 'llmBurst',
    workflow: 'llmBurst',
    systems: ['ec2'],
    input: () => example('llm-burst.json'),
    drive: async (lab, workflowId) => {
      await acquireAndShutdown(lab, workflowId);
      return stoppedPool(lab, workflowId);
    },
    wrong: (r) => {
      const s = r as LlmBurstStatus;
      return s.state === 'stopped' && s.reason?.startsWith('shutdownNow') ? undefined : `state ${s.state}: ${s.reason}`;
    },
    // Every run launches, as the clean run the plan's boundaries come from did.
    reset: terminateInstances,
  },
];

/** Approves the restore's plan once it awaits approval (`copies` updates at once: only one is accepted). */
export async function approveOnce(lab: ChaosLab, workflowId: string, copies = 1): Promise<void> {
  const plan = await retrying(lab, async (client) => {
    const h = client.workflow.getHandle(workflowId);
    for (;;) {
      const status = await h.query<DrStatus>('drStatus');
      if (status.phase === 'awaiting-approval') return (await h.query<DrPlan | null>('plan'))!;
      if (status.phase === 'done' || status.phase === 'failed')
        throw ApplicationFailure.create({ message: `restore ${status.phase} before approval` });
      await new Promise((r) => setTimeout(r, 300));
    }
  });
  await retrying(lab, async (client) => {
    const h = client.workflow.getHandle(workflowId);
    const answers = await Promise.allSettled(
      Array.from({ length: copies }, () =>
        h.executeUpdate(approveUpdate, { args: [{ digest: plan.digest, approve: true }] }),
      ),
    );
    if (!answers.some((a) => a.status === 'fulfilled')) {
      const status = await h.query<DrStatus>('drStatus');
      if (status.phase === 'awaiting-approval') throw (answers[0] as PromiseRejectedResult).reason;
    }
  });
}

/**
 * The pool's workflow runs on after a shutdown (stopped, waiting for demand): its result here is
 * the status once it stopped; then the matrix ends the run, as an operator retiring the pool.
 */
export async function stoppedPool(lab: ChaosLab, workflowId: string): Promise<LlmBurstStatus> {
  return retrying(lab, async (client) => {
    const h = client.workflow.getHandle(workflowId);
    for (;;) {
      const status = await h.query(statusQuery);
      if (status.state === 'stopped' || status.state === 'failed') {
        await h.terminate('chaos matrix: the pool stopped; run checked');
        return status;
      }
      await new Promise((r) => setTimeout(r, 500));
    }
  });
}

/** Acquires the pool (`copies` acquires at once: one instance for all), then shuts it down. */
export async function acquireAndShutdown(lab: ChaosLab, workflowId: string, copies = 1): Promise<string[]> {
  const endpoints = await retrying(lab, async (client) => {
    const h: WorkflowHandle = client.workflow.getHandle(workflowId);
    const acquired = await Promise.all(
      Array.from({ length: copies }, () => h.executeUpdate(acquireUpdate, { args: [{ deadlineSeconds: 300 }] })),
    );
    return acquired.map((a) => `${a.instanceId} ${a.endpoint}`);
  });
  await retrying(lab, async (client) => {
    const h = client.workflow.getHandle(workflowId);
    for (let i = 0; i < copies; i++) await h.signal(shutdownNowSignal, 'chaos matrix: run done');
  });
  return endpoints;
}
