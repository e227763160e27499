/**
 * A VM target: the newest vzdump archive restored, booted, and verified by its guest agent. A
 * drill restores to a free VMID of the drill range, isolated and without passthrough devices; a
 * restore stops the VM and restores over it at its own VMID.
 */
import type { TaskOutcome } from '../../activities/proxmox.js';
import { drillVmName, isolatedNet } from '../../common/dr-restore.js';
import { nonRetryable } from '../../common/errors.js';
import { runPveTask } from '../../common/pve-tasks.js';
import { causeMessage, type CheckedVm, type DrContext, type Restored, type StepDetail } from './context.js';

export async function restoreVm(
  ctx: DrContext,
  c: CheckedVm,
  drillVmid: number | undefined,
  step: StepDetail,
): Promise<Restored> {
  const { input, drill, info } = ctx;
  const { pve, pveWait } = ctx.act;
  const t = c.target;
  const host = t.host;
  const node = t.node;
  const wait = (upid: string): Promise<TaskOutcome> => pveWait.pveWaitForTask({ host, upid });
  const vmid = drill ? drillVmid! : t.vmid;
  const name = drill ? drillVmName(input.plan, t.name) : (c.currentName ?? t.name);
  const ref = { host, node, vmid };
  // In place: the VM is stopped and the archive restored over it (PVE's force), not deleted and
  // recreated: deleting with purge would drop its VMID from backup jobs, replication and HA.
  const over = !drill && c.currentName !== undefined;
  if (over) {
    step(`stopping VM ${vmid} (${c.currentName})`);
    const vm = await pve.pveGetVm(ref);
    if (vm && vm.status !== 'stopped') await runPveTask(`stop VM ${vmid}`, () => pve.pveStop(ref), wait);
  }
  step(`restoring ${c.archive} to VM ${vmid} (${name})`);
  if (drill) ctx.made.push({ kind: 'vm', host, node, vmid, name });
  await runPveTask(
    `restore ${c.archive} to VM ${vmid}`,
    () =>
      pve.pveRestore({
        ...ref,
        archive: c.archive,
        name,
        ...(t.restoreStorage ? { storage: t.restoreStorage } : {}),
        unique: drill,
        ...(over ? { over: { name: c.currentName! } } : {}),
      }),
    wait,
  );
  const restored = await pve.pveGetVm(ref);
  if (!restored) throw nonRetryable('notFound', `VM ${vmid} is missing after its restore`);
  if (drill) {
    // Isolated: every NIC's link down; and no passthrough device (a GPU, a USB stick) the
    // production VM holds, which the drill VM would contend for.
    const net: Record<number, string> = {};
    const hostpci: Record<number, null> = {};
    const usb: Record<string, null> = {};
    for (const [key, value] of Object.entries(restored.config)) {
      const m = /^(net|hostpci|usb)(\d+)$/.exec(key);
      if (m?.[1] === 'net') net[Number(m[2])] = isolatedNet(String(value));
      else if (m?.[1] === 'hostpci') hostpci[Number(m[2])] = null;
      else if (m) usb[key] = null;
    }
    const stripped = [...Object.keys(hostpci).map((i) => `hostpci${i}`), ...Object.keys(usb)];
    step(
      `isolating VM ${vmid}: ${Object.keys(net).length} NIC(s) link down${stripped.length ? `, ${stripped.join(', ')} removed` : ''}`,
    );
    await pve.pveSetConfig({
      ...ref,
      guard: { name },
      config: {
        net,
        ...(Object.keys(hostpci).length ? { hostpci } : {}),
        ...(Object.keys(usb).length ? { extra: usb } : {}),
        onboot: false,
        tags: ['labwright', 'dr-drill'],
        description: `labwright DR drill ${input.plan} (${info.workflowId}); removed when the drill ends`,
      },
    });
  }
  step(`starting VM ${vmid}`);
  await runPveTask(`start VM ${vmid}`, () => pve.pveStart(ref), wait, { okReasons: ['already-running'] });
  step(`waiting for the guest agent of VM ${vmid}`);
  let ifaces;
  try {
    // A drill VM's links are down: a DHCP guest never gets an address, so the agent answering is the proof.
    ifaces = await pveWait.pveWaitForAgent({
      ...ref,
      timeoutSeconds: input.agentTimeoutSeconds,
      ...(drill ? { anyAnswer: true } : {}),
    });
  } catch (err) {
    throw nonRetryable(
      'precondition',
      `VM ${vmid} (${name}) booted but its guest agent did not answer: ${causeMessage(err)}`,
    );
  }
  const addresses = ifaces.filter((i) => i.name !== 'lo').flatMap((i) => i.ipv4);
  return {
    verification: `VM ${vmid} booted, guest agent answers (${addresses.join(', ') || 'no IPv4'})`,
    ...(c.backup.size !== undefined ? { restoredBytes: c.backup.size } : {}),
  };
}
