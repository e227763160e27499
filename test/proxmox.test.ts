/**
 * The Proxmox activities against a real fakepve on loopback (TLS verified with the run's CA,
 * API token from the secret store), called directly: what each returns and how PVE's failures
 * are classified. Heartbeats are no-ops outside a worker; the workflow tests run them in one.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { proxmoxApi } from 'proxmox-api';
import { createProxmoxActivities } from '../activities/proxmox.js';
import { classifyPveError, PveEngine, PveHttpError } from '../clients/proxmox.js';
import { bootDiskKey, diskSizeBytes } from '../common/pve-disks.js';
import { collectArtifacts, parseMachineLine, stepOf } from '../activities/packer.js';
import { activityFailure } from './harness/failures.js';
import { startFakePveLab, type FakePveLab } from './harness/fakepve.js';

let lab: FakePveLab;
let pve: FakePveLab['proxmox'];
const at = { host: 'pve1', node: 'pve1' };

beforeAll(async () => {
  lab = await startFakePveLab({
    guests: [
      {
        vmid: 9000,
        name: 'base',
        template: true,
        config: { scsi0: 'vmdata:9000/base-9000-disk-0.raw,size=4G', tags: 'labwright;image-base' },
      },
      { vmid: 9001, name: 'plain-template', template: true, config: { tags: 'other' } },
      { vmid: 201, name: 'talos-cp-1', status: 'running', config: { agent: 1 }, agent: {} },
      { vmid: 202, name: 'slow', start_secs: 20 },
      { vmid: 203, name: 'broken', start_error: 'QEMU exited with code 1' },
      { vmid: 204, name: 'on-pve2', node: 'pve2' },
    ],
  });
  pve = lab.proxmox;
});
afterAll(async () => {
  await lab?.stop();
});

describe('Proxmox activities on fakepve', () => {
  it('verifies TLS with the configured CA and refuses a certificate it does not vouch for', async () => {
    expect((await pve.pveListVms({ host: 'pve1' })).map((v) => v.vmid)).toEqual([201, 202, 203, 9000, 9001]);
    // The system store does not know the run's CA: verification fails, not retried.
    const engine = new PveEngine({ name: 'pve1', apiUrl: lab.fake.url, token: lab.fake.token });
    const err = await engine.doRequest('GET', '/api2/json/version', '').catch((e: unknown) => e);
    engine.close();
    const classified = classifyPveError(err, 'version of pve1');
    expect(classified.type).toBe('PreconditionFailed');
    expect(classified.message).toMatch(/TLS verification failed/);
    // A wrong token is PVE's 401: not retried.
    const bad = new PveEngine({
      name: 'pve1',
      apiUrl: lab.fake.url,
      token: 'root@pam!labwright=wrong',
      ca: await import('node:fs').then((fs) => fs.readFileSync(lab.fake.caFile)),
    });
    const denied = await bad.doRequest('GET', '/api2/json/version', '').catch((e: unknown) => e);
    bad.close();
    expect(denied).toBeInstanceOf(PveHttpError);
    expect(classifyPveError(denied, 'version').type).toBe('ClientError');
  });

  it('lists VMs per host and node, templates by tag, and the next free VMID in a range', async () => {
    expect((await pve.pveListVms({ host: 'pve2' })).map((v) => v.vmid)).toEqual([204]);
    expect((await pve.pveListTemplates({ host: 'pve1', tags: ['labwright'] })).map((t) => t.vmid)).toEqual([9000]);
    expect(await pve.pveNextFreeVmid({ host: 'pve1', range: { from: 9000, to: 9010 } })).toBe(9002);
    expect(await pve.pveNextFreeVmid({ host: 'pve1', range: { from: 9000, to: 9010 }, exclude: [9002] })).toBe(9003);
    const full = await activityFailure(pve.pveNextFreeVmid({ host: 'pve1', range: { from: 9000, to: 9001 } }));
    expect(full.type).toBe('PreconditionFailed');
    expect(full.message).toContain('no free VMID in 9000-9001');
  });

  it('clones idempotently: the same name again is done, another VM at the VMID is a conflict', async () => {
    const args = { ...at, vmid: 9000, newid: 250, name: 'clone-a' };
    const first = await pve.pveClone(args);
    expect(first.upid).toMatch(/^UPID:pve1:.*:qmclone:/);
    expect(await pve.pveWaitForTask({ host: 'pve1', upid: first.upid! })).toMatchObject({ ok: true, exitStatus: 'OK' });
    expect(await pve.pveClone(args)).toEqual({ upid: null, note: 'VM 250 (clone-a) already exists' });
    const conflict = await activityFailure(pve.pveClone({ ...args, newid: 201, name: 'clone-b' }));
    expect(conflict.type).toBe('ConflictError');
    expect(conflict.nonRetryable).toBe(true);
    expect(conflict.message).toContain('VMID 201 already exists on pve1/pve1 as talos-cp-1, not clone-b');
    // The linked clone is seen as a user of its template's base volume.
    expect(await pve.pveLinkedClones({ host: 'pve1', templates: [9000, 9001] })).toEqual({ 9000: [250], 9001: [] });
  });

  it('sets config (hostpci, machine, bios, disks, network, tags) and reads it back', async () => {
    await pve.pveSetConfig({
      ...at,
      vmid: 250,
      config: {
        machine: 'q35',
        bios: 'ovmf',
        hostpci: { 0: 'mapping=a5000,pcie=1' },
        disks: { efidisk0: 'vmdata:1,efitype=4m' },
        net: { 0: 'virtio=BC:24:11:00:02:50,bridge=vmbr0,tag=80' },
        tags: ['labwright', 'gpu'],
        cores: 4,
        memoryMiB: 8192,
      },
    });
    const vm = await pve.pveGetVm({ ...at, vmid: 250 });
    expect(vm?.config).toMatchObject({ machine: 'q35', bios: 'ovmf', hostpci0: 'mapping=a5000,pcie=1', cores: '4' });
    expect(vm?.tags).toEqual(['labwright', 'gpu']);
    expect(String(vm?.config.net0)).toContain('bridge=vmbr0');
    const bad = await activityFailure(pve.pveSetConfig({ ...at, vmid: 250, config: { tags: ['Not A Tag'] } }));
    expect(bad.type).toBe('ValidationError');
    expect(await pve.pveGetVm({ ...at, vmid: 4242 })).toBeNull();
  });

  it('grows a disk to an absolute size once, and never asks PVE to shrink one', async () => {
    const ref = { ...at, vmid: 250 };
    const resizes = async (): Promise<number> =>
      (await lab.fake.control<Array<{ method: string; path: string }>>({ op: 'requests' })).filter(
        (r) => r.method === 'PUT' && r.path.endsWith('/qemu/250/resize'),
      ).length;
    const config = async (): Promise<Record<string, string | number>> => (await pve.pveGetVm(ref))!.config;
    expect(bootDiskKey(await config())).toBe('scsi0');
    expect(diskSizeBytes((await config()).scsi0)).toBe(4 * 1024 ** 3);

    const grown = await pve.pveResizeDisk({ ...ref, disk: 'scsi0', sizeGiB: 16, guard: { name: 'clone-a' } });
    expect(grown).toMatchObject({ resized: true, from: '4G', to: '16G' });
    // PVE 8 answers with the resize task's UPID (fakepve_serve does, too).
    expect(grown.upid).toMatch(/^UPID:pve1:.*:resize:/);
    expect(await pve.pveWaitForTask({ host: 'pve1', upid: grown.upid! })).toMatchObject({ ok: true });
    expect(String((await config()).scsi0)).toMatch(/(^|,)size=16G(,|$)/);
    expect(await resizes()).toBe(1);

    // The same size again: nothing asked of PVE.
    expect(await pve.pveResizeDisk({ ...ref, disk: 'scsi0', sizeGiB: 16 })).toEqual({
      upid: null,
      note: 'scsi0 of VM 250 is already 16G',
      resized: false,
      from: '16G',
      to: '16G',
    });
    // Smaller: PVE refuses to shrink, so it is not asked; the disk keeps its size.
    const smaller = await pve.pveResizeDisk({ ...ref, disk: 'scsi0', sizeGiB: 8 });
    expect(smaller).toMatchObject({ upid: null, resized: false, from: '16G', to: '8G' });
    expect(smaller.note).toMatch(/larger than 8G; PVE does not shrink disks/);
    expect(await resizes()).toBe(1);
    expect(String((await config()).scsi0)).toMatch(/size=16G/);

    // PVE's own refusal (the disk grew in between) is left as it is, not retried or failed.
    const direct = await lab.fake
      .api('PUT', '/nodes/pve1/qemu/250/resize', { disk: 'scsi0', size: '8G' })
      .catch((e: unknown) => e);
    expect(String(direct)).toMatch(/shrinking disks is not supported/);
    await lab.fake.control({
      op: 'fail',
      method: 'PUT',
      suffix: '/resize',
      status: 500,
      message: 'shrinking disks is not supported',
      times: 1,
    });
    const raced = await pve.pveResizeDisk({ ...ref, disk: 'scsi0', sizeGiB: 32 });
    expect(raced).toMatchObject({ upid: null, resized: false });
    expect(raced.note).toMatch(/PVE refuses: shrinking disks is not supported/);

    // A disk the VM does not have, another VM's name, a key that is no disk: refused.
    expect((await activityFailure(pve.pveResizeDisk({ ...ref, disk: 'scsi5', sizeGiB: 32 }))).type).toBe(
      'NotFoundError',
    );
    expect(
      (await activityFailure(pve.pveResizeDisk({ ...ref, disk: 'scsi0', sizeGiB: 32, guard: { name: 'x' } }))).type,
    ).toBe('ConflictError');
    expect((await activityFailure(pve.pveResizeDisk({ ...ref, disk: 'net0', sizeGiB: 32 }))).type).toBe(
      'ValidationError',
    );
  });

  it('older PVE resizes synchronously (no UPID): the disk counts as grown', async () => {
    const puts: Array<{ path: string; params: unknown }> = [];
    const engine = {
      doRequest(method: string, path: string, _t: string, params?: Record<string, unknown>): Promise<unknown> {
        if (method.toUpperCase() === 'PUT') {
          puts.push({ path, params });
          return Promise.resolve(null);
        }
        if (path.endsWith('/config')) {
          return Promise.resolve({ name: 'old', boot: 'order=virtio0;net0', virtio0: 'local:300/d.qcow2,size=10G' });
        }
        return Promise.resolve({ status: 'stopped', name: 'old' });
      },
    };
    const old = createProxmoxActivities({
      clientFor: (host) => Promise.resolve({ host, api: proxmoxApi(engine) }),
      nodesOf: () => ['pve1'],
    });
    expect(await old.pveResizeDisk({ ...at, vmid: 300, disk: 'virtio0', sizeGiB: 20 })).toEqual({
      upid: null,
      note: 'virtio0 of VM 300 grown from 10G to 20G',
      resized: true,
      from: '10G',
      to: '20G',
    });
    expect(puts).toEqual([{ path: '/api2/json/nodes/pve1/qemu/300/resize', params: { disk: 'virtio0', size: '20G' } }]);
    expect(bootDiskKey({ boot: 'order=virtio0;net0', virtio0: 'x', scsi0: 'y' })).toBe('virtio0');
    expect(bootDiskKey({ ide2: 'local:iso/t.iso,media=cdrom', sata1: 'a,size=1G', scsi0: 'b' })).toBe('sata1');
  });

  it("a locked VM is retryable with PVE's reason; the same call succeeds once the lock is gone", async () => {
    await lab.fake.control({ op: 'lock', vmid: 250, lock: 'backup' });
    // PVE's own answer: HTTP 500 "VM is locked (backup)", classified as transient.
    const raw = await activityFailure(pve.pveSetConfig({ ...at, vmid: 250, config: { description: 'x' } }));
    expect(raw.type).toBe('ServerError');
    expect(raw.nonRetryable).toBe(false);
    expect(raw.message).toBe('set config of VM 250 on pve1: VM is locked (backup)');
    // With an ownership guard the lock is seen before anything is sent.
    const guarded = await activityFailure(pve.pveDelete({ ...at, vmid: 250, guard: { name: 'clone-a' } }));
    expect(guarded.nonRetryable).toBe(false);
    expect(guarded.message).toContain('VM 250 on pve1 is locked (backup)');
    await lab.fake.control({ op: 'unlock', vmid: 250 });
    await pve.pveSetConfig({ ...at, vmid: 250, config: { description: 'x' } });
  });

  it("start treats a running VM as started; a slow start is waited for; a failed start reports PVE's reason", async () => {
    expect(await pve.pveStart({ ...at, vmid: 201 })).toEqual({ upid: null, note: 'VM 201 is already running' });
    await lab.fake.control({ op: 'time_scale', value: 0.05 }); // 20 PVE s = 1 real s
    try {
      const slow = await pve.pveStart({ ...at, vmid: 202 });
      const t0 = Date.now();
      const outcome = await pve.pveWaitForTask({ host: 'pve1', upid: slow.upid!, pollMs: 100 });
      expect(outcome).toMatchObject({ ok: true, exitStatus: 'OK' });
      expect(Date.now() - t0).toBeGreaterThan(700);
      expect((await pve.pveGetVm({ ...at, vmid: 202 }))?.status).toBe('running');
    } finally {
      await lab.fake.control({ op: 'time_scale', value: 0 });
    }
    const broken = await pve.pveStart({ ...at, vmid: 203 });
    const failed = await pve.pveWaitForTask({ host: 'pve1', upid: broken.upid! });
    expect(failed).toMatchObject({ ok: false, exitStatus: 'QEMU exited with code 1', reason: 'other' });
    expect(failed.logTail).toContain('TASK ERROR: QEMU exited with code 1');
  });

  it('stop and shutdown leave a stopped VM alone; delete refuses a VM that is not ours and is idempotent', async () => {
    expect(await pve.pveStop({ ...at, vmid: 203 })).toEqual({ upid: null, note: 'VM 203 is already stopped' });
    const stop = await pve.pveShutdown({ ...at, vmid: 202, timeoutSeconds: 30 });
    expect((await pve.pveWaitForTask({ host: 'pve1', upid: stop.upid! })).ok).toBe(true);
    const refused = await activityFailure(pve.pveDelete({ ...at, vmid: 201, guard: { name: 'clone-a' } }));
    expect(refused.type).toBe('ConflictError');
    const running = await activityFailure(pve.pveDelete({ ...at, vmid: 201 }));
    expect(running.type).toBe('PreconditionFailed');
    const del = await pve.pveDelete({ ...at, vmid: 250, guard: { name: 'clone-a' } });
    expect((await pve.pveWaitForTask({ host: 'pve1', upid: del.upid! })).ok).toBe(true);
    expect(await pve.pveDelete({ ...at, vmid: 250 })).toEqual({ upid: null, note: 'VM 250 does not exist' });
  });

  it('converts to a template once; reads guest-agent interfaces, PCI devices and mappings', async () => {
    const conv = await pve.pveConvertToTemplate({ ...at, vmid: 203 });
    expect((await pve.pveWaitForTask({ host: 'pve1', upid: conv.upid! })).ok).toBe(true);
    expect(await pve.pveConvertToTemplate({ ...at, vmid: 203 })).toEqual({
      upid: null,
      note: 'VM 203 is already a template',
    });
    const ifaces = await pve.pveAgentInterfaces({ ...at, vmid: 201 });
    expect(ifaces.find((i) => i.name === 'eth0')).toMatchObject({ ipv4: ['192.0.2.10'] });
    const noAgent = await activityFailure(pve.pveAgentInterfaces({ ...at, vmid: 204, node: 'pve2' }));
    expect(noAgent.message).toContain('QEMU guest agent is not running');
    expect(noAgent.nonRetryable).toBe(false);
    const pci = await pve.pvePciDevices(at);
    expect(pci[0]).toMatchObject({ iommuGroup: expect.any(Number) as number, vendor: expect.any(String) as string });
    const maps = await pve.pvePciMappings({ host: 'pve1' });
    expect(maps[0]?.map.length).toBeGreaterThan(0);
  });

  it('lists backups newest first and restores one idempotently', async () => {
    await lab.fake.control({
      op: 'store_backup',
      storage: 'unraid-backup',
      name: 'vzdump-qemu-201-2025_01_01-00_00_00.vma.zst',
    });
    await lab.fake.control({
      op: 'store_backup',
      storage: 'unraid-backup',
      name: 'vzdump-qemu-204-2025_01_02-00_00_00.vma.zst',
    });
    const all = await pve.pveListBackups({ ...at, storage: 'unraid-backup' });
    expect(all.map((b) => b.volid)).toEqual(
      expect.arrayContaining([
        'unraid-backup:backup/vzdump-qemu-201-2025_01_01-00_00_00.vma.zst',
        'unraid-backup:backup/vzdump-qemu-204-2025_01_02-00_00_00.vma.zst',
      ]),
    );
    const archive = 'unraid-backup:backup/vzdump-qemu-201-2025_01_01-00_00_00.vma.zst';
    // Restoring over an existing VM with the expected name is done; over another VM, a conflict.
    expect(await pve.pveRestore({ ...at, vmid: 201, archive, name: 'talos-cp-1' })).toMatchObject({ upid: null });
    expect((await activityFailure(pve.pveRestore({ ...at, vmid: 201, archive, name: 'x' }))).type).toBe(
      'ConflictError',
    );
    const restore = await pve.pveRestore({ ...at, vmid: 8901, archive, name: 'drill-201', unique: true });
    expect(restore.upid).toMatch(/:qmrestore:8901:/);
    expect((await pve.pveWaitForTask({ host: 'pve1', upid: restore.upid! })).ok).toBe(true);
    expect((await pve.pveGetVm({ ...at, vmid: 8901 }))?.name).toBe('drill-201');
    expect(await pve.pveRestore({ ...at, vmid: 8901, archive, name: 'drill-201' })).toMatchObject({ upid: null });
    // A missing archive is PVE's own reason, and not worth retrying.
    const missing = await activityFailure(
      pve.pveRestore({ ...at, vmid: 8902, archive: 'unraid-backup:backup/vzdump-qemu-999-x.vma.zst', name: 'y' }),
    );
    expect(missing.type).toBe('NotFoundError');
    expect(missing.message).toContain("can't find archive");
  });

  // (issue 11) Rules PVE enforces and labwright relies on; the peer (sim/fakepve_serve.py) has them.
  it("refuses a raw hostpci to an API token with PVE's message, and takes a resource mapping", async () => {
    await lab.fake.api('POST', '/nodes/pve1/qemu', { vmid: 260, name: 'gpu-vm', memory: 2048 });
    const raw = await activityFailure(
      pve.pveSetConfig({ ...at, vmid: 260, config: { hostpci: { 0: '0000:01:00,pcie=1' } } }),
    );
    expect(raw.type).toBe('ClientError');
    expect(raw.nonRetryable).toBe(true);
    expect(raw.message).toBe(
      "set config of VM 260 on pve1: only root can set 'hostpci0' config for non-mapped devices",
    );
    expect((await pve.pveGetVm({ ...at, vmid: 260 }))?.config.hostpci0).toBeUndefined();
    await pve.pveSetConfig({ ...at, vmid: 260, config: { hostpci: { 0: 'mapping=a5000,pcie=1' } } });
    expect((await pve.pveGetVm({ ...at, vmid: 260 }))?.config.hostpci0).toBe('mapping=a5000,pcie=1');
  });

  it('refuses a clone to another node from local storage, and reports which storages are shared', async () => {
    // Template 9000's disk is on vmdata, a directory storage of one node.
    expect(await pve.pveNodeStorages(at)).toContainEqual({ storage: 'vmdata', shared: false });
    const across = await activityFailure(
      pve.pveClone({ ...at, vmid: 9000, newid: 261, name: 'across', full: true, target: 'pve2' }),
    );
    expect(across.message).toBe(
      "clone VM 9000 to 261 (across) on pve1: can't clone VM to node 'pve2' (VM uses local storage)",
    );
    expect((await lab.fake.vms()).some((v) => v.vmid === 261)).toBe(false);
  });

  it("migrates a stopped VM with its local disk onto the target's storage; a running one only live, with-local-disks", async () => {
    const made = await pve.pveClone({ ...at, vmid: 9000, newid: 262, name: 'moving', full: true, storage: 'vmdata' });
    expect((await pve.pveWaitForTask({ host: 'pve1', upid: made.upid! })).ok).toBe(true);
    // PVE (QemuMigrate): a running VM needs `online`, and then its local disks `with-local-disks`.
    await lab.fake.api('POST', '/nodes/pve1/qemu/262/status/start');
    await expect(lab.fake.api('POST', '/nodes/pve1/qemu/262/migrate', { target: 'pve2' })).rejects.toThrow(
      "can't migrate running VM without --online",
    );
    await expect(lab.fake.api('POST', '/nodes/pve1/qemu/262/migrate', { target: 'pve2', online: 1 })).rejects.toThrow(
      "can't migrate local disk 'vmdata:262/vm-262-disk-0.raw': can't live migrate attached local disks without with-local-disks option",
    );
    const running = await activityFailure(
      pve.pveMigrateVm({ ...at, vmid: 262, target: 'pve2', targetStorage: 'local-lvm', guard: { name: 'moving' } }),
    );
    expect(running.type).toBe('PreconditionFailed');
    await lab.fake.api('POST', '/nodes/pve1/qemu/262/status/stop');
    const moved = await pve.pveMigrateVm({
      ...at,
      vmid: 262,
      target: 'pve2',
      targetStorage: 'local-lvm',
      guard: { name: 'moving' },
    });
    expect((await pve.pveWaitForTask({ host: 'pve1', upid: moved.upid! })).ok).toBe(true);
    const vm = (await lab.fake.vms()).find((v) => v.vmid === 262);
    expect(vm?.node).toBe('pve2');
    expect(String(vm?.config.scsi0)).toMatch(/^local-lvm:vm-262-disk-0,.*size=4G/);
    // Done already: nothing is asked of PVE again.
    expect(
      await pve.pveMigrateVm({
        ...at,
        vmid: 262,
        target: 'pve2',
        targetStorage: 'local-lvm',
        guard: { name: 'moving' },
      }),
    ).toEqual({ upid: null, note: 'VM 262 is already on pve2' });
  });

  it("lists PCI devices with PVE's default class filter: no bridges, unless asked for everything", async () => {
    await lab.fake.control({
      op: 'pci_devices',
      node: 'pve1',
      devices: [
        { id: '0000:00:01.0', class: '0x060400', vendor: '0x1022', device: '0x1483', iommugroup: 2 },
        { id: '0000:01:00.0', class: '0x030000', vendor: '0x10de', device: '0x2231', iommugroup: 2 },
        { id: '0000:01:00.1', class: '0x040300', vendor: '0x10de', device: '0x1aef', iommugroup: 2 },
      ],
    });
    expect((await pve.pvePciDevices(at)).map((d) => d.id)).toEqual(['0000:01:00.0', '0000:01:00.1']);
    const all = await lab.fake.api<Array<{ id: string }>>('GET', '/nodes/pve1/hardware/pci', {
      'pci-class-blacklist': '',
    });
    expect(all.map((d) => d.id)).toContain('0000:00:01.0');
  });
});

describe('packer -machine-readable parsing', () => {
  it('reads steps, escaped commas and artifacts', () => {
    const out = [
      '1795306150,,ui,say,==> proxmox.debian: Waiting for SSH to become available...',
      '1795306150,,ui,message,    proxmox.debian: a%!(PACKER_COMMA) b',
      '1795306151,proxmox.debian,artifact-count,1',
      '1795306151,proxmox.debian,artifact,0,builder-id,proxmox.builder',
      '1795306151,proxmox.debian,artifact,0,id,9003',
      '1795306151,proxmox.debian,artifact,0,string,A template was created: 9003',
      '1795306151,proxmox.debian,artifact,0,end',
      'not a machine line',
    ].map(parseMachineLine);
    expect(out[7]).toBeNull();
    expect(stepOf(out[0]!)).toBe('proxmox.debian: Waiting for SSH to become available...');
    expect(out[1]!.data[1]).toBe('    proxmox.debian: a, b');
    expect(collectArtifacts(out.filter((l) => l !== null))).toEqual([
      { index: 0, builderId: 'proxmox.builder', id: '9003', string: 'A template was created: 9003', files: [] },
    ]);
  });
});
