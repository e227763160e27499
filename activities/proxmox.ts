/**
 * Proxmox VE activities, one external operation each, on the client of clients/proxmox.ts
 * (`createProxmoxActivities(deps)`: tests hand it clients aimed at the PVE peer).
 *
 * Every activity takes the inventory's host name (`host`) and, where PVE wants one, the PVE node.
 * Long operations return the task's UPID (or `null` when there was nothing to do: already there);
 * `pveWaitForTask` polls a UPID to its end with heartbeats and reports PVE's exit status.
 * A VMID that already exists is a conflict unless the VM there is ours (same name): done; a VM
 * that is already running is a started VM; one already stopped is a stopped VM.
 */
import { Context } from '@temporalio/activity';
import type { ApplicationFailure } from '@temporalio/common';
import { nonRetryable, retryable } from '../common/errors.js';
import { diskSizeBytes, formatSize } from '../common/pve-disks.js';
import type { VmidRange } from '../hardware/schema.js';
import {
  classifyPveError,
  pveCall,
  PveHttpError,
  pveReason,
  type PveClient,
  type ProxmoxDeps,
  type PveReason,
} from '../clients/proxmox.js';

export type { PveReason } from '../clients/proxmox.js';
// ------------------------------------------------------------------ types

/** Where a VM lives: the inventory host (API endpoint) and the PVE node. */
export interface VmRef {
  host: string;
  node: string;
  vmid: number;
}

export interface VmSummary {
  vmid: number;
  name: string;
  node: string;
  status: string;
  template: boolean;
  tags: string[];
  lock?: string;
}

/** A VM's config as PVE returns it, plus its state. */
export interface VmDetails extends VmSummary {
  config: Record<string, string | number>;
}

/** The config keys labwright sets; `extra` takes any other key PVE accepts. */
export interface VmConfigPatch {
  name?: string;
  description?: string;
  /** Replaces the VM's tags (PVE tags: lowercase letters, digits, `_ - + .`). */
  tags?: string[];
  /** `q35`, `pc`, `pc-q35-9.2+pve1`, ... */
  machine?: string;
  bios?: 'seabios' | 'ovmf';
  cores?: number;
  sockets?: number;
  memoryMiB?: number;
  cpu?: string;
  /** `1` or `enabled=1,fstrim_cloned_disks=1` */
  agent?: string;
  onboot?: boolean;
  /** hostpci0..15: `mapping=a5000,pcie=1` or `0000:01:00,pcie=1,x-vga=1` */
  hostpci?: Record<number, string | null>;
  /** Disks by key: `scsi0`, `virtio1`, `efidisk0`... e.g. `local-lvm:vm-201-disk-0,size=64G` */
  disks?: Record<string, string | null>;
  /** net0..: `virtio=BC:24:11:00:02:01,bridge=vmbr0,tag=80` */
  net?: Record<number, string | null>;
  /** ipconfig0.. for cloud-init */
  ipconfig?: Record<number, string | null>;
  extra?: Record<string, string | number | null>;
}

export interface TaskStarted {
  /** The task to wait for; null when nothing needed doing. */
  upid: string | null;
  /** Why no task was started, when `upid` is null. */
  note?: string;
}

/** What `pveResizeDisk` did: a task to wait for (PVE 8), done at once (older PVE), or nothing. */
export interface DiskResize extends TaskStarted {
  /** True when PVE was asked to grow the disk (its task, if any, still to be waited for). */
  resized: boolean;
  /** The disk's size before, as PVE spells it (`8G`), or `unknown` when its config has no size=. */
  from: string;
  /** The size asked for (`64G`). */
  to: string;
}

export interface TaskOutcome {
  upid: string;
  /** `OK`, `WARNINGS: n`, or PVE's error text (`VM is locked (backup)`). */
  exitStatus: string;
  ok: boolean;
  /** What a failed task's exit status means (e.g. `locked`: worth doing again later). */
  reason?: PveReason;
  /** The task log's last lines, for messages. */
  logTail?: string[];
}

export interface GuestInterface {
  name: string;
  mac?: string;
  ipv4: string[];
  ipv6: string[];
}

export interface PciDevice {
  id: string;
  vendor: string;
  device: string;
  vendorName?: string;
  deviceName?: string;
  iommuGroup: number;
  class: string;
  mdev?: boolean;
}

export interface NodeStorage {
  storage: string;
  /** Shared storage (NFS, Ceph, ...): every node reaches the same volumes. */
  shared: boolean;
}

export interface PciMapping {
  id: string;
  description?: string;
  /** Per node: `node=pve1,path=0000:01:00.0,id=10de:2231,iommugroup=14` */
  map: string[];
}

export interface BackupVolume {
  volid: string;
  vmid?: number;
  ctime: number;
  size: number;
  format: string;
  notes?: string;
  protected: boolean;
}

// ---------------------------------------------------------------- helpers

export function splitTags(tags: unknown): string[] {
  return String(tags ?? '')
    .split(/[;,\s]+/)
    .map((t) => t.trim())
    .filter(Boolean);
}

const TAG = /^[a-z0-9_][a-z0-9_+.-]*$/i;

function toSummary(r: {
  vmid?: number;
  name?: string;
  node?: string;
  status?: string;
  template?: number | boolean;
  tags?: string;
  lock?: string;
}): VmSummary {
  return {
    vmid: Number(r.vmid),
    name: r.name ?? '',
    node: r.node ?? '',
    status: r.status ?? 'unknown',
    template: Boolean(Number(r.template ?? 0)),
    tags: splitTags(r.tags),
    ...(r.lock ? { lock: r.lock } : {}),
  };
}

function configParams(patch: VmConfigPatch): { set: Record<string, string | number>; del: string[] } {
  const set: Record<string, string | number> = {};
  const del: string[] = [];
  const put = (key: string, value: string | number | boolean | null | undefined): void => {
    if (value === undefined) return;
    if (value === null) del.push(key);
    else set[key] = typeof value === 'boolean' ? (value ? 1 : 0) : value;
  };
  put('name', patch.name);
  put('description', patch.description);
  if (patch.tags !== undefined) {
    const bad = patch.tags.filter((t) => !TAG.test(t));
    if (bad.length > 0) throw nonRetryable('validation', `invalid PVE tag(s): ${bad.join(', ')}`);
    put('tags', patch.tags.join(';'));
  }
  put('machine', patch.machine);
  put('bios', patch.bios);
  put('cores', patch.cores);
  put('sockets', patch.sockets);
  put('memory', patch.memoryMiB);
  put('cpu', patch.cpu);
  put('agent', patch.agent);
  put('onboot', patch.onboot);
  for (const [i, v] of Object.entries(patch.hostpci ?? {})) put(`hostpci${i}`, v);
  for (const [k, v] of Object.entries(patch.disks ?? {})) {
    if (!/^(ide|sata|scsi|virtio|efidisk|tpmstate|unused)\d+$/.test(k)) {
      throw nonRetryable('validation', `disks.${k}: not a PVE disk key (scsi0, virtio1, efidisk0, ...)`);
    }
    put(k, v);
  }
  for (const [i, v] of Object.entries(patch.net ?? {})) put(`net${i}`, v);
  for (const [i, v] of Object.entries(patch.ipconfig ?? {})) put(`ipconfig${i}`, v);
  for (const [k, v] of Object.entries(patch.extra ?? {})) put(k, v);
  return { set, del };
}

/** The node of a UPID: `UPID:pve1:...` */
export function upidNode(upid: string): string {
  const node = upid.split(':')[1];
  if (!upid.startsWith('UPID:') || !node) throw nonRetryable('validation', `not a PVE task id: ${upid}`);
  return node;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Heartbeats when running as an activity; a no-op when called directly (scripts, tests of pure calls). */
function heartbeat(details: unknown): void {
  let ctx: Context | undefined;
  try {
    ctx = Context.current();
  } catch {
    return;
  }
  ctx.heartbeat(details);
}

/** The activity's cancellation, if it runs as one. */
function cancelled(): Promise<never> | undefined {
  try {
    return Context.current().cancelled;
  } catch {
    return undefined;
  }
}

/** VMs with these names/tags are labwright's to change or delete (guards against touching others). */
export interface Ownership {
  /** The VM's name must equal this. */
  name?: string;
  /** The VM must carry every one of these tags. */
  tags?: string[];
}

function owns(vm: { name: string; tags: string[] }, guard: Ownership): boolean {
  if (guard.name !== undefined && vm.name !== guard.name) return false;
  return (guard.tags ?? []).every((t) => vm.tags.includes(t));
}

function describeGuard(guard: Ownership): string {
  const parts = [];
  if (guard.name !== undefined) parts.push(`name ${guard.name}`);
  if (guard.tags?.length) parts.push(`tags ${guard.tags.join(';')}`);
  return parts.join(' and ');
}

// ------------------------------------------------------------- activities

export function createProxmoxActivities(deps: ProxmoxDeps) {
  const client = (host: string): Promise<PveClient> => deps.clientFor(host);

  /** Config and state of a VM, or null when the node has no such VM. */
  async function getVm(ref: VmRef): Promise<VmDetails | null> {
    const { api } = await client(ref.host);
    const vm = api.nodes.$(ref.node).qemu.$(ref.vmid);
    try {
      const [config, status] = await Promise.all([vm.config.$get(), vm.status.current.$get()]);
      const cfg = config as unknown as Record<string, string | number>;
      return {
        ...toSummary({
          vmid: ref.vmid,
          name: String(cfg.name ?? status.name ?? ''),
          node: ref.node,
          status: status.status,
          template: Boolean(Number(cfg.template ?? status.template ?? 0)),
          tags: String(cfg.tags ?? ''),
          lock: (status.lock ?? cfg.lock) as string | undefined,
        }),
        config: cfg,
      };
    } catch (err) {
      const failure = classifyPveError(err, `VM ${ref.vmid} on ${ref.host}/${ref.node}`);
      if (failure.type === 'NotFoundError') return null;
      throw failure;
    }
  }

  /** Config and state of a VM; NotFoundError, naming `what`, when the node has no such VM. */
  async function existingVm(ref: VmRef, what: string): Promise<VmDetails> {
    const vm = await getVm(ref);
    if (!vm) throw nonRetryable('notFound', `${what}: VM ${ref.vmid} does not exist on ${ref.node}`);
    return vm;
  }

  /** Throws a retryable failure naming the lock when the VM is locked (a backup, a migration). */
  function assertUnlocked(vm: VmDetails, ref: VmRef, what: string): void {
    if (vm.lock) {
      throw retryable('server', `${what}: VM ${ref.vmid} on ${ref.host} is locked (${vm.lock})`, {
        reason: 'locked',
        lock: vm.lock,
      });
    }
  }

  return {
    /** GET one VM's config and state; null when it does not exist. */
    async pveGetVm(ref: VmRef): Promise<VmDetails | null> {
      return getVm(ref);
    },

    /** Every VM and template the host's cluster reports (optionally one node's). */
    async pveListVms(args: { host: string; node?: string }): Promise<VmSummary[]> {
      const { api } = await client(args.host);
      const nodes = deps.nodesOf(args.host);
      const all = await pveCall(`list VMs on ${args.host}`, () => api.cluster.resources.$get({ type: 'vm' }));
      return all
        .filter((r) => r.type === 'qemu')
        .filter((r) => (args.node ? r.node === args.node : nodes.includes(String(r.node))))
        .map((r) => toSummary(r as Parameters<typeof toSummary>[0]))
        .sort((a, b) => a.vmid - b.vmid);
    },

    /** Templates only, optionally those carrying every one of `tags`. */
    async pveListTemplates(args: { host: string; node?: string; tags?: string[] }): Promise<VmSummary[]> {
      const { api } = await client(args.host);
      const nodes = deps.nodesOf(args.host);
      const all = await pveCall(`list templates on ${args.host}`, () => api.cluster.resources.$get({ type: 'vm' }));
      return all
        .filter((r) => r.type === 'qemu' && Number(r.template ?? 0) === 1)
        .filter((r) => (args.node ? r.node === args.node : nodes.includes(String(r.node))))
        .map((r) => toSummary(r as Parameters<typeof toSummary>[0]))
        .filter((vm) => (args.tags ?? []).every((t) => vm.tags.includes(t)))
        .sort((a, b) => a.vmid - b.vmid);
    },

    /**
     * The lowest VMID in `range` that no guest (VM or container) of the cluster uses. Fails with
     * PreconditionFailed when the range is full.
     */
    async pveNextFreeVmid(args: { host: string; range: VmidRange; exclude?: number[] }): Promise<number> {
      const { api } = await client(args.host);
      const all = await pveCall(`list guests on ${args.host}`, () => api.cluster.resources.$get({ type: 'vm' }));
      const used = new Set([...all.map((r) => Number(r.vmid)), ...(args.exclude ?? [])]);
      for (let id = args.range.from; id <= args.range.to; id++) if (!used.has(id)) return id;
      throw nonRetryable(
        'precondition',
        `no free VMID in ${args.range.from}-${args.range.to} on ${args.host}: all ${args.range.to - args.range.from + 1} are taken`,
      );
    },

    /**
     * Clones `vmid` to `newid` (linked from a template unless `full`). Idempotent: when `newid`
     * exists with the same name, nothing is done (upid null); another VM there is a ConflictError.
     */
    async pveClone(
      args: VmRef & {
        newid: number;
        name: string;
        full?: boolean;
        storage?: string;
        pool?: string;
        description?: string;
        target?: string;
      },
    ): Promise<TaskStarted> {
      const what = `clone VM ${args.vmid} to ${args.newid} (${args.name}) on ${args.host}`;
      const existing = await getVm({ host: args.host, node: args.target ?? args.node, vmid: args.newid });
      const conflict = (other: { name: string; node: string }): ApplicationFailure =>
        nonRetryable(
          'conflict',
          `VMID ${args.newid} already exists on ${args.host}/${other.node} as ${other.name || '(no name)'}, not ${args.name}`,
        );
      if (existing) {
        if (existing.name === args.name) return { upid: null, note: `VM ${args.newid} (${args.name}) already exists` };
        throw conflict(existing);
      }
      const { api } = await client(args.host);
      try {
        const upid = await api.nodes.$(args.node).qemu.$(args.vmid).clone.$post({
          newid: args.newid,
          name: args.name,
          full: args.full,
          storage: args.storage,
          pool: args.pool,
          description: args.description,
          target: args.target,
        });
        return { upid };
      } catch (err) {
        const failure = classifyPveError(err, what);
        if (failure.type !== 'ConflictError') throw failure;
        // Another clone got there first: ours is done, anyone else's is a conflict.
        const other = await getVm({ host: args.host, node: args.target ?? args.node, vmid: args.newid });
        if (other?.name === args.name) return { upid: null, note: `VM ${args.newid} (${args.name}) already exists` };
        throw other ? conflict(other) : failure;
      }
    },

    /**
     * Sets config keys (hostpci, machine, bios, disks, network, tags, ...) synchronously; `null`
     * deletes a key. Setting the same values twice is harmless. A locked VM is retried.
     */
    async pveSetConfig(args: VmRef & { config: VmConfigPatch; guard?: Ownership }): Promise<void> {
      const what = `set config of VM ${args.vmid} on ${args.host}`;
      const { set, del } = configParams(args.config);
      if (args.guard) {
        const vm = await getVm(args);
        if (!vm) throw nonRetryable('notFound', `${what}: VM ${args.vmid} does not exist`);
        if (!owns(vm, args.guard)) {
          throw nonRetryable('conflict', `${what}: VM ${args.vmid} is ${vm.name}, not ${describeGuard(args.guard)}`);
        }
        assertUnlocked(vm, args, what);
      }
      const { api } = await client(args.host);
      await pveCall(what, () =>
        api.nodes
          .$(args.node)
          .qemu.$(args.vmid)
          .config.$put({ ...set, ...(del.length > 0 ? { delete: del.join(',') } : {}) } as never),
      );
    },

    /**
     * Grows a disk to `sizeGiB` GiB (PUT .../resize with an absolute size, `64G`). PVE refuses to
     * shrink, so the size is read from the VM's config first: a disk already that size or larger
     * is left as it is (upid null, `resized` false, a note saying why). PVE 8 answers with a
     * task's UPID to wait for; older PVE resizes synchronously and answers null (upid null,
     * `resized` true). PVE's own refusal to shrink (the disk grew in between) leaves it as it is
     * too. A locked VM is retried; `guard` refuses a VM that is not ours.
     */
    async pveResizeDisk(args: VmRef & { disk: string; sizeGiB: number; guard?: Ownership }): Promise<DiskResize> {
      const to = `${args.sizeGiB}G`;
      const what = `resize ${args.disk} of VM ${args.vmid} on ${args.host} to ${to}`;
      if (!Number.isInteger(args.sizeGiB) || args.sizeGiB < 1) {
        throw nonRetryable('validation', `${what}: sizeGiB must be a positive whole number`);
      }
      if (!/^(ide|sata|scsi|virtio)\d+$/.test(args.disk)) {
        throw nonRetryable('validation', `${what}: ${args.disk} is not a PVE disk key (scsi0, virtio0, ...)`);
      }
      const vm = await existingVm(args, what);
      if (args.guard && !owns(vm, args.guard)) {
        throw nonRetryable('conflict', `${what}: VM ${args.vmid} is ${vm.name}, not ${describeGuard(args.guard)}`);
      }
      const value = vm.config[args.disk];
      if (value === undefined) throw nonRetryable('notFound', `${what}: VM ${args.vmid} has no disk ${args.disk}`);
      const have = diskSizeBytes(value);
      const from = have === undefined ? 'unknown' : formatSize(have);
      if (have !== undefined && have >= args.sizeGiB * 1024 ** 3) {
        const note =
          have === args.sizeGiB * 1024 ** 3
            ? `${args.disk} of VM ${args.vmid} is already ${to}`
            : `${args.disk} of VM ${args.vmid} is ${from}, larger than ${to}; PVE does not shrink disks: left as it is`;
        return { upid: null, note, resized: false, from, to };
      }
      assertUnlocked(vm, args, what);
      const { api } = await client(args.host);
      let answer: unknown;
      try {
        answer = await api.nodes
          .$(args.node)
          .qemu.$(args.vmid)
          .resize.$put({ disk: args.disk as never, size: to });
      } catch (err) {
        // Grown past `to` since the config was read: PVE refuses to shrink, and that is fine.
        if (err instanceof PveHttpError && /shrink|skrink/i.test(err.reason)) {
          return { upid: null, note: `${what}: PVE refuses: ${err.reason}; left as it is`, resized: false, from, to };
        }
        throw classifyPveError(err, what);
      }
      if (typeof answer === 'string' && answer.startsWith('UPID:')) return { upid: answer, resized: true, from, to };
      return {
        upid: null,
        note: `${args.disk} of VM ${args.vmid} grown from ${from} to ${to}`,
        resized: true,
        from,
        to,
      };
    },

    /** Starts a VM; a running VM is left as it is (upid null). */
    async pveStart(args: VmRef): Promise<TaskStarted> {
      const what = `start VM ${args.vmid} on ${args.host}`;
      const vm = await existingVm(args, what);
      if (vm.status === 'running') return { upid: null, note: `VM ${args.vmid} is already running` };
      const { api } = await client(args.host);
      try {
        return { upid: await api.nodes.$(args.node).qemu.$(args.vmid).status.start.$post() };
      } catch (err) {
        const failure = classifyPveError(err, what);
        if (err instanceof PveHttpError && pveReason(err.reason) === 'already-running') {
          return { upid: null, note: `VM ${args.vmid} is already running` };
        }
        throw failure;
      }
    },

    /** Stops a VM at once (power off); a stopped VM is left as it is. */
    async pveStop(args: VmRef & { skiplock?: boolean }): Promise<TaskStarted> {
      const what = `stop VM ${args.vmid} on ${args.host}`;
      const vm = await existingVm(args, what);
      if (vm.status === 'stopped') return { upid: null, note: `VM ${args.vmid} is already stopped` };
      const { api } = await client(args.host);
      return {
        upid: await pveCall(what, () =>
          api.nodes.$(args.node).qemu.$(args.vmid).status.stop.$post({ skiplock: args.skiplock }),
        ),
      };
    },

    /**
     * Asks the guest to shut down (ACPI); PVE's task fails with `VM quit/powerdown failed - got
     * timeout` after `timeoutSeconds` unless `forceStop`. A stopped VM is left as it is.
     */
    async pveShutdown(args: VmRef & { timeoutSeconds?: number; forceStop?: boolean }): Promise<TaskStarted> {
      const what = `shut down VM ${args.vmid} on ${args.host}`;
      const vm = await existingVm(args, what);
      if (vm.status === 'stopped') return { upid: null, note: `VM ${args.vmid} is already stopped` };
      const { api } = await client(args.host);
      return {
        upid: await pveCall(what, () =>
          api.nodes
            .$(args.node)
            .qemu.$(args.vmid)
            .status.shutdown.$post({ timeout: args.timeoutSeconds, forceStop: args.forceStop }),
        ),
      };
    },

    /**
     * Polls a task until it stops, heartbeating its state, and reports PVE's exit status. A task
     * that ended in an error is an outcome, not a thrown failure: the caller decides what
     * `VM is locked (backup)` or `already running` means for it (see common/pve-tasks.ts).
     */
    async pveWaitForTask(args: { host: string; upid: string; pollMs?: number }): Promise<TaskOutcome> {
      const node = upidNode(args.upid);
      const { api } = await client(args.host);
      const task = api.nodes.$(node).tasks.$(args.upid);
      const pollMs = args.pollMs ?? 1000;
      const stop = cancelled();
      let polls = 0;
      for (;;) {
        const status = await pveCall(`task ${args.upid} on ${args.host}`, () => task.status.$get());
        heartbeat({ upid: args.upid, status: status.status, polls });
        if (status.status === 'stopped') {
          const exitStatus = String(status.exitstatus ?? 'unknown');
          const ok = exitStatus === 'OK' || exitStatus.startsWith('WARNINGS');
          let logTail: string[] | undefined;
          if (!ok) {
            const log = await pveCall(`log of task ${args.upid}`, () => task.log.$get({ start: 0, limit: 500 })).catch(
              () => [],
            );
            logTail = (log as Array<{ t?: string }>).slice(-5).map((l) => String(l.t ?? ''));
          }
          return { upid: args.upid, exitStatus, ok, ...(ok ? {} : { reason: pveReason(exitStatus), logTail }) };
        }
        polls++;
        await (stop ? Promise.race([sleep(pollMs), stop]) : sleep(pollMs));
      }
    },

    /** The guest agent's view of the VM's network interfaces (fails while the agent is not up). */
    async pveAgentInterfaces(args: VmRef): Promise<GuestInterface[]> {
      const { api } = await client(args.host);
      const answer = await pveCall(`guest agent of VM ${args.vmid} on ${args.host}`, () =>
        api.nodes.$(args.node).qemu.$(args.vmid).agent['network-get-interfaces'].$get(),
      );
      const result = ((answer as { result?: unknown }).result ?? []) as Array<{
        name: string;
        'hardware-address'?: string;
        'ip-addresses'?: Array<{ 'ip-address': string; 'ip-address-type': string }>;
      }>;
      return result.map((i) => ({
        name: i.name,
        ...(i['hardware-address'] ? { mac: i['hardware-address'] } : {}),
        ipv4: (i['ip-addresses'] ?? []).filter((a) => a['ip-address-type'] === 'ipv4').map((a) => a['ip-address']),
        ipv6: (i['ip-addresses'] ?? []).filter((a) => a['ip-address-type'] === 'ipv6').map((a) => a['ip-address']),
      }));
    },

    /**
     * Waits until the guest agent answers with a non-loopback IPv4 address (`anyAnswer`: until it
     * answers at all, for an isolated VM that gets no address), heartbeating. Gives up with a
     * retryable TimeoutError after `timeoutSeconds`.
     */
    async pveWaitForAgent(
      args: VmRef & { timeoutSeconds: number; pollMs?: number; anyAnswer?: boolean },
    ): Promise<GuestInterface[]> {
      const { api } = await client(args.host);
      const deadline = Date.now() + args.timeoutSeconds * 1000;
      const stop = cancelled();
      let last = 'no answer yet';
      for (;;) {
        try {
          const answer = (await api.nodes.$(args.node).qemu.$(args.vmid).agent['network-get-interfaces'].$get()) as {
            result?: Array<{
              name: string;
              'hardware-address'?: string;
              'ip-addresses'?: Array<Record<string, string>>;
            }>;
          };
          const ifaces = (answer.result ?? []).map((i) => ({
            name: i.name,
            ...(i['hardware-address'] ? { mac: i['hardware-address'] } : {}),
            ipv4: (i['ip-addresses'] ?? []).filter((a) => a['ip-address-type'] === 'ipv4').map((a) => a['ip-address']!),
            ipv6: (i['ip-addresses'] ?? []).filter((a) => a['ip-address-type'] === 'ipv6').map((a) => a['ip-address']!),
          }));
          if (args.anyAnswer) return ifaces;
          if (ifaces.some((i) => i.name !== 'lo' && i.ipv4.some((a) => !a.startsWith('127.')))) return ifaces;
          last = 'the agent answers but reports no IPv4 address yet';
        } catch (err) {
          const failure = classifyPveError(err, `guest agent of VM ${args.vmid}`);
          if (failure.type === 'NotFoundError') throw failure;
          last = failure.message;
        }
        heartbeat({ vmid: args.vmid, waiting: last });
        if (Date.now() > deadline) {
          throw retryable(
            'timeout',
            `guest agent of VM ${args.vmid} on ${args.host} did not answer within ${args.timeoutSeconds}s: ${last}`,
          );
        }
        await (stop ? Promise.race([sleep(args.pollMs ?? 1000), stop]) : sleep(args.pollMs ?? 1000));
      }
    },

    /**
     * PCI devices of a node (GPUs and their IOMMU groups), with PVE's default class filter: no
     * memory controllers, bridges or processors (`05;06;0b`), which share a GPU's IOMMU group
     * without being passed through.
     */
    async pvePciDevices(args: { host: string; node: string }): Promise<PciDevice[]> {
      const { api } = await client(args.host);
      const list = await pveCall(`PCI devices of ${args.host}/${args.node}`, () =>
        api.nodes.$(args.node).hardware.pci.$get(),
      );
      return list.map((d) => ({
        id: String(d.id),
        vendor: String(d.vendor),
        device: String(d.device),
        ...(d.vendor_name ? { vendorName: String(d.vendor_name) } : {}),
        ...(d.device_name ? { deviceName: String(d.device_name) } : {}),
        iommuGroup: Number(d.iommugroup),
        class: String(d.class),
        ...(d.mdev !== undefined ? { mdev: Boolean(d.mdev) } : {}),
      }));
    },

    /** The storages a node sees, and which of them are shared (a clone to another node needs that). */
    async pveNodeStorages(args: { host: string; node: string }): Promise<NodeStorage[]> {
      const { api } = await client(args.host);
      const list = await pveCall(`storages of ${args.host}/${args.node}`, () => api.nodes.$(args.node).storage.$get());
      return list
        .map((st) => ({ storage: String(st.storage), shared: Boolean(Number(st.shared ?? 0)) }))
        .sort((a, b) => a.storage.localeCompare(b.storage));
    },

    /** Datacenter PCI resource mappings (Datacenter > Resource Mappings). */
    async pvePciMappings(args: { host: string }): Promise<PciMapping[]> {
      const { api } = await client(args.host);
      const list = await pveCall(`PCI mappings on ${args.host}`, () => api.cluster.mapping.pci.$get());
      return list.map((m) => ({
        id: String(m.id),
        ...(m.description ? { description: String(m.description) } : {}),
        map: (Array.isArray(m.map) ? m.map : [m.map]).map(String),
      }));
    },

    /** Backup archives on a storage, optionally of one VM, newest first. */
    async pveListBackups(args: {
      host: string;
      node: string;
      storage: string;
      vmid?: number;
    }): Promise<BackupVolume[]> {
      const { api } = await client(args.host);
      const list = await pveCall(`backups on ${args.host}/${args.storage}`, () =>
        api.nodes.$(args.node).storage.$(args.storage).content.$get({ content: 'backup', vmid: args.vmid }),
      );
      return list
        .map((v) => ({
          volid: v.volid,
          ...(v.vmid !== undefined ? { vmid: Number(v.vmid) } : {}),
          ctime: Number(v.ctime ?? 0),
          size: Number(v.size ?? 0),
          format: String(v.format),
          ...(v.notes ? { notes: String(v.notes) } : {}),
          protected: Boolean(v.protected),
        }))
        .sort((a, b) => b.ctime - a.ctime);
    },

    /**
     * Restores a backup archive to `vmid` (qmrestore). Idempotent: a VM already at `vmid` with
     * the expected name counts as restored (upid null); any other VM there is a ConflictError.
     */
    async pveRestore(
      args: VmRef & {
        archive: string;
        name: string;
        storage?: string;
        unique?: boolean;
        start?: boolean;
        /**
         * Restore over the existing VM `over` (PVE's force=1): it keeps its VMID and with it its
         * backup jobs, replication and HA resource, which deleting it with purge would drop.
         */
        over?: Ownership;
      },
    ): Promise<TaskStarted> {
      const what = `restore ${args.archive} to VM ${args.vmid} on ${args.host}`;
      const existing = await getVm(args);
      if (existing && args.over) {
        if (!owns(existing, args.over)) {
          throw nonRetryable(
            'conflict',
            `${what}: VM ${args.vmid} is ${existing.name}, not ${describeGuard(args.over)}`,
          );
        }
        if (existing.status === 'running') {
          throw nonRetryable('precondition', `${what}: VM ${args.vmid} is running; stop it first`);
        }
        assertUnlocked(existing, args, what);
      } else if (existing) {
        if (existing.name === args.name) return { upid: null, note: `VM ${args.vmid} (${args.name}) already exists` };
        throw nonRetryable('conflict', `${what}: VMID ${args.vmid} already exists as ${existing.name}`);
      }
      const { api } = await client(args.host);
      return {
        upid: await pveCall(what, () =>
          api.nodes.$(args.node).qemu.$post({
            vmid: args.vmid,
            archive: args.archive,
            storage: args.storage,
            unique: args.unique,
            start: args.start,
            ...(existing && args.over ? { force: true } : {}),
            // PVE restores the name from the archive; set it so the idempotency check above holds.
            name: args.name,
          } as never),
        ),
      };
    },

    /** Turns a stopped VM into a template; a template is left as it is. */
    async pveConvertToTemplate(args: VmRef & { guard?: Ownership }): Promise<TaskStarted> {
      const what = `convert VM ${args.vmid} on ${args.host} to a template`;
      const vm = await getVm(args);
      if (!vm) throw nonRetryable('notFound', `${what}: VM ${args.vmid} does not exist`);
      if (args.guard && !owns(vm, args.guard)) {
        throw nonRetryable('conflict', `${what}: VM ${args.vmid} is ${vm.name}, not ${describeGuard(args.guard)}`);
      }
      if (vm.template) return { upid: null, note: `VM ${args.vmid} is already a template` };
      if (vm.status === 'running') throw nonRetryable('precondition', `${what}: VM ${args.vmid} is running`);
      assertUnlocked(vm, args, what);
      const { api } = await client(args.host);
      return { upid: await pveCall(what, () => api.nodes.$(args.node).qemu.$(args.vmid).template.$post()) };
    },

    /**
     * Moves a stopped VM to PVE node `target`, its local disks onto `targetStorage` there (PVE
     * copies them: `with-local-disks`, `targetstorage`). A VM already on `target` under the
     * guard's name is done (upid null); `guard` refuses a VM that is not ours; a running VM is a
     * PreconditionFailed (labwright migrates only VMs it has just cloned, offline).
     */
    async pveMigrateVm(
      args: VmRef & { target: string; targetStorage: string; guard?: Ownership },
    ): Promise<TaskStarted> {
      const what = `migrate VM ${args.vmid} on ${args.host} from ${args.node} to ${args.target}`;
      const there = await getVm({ host: args.host, node: args.target, vmid: args.vmid });
      const vm = there ?? (await existingVm(args, what));
      if (args.guard && !owns(vm, args.guard)) {
        throw nonRetryable('conflict', `${what}: VM ${args.vmid} is ${vm.name}, not ${describeGuard(args.guard)}`);
      }
      if (there) return { upid: null, note: `VM ${args.vmid} is already on ${args.target}` };
      if (vm.status === 'running') throw nonRetryable('precondition', `${what}: VM ${args.vmid} is running`);
      assertUnlocked(vm, args, what);
      const { api } = await client(args.host);
      return {
        upid: await pveCall(what, () =>
          api.nodes.$(args.node).qemu.$(args.vmid).migrate.$post({
            target: args.target,
            targetstorage: args.targetStorage,
            'with-local-disks': true,
          }),
        ),
      };
    },

    /**
     * Destroys a stopped VM or template and its disks. A VM that is gone already is done (upid
     * null); `guard` refuses (ConflictError) to touch a VM that is not ours; a locked one is retried.
     */
    async pveDelete(args: VmRef & { guard?: Ownership; purge?: boolean }): Promise<TaskStarted> {
      const what = `delete VM ${args.vmid} on ${args.host}`;
      const vm = await getVm(args);
      if (!vm) return { upid: null, note: `VM ${args.vmid} does not exist` };
      if (args.guard && !owns(vm, args.guard)) {
        throw nonRetryable('conflict', `${what}: VM ${args.vmid} is ${vm.name}, not ${describeGuard(args.guard)}`);
      }
      if (vm.status === 'running')
        throw nonRetryable('precondition', `${what}: VM ${args.vmid} is running; stop it first`);
      assertUnlocked(vm, args, what);
      const { api } = await client(args.host);
      return {
        upid: await pveCall(what, () =>
          api.nodes
            .$(args.node)
            .qemu.$(args.vmid)
            .$delete({ purge: args.purge ?? true, 'destroy-unreferenced-disks': true }),
        ),
      };
    },

    /**
     * Which of `templates` have linked clones: a linked clone's disk is a child of the template's
     * base volume (`base-9001-disk-0/vm-201-disk-0`). Returns template VMID -> clone VMIDs.
     */
    async pveLinkedClones(args: { host: string; templates: number[] }): Promise<Record<number, number[]>> {
      const { api } = await client(args.host);
      const nodes = deps.nodesOf(args.host);
      const all = await pveCall(`list VMs on ${args.host}`, () => api.cluster.resources.$get({ type: 'vm' }));
      const wanted = new Set(args.templates);
      const users: Record<number, number[]> = Object.fromEntries(args.templates.map((t) => [t, []]));
      for (const r of all) {
        if (r.type !== 'qemu' || !nodes.includes(String(r.node)) || wanted.has(Number(r.vmid))) continue;
        const config = (await pveCall(`config of VM ${r.vmid}`, () =>
          api.nodes.$(String(r.node)).qemu.$(Number(r.vmid)).config.$get(),
        )) as unknown as Record<string, unknown>;
        for (const [key, value] of Object.entries(config)) {
          if (!/^(ide|sata|scsi|virtio|efidisk|tpmstate|unused)\d+$/.test(key)) continue;
          for (const m of String(value).matchAll(/base-(\d+)-disk-\d+/g)) {
            const base = Number(m[1]);
            if (wanted.has(base) && !users[base]!.includes(Number(r.vmid))) users[base]!.push(Number(r.vmid));
          }
        }
      }
      return users;
    },
  };
}

export type ProxmoxActivities = ReturnType<typeof createProxmoxActivities>;
