/** Step 7 of a DR restore: what a drill made, removed newest first, whatever happened before. */
import type { TaskOutcome } from '../../activities/proxmox.js';
import { runPveTask } from '../../common/pve-tasks.js';
import { causeMessage, type DrContext, type Made } from './context.js';

/** Removes everything in `ctx.made`, newest first; each line says what happened (`LEFT ...`: it could not). */
export async function removeMade(ctx: DrContext): Promise<string[]> {
  const cleanedUp: string[] = [];
  for (const m of [...ctx.made].reverse()) cleanedUp.push(await remove(ctx, m));
  return cleanedUp;
}

async function remove(ctx: DrContext, m: Made): Promise<string> {
  const { talos, kube, pve, pveWait } = ctx.act;
  try {
    if (m.kind === 'talos') {
      const r = await talos.talosForgetScratchCluster({ cluster: m.cluster });
      return `Talos secrets and configs ${r.removed}`;
    }
    if (m.kind === 'k8s') {
      const r = await kube.k8sDeleteObject({
        kubeconfig: ctx.kubeconfig,
        apiVersion: m.apiVersion,
        kind: m.k8sKind,
        ...(m.namespace ? { namespace: m.namespace } : {}),
        name: m.name,
      });
      return `${m.k8sKind} ${m.namespace ? `${m.namespace}/` : ''}${m.name}${r.deleted ? '' : ' (gone already)'}`;
    }
    const ref = { host: m.host, node: m.node, vmid: m.vmid };
    const wait = (upid: string): Promise<TaskOutcome> => pveWait.pveWaitForTask({ host: m.host, upid });
    const vm = await pve.pveGetVm(ref);
    if (!vm) return `VM ${m.vmid} (gone already)`;
    if (vm.name !== m.name) return `LEFT VM ${m.vmid}: it is ${vm.name}, not ${m.name}`;
    if (vm.status !== 'stopped') await runPveTask(`stop VM ${m.vmid}`, () => pve.pveStop(ref), wait);
    await runPveTask(`delete VM ${m.vmid}`, () => pve.pveDelete({ ...ref, guard: { name: m.name } }), wait);
    return `VM ${m.vmid} (${m.name})`;
  } catch (err) {
    const what =
      m.kind === 'vm'
        ? `VM ${m.vmid}`
        : m.kind === 'talos'
          ? `Talos secrets talos/${m.cluster}`
          : `${m.k8sKind} ${m.namespace ?? ''}/${m.name}`;
    return `LEFT ${what}: ${causeMessage(err)}`;
  }
}
