/**
 * Talos bootstrap: one Talos cluster of the inventory, from nothing (or from wherever an earlier
 * run stopped) to a healthy Kubernetes API. One workflow per cluster, ID `talos-bootstrap/<cluster>`.
 * The runbook it replaces:
 *
 *   1. Validate the inventory and the cluster's part of it.
 *   2. Clone every VM node from the cluster's template and configure it (CPU, memory, NIC with
 *      MAC and VLAN), in parallel; a VM that exists with the same name is kept. A template on
 *      another node's local storage: refused, or (templatePlacement) a full clone there and an
 *      offline migration to the VM's node. Grow its boot disk to the inventory's diskGiB (never
 *      shrunk: PVE refuses).
 *   3. Start the VMs.
 *   4. Wait for each node's Talos API in maintenance mode (metal nodes, e.g. the Raspberry Pi,
 *      are booted by hand from their image and waited for at their address).
 *   5. Generate the cluster's secrets, or reuse them.
 *   6. Generate and validate each node's machine config. (5 and 6 need no VM: they run beside
 *      2 to 4, once 2 has found every template.)
 *   7. Apply them: `--insecure` in maintenance mode; on configured nodes only when a dry run
 *      reports changes. Wait for each node to run.
 *   8. Bootstrap etcd exactly once, on the first control plane: look at etcd membership first
 *      and record the outcome durably (history and memo), so that a crash between the bootstrap
 *      and its record never bootstraps twice.
 *   9. Wait for Kubernetes: `talosctl health`, then every Node Ready through the API.
 *  10. Store the admin kubeconfig (fetched again when the stored one no longer reaches the
 *      cluster) and report the endpoint.
 *
 * GPU workers are left to `gpu-node-join/<node>` (PCI checks, smoke test, compensation).
 */
import * as wf from '@temporalio/workflow';
import type { createKubernetesActivities } from '../activities/kubernetes.js';
import type { createProxmoxActivities, VmDetails } from '../activities/proxmox.js';
import type { createTalosActivities } from '../activities/talos.js';
import { apiCall, oneShot, waitFor, withHeartbeat } from '../common/activity-options.js';
import { nonRetryable } from '../common/errors.js';
import { ProgressTracker } from '../common/progress.js';
import { bootDiskKey, diskSizeBytes, formatSize } from '../common/pve-disks.js';
import { runPveTask } from '../common/pve-tasks.js';
import { RESOURCE_KEY } from '../common/search-attributes.js';
import {
  nodeConfigRequest,
  LAB_RULES_PATCH,
  parseInventory,
  planCluster,
  talosBootstrapInputSchema,
  talosBootstrapWorkflowId,
  templateFor,
  vmConfigFor,
  type ClusterPlan,
  type NodePlan,
  type TalosBootstrapResult,
} from '../common/talos.js';
import { parseInput } from '../common/validation.js';

type Pve = ReturnType<typeof createProxmoxActivities>;
type Talos = ReturnType<typeof createTalosActivities>;
type Kube = ReturnType<typeof createKubernetesActivities>;

const pve = wf.proxyActivities<Pve>(apiCall);
const pveWait = wf.proxyActivities<Pve>(waitFor);
const kube = wf.proxyActivities<Kube>(apiCall);

/**
 * Histories recorded while the VM lookups before cloning and the etcd membership looks went one
 * node after another replay that way; since, they go to every node at once.
 */
const PARALLEL_LOOKS_PATCH = 'parallel-looks';
/** Histories recorded before the stored kubeconfig was probed replay without the probe. */
const KUBECONFIG_PROBE_PATCH = 'kubeconfig-probe';
/**
 * Secrets and machine configs depend on the inventory alone: since this patch they are made while
 * the VMs are cloned, started and waited for, instead of after the slowest VM is up. Histories
 * recorded before it replay them in turn.
 */
const CONFIGS_BESIDE_VMS_PATCH = 'configs-beside-vms';

export const TALOS_BOOTSTRAP_STEPS = [
  'validate inventory',
  'create VMs',
  'start VMs',
  'wait for maintenance mode',
  'secrets',
  'generate configs',
  'apply configs',
  'bootstrap etcd',
  'wait for Kubernetes',
  'store kubeconfig',
] as const;

export async function talosBootstrap(raw: unknown): Promise<TalosBootstrapResult> {
  const input = parseInput(talosBootstrapInputSchema, raw, 'talos-bootstrap input');
  // Exactly one bootstrap per cluster rests on Temporal's one open run per workflow ID: under
  // any other ID, a second run could bootstrap the same cluster's etcd at the same time.
  const id = wf.workflowInfo().workflowId;
  if (id !== talosBootstrapWorkflowId(input.cluster)) {
    throw nonRetryable(
      'validation',
      `invalid input: cluster: talos-bootstrap of cluster ${input.cluster} runs only as workflow ID ${talosBootstrapWorkflowId(input.cluster)}, not ${id}: that ID is what keeps a cluster to one bootstrap at a time`,
    );
  }
  wf.upsertSearchAttributes([{ key: RESOURCE_KEY, value: input.cluster }]);
  const progress = new ProgressTracker(TALOS_BOOTSTRAP_STEPS);
  const changes: string[] = [];
  const notes: string[] = [];
  // Talos calls and the waits heartbeat, so a worker lost mid-call can be noticed sooner (input).
  const beat = (profile: typeof apiCall) => withHeartbeat(profile, input.heartbeatSeconds);
  const talos = wf.proxyActivities<Talos>(beat(apiCall));
  const talosWait = wf.proxyActivities<Talos>(beat(waitFor));
  // The one-shot bootstrap heartbeats by default: a worker or server lost during it is noticed in
  // seconds, not at its 10-minute start-to-close timeout.
  const talosOnce = wf.proxyActivities<Talos>(
    withHeartbeat(oneShot, input.heartbeatSeconds ?? ONE_SHOT_HEARTBEAT_SECONDS),
  );
  const kubeWait = wf.proxyActivities<Kube>(beat(waitFor));

  // 1. The inventory: the input's, or the worker's. Either way validated here, before any change.
  const plan = await progress.run(
    'validate inventory',
    async () => {
      const inventory = parseInventory(
        input.inventory ?? (await talos.talosLabInventory()),
        wf.patched(LAB_RULES_PATCH),
      );
      return planCluster(inventory, input.cluster);
    },
    (p) => `${p.controlPlane.length} control planes, ${p.workers.length} workers`,
  );
  const gpuWorkers = plan.workers.filter((n) => n.gpu !== undefined);
  for (const n of gpuWorkers) notes.push(`GPU worker ${n.name} is joined by gpu-node-join/${n.name}`);
  const nodes = [...plan.controlPlane, ...plan.workers.filter((n) => n.gpu === undefined)];
  const vms = nodes.filter((n) => n.kind === 'vm');
  for (const n of nodes.filter((m) => m.kind === 'metal')) {
    notes.push(
      `${n.name} is bare metal (${n.arch}): boot it from ${n.image ?? `the Talos ${n.arch} image`} of Talos ${plan.talosVersion}; it is waited for at ${n.ip}`,
    );
  }
  const first = plan.controlPlane[0]!;

  // 5 and 6. Secrets, generated once and kept in the secret store; one machine config per node,
  // validated. Neither needs a VM: they are made beside steps 2 to 4, once step 2's looks found
  // every template (a precondition that fails there changes nothing).
  const makeConfigs = async () => {
    const secrets = await progress.run(
      'secrets',
      () => talos.talosEnsureSecrets({ cluster: plan.name, endpoint: plan.endpoint }),
      (s) => (s.created.length > 0 ? `generated ${s.created.join(' and ')}` : 'reused'),
    );
    for (const what of secrets.created) changes.push(`generated the cluster's ${what}`);
    const configs = await progress.run(
      'generate configs',
      async () => {
        const generated = await Promise.all(
          nodes.map((n) => talos.talosGenNodeConfig(nodeConfigRequest(plan, n, input.nvidiaSchematic))),
        );
        generated.forEach((g, i) => {
          if (g.changed) changes.push(`stored the machine config of ${nodes[i]!.name}`);
        });
        return new Map(nodes.map((n, i) => [n.name, generated[i]!]));
      },
      (c) => `${c.size} configs valid`,
    );
    return { secrets, configs };
  };
  const configsBesideVms = wf.patched(CONFIGS_BESIDE_VMS_PATCH);
  let madeBeside: ReturnType<typeof makeConfigs> | undefined;

  // 2. Clone and configure every VM, in parallel; idempotent by VMID and name.
  await progress.run(
    'create VMs',
    async () => {
      const templates = await templatesByHost(plan, vms);
      if (configsBesideVms) {
        madeBeside = makeConfigs();
        // Its failure is thrown where it is awaited, after step 4.
        void madeBeside.catch(() => undefined);
      }
      await Promise.all(vms.map((n) => ensureVm(plan, n, templates, changes)));
    },
    () => describeChanges(changes, 'VM', vms.length),
  );

  // 3. Start them.
  await progress.run(
    'start VMs',
    async () => {
      await Promise.all(
        vms.map(async (n) => {
          const vm = n.vm!;
          const r = await runPveTask(
            `start VM ${vm.vmid} (${n.name})`,
            () => pve.pveStart({ host: vm.host, node: vm.node, vmid: vm.vmid }),
            (upid) => pveWait.pveWaitForTask({ host: vm.host, upid }),
            { okReasons: ['already-running'] },
          );
          if (r.outcome) changes.push(`started VM ${vm.vmid} (${n.name})`);
        }),
      );
    },
    () => `${vms.length} running`,
  );

  // 4. Each node's Talos API: maintenance mode, or already configured by an earlier run.
  const talosconfigRef = { store: `talos/${plan.name}/talosconfig` };
  const modes = await progress.run(
    'wait for maintenance mode',
    async () => {
      const probes = await Promise.all(
        nodes.map((n) =>
          talosWait.talosWaitForApi({ address: n.ip, talosconfig: talosconfigRef, timeoutSeconds: input.waitSeconds }),
        ),
      );
      return new Map(nodes.map((n, i) => [n.name, probes[i]!.mode]));
    },
    (m) => {
      const waiting = [...m.values()].filter((x) => x === 'maintenance').length;
      return `${waiting} in maintenance mode, ${m.size - waiting} configured`;
    },
  );

  const { secrets, configs } = await (madeBeside ?? makeConfigs());

  // 7. Apply: insecure in maintenance mode, authenticated (and only if it changes something) after.
  await progress.run(
    'apply configs',
    async () => {
      await Promise.all(
        nodes.map(async (n) => {
          const insecure = modes.get(n.name) === 'maintenance';
          const r = await talos.talosApplyConfig({
            address: n.ip,
            config: configs.get(n.name)!.config,
            insecure,
            talosconfig: secrets.talosconfig,
          });
          if (r.applied)
            changes.push(`applied the machine config of ${n.name}${insecure ? ' (maintenance mode)' : ''}`);
          await talosWait.talosWaitForApi({
            address: n.ip,
            talosconfig: secrets.talosconfig,
            timeoutSeconds: input.waitSeconds,
            stage: 'running',
          });
        }),
      );
    },
    () => `${nodes.length} running`,
  );

  // 8. etcd, exactly once.
  const etcd = await progress.run(
    'bootstrap etcd',
    async () => {
      const cps = plan.controlPlane.filter((n) => n.gpu === undefined);
      // etcd that does not answer is not an empty etcd: on a control plane configured before this
      // run (not in maintenance mode at step 4) it may be restarting. Look again for a while
      // before concluding that no control plane has an etcd member.
      const parallelLooks = wf.patched(PARALLEL_LOOKS_PATCH);
      for (let look = 1; ; look++) {
        let unreachable = 0;
        const ask = (cp: NodePlan) => talos.talosEtcdMembers({ address: cp.ip, talosconfig: secrets.talosconfig });
        // All control planes at once (each answer is looked at in order, as before).
        const asked = parallelLooks ? cps.map(ask) : undefined;
        for (const p of asked ?? []) void p.catch(() => undefined); // a failure is thrown where it is looked at
        for (const [i, cp] of cps.entries()) {
          const m = await (asked ? asked[i]! : ask(cp));
          if (m.members.length > 0) {
            wf.upsertMemo({ etcdBootstrapped: true, etcdNode: cp.name });
            return {
              node: cp.name,
              bootstrappedByThisRun: false,
              detail: `already has ${m.members.length} member(s) (seen on ${cp.name})`,
            };
          }
          if (m.reachable === false && modes.get(cp.name) !== 'maintenance') unreachable++;
        }
        if (unreachable === 0 || look >= ETCD_LOOKS) break;
        await wf.sleep(ETCD_LOOK_INTERVAL);
      }
      const r = await talosOnce.talosBootstrap({ address: first.ip, talosconfig: secrets.talosconfig });
      wf.upsertMemo({ etcdBootstrapped: true, etcdNode: first.name });
      if (r.outcome === 'bootstrapped') {
        changes.push(`bootstrapped etcd on ${first.name}`);
        return { node: first.name, bootstrappedByThisRun: true, detail: `bootstrapped on ${first.name}` };
      }
      if (r.outcome === 'bootstrapped-by-earlier-attempt') {
        changes.push(`bootstrapped etcd on ${first.name}`);
        return {
          node: first.name,
          bootstrappedByThisRun: true,
          detail: `bootstrapped on ${first.name} by this run (an earlier attempt, whose answer was lost)`,
        };
      }
      return { node: first.name, bootstrappedByThisRun: false, detail: `was bootstrapped before (${r.outcome})` };
    },
    (e) => e.detail,
  );

  // 9. Kubernetes up and every node Ready.
  await progress.run(
    'wait for Kubernetes',
    () =>
      talosWait.talosHealth({
        address: first.ip,
        talosconfig: secrets.talosconfig,
        controlPlanes: plan.controlPlane.filter((n) => n.gpu === undefined).map((n) => n.ip),
        workers: plan.workers.filter((n) => n.gpu === undefined).map((n) => n.ip),
        timeoutSeconds: input.waitSeconds,
      }),
    () => 'healthy',
  );

  // 10. The kubeconfig, and the nodes as the API sees them. A stored kubeconfig that no longer
  // reaches the cluster (rebuilt: a new CA, another address) is fetched again from Talos after one
  // probe, instead of being waited on until the deadline.
  const kubeconfig = await progress.run(
    'store kubeconfig',
    async () => {
      const from = { cluster: plan.name, address: first.ip, talosconfig: secrets.talosconfig };
      let k = await talos.talosKubeconfig(from);
      if (k.fetched) changes.push('stored the admin kubeconfig');
      else if (wf.patched(KUBECONFIG_PROBE_PATCH)) {
        const probe = await kube.k8sProbe({ kubeconfig: k.kubeconfig });
        if (!probe.reachable) {
          k = await talos.talosKubeconfig({ ...from, refresh: true });
          changes.push(`fetched the admin kubeconfig again: the stored one ${probe.reason}`);
        }
      }
      await kubeWait.k8sWaitNodesReady({
        kubeconfig: k.kubeconfig,
        nodes: nodes.map((n) => n.name),
        timeoutSeconds: input.waitSeconds,
      });
      return k.kubeconfig;
    },
    () => `${nodes.length} nodes Ready`,
  );

  const summary =
    changes.length === 0
      ? `cluster ${plan.name} is already healthy at ${plan.endpoint}: nothing changed`
      : `cluster ${plan.name} is healthy at ${plan.endpoint}: ${changes.length} change(s)`;
  progress.finishWith(summary);
  return {
    cluster: plan.name,
    endpoint: plan.endpoint,
    kubeconfig,
    talosconfig: secrets.talosconfig,
    etcd: { node: etcd.node, bootstrappedByThisRun: etcd.bootstrappedByThisRun },
    changes,
    notes,
    summary,
  };
}

/** Heartbeat timeout of the etcd bootstrap when the input sets none (seconds). */
const ONE_SHOT_HEARTBEAT_SECONDS = 10;
/** How often, and how far apart, an unreachable etcd on a configured control plane is asked again. */
const ETCD_LOOKS = 4;
const ETCD_LOOK_INTERVAL = '10 seconds';

function describeChanges(changes: string[], what: string, total: number): string {
  const mine = changes.filter((c) => c.includes(what));
  return mine.length === 0 ? `${total} ${what}s as the inventory says` : `${mine.length} change(s)`;
}

/**
 * The template VMID each VM still to be cloned clones from: the cluster's template by name, on the
 * VM's own host. VMs that exist need none, so a re-run of a built cluster does not depend on the
 * template (Packer's retention may have retired it); all are checked before the first clone.
 */
async function templatesByHost(plan: ClusterPlan, vms: NodePlan[]): Promise<Map<string, CloneSource>> {
  const out = new Map<string, CloneSource>();
  const hosts = [...new Set(vms.map((n) => n.vm!.host))];
  if (!wf.patched(PARALLEL_LOOKS_PATCH)) {
    for (const host of hosts) await templatesOnHost(plan, vms, host, out, false);
    return out;
  }
  await Promise.all(hosts.map((host) => templatesOnHost(plan, vms, host, out, true)));
  return out;
}

/** templatesByHost for one PVE host: which of its VMs still need a clone, and from which template. */
async function templatesOnHost(
  plan: ClusterPlan,
  vms: NodePlan[],
  host: string,
  out: Map<string, CloneSource>,
  parallel: boolean,
): Promise<void> {
  const mine = vms.filter((v) => v.vm!.host === host);
  const lookUp = (n: NodePlan) => pve.pveGetVm({ host, node: n.vm!.node, vmid: n.vm!.vmid });
  const existing: Array<VmDetails | null> = [];
  if (parallel) existing.push(...(await Promise.all(mine.map(lookUp))));
  else for (const n of mine) existing.push(await lookUp(n));
  const toClone = mine.filter((_, i) => existing[i] === null);
  if (toClone.length === 0) return;
  const list = await pve.pveListTemplates({ host });
  if (parallel) {
    const sources = await Promise.all(toClone.map((n) => cloneSource(plan, n, list)));
    toClone.forEach((n, i) => out.set(n.name, sources[i]!));
  } else for (const n of toClone) out.set(n.name, await cloneSource(plan, n, list));
}

/** The template a VM is cloned from, and whether the clone is made on its node then migrated. */
interface CloneSource {
  vmid: number;
  node: string;
  migrate?: boolean;
}

/**
 * The template a node's VM is cloned from: the cluster's template on the VM's own PVE node, or
 * one on another node when PVE can clone it across (`target`): only onto shared storage (PVE:
 * `can't clone to non-shared storage`, `can't clone VM to node ... (VM uses local storage)`), or
 * when the inventory asks for a full clone on the template's node then a migration
 * (`templatePlacement: full-clone-then-migrate`). Otherwise a PreconditionFailed naming the
 * inventory fields, before anything is cloned.
 */
export async function cloneSource(
  plan: ClusterPlan,
  n: NodePlan,
  templates: Array<{ name: string; node: string; vmid: number }>,
): Promise<CloneSource> {
  const vm = n.vm!;
  const field = nodeField(plan, n);
  const t = templateFor(templates, plan.template.name, vm.node);
  if (!t) {
    throw nonRetryable(
      'precondition',
      `template ${plan.template.name} (clusters.${plan.name}.template) is not on Proxmox host ${vm.host}`,
    );
  }
  if (t.node === vm.node) return { vmid: t.vmid, node: t.node };
  const storages = await pve.pveNodeStorages({ host: vm.host, node: t.node });
  if (storages.some((st) => st.storage === vm.storage && st.shared)) return { vmid: t.vmid, node: t.node };
  if (plan.templatePlacement === 'full-clone-then-migrate') return { vmid: t.vmid, node: t.node, migrate: true };
  throw nonRetryable(
    'precondition',
    `VM ${vm.vmid} (${n.name}) cannot be cloned: template ${plan.template.name} (clusters.${plan.name}.template) is on PVE node ${t.node}, not on ${vm.node} (${field}.node), and PVE clones to another node only onto shared storage; ${vm.storage} (${field}.storage) is not shared. Make the template on ${vm.node} too, give ${field}.storage a shared storage, or set clusters.${plan.name}.templatePlacement to full-clone-then-migrate`,
  );
}

/** `clusters.home.controlPlane[1]`: where a node is in the inventory, for messages. */
function nodeField(plan: ClusterPlan, n: NodePlan): string {
  const list = n.role === 'controlplane' ? plan.controlPlane : plan.workers;
  return `clusters.${plan.name}.${n.role === 'controlplane' ? 'controlPlane' : 'workers'}[${list.indexOf(n)}]`;
}

/**
 * Clones the node's VM unless it exists with its name, sets whatever config differs and grows its
 * boot disk to the inventory's size. Returns the VM as it was before the config was set.
 */
export async function ensureVm(
  plan: ClusterPlan,
  n: NodePlan,
  templates: Map<string, CloneSource>,
  changes: string[],
): Promise<VmDetails | null> {
  // Histories recorded before disk sizes were applied replay without the resize.
  const sizeDisks = wf.patched('disk-size');
  const vm = n.vm!;
  const ref = { host: vm.host, node: vm.node, vmid: vm.vmid };
  let current = await pve.pveGetVm(ref);
  if (current && current.name !== n.name) {
    throw nonRetryable(
      'conflict',
      `VMID ${vm.vmid} already exists on ${vm.host}/${vm.node} as ${current.name}, not ${n.name}`,
    );
  }
  if (!current && templates.get(n.name)!.migrate) {
    await cloneThenMigrate(n, templates.get(n.name)!, changes);
    current = await pve.pveGetVm(ref);
  }
  if (!current) {
    const t = templates.get(n.name)!;
    await fullClone(n, t, `clone VM ${vm.vmid} (${n.name})`, t.node !== vm.node ? vm.node : undefined);
    changes.push(`cloned VM ${vm.vmid} (${n.name})`);
    current = await pve.pveGetVm(ref);
  }
  const desired = vmConfigFor(n, plan.name);
  const diff = configDiff(current, desired);
  if (diff.length > 0) {
    await pve.pveSetConfig({ ...ref, config: desired, guard: { name: n.name } });
    changes.push(`configured VM ${vm.vmid} (${n.name}): ${diff.join(', ')}`);
  }
  if (sizeDisks) await growBootDisk(n, current, changes);
  return current;
}

/** A full clone of template `t` onto the node's storage, on `t`'s node, or with `target` on that one. */
async function fullClone(n: NodePlan, t: CloneSource, what: string, target?: string): Promise<void> {
  const vm = n.vm!;
  await runPveTask(
    what,
    () =>
      pve.pveClone({
        host: vm.host,
        node: t.node,
        vmid: t.vmid,
        newid: vm.vmid,
        name: n.name,
        full: true,
        storage: vm.storage,
        ...(target ? { target } : {}),
      }),
    (upid) => pveWait.pveWaitForTask({ host: vm.host, upid }),
  );
}

/**
 * A full clone on the template's node, then an offline migration to the VM's node with its disks
 * onto the inventory's storage. A clone left there by an earlier run (crashed before the
 * migration) is recognised by VMID and name, and only migrated.
 */
async function cloneThenMigrate(n: NodePlan, t: CloneSource, changes: string[]): Promise<void> {
  const vm = n.vm!;
  const there = await pve.pveGetVm({ host: vm.host, node: t.node, vmid: vm.vmid });
  if (there && there.name !== n.name) {
    throw nonRetryable(
      'conflict',
      `VMID ${vm.vmid} already exists on ${vm.host}/${t.node} as ${there.name}, not ${n.name}`,
    );
  }
  if (!there) {
    await fullClone(n, t, `clone VM ${vm.vmid} (${n.name}) on ${t.node}`);
    changes.push(`cloned VM ${vm.vmid} (${n.name}) on ${t.node}`);
  }
  const migrated = await runPveTask(
    `migrate VM ${vm.vmid} (${n.name}) to ${vm.node}`,
    () =>
      pve.pveMigrateVm({
        host: vm.host,
        node: t.node,
        vmid: vm.vmid,
        target: vm.node,
        targetStorage: vm.storage,
        guard: { name: n.name },
      }),
    (upid) => pveWait.pveWaitForTask({ host: vm.host, upid }),
  );
  if (migrated.outcome) changes.push(`migrated VM ${vm.vmid} (${n.name}) from ${t.node} to ${vm.node}`);
}

/**
 * Grows the VM's boot disk to the inventory's `diskGiB`; no call when it is that size already. A
 * larger disk is kept (PVE does not shrink), and a VM without a disk has nothing to grow.
 */
async function growBootDisk(n: NodePlan, current: VmDetails | null, changes: string[]): Promise<void> {
  const vm = n.vm!;
  const disk = current ? bootDiskKey(current.config) : undefined;
  if (!current || !disk) return;
  const have = diskSizeBytes(current.config[disk]);
  if (have !== undefined && have >= vm.diskGiB * 1024 ** 3) return;
  let resized = false;
  await runPveTask(
    `resize ${disk} of VM ${vm.vmid} (${n.name}) to ${vm.diskGiB}G`,
    async () => {
      const r = await pve.pveResizeDisk({
        host: vm.host,
        node: vm.node,
        vmid: vm.vmid,
        disk,
        sizeGiB: vm.diskGiB,
        guard: { name: n.name },
      });
      resized ||= r.resized;
      return r;
    },
    (upid) => pveWait.pveWaitForTask({ host: vm.host, upid }),
  );
  if (resized) {
    const from = have === undefined ? '' : ` from ${formatSize(have)}`;
    changes.push(`grew ${disk} of VM ${vm.vmid} (${n.name})${from} to ${vm.diskGiB}G`);
  }
}

/** The keys of `desired` that the VM's config does not have yet. */
export function configDiff(current: VmDetails | null, desired: ReturnType<typeof vmConfigFor>): string[] {
  const cfg = current?.config ?? {};
  const want: Record<string, string> = {
    cores: String(desired.cores),
    memory: String(desired.memoryMiB),
    onboot: desired.onboot ? '1' : '0',
    agent: desired.agent,
  };
  for (const [i, v] of Object.entries(desired.net)) want[`net${i}`] = v;
  for (const [i, v] of Object.entries(desired.hostpci ?? {})) want[`hostpci${i}`] = v;
  if (desired.machine) want.machine = desired.machine;
  if (desired.bios) want.bios = desired.bios;
  const diff = Object.entries(want)
    .filter(([k, v]) => String(cfg[k] ?? '').toLowerCase() !== v.toLowerCase())
    .map(([k]) => k);
  const tags = new Set((current?.tags ?? []).map((t) => t.toLowerCase()));
  if (!desired.tags.every((t) => tags.has(t))) diff.push('tags');
  return diff;
}
