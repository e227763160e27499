/**
 * packerImageBuild on the real dev server, real Packer (1.8.7 built by scripts/ensure-packer.sh,
 * its proxmox-clone builder logging in with the API token, see packer/proxmox-clone.pkr.hcl) and
 * a real fakepve on loopback.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import type { WorkflowHandle } from '@temporalio/client';
import { ApplicationFailure, CancelledFailure } from '@temporalio/common';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { PackerImageBuildInput, PackerImageBuildResult } from '../common/packer-image-build.js';
import type { Progress } from '../common/progress.js';
import { createPackerActivities } from '../activities/packer.js';
import { projectRoot } from '../lib/paths.js';
import { ensureTool } from '../lib/processes.js';
import { cloudImageSeed, type FakeGuest } from '../sim/proxmox.js';
import { startFakePveLab, type FakePveLab } from './harness/fakepve.js';
import { recordHistory } from './harness/histories.js';
import { workflowFailure } from './harness/failures.js';
import { testClient, uniqueName, withWorker } from './harness/temporal.js';

const TEMPLATE = 'packer/proxmox-clone.pkr.hcl';

/** An older, promoted template of image `retained` built at `month` of 2024. */
function oldTemplate(vmid: number, month: number, image = 'retained'): FakeGuest {
  const built = `2024${String(month).padStart(2, '0')}01t000000`;
  return {
    vmid,
    name: `${image}-old${vmid}`,
    template: true,
    config: {
      scsi0: `vmdata:${vmid}/base-${vmid}-disk-0.raw,size=4G`,
      tags: `labwright;image-${image};sha-old${vmid};built-${built}`,
    },
  };
}

const GUESTS: FakeGuest[] = [
  // What proxmox-clone.pkr.hcl clones.
  cloudImageSeed('vmdata'),
  oldTemplate(9200, 1),
  oldTemplate(9201, 2),
  oldTemplate(9202, 3),
  oldTemplate(9203, 4),
  // A linked clone of 9201: its disk is a child of 9201's base volume.
  {
    vmid: 300,
    name: 'uses-9201',
    config: { scsi0: 'vmdata:9201/base-9201-disk-0.raw/300/vm-300-disk-0.raw,size=4G', tags: 'app' },
  },
  // Another image's template and a hand-made one with the same image tag but not labwright's.
  oldTemplate(9204, 1, 'other'),
  { vmid: 9205, name: 'hand-made', template: true, config: { tags: 'image-retained;built-20230101t000000' } },
];

let lab: FakePveLab;

beforeAll(async () => {
  lab = await startFakePveLab({ guests: GUESTS });
});
afterAll(async () => {
  await lab?.stop();
});

function input(image: string, extra: Partial<PackerImageBuildInput> = {}): PackerImageBuildInput {
  return {
    image,
    template: TEMPLATE,
    variables: { memory_mib: 1024 },
    host: 'pve1',
    node: 'pve1',
    storage: 'vmdata',
    vmidRange: { from: 9100, to: 9149 },
    keep: 2,
    ...extra,
  };
}

/** Packer processes still running a build of `image` (its build folder is in their arguments). */
function packerProcessesFor(image: string): string[] {
  const ps = execFileSync('ps', ['-eo', 'pid,args'], { encoding: 'utf8' });
  return ps.split('\n').filter((l) => l.includes('packer') && l.includes(`/packer/${image}/`));
}

describe('packerImageBuild', () => {
  it('builds, boots a canary through a slow start and shutdown, promotes; the same inputs again build nothing', async () => {
    const client = await testClient();
    const image = uniqueName('deb');
    // Clones answer through the guest agent; starts take 10 PVE s and the guest takes 30 PVE s
    // to power off through ACPI: within the 60 s PVE waits for Packer's shutdown (no timeout
    // given), longer than the canary's 5 s shutdown timeout: that task ends in
    // "VM quit/powerdown failed - got timeout" and the canary is stopped hard.
    await lab.fake.control({ op: 'time_scale', value: 0.1 });
    await lab.fake.control({ op: 'vm_defaults', defaults: { agent: {}, start_secs: 10, shutdown_secs: 30 } });
    try {
      await withWorker({ activities: lab.activities }, async ({ taskQueue }) => {
        const args = input(image, { canary: { agentTimeoutSeconds: 30, shutdownTimeoutSeconds: 5 } });
        const handle = await client.workflow.start('packerImageBuild', {
          taskQueue,
          workflowId: `packer-image-build/${image}`,
          args: [args],
        });
        const first = (await handle.result()) as PackerImageBuildResult;
        expect(first.built).toBe(true);
        expect(first.templateVmid).toBe(9100);
        expect(first.templateName).toBe(`${image}-${first.hash.slice(0, 12)}`);
        expect(first.canary?.vmid).toBe(9101);
        expect(first.canary?.ipv4).toContain('192.0.2.10');

        const vms = await lab.fake.vms();
        const template = vms.find((v) => v.vmid === 9100);
        expect(template?.template).toBe(true);
        expect(String(template?.config.tags).split(';')).toEqual(
          expect.arrayContaining(['labwright', `image-${image}`, `sha-${first.hash.slice(0, 12)}`]),
        );
        expect(vms.find((v) => v.vmid === 9101)).toBeUndefined(); // the canary is gone
        expect(first.canary?.removed).toBe(true);
        // Packer's proxmox-clone builder made it, with the token: a full clone of the cloud image
        // with this build's name, a cloud-init drive, its description, converted to a template.
        expect(template?.name).toBe(first.templateName);
        expect(template?.config.ide0).toBe('vmdata:9100/vm-9100-cloudinit.qcow2,media=cdrom');
        expect(String(template?.config.scsi0)).toContain('base-9100-disk-0');
        const calls = ((await lab.fake.control({ op: 'requests' })) as Array<{ method: string; path: string }>).map(
          (r) => `${r.method} ${r.path.replace('/api2/json', '')}`,
        );
        expect(calls).toEqual(
          expect.arrayContaining([
            'GET /version',
            'POST /nodes/pve1/qemu/8000/clone',
            'POST /nodes/pve1/qemu/9100/config',
            'POST /nodes/pve1/qemu/9100/status/start',
            'POST /nodes/pve1/qemu/9100/status/shutdown',
            'POST /nodes/pve1/qemu/9100/template',
          ]),
        );

        const progress = await handle.query<Progress>('progress');
        const canary = progress.steps.find((s) => s.name === 'canary');
        expect(canary?.status).toBe('done');
        expect(canary?.detail).toContain('VM quit/powerdown failed - got timeout');
        expect(progress.steps.find((s) => s.name === 'packer build')?.detail).toContain('template VMID 9100');
        await recordHistory(handle, 'packer-image-build');

        const creates = async (): Promise<number> =>
          ((await lab.fake.control({ op: 'requests' })) as Array<{ method: string; path: string }>).filter(
            (r) => r.method === 'POST' && r.path === '/api2/json/nodes/pve1/qemu/8000/clone',
          ).length;
        const createsBefore = await creates();
        const second = (await client.workflow.execute('packerImageBuild', {
          taskQueue,
          workflowId: `packer-image-build/${image}`,
          args: [args],
        })) as PackerImageBuildResult;
        expect(second).toMatchObject({ built: false, templateVmid: 9100, hash: first.hash });
        expect(await creates()).toBe(createsBefore);
        const again = await client.workflow.getHandle(`packer-image-build/${image}`).query<Progress>('progress');
        expect(again.steps.find((s) => s.name === 'packer build')?.status).toBe('skipped');
      });
    } finally {
      await lab.fake.control({ op: 'vm_defaults', defaults: {} });
      await lab.fake.control({ op: 'time_scale', value: 0 });
    }
  });

  it('cancelling mid-build interrupts Packer, waits for its cleanup and leaves no VM behind', async () => {
    const client = await testClient();
    const image = uniqueName('cancel');
    await withWorker({ activities: lab.activities }, async ({ taskQueue }) => {
      const handle = await client.workflow.start('packerImageBuild', {
        taskQueue,
        workflowId: `packer-image-build/${image}`,
        args: [input(image, { vmidRange: { from: 9150, to: 9159 }, variables: { build_seconds: '90' } })],
      });
      // Packer has created the VM and is "installing".
      await expect
        .poll(async () => (await lab.fake.vms()).some((v) => v.name.startsWith(image) && !v.template), {
          timeout: 30_000,
          interval: 200,
        })
        .toBe(true);
      expect(packerProcessesFor(image).length).toBeGreaterThan(0);
      const cancelledAt = Date.now();
      await handle.cancel();
      const err = await workflowFailure(handle.result());
      expect(err.cause).toBeInstanceOf(CancelledFailure);
      // Cancellation reaches the activity with its next heartbeat to the server, at most 5 s apart
      // (the worker's maxHeartbeatThrottleInterval), and Packer then cleans up on its own.
      expect(Date.now() - cancelledAt).toBeLessThan(20_000);

      expect(packerProcessesFor(image)).toEqual([]);
      const [buildDir] = await fs.readdir(path.join(lab.packerWorkDir, image));
      const log = await fs.readFile(path.join(lab.packerWorkDir, image, buildDir!, 'packer.log'), 'utf8');
      expect(log).toContain('sending SIGINT');
      // Packer's own words for a clean interrupt, after its cleanup; the install never finished.
      expect(log).toContain('Cleanly cancelled builds after being interrupted');
      expect(log).toMatch(/labwright: packer exited with 1\n/);
      expect(log).not.toContain('Converting VM to template');
      // The proxmox builder's own cleanup removed its VM.
      expect(log).toContain('Deleting VM');
      expect(log).not.toContain('killing it');
      expect((await lab.fake.vms()).filter((v) => v.name.startsWith(image))).toEqual([]);
    });
  });

  it('retention deletes exactly the older unused templates, retrying one locked by a backup', async () => {
    const client = await testClient();
    // 9202 is locked by a backup that has not finished.
    await lab.fake.control({ op: 'lock', vmid: 9202, lock: 'backup' });
    await withWorker({ activities: lab.activities }, async ({ taskQueue }) => {
      const handle: WorkflowHandle = await client.workflow.start('packerImageBuild', {
        taskQueue,
        workflowId: `packer-image-build/retained-${uniqueName('r')}`,
        args: [input('retained', { vmidRange: { from: 9160, to: 9169 }, keep: 2 })],
      });
      // The delete of 9202 fails with PVE's reason and is retried.
      await expect
        .poll(
          async () => {
            const d = await handle.describe();
            const pending = d.raw.pendingActivities?.find((a) => a.activityType?.name === 'pveDelete');
            return (pending?.attempt ?? 0) >= 2 ? pending?.lastFailure?.message : undefined;
          },
          { timeout: 30_000, interval: 250 },
        )
        .toContain('VM 9202 on pve1 is locked (backup)');
      await lab.fake.control({ op: 'unlock', vmid: 9202 });
      const result = (await handle.result()) as PackerImageBuildResult;
      expect(result.retention).toEqual({ kept: [9160, 9203], deleted: [9202, 9200], inUse: [9201] });
      const left = (await lab.fake.vms()).map((v) => v.vmid);
      expect(left).toEqual(expect.arrayContaining([9160, 9203, 9201, 300, 9204, 9205]));
      expect(left).not.toContain(9200);
      expect(left).not.toContain(9202);
    });
  });

  it("a canary whose start task ends in an error fails with PVE's reason and leaves nothing", async () => {
    const client = await testClient();
    const image = uniqueName('broken');
    await lab.fake.control({
      op: 'fail',
      method: 'POST',
      // The canary's start only (Packer starts its build VM, 9170, too).
      suffix: '/nodes/pve1/qemu/9171/status/start',
      error: 'qemu_exited_code',
      times: 1,
    });
    await lab.fake.control({ op: 'vm_defaults', defaults: { agent: {} } });
    try {
      await withWorker({ activities: lab.activities }, async ({ taskQueue }) => {
        const err = await workflowFailure(
          client.workflow.execute('packerImageBuild', {
            taskQueue,
            workflowId: `packer-image-build/${image}`,
            args: [input(image, { vmidRange: { from: 9170, to: 9179 }, canary: { agentTimeoutSeconds: 10 } })],
          }),
        );
        expect(err.cause).toBeInstanceOf(ApplicationFailure);
        const cause = err.cause as ApplicationFailure;
        expect(cause.type).toBe('PreconditionFailed');
        expect(cause.message).toMatch(/start canary 9171: QEMU exited with code 1/);
        expect((await lab.fake.vms()).filter((v) => v.name.startsWith(image) || v.vmid === 9171)).toEqual([]);
      });
    } finally {
      await lab.fake.control({ op: 'clear_failures' });
      await lab.fake.control({ op: 'vm_defaults', defaults: {} });
    }
  });

  it("PVE's passing troubles during Packer's own steps (a 500 on its clone, a lock timeout on its config) are built through again, once each", async () => {
    const client = await testClient();
    const image = uniqueName('flaky');
    // Attempt 1 meets the 500, attempt 2 the lock; attempt 3 builds.
    await lab.fake.control({
      op: 'fail',
      method: 'POST',
      suffix: '/nodes/pve1/qemu/8000/clone',
      status: 500,
      message: 'Internal Server Error',
      times: 1,
    });
    await lab.fake.control({
      op: 'fail',
      method: 'POST',
      suffix: '/nodes/pve1/qemu/9180/config',
      error: 'config_lock_timeout',
      times: 1,
    });
    try {
      await withWorker({ activities: lab.activities }, async ({ taskQueue }) => {
        const handle = await client.workflow.start('packerImageBuild', {
          taskQueue,
          workflowId: `packer-image-build/${image}`,
          args: [input(image, { vmidRange: { from: 9180, to: 9189 } })],
        });
        const result = (await handle.result()) as PackerImageBuildResult;
        expect(result).toMatchObject({ built: true, templateVmid: 9180 });
        const progress = await handle.query<Progress>('progress');
        expect(progress.steps.find((s) => s.name === 'packer build')?.detail).toContain('template VMID 9180');
        const failures = (await handle.fetchHistory()).events!.filter((e) => e.activityTaskFailedEventAttributes);
        const messages = failures.map((e) => e.activityTaskFailedEventAttributes!.failure!.message ?? '');
        expect(messages).toEqual([
          expect.stringMatching(/packer build of .* failed .*500/),
          expect.stringMatching(/packer build of .* failed .*can't lock file/),
        ]);
        const vms = (await lab.fake.vms()).filter(
          (v) => v.name.startsWith(image) || (v.vmid >= 9180 && v.vmid <= 9189),
        );
        expect(vms.map((v) => ({ vmid: v.vmid, template: v.template }))).toEqual([{ vmid: 9180, template: true }]);
      });
    } finally {
      await lab.fake.control({ op: 'clear_failures' });
    }
  });

  it('an invalid image name or VMID range fails at once and touches nothing', async () => {
    const client = await testClient();
    const apiRequests = async (): Promise<number> =>
      ((await lab.fake.control({ op: 'requests' })) as Array<{ path: string }>).filter((r) =>
        r.path.startsWith('/api2/'),
      ).length;
    const requestsBefore = await apiRequests();
    await withWorker({ activities: lab.activities }, async ({ taskQueue }) => {
      const err = await workflowFailure(
        client.workflow.execute('packerImageBuild', {
          taskQueue,
          workflowId: uniqueName('packer-image-build/bad'),
          args: [
            input('Debian_12', {
              vmidRange: { from: 9300, to: 9200 },
              template: 'packer/../etc/passwd.pkr.hcl',
              variables: { vm_id: '1' },
            }),
          ],
        }),
      );
      const cause = err.cause as ApplicationFailure;
      expect(cause.type).toBe('ValidationError');
      expect(cause.nonRetryable).toBe(true);
      expect(cause.message).toContain('image: expected a DNS label');
      expect(cause.message).toContain('vmidRange: from must not be greater than to');
      expect(cause.message).toContain('template: must not contain .. segments');
      expect(cause.message).toContain('variables.vm_id: vm_id is set by labwright');
    });
    expect(await apiRequests()).toBe(requestsBefore);
    await expect(fs.readdir(path.join(lab.packerWorkDir, 'Debian_12'))).rejects.toThrow();
  });

  it('the shipped templates pass packer validate with token login (proxmox-iso and proxmox-clone)', () => {
    const packer = ensureTool('ensure-packer.sh');
    expect(execFileSync(packer, ['version'], { encoding: 'utf8' })).toMatch(/^Packer v1\.8\.7\b/);
    const env = {
      PATH: process.env.PATH,
      HOME: process.env.HOME,
      CHECKPOINT_DISABLE: '1',
      PKR_VAR_vm_id: '9000',
      PKR_VAR_template_name: 'debian-12-0123456789ab',
      PKR_VAR_proxmox_url: 'https://pve1.lab:8006/api2/json',
      PKR_VAR_proxmox_username: 'root@pam!labwright',
      PKR_VAR_proxmox_token: '0b1e7c2a-not-a-secret',
      PKR_VAR_proxmox_node: 'pve1',
      PKR_VAR_storage_pool: 'local-lvm',
      PKR_VAR_build_password: 'generated-per-build',
    };
    for (const template of ['packer/proxmox-debian.pkr.hcl', TEMPLATE]) {
      const ok = spawnSync(packer, ['validate', template], { env, encoding: 'utf8' });
      expect(`${ok.stdout}${ok.stderr}`).toContain('The configuration is valid');
      expect(ok.status).toBe(0);
      // Token login is the only login they have: without the token, the builder refuses them.
      const noToken = spawnSync(packer, ['validate', template], {
        env: { ...env, PKR_VAR_proxmox_token: '' },
        encoding: 'utf8',
      });
      expect(noToken.status).not.toBe(0);
      expect(`${noToken.stdout}${noToken.stderr}`).toContain('password or token must be specified');
    }
    const { PKR_VAR_proxmox_node: _node, ...noNode } = env;
    const refused = spawnSync(packer, ['validate', 'packer/proxmox-debian.pkr.hcl'], { env: noNode, encoding: 'utf8' });
    expect(refused.status).not.toBe(0);
    expect(`${refused.stdout}${refused.stderr}`).toMatch(/proxmox_node/);
  });

  it('the hash covers the template, its scripts, the preseed in http/, var files and variables', async () => {
    // A copy of packer/ to edit.
    const dir = path.join(lab.dir, 'hash-inputs');
    await fs.cp(path.join(projectRoot, 'packer'), dir, { recursive: true });
    const template = path.join(dir, 'proxmox-debian.pkr.hcl');
    const hashOf = async (variables: Record<string, string> = {}): Promise<string> =>
      (await lab.packer.packerHashInputs({ template, variables, secretVariables: {} })).hash;
    const base = await hashOf();
    expect(await hashOf()).toBe(base);
    const seen = new Set([base]);
    const changed = async (what: string, edit: () => Promise<void>): Promise<void> => {
      await edit();
      const h = await hashOf();
      expect(seen.has(h), what).toBe(false);
      seen.add(h);
    };
    await changed('preseed', () =>
      fs.appendFile(path.join(dir, 'http', 'debian-preseed.pkrtpl'), 'd-i time/zone string Europe/Berlin\n'),
    );
    await changed('a new http/ file', () => fs.writeFile(path.join(dir, 'http', 'extra.cfg'), 'x\n'));
    await changed('a script', () => fs.appendFile(path.join(dir, 'scripts', 'cloud-init-ready.sh'), 'true\n'));
    await changed('a var file', () => fs.writeFile(path.join(dir, 'lab.pkrvars.hcl'), 'cores = 4\n'));
    await changed('the template', () => fs.appendFile(template, '\n# edited\n'));
    const variables = await hashOf({ cores: '4' });
    expect(seen.has(variables)).toBe(false);
    // Another Packer or plugin build is another image: the versions file next to the binary counts.
    const fakeBin = path.join(dir, 'bin');
    await fs.mkdir(fakeBin);
    const packer = ensureTool('ensure-packer.sh');
    await fs.symlink(packer, path.join(fakeBin, 'packer'));
    const versions = await fs.readFile(path.join(path.dirname(packer), 'packer.versions'), 'utf8');
    expect(versions).toContain('github.com/hashicorp/packer-plugin-proxmox v1.1.1');
    await fs.writeFile(path.join(fakeBin, 'packer.versions'), versions.replace('v1.1.1', 'v1.1.2'));
    const other = createPackerActivities({ ...lab.packerDeps, packerBin: () => path.join(fakeBin, 'packer') });
    const withOtherPlugin = (await other.packerHashInputs({ template, variables: {}, secretVariables: {} })).hash;
    expect(withOtherPlugin).not.toBe(await hashOf());
  });

  it('no secret reaches a command line, a file or the worker-only environment during a build', async () => {
    const client = await testClient();
    const image = uniqueName('secret');
    const token = lab.fake.token.split('=')[1]!;
    await lab.secrets.put('packer/extra-secret', 'extra-secret-value-42');
    const secrets = [token, 'extra-secret-value-42'];
    const seen = { processes: 0, packerEnv: [] as string[], leaks: [] as string[] };
    let watching = true;
    // Every 50 ms: every process's command line, and the files in the build's folder.
    const watcher = (async () => {
      while (watching) {
        for (const pid of await fs.readdir('/proc').catch(() => [])) {
          if (!/^\d+$/.test(pid)) continue;
          const cmdline = await fs.readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
          if (!cmdline) continue;
          seen.processes++;
          for (const s of secrets) if (cmdline.includes(s)) seen.leaks.push(`cmdline of ${pid}: ${cmdline}`);
          if (cmdline.includes(`/packer/${image}/`) && seen.packerEnv.length === 0) {
            const environ = await fs.readFile(`/proc/${pid}/environ`, 'utf8').catch(() => '');
            seen.packerEnv = environ
              .split('\0')
              .filter(Boolean)
              .map((kv) => kv.split('=')[0]!);
          }
        }
        for (const f of await listFilesUnder(path.join(lab.packerWorkDir, image))) {
          const body = await fs.readFile(f, 'utf8').catch(() => '');
          for (const s of secrets) if (body.includes(s)) seen.leaks.push(`file ${f}`);
        }
        await new Promise((r) => setTimeout(r, 50));
      }
    })();
    try {
      await withWorker({ activities: lab.activities }, async ({ taskQueue }) => {
        const result = (await client.workflow.execute('packerImageBuild', {
          taskQueue,
          workflowId: `packer-image-build/${image}`,
          args: [
            input(image, {
              vmidRange: { from: 9180, to: 9189 },
              variables: { build_seconds: '4' },
              secretVariables: { extra: { store: 'packer/extra-secret' } },
            }),
          ],
        })) as PackerImageBuildResult;
        expect(result.built).toBe(true);
      });
    } finally {
      watching = false;
      await watcher;
    }
    expect(seen.processes).toBeGreaterThan(100);
    expect(seen.leaks).toEqual([]);
    // Packer's environment: its own variables and PATH/HOME, none of the worker's.
    expect(seen.packerEnv).toEqual(expect.arrayContaining(['PATH', 'HOME', 'PKR_VAR_proxmox_token', 'PKR_VAR_extra']));
    expect(seen.packerEnv.filter((k) => k.startsWith('LABWRIGHT_') || k.startsWith('TEMPORAL_'))).toEqual([]);
    // The var file went with the build.
    const [buildDir] = await fs.readdir(path.join(lab.packerWorkDir, image));
    expect(await fs.readdir(path.join(lab.packerWorkDir, image, buildDir!))).not.toContain('variables.json');
  });

  it("the canary's removal failing is reported in the result and the progress; the template stands", async () => {
    const client = await testClient();
    const image = uniqueName('stuck');
    // The canary (the second VMID of the range) cannot be deleted: a permission PVE refuses.
    await lab.fake.control({
      op: 'fail',
      method: 'DELETE',
      suffix: '/nodes/pve1/qemu/9191',
      status: 403,
      message: 'Permission check failed (/vms/9191, VM.Allocate)',
      times: 1,
    });
    await lab.fake.control({ op: 'vm_defaults', defaults: { agent: {} } });
    try {
      await withWorker({ activities: lab.activities }, async ({ taskQueue }) => {
        const handle = await client.workflow.start('packerImageBuild', {
          taskQueue,
          workflowId: `packer-image-build/${image}`,
          args: [input(image, { vmidRange: { from: 9190, to: 9199 }, canary: { agentTimeoutSeconds: 10 } })],
        });
        const result = (await handle.result()) as PackerImageBuildResult;
        expect(result.templateVmid).toBe(9190);
        expect(result.canary).toMatchObject({ vmid: 9191, removed: false });
        expect(result.canary?.removalError).toContain('Permission check failed (/vms/9191, VM.Allocate)');
        const progress = await handle.query<Progress>('progress');
        const canary = progress.steps.find((s) => s.name === 'canary');
        expect(canary?.detail).toContain('NOT destroyed');
        expect(canary?.detail).toContain('Permission check failed');
        expect(progress.steps.find((s) => s.name === 'promote')?.status).toBe('done');
        expect((await lab.fake.vms()).find((v) => v.vmid === 9191)?.name).toBe(`canary-${result.hash.slice(0, 12)}`);
      });
    } finally {
      await lab.fake.control({ op: 'clear_failures' });
      await lab.fake.control({ op: 'vm_defaults', defaults: {} });
    }
  });
});

async function listFilesUnder(dir: string): Promise<string[]> {
  const entries = await fs.readdir(dir, { withFileTypes: true, recursive: true }).catch(() => []);
  return entries.filter((e) => e.isFile()).map((e) => path.join(e.parentPath, e.name));
}
