/**
 * packerImageBuild on the real dev server, real Packer (Debian's 1.6.6, file builder +
 * shell-local provisioner talking to the PVE API, see packer/simulated-build.pkr.hcl) and a real
 * fakepve on loopback.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import type { WorkflowHandle } from '@temporalio/client';
import { ApplicationFailure, CancelledFailure } from '@temporalio/common';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { PackerImageBuildInput, PackerImageBuildResult } from '../common/packer-image-build.js';
import type { Progress } from '../common/progress.js';
import { ensureTool } from '../lib/processes.js';
import type { FakeGuest } from '../sim/proxmox.js';
import { startFakePveLab, type FakePveLab } from './harness/fakepve.js';
import { recordHistory } from './harness/histories.js';
import { workflowFailure } from './harness/failures.js';
import { testClient, uniqueName, withWorker } from './harness/temporal.js';

const TEMPLATE = 'packer/simulated-build.pkr.hcl';

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
    variables: { release: '12' },
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
    // Clones answer through the guest agent; starts take 10 PVE s and the guest ignores ACPI
    // for 100 PVE s, longer than the canary's 5 s shutdown timeout: PVE's task ends in
    // "VM quit/powerdown failed - got timeout" and the canary is stopped hard.
    await lab.fake.control({ op: 'time_scale', value: 0.1 });
    await lab.fake.control({ op: 'vm_defaults', defaults: { agent: {}, start_secs: 10, shutdown_secs: 100 } });
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

        const progress = await handle.query<Progress>('progress');
        const canary = progress.steps.find((s) => s.name === 'canary');
        expect(canary?.status).toBe('done');
        expect(canary?.detail).toContain('VM quit/powerdown failed - got timeout');
        expect(progress.steps.find((s) => s.name === 'packer build')?.detail).toContain('template VMID 9100');
        await recordHistory(handle, 'packer-image-build');

        const creates = async (): Promise<number> =>
          ((await lab.fake.control({ op: 'requests' })) as Array<{ method: string; path: string }>).filter(
            (r) => r.method === 'POST' && r.path === '/api2/json/nodes/pve1/qemu',
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
      expect(log).not.toContain('converting VM');
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
      suffix: '/nodes/{node}/qemu/{vmid}/status/start',
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

  it("the shipped templates pass packer validate (the example with the proxmox builder of Debian's packer)", () => {
    const packer = ensureTool('ensure-packer.sh');
    const env = {
      ...process.env,
      CHECKPOINT_DISABLE: '1',
      PKR_VAR_vm_id: '9000',
      PKR_VAR_template_name: 'debian-12-0123456789ab',
      PKR_VAR_proxmox_url: 'https://pve1.lab:8006/api2/json',
      PKR_VAR_proxmox_username: 'root@pam',
      PKR_VAR_proxmox_token: 'not-a-secret',
      PKR_VAR_proxmox_node: 'pve1',
      PKR_VAR_storage_pool: 'local-lvm',
    };
    for (const template of ['packer/proxmox-debian.pkr.hcl', TEMPLATE]) {
      expect(() => execFileSync(packer, ['validate', template], { env, encoding: 'utf8' })).not.toThrow();
    }
    // Validation is real: without the node variable the template is refused.
    const { PKR_VAR_proxmox_node: _node, ...noNode } = env;
    const refused = spawnSync(packer, ['validate', 'packer/proxmox-debian.pkr.hcl'], { env: noNode, encoding: 'utf8' });
    expect(refused.status).not.toBe(0);
    expect(`${refused.stdout}${refused.stderr}`).toMatch(/proxmox_node/);
  });
});
