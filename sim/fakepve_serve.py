"""Serve fakepve (pinned in scripts/python-peers.txt) for labwright's tests and simulated lab.

fakepve's own command line (`fakepve guests.json`) serves a fake whose faults can only be set from
the guests file before it starts; its runtime switches (`pve.fail()`, `pve.backup()`, config locks,
slow guests) are Python methods for tests that run in the same process. labwright's tests drive it
from Node, in another process, so this launcher fills exactly that gap and nothing else:

- API tokens: `--token-file` holds `user@realm!tokenid=secret` lines (kept off the command line);
- extra cluster nodes: `--nodes pve1,pve2`;
- a control endpoint, `POST /_labwright/control` with a JSON body `{"op": ..., ...}`, that calls
  the fake's own scenario methods. It needs the same API token as the API and is served on the
  same loopback address. The operations are listed in OPS below.

Everything else is fakepve's as shipped (`fakepve.__main__` reads the guests file the same way).
"""

import argparse
import asyncio
import json
import re  # (labwright issue 7) the archive's VMID
import sys

from aiohttp import web

from fakepve import FakePve, qemu, settle
from fakepve.model import FakeVm
from fakepve.model import PveError  # (labwright issue 7) qmrestore's errors
from fakepve.lxc import format_size, parse_size  # (labwright: disk sizes) qemu resize
from fakepve.storage import _is_file  # (labwright issue 12) cloud-init volumes
import time  # (labwright issue 12) cloud-init volumes

# Attributes every VM made after a `vm_defaults` call starts with (start_secs, shutdown_secs, agent, ...).
VM_DEFAULTS = {}
VM_ATTRS = ('start_secs', 'stop_secs', 'shutdown_secs', 'start_error', 'agent', 'agent_hangs', 'acpi')


class DefaultedVm(FakeVm):
    """A FakeVm that starts with VM_DEFAULTS: clones and new VMs pick up the test's slow or agent settings."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for key, value in VM_DEFAULTS.items():
            setattr(self, key, value)


# (labwright issue 17) Added to every API request's answer (the `latency` control operation).
LATENCY = {'ms': 0.0}


@web.middleware
async def injected_latency(request, handler):
    if LATENCY['ms'] > 0 and request.path.startswith('/api2/'):
        await asyncio.sleep(LATENCY['ms'] / 1000)
    return await handler(request)


# fakepve's clone and create build their VMs with qemu.FakeVm.
qemu.FakeVm = DefaultedVm


def vm_view(vm):
    return {'vmid': vm.vmid, 'name': vm.name, 'node': vm.node, 'status': vm.status, 'template': bool(vm.template),
            'lock': vm.lock, 'config': vm.config}


async def control(pve, body):
    op = body.get('op')
    if op == 'fail':
        # A fault on requests whose path ends with `suffix` (or matches a schema template with {}):
        # PVE's catalogued error by name (`error`), or a status and message of your own.
        pve.fail(body['method'], body['suffix'], status=body.get('status'), message=body.get('message'),
                 error=body.get('error'), times=body.get('times'))
        return None
    if op == 'clear_failures':
        pve.failures.clear()
        return None
    if op == 'lock':
        # A lock left on the VM, as an interrupted or running backup, snapshot or clone leaves it.
        pve.snapshot_lock(int(body['vmid']), body.get('lock', 'backup'))
        return None
    if op == 'unlock':
        pve.unlock(int(body['vmid']))
        return None
    if op == 'backup':
        # A vzdump task that holds the lock `backup` for `secs` PVE seconds.
        return await pve.backup(int(body['vmid']), secs=float(body.get('secs', 30)))
    if op == 'vm':
        vm = pve.guest(int(body['vmid']))
        if vm is None:
            raise web.HTTPNotFound(text='no VM {0}'.format(body['vmid']))
        for key in VM_ATTRS:
            if key in body:
                setattr(vm, key, body[key])
        return vm_view(vm)
    if op == 'vm_defaults':
        VM_DEFAULTS.clear()
        VM_DEFAULTS.update((k, v) for k, v in body.get('defaults', {}).items() if k in VM_ATTRS)
        return dict(VM_DEFAULTS)
    if op == 'latency':
        # (labwright issue 17) Every API request answers this many ms later, as a PVE host across a
        # real network and its pveproxy do (benchmarks inject it; 0 switches it off).
        LATENCY['ms'] = float(body['ms'])
        return None
    if op == 'time_scale':
        pve.time_scale = float(body['value'])
        return None
    if op == 'store_backup':
        # A backup archive on a storage, as vzdump leaves it: vzdump-qemu-<vmid>-<time>.vma.zst
        pve.store_file(body['storage'], body['name'], int(body.get('size', 1024 ** 3)), content='backup')
        # (labwright issue 7) the archive's owner VMID (content listings filter by it, as PVE's
        # do) and, when given, its creation time (epoch seconds) for backups of a given age.
        vol = pve.storages[body['storage']]['volumes']['backup/' + body['name']]
        owner = re.match(r'^vzdump-qemu-(\d+)-', body['name'])
        if owner:
            vol['vmid'] = int(owner.group(1))
        if body.get('ctime') is not None:
            vol['ctime'] = int(body['ctime'])
        return None
    if op == 'vms':
        return [vm_view(vm) for vm in pve.vms]
    if op == 'requests':
        return [{'method': m, 'path': p} for m, p, _b in pve.requests]
    if op == 'settle':
        await settle()
        return None
    if op == 'pci_devices':
        # (labwright issue 6) The PCI devices GET /nodes/{node}/hardware/pci lists for one node, in
        # PVE's shape ({id, class, vendor, device, iommugroup, ...}); fakepve has no hardware data.
        PCI_DEVICES[body['node']] = list(body['devices'])
        return None
    if op == 'pci_mappings':
        # (labwright issue 6) The PCI resource mappings GET /cluster/mapping/pci lists.
        PCI_MAPPINGS[:] = list(body['mappings'])
        return None
    if op == 'api_token':
        # (labwright issue 16) Another API token (`user@realm!id`, secret), as `pveum user token add` makes one.
        pve.apitokens[body['tokenid']] = body['secret']
        return None
    if op == 'grant':
        # (labwright issue 16) An ACL entry, as `pveum acl modify <path> --tokens <id> --roles ...` sets it:
        # privileges on a path for a user or token. The first grant ends fakepve's allow-all; root@pam
        # keeps every privilege, as in PVE.
        pve.grant(body['userid'], body['path'], *body['privs'])
        return None
    raise web.HTTPBadRequest(text='unknown op {0!r}'.format(op))


# (labwright issue 11) Backup jobs (/cluster/backup) and replication jobs (/cluster/replication),
# which fakepve leaves to schema samples, held per VMID so that a destroy with `purge` visibly
# removes the VM from them, as PVE does (HA resources are fakepve's own vm.ha_state).
BACKUP_JOBS = {}
REPLICATION_JOBS = {}


# (labwright issue 6) Hardware data fakepve lacks: PCI devices per node and PCI resource mappings,
# set through the control ops `pci_devices` and `pci_mappings`. Until set, fakepve's own synthesised
# sample answers, as before.
PCI_DEVICES = {}
PCI_MAPPINGS = []


class ControlledPve(FakePve):
    def _routes_labwright_pci(self):
        async def devices(values, user):
            if values['node'] in PCI_DEVICES:
                return self._labwright_pci_filter(PCI_DEVICES[values['node']], values)
            return self._complete_or_sample('/nodes/{node}/hardware/pci', values)

        async def mappings(values, user):
            if PCI_MAPPINGS:
                return PCI_MAPPINGS
            return self._complete_or_sample('/cluster/mapping/pci', values)
        return [('GET', '/nodes/{node}/hardware/pci', devices), ('GET', '/cluster/mapping/pci', mappings)]

    def _routes_labwright_resize(self):
        # (labwright: disk sizes) fakepve leaves PUT /nodes/{node}/qemu/{vmid}/resize to its schema
        # sample: it answers with a made-up UPID and changes nothing. Here it grows the disk's size=
        # in a `resize` task (PVE 8 returns the task's UPID) and refuses to shrink, as PVE does.
        async def resize(v, user):
            vm = self.find(v['node'], v['vmid'])
            self._check_lock(vm)
            disk, text = v['disk'], str(v['size'])
            if disk not in vm.config:
                raise PveError(500, "disk '{0}' does not exist".format(disk))
            volume, props = qemu.split_drive(vm.config[disk])
            size = parse_size(props.get('size', '')) or 0
            new = parse_size(text.lstrip('+'))
            new = size + new if text.startswith('+') else new
            if new < size:
                raise PveError(500, 'shrinking disks is not supported')

            async def body():
                vm.config[disk] = qemu.join_drive(volume, dict(props, size=format_size(new)))
            return await self.task(vm.node, 'resize', vm.vmid, user, body, vm=vm)
        return [('PUT', '/nodes/{node}/qemu/{vmid}/resize', resize)]

    async def _labwright_apply_with_cloudinit(self, vm, user, p):
        # (labwright issue 12) A new cloud-init drive, `ide0=<storage>:cloudinit`, as Packer's
        # proxmox builders add one to the template: PVE allocates vm-<vmid>-cloudinit on that
        # storage (which must exist and take images) and writes the drive as a CD-ROM. fakepve
        # stored the request's text as it came.
        made = []
        p = dict(p)
        for key, val in list(p.items()):
            volume = str(val).split(',')[0]
            if re.fullmatch(r'(ide|sata|scsi)\d+', key) and re.fullmatch(r'[^:/\s]+:cloudinit', volume):
                p[key] = self._labwright_cloudinit_drive(vm, user, volume.split(':')[0])
                made.append(p[key].split(',')[0])
        try:
            return await super()._apply_config(vm, user, p)
        except Exception:
            for volid in made:
                self._qm_free(volid)
            raise

    def _labwright_cloudinit_drive(self, vm, user, sid):
        store = self._qm_image_store(sid, user)
        volname = 'vm-{0}-cloudinit'.format(vm.vmid)
        if _is_file(store):
            volname = '{0}/{1}.qcow2'.format(vm.vmid, volname)
        if volname in self._volumes(sid):
            raise PveError(500, "volume '{0}:{1}' already exists".format(sid, volname))
        store.setdefault('volumes', {})[volname] = {
            'content': 'images', 'format': 'qcow2' if _is_file(store) else 'raw', 'size': 4 * 1024 ** 2,
            'vmid': vm.vmid, 'ctime': int(time.time())}
        return '{0}:{1},media=cdrom'.format(sid, volname)

    # ---------------------------------------------------------------- (labwright issue 11) PVE rules
    # Rules of PVE 8/9 that fakepve 0.5.0 forgives and labwright depends on. Each one is PVE's own
    # check with PVE's message (qemu-server's API2/Qemu.pm, pve-manager's API2/Hardware/PCI.pm).

    def _labwright_check_hostpci(self, user, vm, updates, deletes=()):
        # check_hostpci_perm: only root@pam itself may set (or remove) a hostpci that names a raw
        # device; an API token, even root@pam's, may only use a resource mapping.
        if user == 'root@pam':
            return
        current = vm.config if vm is not None else {}
        values = [(k, x) for k, x in updates.items() if re.fullmatch(r'hostpci\d+', k)]
        values += [(k, current[k]) for k in deletes if re.fullmatch(r'hostpci\d+', k) and k in current]
        for key, value in values:
            first = str(value).split(',')[0]
            if not first.startswith('mapping='):
                raise PveError(500, "only root can set '{0}' config for non-mapped devices".format(key))

    async def _apply_config(self, vm, user, p):
        deletes = [k for k in str(p.get('delete', '') or '').split(',') if k]
        self._labwright_check_hostpci(user, vm, p, deletes)
        return await self._labwright_apply_with_cloudinit(vm, user, p)

    async def _qm_clone(self, v, user):
        # clone_vm: a clone to another node (`target`) needs every disk on shared storage (the
        # `storage` given for the clone, else each disk's own); fakepve checks only `storage`.
        node, target = v['node'], v.get('target')
        if target and target not in (node, 'localhost') and not v.get('storage'):
            src = self.find(node, v['vmid'])
            for _key, volume, props in qemu.drives_of(src.config):
                sid = qemu.volume_ref(volume)[0]
                if qemu.is_cdrom(volume, props) or sid is None:
                    continue
                if not self.storages.get(sid, {}).get('shared'):
                    raise PveError(500, "can't clone VM to node '{0}' (VM uses local storage)".format(target))
        return await super()._qm_clone(v, user)

    def _routes_labwright_migrate(self):
        # (labwright issue 11) POST /nodes/{node}/qemu/{vmid}/migrate, which fakepve leaves to its
        # schema sample (a made-up UPID, the VM stays). As qemu-server's migrate_vm and
        # QemuMigrate: the target is another cluster node; a locked VM is refused; a running VM
        # needs `online`, and then its local disks need `with-local-disks`; a stopped VM's local
        # disks are copied (onto `targetstorage` when given, which must take images). A `qmigrate`
        # task holds the lock `migrate`, then the VM lives on the target node.
        async def migrate(v, user):
            node, target = v['node'], v['target']
            if target == node:
                raise PveError(400, 'Parameter verification failed.', {'target': 'target is local node.'})
            self.need_quorum()
            if target not in self.nodes:
                raise PveError(500, "no such cluster node '{0}'".format(target))
            vm = self.find(node, v['vmid'])
            self._check_lock(vm)
            running = vm.status == 'running'
            if running and not v.get('online'):
                raise PveError(500, "can't migrate running VM without --online")
            mapped = v.get('targetstorage')
            if mapped and str(mapped) != '1':
                self._qm_image_store(str(mapped), user)
            local = [(key, volume, props) for key, volume, props in qemu.drives_of(vm.config, skip_cdrom=True)
                     if qemu.volume_ref(volume)[0] and not self.storages.get(qemu.volume_ref(volume)[0], {}).get('shared')]
            if running and local and not v.get('with-local-disks'):
                raise PveError(500, "can't migrate local disk '{0}': can't live migrate attached local disks "
                               'without with-local-disks option'.format(local[0][1]))

            async def body():
                self._qm_lock(vm, 'migrate')
                try:
                    await self.pause(20)
                    for key, volume, props in local:
                        sid, name = qemu.volume_ref(volume)
                        dest = str(mapped) if mapped and str(mapped) != '1' else sid
                        if dest == sid:
                            continue
                        vol = self._volumes(sid).get(name) or {}
                        volid, _ = self._qm_alloc(dest, vm.vmid, vol.get('format'), int(vol.get('size') or 0))
                        self._qm_free(volume)
                        vm.config[key] = qemu.join_drive(volid, props)
                    vm.node = target
                finally:
                    self._qm_lock(vm, None)
                return 'migration finished successfully'
            return await self.task(node, 'qmigrate', vm.vmid, user, body, vm=vm, log=[
                "starting migration of VM {0} to node '{1}'".format(vm.vmid, target)])
        return [('POST', '/nodes/{node}/qemu/{vmid}/migrate', migrate)]

    @staticmethod
    def _labwright_pci_filter(devices, values):
        # GET /nodes/{node}/hardware/pci leaves out the classes of `pci-class-blacklist`
        # (default '05;06;0b': memory controllers, bridges, processors); '' lists everything.
        blacklist = values.get('pci-class-blacklist')
        blacklist = '05;06;0b' if blacklist is None else str(blacklist)
        prefixes = [c.strip().lower() for c in re.split(r'[;,\s]+', blacklist) if c.strip()]
        return [d for d in devices
                if not any(str(d.get('class', '')).lower().replace('0x', '', 1).startswith(c) for c in prefixes)]

    def _routes_labwright_jobs(self):
        # (labwright issue 11) What PVE keeps per VMID outside the VM's config: backup jobs,
        # replication jobs and HA resources, and what destroy and restore do to them.
        async def backup_jobs(v, user):
            return [dict(job, vmid=','.join(str(x) for x in job['vmid'])) for job in BACKUP_JOBS.values()]

        async def add_backup_job(v, user):
            jid = v.get('id') or 'backup-{0:08x}'.format(len(BACKUP_JOBS) + 1)
            if jid in BACKUP_JOBS:
                raise PveError(500, "Job '{0}' already exists".format(jid))
            vmids = [int(x) for x in str(v.get('vmid', '')).split(',') if x]
            BACKUP_JOBS[jid] = {'id': jid, 'type': 'vzdump', 'vmid': vmids, 'storage': v.get('storage'),
                                'schedule': v.get('schedule', '00:00'), 'enabled': 1}
            return None

        async def replication_jobs(v, user):
            return list(REPLICATION_JOBS.values())

        async def add_replication_job(v, user):
            jid = str(v['id'])
            guest = int(jid.split('-')[0])
            if self.guest(guest) is None:
                raise PveError(500, 'guest {0} does not exist'.format(guest))
            REPLICATION_JOBS[jid] = {'id': jid, 'guest': guest, 'target': v['target'], 'type': 'local',
                                     'schedule': v.get('schedule', '*/15'), 'jobnum': int(jid.split('-')[1])}
            return None

        async def ha_resources(v, user):
            return [{'sid': 'vm:{0}'.format(vm.vmid), 'type': 'vm', 'state': vm.ha_state} for vm in self.vms
                    if vm.ha_managed]

        async def add_ha_resource(v, user):
            kind, _, vmid = str(v['sid']).partition(':')
            vm = self.guest(int(vmid or kind))
            if vm is None:
                raise PveError(500, 'unable to find VM {0}'.format(vmid or kind))
            vm.ha_state = v.get('state', 'started')
            return None
        return [('GET', '/cluster/backup', backup_jobs), ('POST', '/cluster/backup', add_backup_job),
                ('GET', '/cluster/replication', replication_jobs),
                ('POST', '/cluster/replication', add_replication_job),
                ('GET', '/cluster/ha/resources', ha_resources), ('POST', '/cluster/ha/resources', add_ha_resource)]

    async def _qm_destroy(self, v, user):
        # (labwright issue 11) PVE keeps a VM used by replication jobs unless `purge` is set; with
        # it, the VMID leaves every backup job and its replication jobs are removed (HA: fakepve).
        vmid = int(v['vmid'])
        if not v.get('purge') and any(j['guest'] == vmid for j in REPLICATION_JOBS.values()):
            raise PveError(500, "unable to remove VM {0} - There are replication jobs for guest '{0}' - "
                           'please remove them first.'.format(vmid))
        upid = await super()._qm_destroy(v, user)
        if v.get('purge'):
            for job in BACKUP_JOBS.values():
                job['vmid'] = [x for x in job['vmid'] if x != vmid]
            for jid in [j for j, job in REPLICATION_JOBS.items() if job['guest'] == vmid]:
                del REPLICATION_JOBS[jid]
        return upid

    def _complete_or_sample(self, template, values):
        from fakepve import schema as pve_schema, shapes
        returns = pve_schema.load().paths[template]['GET'].get('returns') or {}
        return shapes.build(template, returns, self._sample_context(values), 'GET')

    async def _qm_create(self, v, user):
        # (labwright issue 7) qmrestore: fakepve refuses `archive`. A restore here needs the
        # archive (a `store_backup` volume) on its storage and a free VMID; it makes a stopped VM
        # with the config of the VM the archive was taken of (when that VM still exists), the
        # given name and config keys, locked `create` while its `qmrestore` task runs.
        archive = v.get('archive')
        self._labwright_check_hostpci(user, None, v)  # (labwright issue 11)
        if not archive:
            return await super()._qm_create(v, user)
        node, vmid = v['node'], int(v['vmid'])
        sid, _, volname = str(archive).partition(':')
        emsg = 'unable to restore VM {0} -'.format(vmid)
        if sid not in self.storages or volname not in self._volumes(sid):
            raise PveError(500, "{0} can't find archive '{1}'".format(emsg, archive))
        if self._qm_taken(vmid) and v.get('force'):
            return await self._qm_restore_over(v, user, archive, emsg)
        if self._qm_taken(vmid):
            other = self.guest(vmid)
            raise PveError(500, "{0} VM {1} already exists on node '{2}'".format(emsg, vmid, other.node))
        owner = re.match(r'^backup/vzdump-qemu-(\d+)-', volname)
        source = self.vm(int(owner.group(1))) if owner else None
        conf = dict((k, x) for k, x in (source.config if source else {}).items() if k not in ('lock', 'name'))
        conf.update((k, x) for k, x in v.items() if k not in qemu.CREATE_ONLY)
        vm = qemu.FakeVm(vmid, conf.get('name') or 'VM {0}'.format(vmid), node=node)
        vm.config = conf
        self._qm_lock(vm, 'create')
        self.vms.append(vm)

        async def body():
            vm.name = conf.get('name') or vm.name
            self._qm_lock(vm, None)
            return 'restored {0} to VM {1}'.format(archive, vmid)
        return await self.task(node, 'qmrestore', vmid, user, body, vm=vm)

    async def _qm_restore_over(self, v, user, archive, emsg):
        # (labwright issue 11) qmrestore with force=1 over an existing VM, as PVE does it: refused
        # for a protected or running VM; the VM keeps its VMID and with it its backup jobs,
        # replication jobs (their state reset) and HA resource; the config is the archive's.
        vm = self.find(v['node'], v['vmid'])
        self._qm_check_protection(vm, emsg)
        if vm.status == 'running':
            raise PveError(500, '{0} vm is running'.format(emsg))
        self._check_lock(vm)
        conf = dict((k, x) for k, x in vm.config.items() if k not in ('lock', 'name'))
        conf.update((k, x) for k, x in v.items() if k not in qemu.CREATE_ONLY)
        self._qm_lock(vm, 'create')

        async def body():
            vm.config = conf
            vm.name = conf.get('name') or vm.name
            self._qm_lock(vm, None)
            return 'restored {0} over VM {1}'.format(archive, vm.vmid)
        return await self.task(vm.node, 'qmrestore', vm.vmid, user, body, vm=vm)

    def _build_app(self):
        app = super()._build_app()
        app.middlewares.insert(0, injected_latency)
        # Routes registered after the catch-all still match: it only covers /api2/...
        app.router.add_post('/_labwright/control', self._control)
        return app

    async def _control(self, request):
        # The middleware has authenticated the request (API token or ticket) before it gets here.
        try:
            body = await request.json()
        except ValueError:
            raise web.HTTPBadRequest(text='expected a JSON body') from None
        try:
            return web.json_response({'data': await control(self, body)})
        except (KeyError, TypeError, ValueError) as e:
            raise web.HTTPBadRequest(text='{0}: {1}'.format(type(e).__name__, e)) from None


async def serve(args):
    pve = ControlledPve(user=args.user, password=args.password, host=args.host, port=args.port)
    pve.time_scale = args.time_scale
    for node in filter(None, args.nodes.split(',')):
        pve.add_node(node)
    with open(args.token_file) as fh:
        for line in fh:
            line = line.strip()
            if line:
                tokenid, _, secret = line.partition('=')
                pve.apitokens[tokenid] = secret
    with open(args.guests) as fh:
        for guest in json.load(fh)['guests']:
            vm = pve.add_vm(guest['vmid'], guest['name'], node=guest.get('node', 'pve1'),
                            status=guest.get('status', 'stopped'), config=guest.get('config', {}),
                            template=guest.get('template', False), lock=guest.get('lock'))
            for key in VM_ATTRS:
                if key in guest:
                    setattr(vm, key, guest[key])
    await pve.start(args.cert, args.key)
    print('fakepve listening on {0}'.format(pve.url), flush=True)
    await asyncio.Event().wait()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('guests')
    parser.add_argument('--host', default='127.0.0.1')
    parser.add_argument('--port', type=int, required=True)
    parser.add_argument('--user', default='root@pam')
    parser.add_argument('--password', required=True)
    parser.add_argument('--token-file', required=True)
    parser.add_argument('--nodes', default='pve1')
    parser.add_argument('--time-scale', type=float, default=0.0)
    parser.add_argument('--cert', required=True)
    parser.add_argument('--key', required=True)
    args = parser.parse_args()
    if args.host not in ('127.0.0.1', 'localhost') and not args.host.startswith('127.'):
        sys.exit('fakepve_serve: refusing to listen on {0}: loopback only'.format(args.host))
    try:
        asyncio.run(serve(args))
    except KeyboardInterrupt:
        pass


if __name__ == '__main__':
    main()
