import { WorkflowFailedError } from '@temporalio/client';
import { ApplicationFailure } from '@temporalio/common';
import { CoreV1Api } from '@kubernetes/client-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { talosconfigMatches } from '../activities/talos.js';
import type { TalosBootstrapResult } from '../common/talos.js';
import type { Progress } from '../common/progress.js';
import { recordHistory } from './harness/histories.js';
import { kubeConfigFor } from './harness/kube-controllers.js';
import { parse as parseYaml } from 'yaml';
import { startTalosLab, type Draft, type TalosLab } from './harness/talos.js';
import { NativeConnection, Worker } from '@temporalio/worker';
import { inject } from 'vitest';
import {
  NAMESPACE,
  temporalAddress,
  testClient,
  testDataConverter,
  uniqueName,
  withWorker,
} from './harness/temporal.js';

/**
 * A worker that keeps no workflow cache: after it stops, the next one gets the workflow task at
 * once (no sticky queue to time out) and replays the whole history, as a worker started after a
 * crash does.
 */
async function startUncachedWorker(
  activities: Record<string, (...args: never[]) => Promise<unknown>>,
  taskQueue: string,
): Promise<{ stop(): Promise<void> }> {
  const connection = await NativeConnection.connect({ address: temporalAddress() });
  const worker = await Worker.create({
    connection,
    namespace: NAMESPACE,
    taskQueue,
    dataConverter: testDataConverter,
    activities,
    workflowBundle: { codePath: inject('workflowBundlePath') },
    maxCachedWorkflows: 0,
    shutdownGraceTime: '1 second',
  });
  const running = worker.run().finally(() => connection.close());
  return {
    stop: async () => {
      if (worker.getState() === 'RUNNING') worker.shutdown();
      await running;
    },
  };
}

/** Three control planes, and two workers: a VM on the IoT VLAN and the Raspberry Pi (metal, arm64). */
function threePlusTwo(home: Draft): void {
  home.workers = (home.workers as Draft[]).filter((w) => ['talos-iot-1', 'rpi5'].includes(w.name as string));
}

describe('talosBootstrap on fakepve, the Talos stand-in and a real kube-apiserver', () => {
  let lab: TalosLab;
  // Its own cluster name: talos-bootstrap runs only as talos-bootstrap/<cluster>.
  const cluster = 'boot';
  let firstRun: TalosBootstrapResult;

  beforeAll(async () => {
    lab = await startTalosLab({ cluster: threePlusTwo, clusterName: cluster });
    // Installs the harness's quiet SDK runtime before the uncached workers below create theirs.
    await withWorker({}, async () => undefined);
  });
  afterAll(async () => {
    await lab?.stop();
  });

  it('bootstraps 3 control planes and 2 workers, restarted at every step, with exactly one etcd bootstrap', async () => {
    const client = await testClient();
    const taskQueue = uniqueName('talos');
    // The worker is stopped and a new one started after the first completion of each kind of
    // activity (so at every step); the bootstrap's reply is lost on the way back, as when the
    // worker dies between the bootstrap and its record.
    // One restart per step: after the first completion of the activity that ends it.
    const stepEnds = new Set([
      'pveListTemplates',
      'pveSetConfig',
      'pveStart',
      'talosWaitForApi',
      'talosEnsureSecrets',
      'talosGenNodeConfig',
      'talosApplyConfig',
      'talosBootstrap',
      'talosHealth',
      'talosKubeconfig',
    ]);
    const seen = new Set<string>();
    let restartWanted: (() => void) | undefined;
    let restartSignal = new Promise<void>((r) => (restartWanted = r));
    const activities = Object.fromEntries(
      Object.entries(lab.activities).map(([name, fn]) => [
        name,
        async (...args: never[]) => {
          const result = await fn(...args);
          if (stepEnds.has(name) && !seen.has(name)) {
            seen.add(name);
            restartWanted?.();
          }
          return result;
        },
      ]),
    );
    lab.standin.loseNextBootstrapReply();

    let worker = await startUncachedWorker(activities, taskQueue);
    const handle = await client.workflow.start('talosBootstrap', {
      taskQueue,
      workflowId: `talos-bootstrap/${cluster}`,
      args: [{ cluster, inventory: lab.inventory, waitSeconds: 60 }],
    });
    let restarts = 0;
    let finished = false;
    const result = handle.result().finally(() => {
      finished = true;
      restartWanted?.();
    });
    while (!finished) {
      await restartSignal;
      restartSignal = new Promise<void>((r) => (restartWanted = r));
      if (finished) break;
      await worker.stop();
      restarts++;
      worker = await startUncachedWorker(activities, taskQueue);
    }
    firstRun = await result.catch(async (err: unknown) => {
      await worker.stop();
      throw err;
    });

    expect(restarts).toBeGreaterThanOrEqual(9);
    // One bootstrap reached a node, it succeeded, and nothing ever answered AlreadyExists.
    expect(lab.standin.bootstraps).toEqual([{ node: 'talos-cp-1', outcome: 'bootstrapped' }]);
    expect(lab.standin.calls.filter((c) => /AlreadyExists/.test(c.stderr))).toEqual([]);
    expect(lab.standin.etcdMembers().sort()).toEqual(['talos-cp-1', 'talos-cp-2', 'talos-cp-3']);

    // The cluster's own endpoint is reported (the test reaches it through the loopback address map).
    expect(firstRun.endpoint).toBe(lab.inventory.clusters[cluster]!.endpoint);
    expect(firstRun.kubeconfig).toEqual({ store: `talos/${cluster}/kubeconfig` });
    // The bootstrap's reply was lost and its retry found etcd running: this run did it, and says so.
    expect(firstRun.etcd).toEqual({ node: 'talos-cp-1', bootstrappedByThisRun: true });
    expect(firstRun.changes).toContain('bootstrapped etcd on talos-cp-1');
    expect(firstRun.changes).toEqual(
      expect.arrayContaining(['cloned VM 201 (talos-cp-1)', 'cloned VM 221 (talos-iot-1)']),
    );
    expect(firstRun.notes.join('\n')).toMatch(
      /rpi5 is bare metal \(arm64\): boot it from metal-arm64\.raw\.xz of Talos v1\.11\.5/,
    );

    // The VMs as PVE has them: cloned from the template on their own node, configured, running.
    const vms = new Map((await lab.fake.vms()).map((v) => [v.vmid, v]));
    for (const vmid of [201, 202, 203, 221]) expect(vms.get(vmid)?.status).toBe('running');
    expect(vms.get(202)?.node).toBe('pve2');
    expect(String(vms.get(221)?.config.net0)).toMatch(/BC:24:11:00:02:21.*bridge=vmbr0.*tag=80/i);
    // Boot disks grown from the template's 8G to the inventory's diskGiB.
    for (const vmid of [201, 202, 203]) expect(String(vms.get(vmid)?.config.scsi0)).toMatch(/(^|,)size=64G(,|$)/);
    expect(String(vms.get(221)?.config.scsi0)).toMatch(/(^|,)size=32G(,|$)/);
    expect(vms.has(211)).toBe(false);

    // Kubernetes (the real API server) has every node Ready, the Pi as arm64.
    const core = kubeConfigFor(lab.kube).makeApiClient(CoreV1Api);
    const nodes = (await core.listNode()).items;
    expect(nodes.map((n) => n.metadata?.name).sort()).toEqual([
      'rpi5',
      'talos-cp-1',
      'talos-cp-2',
      'talos-cp-3',
      'talos-iot-1',
    ]);
    expect(nodes.find((n) => n.metadata?.name === 'rpi5')?.metadata?.labels?.['kubernetes.io/arch']).toBe('arm64');
    expect(
      nodes.find((n) => n.metadata?.name === 'talos-iot-1')?.metadata?.labels?.['network.labwright.dev/vlan'],
    ).toBe('iot');

    // Secrets live in the store, and only their names travel.
    expect(await lab.secrets.exists({ store: `talos/${cluster}/secrets.yaml` })).toBe(true);

    // The endpoint is the cluster's VIP (apiEndpoint in the inventory): every control plane carries
    // it on its interface, selected by its MAC; workers do not. (Each config passed the real
    // `talosctl validate --mode metal --strict`.)
    for (const [name, mac] of [
      ['talos-cp-1', 'bc:24:11:00:02:01'],
      ['talos-cp-3', 'bc:24:11:00:02:03'],
    ]) {
      const config = parseYaml(await lab.secrets.resolve({ store: `talos/${cluster}/nodes/${name}.yaml` })) as Draft;
      expect(config.machine.network.interfaces).toEqual([
        expect.objectContaining({ deviceSelector: { hardwareAddr: mac }, vip: { ip: '192.168.1.100' } }),
      ]);
      expect(config.cluster.controlPlane.endpoint).toBe(lab.inventory.clusters[cluster].endpoint);
    }
    const iot = parseYaml(await lab.secrets.resolve({ store: `talos/${cluster}/nodes/talos-iot-1.yaml` })) as Draft;
    expect(iot.machine.network.interfaces[0].vip).toBeUndefined();
    expect(await lab.secrets.resolve(firstRun.kubeconfig)).toContain(lab.kube.server);
    const progress = await handle.query<Progress>('progress');
    expect(progress.steps.filter((s) => s.status !== 'done')).toEqual([]);
    const described = await handle.describe();
    expect(described.memo).toMatchObject({ etcdBootstrapped: true, etcdNode: 'talos-cp-1' });
    await recordHistory(handle, 'talos-bootstrap-configs-beside-vms');
    await worker.stop();
  }, 180_000);

  it('changes nothing when run again on the healthy cluster, and says so', async () => {
    expect(firstRun).toBeDefined();
    const client = await testClient();
    const writesBefore = (await lab.pveWrites()).length;
    const callsBefore = lab.standin.calls.length;
    const result = await withWorker({ activities: lab.activities }, async ({ taskQueue }) =>
      client.workflow.execute('talosBootstrap', {
        taskQueue,
        workflowId: `talos-bootstrap/${cluster}`,
        args: [{ cluster, inventory: lab.inventory, waitSeconds: 60 }],
      }),
    );
    expect(result.changes).toEqual([]);
    expect(result.summary).toBe(
      `cluster ${cluster} is already healthy at ${lab.inventory.clusters[cluster]!.endpoint}: nothing changed`,
    );
    expect(result.etcd).toEqual({ node: 'talos-cp-1', bootstrappedByThisRun: false });
    expect((await lab.pveWrites()).length).toBe(writesBefore);
    const calls = lab.standin.calls.slice(callsBefore);
    expect(calls.filter((c) => c.command === 'bootstrap')).toEqual([]);
    expect(calls.filter((c) => c.command === 'apply-config' && !c.argv.includes('--dry-run'))).toEqual([]);
    expect(lab.standin.bootstraps).toHaveLength(1);
  });

  it('refuses to run under any other workflow ID than talos-bootstrap/<cluster>, and touches nothing', async () => {
    const client = await testClient();
    const writesBefore = (await lab.pveWrites()).length;
    const callsBefore = lab.standin.calls.length;
    const err = await withWorker({ activities: lab.activities }, async ({ taskQueue }) =>
      client.workflow
        .execute('talosBootstrap', {
          taskQueue,
          workflowId: `talos-bootstrap/${cluster}-${uniqueName('other')}`,
          args: [{ cluster, inventory: lab.inventory, waitSeconds: 60 }],
        })
        .catch((e: unknown) => e),
    );
    expect(err).toBeInstanceOf(WorkflowFailedError);
    const cause = (err as WorkflowFailedError).cause as ApplicationFailure;
    expect(cause.type).toBe('ValidationError');
    expect(cause.message).toMatch(
      new RegExp(
        `^invalid input: cluster: talos-bootstrap of cluster ${cluster} runs only as workflow ID talos-bootstrap/${cluster}, not talos-bootstrap/${cluster}-other-`,
      ),
    );
    expect((await lab.pveWrites()).length).toBe(writesBefore);
    expect(lab.standin.calls.slice(callsBefore)).toEqual([]);
    expect(lab.standin.bootstraps).toHaveLength(1);
  });

  it('fetches the kubeconfig again from Talos when the stored one points at a dead API server', async () => {
    expect(firstRun).toBeDefined();
    const client = await testClient();
    // As after a rebuild of the cluster (or a restart of the simulated lab): the stored kubeconfig
    // names an API server that is gone. Port 1 on loopback refuses every connection.
    const stale = (await lab.secrets.resolve(firstRun.kubeconfig)).replaceAll(lab.kube.server, 'https://127.0.0.1:1');
    await lab.secrets.put(`talos/${cluster}/kubeconfig`, stale);
    const result = await withWorker({ activities: lab.activities }, async ({ taskQueue }) =>
      client.workflow.execute('talosBootstrap', {
        taskQueue,
        workflowId: `talos-bootstrap/${cluster}`,
        // The default deadline: waiting on the dead server would outlast the test by 28 minutes.
        args: [{ cluster, inventory: lab.inventory }],
      }),
    );
    expect(result.changes).toEqual([
      'fetched the admin kubeconfig again: the stored one does not reach https://127.0.0.1:1 (ECONNREFUSED)',
    ]);
    expect(await lab.secrets.resolve(result.kubeconfig)).toContain(lab.kube.server);
  }, 120_000);

  it('makes the talosconfig again when the stored one is not signed by the cluster secrets', async () => {
    expect(firstRun).toBeDefined();
    const client = await testClient();
    const good = await lab.secrets.resolve(firstRun.talosconfig);
    // A talosconfig of other secrets (a rebuilt cluster's): its CA is not the stored secrets' OS CA.
    const otherCa = Buffer.from('-----BEGIN CERTIFICATE-----\nMIIBother\n-----END CERTIFICATE-----\n').toString(
      'base64',
    );
    await lab.secrets.put(`talos/${cluster}/talosconfig`, good.replace(/(\n\s+ca: )\S+/, `$1${otherCa}`));
    expect(
      talosconfigMatches(
        await lab.secrets.resolve(firstRun.talosconfig),
        await lab.secrets.resolve({ store: `talos/${cluster}/secrets.yaml` }),
      ),
    ).toBe(false);
    const result = await withWorker({ activities: lab.activities }, async ({ taskQueue }) =>
      client.workflow.execute('talosBootstrap', {
        taskQueue,
        workflowId: `talos-bootstrap/${cluster}`,
        args: [{ cluster, inventory: lab.inventory, waitSeconds: 60 }],
      }),
    );
    expect(result.changes).toEqual([
      "generated the cluster's talosconfig (the stored one was not signed by these secrets)",
    ]);
    expect(
      talosconfigMatches(
        await lab.secrets.resolve(firstRun.talosconfig),
        await lab.secrets.resolve({ store: `talos/${cluster}/secrets.yaml` }),
      ),
    ).toBe(true);
  }, 120_000);

  it('fails at once on a bad PCI address and duplicate VMIDs, naming the fields, and touches nothing', async () => {
    const client = await testClient();
    const bad = structuredClone(lab.inventory);
    bad.gpus[0].pciAddress = '0000:1:00.0';
    bad.clusters[cluster].controlPlane[1].vmid = 201;
    const called: string[] = [];
    const activities = Object.fromEntries(
      Object.entries(lab.activities).map(([name, fn]) => [
        name,
        async (...args: never[]) => {
          called.push(name);
          return fn(...args);
        },
      ]),
    );
    const err = await withWorker({ activities }, async ({ taskQueue }) =>
      client.workflow
        .execute('talosBootstrap', {
          taskQueue,
          workflowId: `talos-bootstrap/${cluster}`,
          args: [{ cluster, inventory: bad }],
        })
        .catch((e: unknown) => e),
    );
    expect(err).toBeInstanceOf(WorkflowFailedError);
    const cause = (err as WorkflowFailedError).cause as ApplicationFailure;
    expect(cause).toBeInstanceOf(ApplicationFailure);
    expect(cause.type).toBe('ValidationError');
    expect(cause.nonRetryable).toBe(true);
    expect(cause.message).toContain('gpus[0].pciAddress: expected a PCI address like 0000:01:00.0');
    expect(cause.message).toContain(
      `clusters.${cluster}.controlPlane[1].vmid: duplicate vmid 201, also at clusters.${cluster}.controlPlane[0].vmid`,
    );
    expect(called).toEqual([]);
  });

  // These remove pve2's template: they come last.
  it("refuses a clone to another PVE node from local storage before any clone, naming the inventory's fields", async () => {
    const client = await testClient();
    await lab.fake.api('DELETE', '/nodes/pve2/qemu/9001');
    // One PVE cluster of two nodes behind the pve1 endpoint: the template on pve1 only, and a new
    // control plane VMID on pve2, which needs a clone across nodes, from local-lvm.
    const moved = structuredClone(lab.inventory);
    moved.proxmox.hosts[0].nodes = ['pve1', 'pve2'];
    Object.assign(moved.clusters[cluster].controlPlane[1], { host: 'pve1', vmid: 205 });
    const writesBefore = (await lab.pveWrites()).length;
    const err = await withWorker({ activities: lab.activities }, async ({ taskQueue }) =>
      client.workflow
        .execute('talosBootstrap', {
          taskQueue,
          workflowId: `talos-bootstrap/${cluster}`,
          args: [{ cluster, inventory: moved, waitSeconds: 60 }],
        })
        .catch((e: unknown) => e),
    );
    expect(err).toBeInstanceOf(WorkflowFailedError);
    const cause = (err as WorkflowFailedError).cause as ApplicationFailure;
    expect(cause.type).toBe('PreconditionFailed');
    expect(cause.message).toBe(
      `VM 205 (talos-cp-2) cannot be cloned: template talos-v1-11-5 (clusters.${cluster}.template) is on PVE node pve1, not on pve2 (clusters.${cluster}.controlPlane[1].node), and PVE clones to another node only onto shared storage; local-lvm (clusters.${cluster}.controlPlane[1].storage) is not shared. Make the template on pve2 too, give clusters.${cluster}.controlPlane[1].storage a shared storage, or set clusters.${cluster}.templatePlacement to full-clone-then-migrate`,
    );
    expect((await lab.pveWrites()).slice(writesBefore)).toEqual([]);
  });

  /** The inventory of the refusal above, asking for a full clone on the template's node then a migration. */
  function cloneThenMigrate(vmid: number): typeof lab.inventory {
    const moved = structuredClone(lab.inventory);
    moved.proxmox.hosts[0].nodes = ['pve1', 'pve2'];
    moved.clusters[cluster].templatePlacement = 'full-clone-then-migrate';
    // Every VM behind the one endpoint, whose only template is on pve1 (the refusal removed pve2's).
    for (const n of [...moved.clusters[cluster].controlPlane, ...moved.clusters[cluster].workers] as Draft[]) {
      if (n.kind === 'vm') n.host = 'pve1';
    }
    Object.assign(moved.clusters[cluster].controlPlane[1], { vmid });
    return moved;
  }

  async function removeVm(vmid: number, node: string): Promise<void> {
    await lab.fake.api('POST', `/nodes/${node}/qemu/${vmid}/status/stop`);
    await lab.fake.api('DELETE', `/nodes/${node}/qemu/${vmid}`);
  }

  it("makes a full clone on the template's node and migrates it to its own when the inventory asks", async () => {
    expect(firstRun).toBeDefined();
    const client = await testClient();
    const writesBefore = (await lab.pveWrites()).length;
    const result = await withWorker({ activities: lab.activities }, async ({ taskQueue }) =>
      client.workflow.execute('talosBootstrap', {
        taskQueue,
        workflowId: `talos-bootstrap/${cluster}`,
        args: [{ cluster, inventory: cloneThenMigrate(205), waitSeconds: 60 }],
      }),
    );
    expect(result.changes).toEqual(
      expect.arrayContaining(['cloned VM 205 (talos-cp-2) on pve1', 'migrated VM 205 (talos-cp-2) from pve1 to pve2']),
    );
    const writes = (await lab.pveWrites()).slice(writesBefore);
    expect(writes.filter((w) => /\/clone$|\/migrate$/.test(w.path))).toEqual([
      { method: 'POST', path: '/api2/json/nodes/pve1/qemu/9000/clone' },
      { method: 'POST', path: '/api2/json/nodes/pve1/qemu/205/migrate' },
    ]);
    // On its inventory node, running, its boot disk (grown) on the inventory's storage.
    const vm = (await lab.fake.vms()).find((v) => v.vmid === 205);
    expect(vm?.node).toBe('pve2');
    expect(vm?.status).toBe('running');
    expect(String(vm?.config.scsi0)).toMatch(/^local-lvm:vm-205-disk-0,(.*,)?size=64G(,|$)/);
    await removeVm(205, 'pve2');
  }, 120_000);

  it('after a failure between the clone and the migration, a re-run only migrates the clone it finds', async () => {
    expect(firstRun).toBeDefined();
    const client = await testClient();
    // The migration is refused once (non-retryable), as if the run had died right after the clone.
    await lab.fake.control({
      op: 'fail',
      method: 'POST',
      suffix: '/qemu/206/migrate',
      status: 403,
      message: 'Permission check failed (/vms/206, VM.Migrate)',
      times: 1,
    });
    const failed = await withWorker({ activities: lab.activities }, async ({ taskQueue }) =>
      client.workflow
        .execute('talosBootstrap', {
          taskQueue,
          workflowId: `talos-bootstrap/${cluster}`,
          args: [{ cluster, inventory: cloneThenMigrate(206), waitSeconds: 60 }],
        })
        .catch((e: unknown) => e),
    );
    expect(failed).toBeInstanceOf(WorkflowFailedError);
    expect((await lab.fake.vms()).find((v) => v.vmid === 206)?.node).toBe('pve1');
    const writesBefore = (await lab.pveWrites()).length;
    const result = await withWorker({ activities: lab.activities }, async ({ taskQueue }) =>
      client.workflow.execute('talosBootstrap', {
        taskQueue,
        workflowId: `talos-bootstrap/${cluster}`,
        args: [{ cluster, inventory: cloneThenMigrate(206), waitSeconds: 60 }],
      }),
    );
    expect(result.changes).toContain('migrated VM 206 (talos-cp-2) from pve1 to pve2');
    expect(result.changes.filter((c: string) => c.startsWith('cloned'))).toEqual([]);
    const writes = (await lab.pveWrites()).slice(writesBefore);
    expect(writes.filter((w) => w.path.endsWith('/clone'))).toEqual([]);
    expect(writes.filter((w) => w.path.endsWith('/migrate'))).toEqual([
      { method: 'POST', path: '/api2/json/nodes/pve1/qemu/206/migrate' },
    ]);
    expect((await lab.fake.vms()).find((v) => v.vmid === 206)?.node).toBe('pve2');
    await removeVm(206, 'pve2');
  }, 180_000);
});
