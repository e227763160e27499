/**
 * An etcd target: a restore recovers through Talos (`talosctl bootstrap --recover-from`) on the
 * cluster's control plane; a drill recovers on a scratch control plane (a one-node cluster of its
 * own with the cluster's secrets, in a VM cloned from the cluster's template into the drill
 * range) and checks that its etcd serves the snapshot's data.
 */
import * as wf from '@temporalio/workflow';
import type { TaskOutcome } from '../../activities/proxmox.js';
import {
  DRILL_CONTROL_PLANE_PATCH,
  drillEtcdName,
  drillMac,
  formatDuration,
  isolatedNet,
} from '../../common/dr-restore.js';
import { nonRetryable } from '../../common/errors.js';
import { runPveTask } from '../../common/pve-tasks.js';
import type { SecretRef } from '../../common/secret-ref.js';
import {
  networkOf,
  nodeConfigRequest,
  planCluster,
  talosStore,
  templateFor,
  type NodePlan,
} from '../../common/talos.js';
import { causeMessage, type CheckedEtcd, type DrContext, type Restored, type StepDetail } from './context.js';

/** etcd of the cluster recovered in place (a drill started before `etcd-drill-recover` only checked the snapshot). */
export async function restoreEtcd(ctx: DrContext, c: CheckedEtcd, step: StepDetail): Promise<Restored> {
  const { input, kubeconfig, talosconfig } = ctx;
  // The snapshot was checked before the approval (bbolt, appended sha256): what talosctl and
  // etcd check on a recovery. A drill started before `etcd-drill-recover` stopped there (its
  // replay does); newer drills recover on a scratch control plane (restoreEtcdScratch).
  if (ctx.drill) {
    return {
      verification: `snapshot intact: ${c.integrity} (not recovered in a drill)`,
      restoredBytes: c.backup.size,
    };
  }
  const t = c.target;
  step(`talosctl bootstrap --recover-from=${c.snapshot} on ${c.address}`);
  const recovered = await ctx.act.talosOnce.talosRecoverEtcd({
    address: c.address!,
    talosconfig,
    snapshot: c.snapshot,
    ...(t.skipHashCheck ? { skipHashCheck: true } : {}),
  });
  // etcd starts from the snapshot after the bootstrap has answered: a durable wait for a member.
  const members = await waitForMember(
    ctx,
    { address: c.address!, talosconfig },
    step,
    (warning) =>
      `etcd on ${c.address} has no member ${formatDuration(input.etcdTimeoutSeconds * 1000)} after the recovery from ${c.snapshot}` +
      `${warning ? ` (${warning.split('\n')[0]})` : ''}: the recovery failed (talosctl -n ${c.address} logs etcd)`,
  );
  const api = await ctx.act.kube.k8sGetObject({ kubeconfig, apiVersion: 'v1', kind: 'Namespace', name: 'kube-system' });
  if (!api.exists) throw nonRetryable('precondition', 'the Kubernetes API has no kube-system after the recovery');
  const s = recovered.snapshot;
  const from = s
    ? `snapshot hash ${s.hash}, revision ${s.revision}, ${s.totalKeys} keys`
    : `${c.snapshot}${recovered.outcome === 'already-recovered' ? ' (by an earlier attempt)' : ''}`;
  return {
    verification: `etcd recovered from ${from} (${members.length} member(s)); the Kubernetes API answers`,
    restoredBytes: c.backup.size,
  };
}

/**
 * An etcd drill: the snapshot recovered on a scratch control plane, a one-node cluster of its
 * own with the cluster's secrets (so the recovered data is readable as the cluster's), in a VM
 * cloned from the cluster's template into the drill range, its NIC isolated. What a restore
 * does, on scratch: the VM and the scratch Talos material are removed by the cleanup.
 */
export async function restoreEtcdScratch(
  ctx: DrContext,
  c: CheckedEtcd,
  vmid: number,
  step: StepDetail,
): Promise<Restored> {
  const { input, info } = ctx;
  const inventory = ctx.inventory!;
  const { talos, talosOnce, talosWait, pve, pveWait } = ctx.act;
  const t = c.target;
  const cp = planCluster(inventory, t.cluster);
  const name = drillEtcdName(input.plan, t.cluster);
  const ip = t.drill!.ip;
  const host = cp.template.host;
  const ref = { host, node: cp.template.node, vmid };
  const wait = (upid: string): Promise<TaskOutcome> => pveWait.pveWaitForTask({ host, upid });
  const like = cp.controlPlane.find((n) => n.vm)?.vm;
  const mac = drillMac(name);
  const nic = t.drill!.net
    ? `virtio=${mac.toUpperCase()},${t.drill!.net}`
    : isolatedNet(`virtio=${mac.toUpperCase()},bridge=${like?.bridge ?? 'vmbr0'}`);
  const endpoint = `https://${ip}:6443`;
  const scratchTc: SecretRef = { store: talosStore.talosconfig(name) };
  const bootSeconds = input.agentTimeoutSeconds;

  // The scratch cluster's Talos material: the cluster's secrets, a talosconfig and a control
  // plane config for the scratch endpoint (no discovery: it carries the cluster's identity).
  step(`scratch cluster ${name} with the secrets of ${t.cluster}`);
  ctx.made.push({ kind: 'talos', cluster: name });
  await talos.talosCopyClusterSecrets({ from: t.cluster, to: name });
  await talos.talosEnsureSecrets({ cluster: name, endpoint });
  const vlan = networkOf(ip, inventory.proxmox.vlans);
  const node: NodePlan = {
    name,
    role: 'controlplane',
    ip,
    prefix: vlan.prefix,
    gateway: vlan.gateway,
    kind: 'vm',
    arch: 'amd64',
    installDisk: cp.controlPlane[0]!.installDisk,
    labels: {},
    taints: [],
    vm: {
      host,
      node: ref.node,
      vmid,
      mac,
      cores: like?.cores ?? 2,
      memoryMiB: like?.memoryMiB ?? 4096,
      diskGiB: like?.diskGiB ?? 20,
      storage: like?.storage ?? inventory.templates.find((x) => x.name === cp.template.name)?.storage ?? 'local-lvm',
      bridge: like?.bridge ?? 'vmbr0',
    },
  };
  const config = await talos.talosGenNodeConfig(
    nodeConfigRequest({ ...cp, name, endpoint, patches: [...cp.patches, DRILL_CONTROL_PLANE_PATCH] }, node),
  );

  // The VM: a full clone of the cluster's template, isolated, not started on boot.
  const templates = await pve.pveListTemplates({ host });
  const template = templateFor(templates, cp.template.name, ref.node);
  if (!template) {
    throw nonRetryable(
      'precondition',
      `template ${cp.template.name} (clusters.${t.cluster}.template) is not on Proxmox host ${host}`,
    );
  }
  step(`cloning ${cp.template.name} to VM ${vmid} (${name})`);
  ctx.made.push({ kind: 'vm', host, node: ref.node, vmid, name });
  await runPveTask(
    `clone VM ${vmid} (${name})`,
    () =>
      pve.pveClone({
        host,
        node: template.node,
        vmid: template.vmid,
        newid: vmid,
        name,
        full: true,
        storage: node.vm!.storage,
        ...(template.node !== ref.node ? { target: ref.node } : {}),
      }),
    wait,
  );
  await pve.pveSetConfig({
    ...ref,
    guard: { name },
    config: {
      net: { 0: nic },
      cores: node.vm!.cores,
      memoryMiB: node.vm!.memoryMiB,
      onboot: false,
      tags: ['labwright', 'dr-drill'],
      description: `labwright DR drill ${input.plan} (${info.workflowId}): scratch control plane recovering etcd of ${t.cluster}; removed when the drill ends`,
    },
  });
  step(`starting VM ${vmid} (${name}, ${ip}; NIC ${nic})`);
  await runPveTask(`start VM ${vmid}`, () => pve.pveStart(ref), wait, { okReasons: ['already-running'] });

  // Talos: maintenance mode, the config, the install and reboot.
  const boot = async (what: string, body: () => Promise<unknown>): Promise<void> => {
    try {
      await body();
    } catch (err) {
      if (wf.isCancellation(err)) throw err;
      throw nonRetryable('precondition', `scratch control plane ${name} (${ip}) ${what}: ${causeMessage(err)}`);
    }
  };
  step(`waiting for Talos on ${ip} (maintenance mode)`);
  await boot('did not come up in maintenance mode', () =>
    talosWait.talosWaitForApi({ address: ip, timeoutSeconds: bootSeconds }),
  );
  step(`applying the scratch control plane config to ${ip}`);
  await talos.talosApplyConfig({ address: ip, config: config.config, insecure: true, talosconfig: scratchTc });
  await boot('did not reach stage running', () =>
    talosWait.talosWaitForApi({ address: ip, talosconfig: scratchTc, timeoutSeconds: bootSeconds, stage: 'running' }),
  );

  // The recovery, as a restore does it, then a durable wait for etcd to start from it.
  step(`talosctl bootstrap --recover-from=${c.snapshot} on ${ip}`);
  const recovered = await talosOnce.talosRecoverEtcd({
    address: ip,
    talosconfig: scratchTc,
    snapshot: c.snapshot,
    ...(t.skipHashCheck ? { skipHashCheck: true } : {}),
  });
  const members = await waitForMember(
    ctx,
    { address: ip, talosconfig: scratchTc },
    step,
    (warning) =>
      `etcd on the scratch control plane ${name} (${ip}) has no member ${formatDuration(input.etcdTimeoutSeconds * 1000)} after the recovery from ${c.snapshot}` +
      `${warning ? ` (${lastLine(warning)})` : ''}: the snapshot does not recover (etcd refused it; talosctl logs etcd tells why)`,
  );
  if (!members.includes(name)) {
    throw nonRetryable(
      'precondition',
      `etcd on the scratch control plane ${name} lists member(s) ${members.join(', ')}, not ${name}: not the recovered etcd`,
    );
  }

  // Verify: the recovered etcd serves the snapshot's data (its revision at least the snapshot's).
  const now = await talos.talosEtcdSnapshotStatus({ address: ip, talosconfig: scratchTc });
  const s = recovered.snapshot;
  if (s && now.revision < s.revision) {
    throw nonRetryable(
      'precondition',
      `etcd on the scratch control plane ${name} is at revision ${now.revision}, behind the snapshot's ${s.revision}: not recovered from it`,
    );
  }
  const from = s
    ? `snapshot hash ${s.hash}, revision ${s.revision}, ${s.totalKeys} keys`
    : `${c.snapshot} (by an earlier attempt)`;
  return {
    verification:
      `etcd recovered on scratch control plane ${name} (VM ${vmid}, ${ip}) from ${from}; ` +
      `member ${name}; it serves revision ${now.revision}, ${now.totalKeys} keys`,
    restoredBytes: c.backup.size,
  };
}

/**
 * Waits until etcd on `node` lists a member after a recovery; returns their hostnames. At the
 * deadline (etcdTimeoutSeconds) it fails with `noMember(talosctl's warning)`. The wait runs in a
 * heartbeating activity, one call per 20 minutes at most: a long wait records a few activities,
 * not one per poll. Runs started before `etcd-wait-activity` replay the workflow-side poll.
 */
async function waitForMember(
  ctx: DrContext,
  node: { address: string; talosconfig: SecretRef },
  step: StepDetail,
  noMember: (warning: string | undefined) => string,
): Promise<string[]> {
  const deadline = ctx.clock.deadline(ctx.input.etcdTimeoutSeconds);
  if (!wf.patched('etcd-wait-activity')) return pollForMember(ctx, node, deadline, step, noMember);
  step(`waiting for etcd on ${node.address} to start from the snapshot`);
  for (;;) {
    const m = await ctx.act.talosWait.talosWaitEtcdMember({
      ...node,
      deadlineAt: deadline,
      returnAt: Math.min(deadline, ctx.clock.now() + 20 * 60_000),
    });
    if (m.members.length > 0) return m.members.map((x) => x.hostname);
    if (m.timedOut || ctx.clock.now() >= deadline) throw nonRetryable('precondition', noMember(m.warning));
  }
}

/** The workflow-side poll of runs started before `etcd-wait-activity` (replay only). */
async function pollForMember(
  ctx: DrContext,
  node: { address: string; talosconfig: SecretRef },
  deadline: number,
  step: StepDetail,
  noMember: (warning: string | undefined) => string,
): Promise<string[]> {
  for (;;) {
    const m = await ctx.act.talos.talosEtcdMembers(node);
    if (m.members.length > 0) return m.members.map((x) => x.hostname);
    if (ctx.clock.now() >= deadline) throw nonRetryable('precondition', noMember(m.warning));
    step(`waiting for etcd on ${node.address} to start from the snapshot`);
    await wf.sleep(ctx.input.pollSeconds * 1000);
  }
}

/** The last non-empty line of talosctl's warning (the node's error, after `WARNING: 1 error occurred:`). */
function lastLine(text: string): string {
  const lines = text
    .split('\n')
    .map((l) => l.trim().replace(/^\*\s*/, ''))
    .filter(Boolean);
  return lines.at(-1) ?? '';
}
