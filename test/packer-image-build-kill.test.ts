/**
 * packerImageBuild with its worker as a separate OS process (workers/main.ts, as production runs
 * it), killed mid-`packer build` while the real proxmox-clone builder has its VM up on fakepve:
 * once with SIGKILL to the worker and its Packer (the machine died), once to the worker process
 * alone (Packer, in its own process group, runs on). A new worker takes over; each run ends with
 * one template and no other VM of the build.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import type { WorkflowHandle } from '@temporalio/client';
import { ApplicationFailure } from '@temporalio/common';
import { temporal } from '@temporalio/proto';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { parse as parseYaml } from 'yaml';
import type { PackerImageBuildInput, PackerImageBuildResult } from '../common/packer-image-build.js';
import type { Progress } from '../common/progress.js';
import { projectRoot } from '../lib/paths.js';
import { cloudImageSeed } from '../sim/proxmox.js';
import { startFakePveLab, type FakePveLab } from './harness/fakepve.js';
import { workflowFailure } from './harness/failures.js';
import { TEST_CODEC_KEY_FILE, startWorkerProcess, type WorkerProcess } from './harness/processes.js';
import { temporalAddress, testClient, uniqueName } from './harness/temporal.js';

const EventType = temporal.api.enums.v1.EventType;

let lab: FakePveLab;
let workerEnv: NodeJS.ProcessEnv;
const workers: WorkerProcess[] = [];

beforeAll(async () => {
  lab = await startFakePveLab({ guests: [cloudImageSeed('vmdata')] });
  // The example inventory, its Proxmox hosts pointed at fakepve (tokens by secret-store reference).
  const inventory = parseYaml(await fs.readFile(path.join(projectRoot, 'hardware', 'lab.example.yaml'), 'utf8'));
  // The example's storages and bridges stay declared: its nodes and templates name them.
  const example = inventory.proxmox.hosts as Array<{ storages: unknown[]; bridges: unknown[] }>;
  inventory.proxmox.hosts = lab.inventory.proxmox.hosts.map((h, i) => ({
    ...h,
    storages: [...h.storages, ...(example[i]?.storages ?? [])],
    bridges: example[i]?.bridges ?? h.bridges,
  }));
  const inventoryFile = path.join(lab.dir, 'inventory.json');
  await fs.writeFile(inventoryFile, JSON.stringify(inventory));
  workerEnv = {
    TEMPORAL_ADDRESS: temporalAddress(),
    LABWRIGHT_CODEC_KEY_FILE: TEST_CODEC_KEY_FILE,
    LABWRIGHT_TASK_QUEUE: uniqueName('packer-kill'),
    LABWRIGHT_INVENTORY: inventoryFile,
    LABWRIGHT_SECRETS_DIR: path.join(lab.dir, 'secrets'),
    LABWRIGHT_PACKER_WORKDIR: lab.packerWorkDir,
    LABWRIGHT_METRICS_ADDRESS: 'off',
    LABWRIGHT_WORKFLOW_BUNDLE: inject('workflowBundlePath'),
  };
});
afterAll(async () => {
  for (const w of workers)
    if (w.child.exitCode === null && w.child.signalCode === null) process.kill(-w.child.pid!, 'SIGKILL');
  await Promise.all(workers.map((w) => w.exited));
  await lab?.stop();
});

/** At least two live workers polling the task queue: one runs the build, another takes over. */
async function twoWorkers(): Promise<void> {
  const live = workers.filter((w) => w.child.exitCode === null && w.child.signalCode === null);
  const started = [...live];
  while (started.length < 2) started.push(startWorker());
  for (const w of started) {
    await expect.poll(() => w.output(), { timeout: 90_000, interval: 200 }).toContain('"msg":"worker started"');
  }
}

/** The worker running `pid` (Packer is a child of the worker's node process). */
async function workerOf(pid: number): Promise<WorkerProcess> {
  const node = await parentOf(pid);
  const w = workers.find((x) => x.child.pid === node);
  if (!w) throw new Error(`packer ${pid} does not run under a test worker`);
  return w;
}

async function parentOf(pid: number): Promise<number> {
  const stat = await fs.readFile(`/proc/${pid}/stat`, 'utf8');
  return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
}

function startWorker(): WorkerProcess {
  const w = startWorkerProcess(workerEnv);
  workers.push(w);
  return w;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

function input(image: string, from: number, buildSeconds: number): PackerImageBuildInput {
  return {
    image,
    template: 'packer/proxmox-clone.pkr.hcl',
    variables: { build_seconds: String(buildSeconds) },
    host: 'pve1',
    node: 'pve1',
    storage: 'vmdata',
    vmidRange: { from, to: from + 9 },
    heartbeatSeconds: 5,
  };
}

/** Starts the build and waits until Packer is provisioning its running VM; returns Packer's pid. */
async function midBuild(
  image: string,
  from: number,
  buildSeconds: number,
): Promise<{ handle: WorkflowHandle; packerPid: number }> {
  const client = await testClient();
  const handle = await client.workflow.start('packerImageBuild', {
    taskQueue: workerEnv.LABWRIGHT_TASK_QUEUE!,
    workflowId: `packer-image-build/${image}`,
    args: [input(image, from, buildSeconds)],
  });
  const pidFile = path.join(lab.packerWorkDir, image, 'packer.pid');
  await expect
    .poll(
      async () => {
        const vm = (await lab.fake.vms()).find((v) => v.vmid === from);
        const log = await fs
          .readdir(path.join(lab.packerWorkDir, image))
          .then((dirs) =>
            fs.readFile(
              path.join(
                lab.packerWorkDir,
                image,
                dirs.find((d) => d.endsWith('-1'))!,
                'packer.log',
              ),
              'utf8',
            ),
          )
          .catch(() => '');
        return vm?.status === 'running' && log.includes(`provisioning 2/${buildSeconds}`);
      },
      { timeout: 60_000, interval: 250 },
    )
    .toBe(true);
  const { pid } = JSON.parse(await fs.readFile(pidFile, 'utf8')) as { pid: number };
  expect(alive(pid)).toBe(true);
  return { handle, packerPid: pid };
}

async function expectOneTemplate(handle: WorkflowHandle, image: string, vmid: number): Promise<PackerImageBuildResult> {
  const result = (await handle.result()) as PackerImageBuildResult;
  expect(result).toMatchObject({ built: true, templateVmid: vmid });
  const ofBuild = (await lab.fake.vms()).filter((v) => v.name.startsWith(image));
  expect(ofBuild.map((v) => ({ vmid: v.vmid, template: v.template, status: v.status }))).toEqual([
    { vmid, template: true, status: 'stopped' },
  ]);
  // The first attempt timed out on its heartbeat; the second built the template.
  const events = (await handle.fetchHistory()).events ?? [];
  const builds = events.filter((e) => e.activityTaskScheduledEventAttributes?.activityType?.name === 'packerBuild');
  expect(builds).toHaveLength(2);
  const timedOut = events.filter((e) => e.eventType === EventType.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT);
  expect(timedOut.map((e) => String(e.activityTaskTimedOutEventAttributes?.scheduledEventId))).toContain(
    String(builds[0]!.eventId),
  );
  return result;
}

describe('packerImageBuild with its worker killed mid-build', () => {
  it('SIGKILL to the worker and its Packer: the retry removes the half-made VM and builds again', async () => {
    const image = uniqueName('killall');
    await twoWorkers();
    const { handle, packerPid } = await midBuild(image, 9100, 12);
    const first = await workerOf(packerPid);
    // The machine dies: the worker's process group and Packer's.
    process.kill(-first.child.pid!, 'SIGKILL');
    process.kill(-packerPid, 'SIGKILL');
    expect(await first.exited).toBe('SIGKILL');
    // Packer's VM is left half-made (running, not a template).
    expect((await lab.fake.vms()).find((v) => v.vmid === 9100)).toMatchObject({ status: 'running', template: false });
    await expectOneTemplate(handle, image, 9100);
    const progress = await handle.query<Progress>('progress');
    expect(progress.steps.find((s) => s.name === 'packer build')?.status).toBe('done');
    // The half-made VM was stopped and deleted through the API before the second build cloned anew.
    const calls = ((await lab.fake.control({ op: 'requests' })) as Array<{ method: string; path: string }>).map(
      (r) => `${r.method} ${r.path.replace('/api2/json', '')}`,
    );
    expect(calls.filter((c) => c === 'POST /nodes/pve1/qemu/8000/clone').length).toBeGreaterThanOrEqual(2);
    expect(calls).toContain('DELETE /nodes/pve1/qemu/9100');
  }, 180_000);

  it("killing only the worker process: the retry stops the previous attempt's Packer, then builds again", async () => {
    const image = uniqueName('killworker');
    await twoWorkers();
    // Long enough that the orphaned Packer still runs when the retry comes.
    const { handle, packerPid } = await midBuild(image, 9110, 40);
    const first = await workerOf(packerPid);
    process.kill(first.child.pid!, 'SIGKILL');
    await first.exited;
    // Packer runs on without its worker (its own process group, its output in the build folder).
    expect(alive(packerPid)).toBe(true);
    await expectOneTemplate(handle, image, 9110);
    expect(alive(packerPid)).toBe(false);
    const progress = await handle.query<Progress>('progress');
    expect(progress.steps.find((s) => s.name === 'packer build')?.detail).toMatch(/^template VMID 9110/);
    const firstLog = await fs.readFile(
      path.join(
        lab.packerWorkDir,
        image,
        (await fs.readdir(path.join(lab.packerWorkDir, image))).find((d) => d.endsWith('-1'))!,
        'packer.log',
      ),
      'utf8',
    );
    // Stopped by the next attempt with SIGINT, so Packer's own cleanup deleted its VM.
    expect(firstLog).toContain(`a new attempt stops this packer (pid ${packerPid})`);
    expect(firstLog).toContain('Deleting VM');
    expect(firstLog).not.toContain('Converting VM to template');
  }, 180_000);

  it("a VMID taken by a VM that is not the build's is a conflict, and that VM is left alone", async () => {
    const image = uniqueName('taken');
    await twoWorkers();
    const { handle, packerPid } = await midBuild(image, 9120, 30);
    // Someone replaces the build's VM with their own at the same VMID while the worker is gone.
    const worker = await workerOf(packerPid);
    process.kill(-worker.child.pid!, 'SIGKILL');
    process.kill(-packerPid, 'SIGKILL');
    await worker.exited;
    await lab.fake.api('POST', '/nodes/pve1/qemu/9120/status/stop');
    await lab.fake.control({ op: 'settle' });
    await lab.fake.api('DELETE', '/nodes/pve1/qemu/9120');
    await lab.fake.control({ op: 'settle' });
    await lab.fake.api('POST', '/nodes/pve1/qemu', { vmid: 9120, name: 'someone-elses' });
    await lab.fake.control({ op: 'settle' });
    const err = await workflowFailure(handle.result());
    expect(err.cause).toBeInstanceOf(ApplicationFailure);
    expect({ type: (err.cause as ApplicationFailure).type, message: err.cause?.message }).toEqual({
      type: 'ConflictError',
      message: `VMID 9120 on pve1 is taken by someone-elses, not this build's ${image}-${(await handle.query<Progress>('progress')).steps.find((s) => s.name === 'hash')?.detail?.replace('sha256 ', '')}`,
    });
    expect((await lab.fake.vms()).find((v) => v.vmid === 9120)?.name).toBe('someone-elses');
  }, 180_000);
});
