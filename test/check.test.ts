import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { KUBE_ACCESS, PVE_VM_PRIVILEGES, renderCheck, type CheckReport } from '../clients/check.js';
import { talosStore } from '../common/talos.js';
import { runLabwright } from '../clients/cli/program.js';
import { projectRoot } from '../lib/paths.js';
import { ec2SimPeer } from '../sim/ec2.js';
import { kubeSimPeer } from '../sim/kube.js';
import { credsFromKubeconfig, kubeRequest, type KubeHandle } from '../sim/kube-apiserver.js';
import { signLeaf } from '../sim/pki.js';
import { talosPeer } from '../sim/talos.js';
import { startSimulatedLab, type SimulatedLab } from '../sim/index.js';
import { pveCaller, proxmoxPeer } from '../sim/proxmox.js';
import { SecretStore } from '../lib/secrets.js';
import { LAB_PCI_DEVICES } from './harness/talos.js';
import { runTs, type RunResult } from './harness/processes.js';

const example = path.join(projectRoot, 'hardware', 'lab.example.yaml');

/** `labwright check ...` as an operator runs it, in its own process: its exit code and output. */
function labwrightCheck(args: string[], env: Record<string, string> = {}): Promise<RunResult> {
  return runTs('clients/labwright.ts', ['check', ...args], env);
}

/** The same command line run in this process (the offline checks need no environment): faster. */
async function labwrightCheckHere(args: string[]): Promise<{ code: number; stdout: string }> {
  const lines: string[] = [];
  const log = vi.spyOn(console, 'log').mockImplementation((line: unknown) => void lines.push(String(line)));
  try {
    const code = await runLabwright(['check', ...args]);
    return { code, stdout: `${lines.join('\n')}\n` };
  } finally {
    log.mockRestore();
    process.exitCode = undefined;
  }
}

describe('labwright check, offline', () => {
  it('passes the example inventory with exit code 0', async () => {
    const r = await labwrightCheckHere([example]);
    console.log(r.stdout);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^\[ok\] inventory: .*every rule holds$/m);
  });

  it('lists every problem of a broken copy, path by path, and exits 1', async () => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'labwright-check-'));
    const broken = path.join(dir, 'lab.yaml');
    const text = (await fs.readFile(example, 'utf8'))
      .replace('gpu: rtx-a2000', 'gpu: rtx-a5000') // the same GPU to two VMs, on another node than the GPU
      .replace('vlan: 80,', 'vlan: 82,') // a VLAN nobody declared
      .replace("mac: 'bc:24:11:00:02:03'", "mac: 'bd:24:11:00:02:03'") // a multicast MAC
      .replace('drills: { from: 8900, to: 8999 }', 'drills: { from: 9050, to: 9150 }') // overlaps the templates
      .replace('labwright.dev/board: rpi5', 'node-role.kubernetes.io/edge: ""') // a label no node may give itself
      .replace(
        'storage: local-lvm,\n          bridge: vmbr0,\n        }\n      - {\n          kind: vm,\n          name: talos-cp-3',
        'storage: local,\n          bridge: vmbr0,\n        }\n      - {\n          kind: vm,\n          name: talos-cp-3',
      );
    await fs.writeFile(broken, text);
    const r = await labwrightCheckHere([broken]);
    console.log(r.stdout);
    expect(r.code).toBe(1);
    expect(r.stdout.split('\n').filter((l) => l.startsWith('[!!]'))).toEqual([
      '[!!] inventory: proxmox.vmidRanges.drills: drills (9050-9150) overlaps templates (9000-9099): the VMID ranges must be disjoint',
      '[!!] inventory: clusters.home.controlPlane[1].storage: storage local on pve2 does not hold images (content: iso, vztmpl, snippets): use one of local-lvm',
      "[!!] inventory: clusters.home.controlPlane[2].mac: bd:24:11:00:02:03 is a multicast address, which PVE refuses: the first octet must be even (bc:24:11:... is PVE's own prefix)",
      '[!!] inventory: clusters.home.workers[1].gpu: GPU rtx-a5000 is already given to clusters.home.workers[0]: a GPU passes through to one VM',
      '[!!] inventory: clusters.home.workers[1].gpu: GPU rtx-a5000 is in PVE node pve1, not in pve2 where this VM runs: put the VM on pve1 or give it a GPU of pve2',
      '[!!] inventory: clusters.home.workers[2].vlan: VLAN 82 is not declared in proxmox.vlans: use one of 80, 81',
      expect.stringMatching(
        /^\[!!\] inventory: clusters\.home\.workers\[3\]\.labels\["node-role\.kubernetes\.io\/edge"\]: .*NodeRestriction admission refuses a node its own node-role\.kubernetes\.io label.*use a prefix of your own/,
      ),
    ]);
    const json = await labwrightCheckHere([broken, '-o', 'json']);
    expect(json.code).toBe(1);
    expect((JSON.parse(json.stdout) as CheckReport).problems).toBe(7);
  });
});

/** A kubeconfig for a user (a client certificate of the cluster's CA) bound to all of KUBE_ACCESS but Secrets. */
async function kubeconfigWithoutSecrets(lab: SimulatedLab): Promise<string> {
  const kube = lab.peers.find((p) => p.name === 'kubernetes')!.handle as KubeHandle;
  const pkiDir = path.join(path.dirname(kube.kubeconfigPath), 'pki');
  await signLeaf(pkiDir, 'ops', '/CN=labwright-ops', { client: true });
  const rules = KUBE_ACCESS.filter((a) => a.resource !== 'secrets').map((a) => ({
    apiGroups: [a.group ?? ''],
    resources: [a.resource],
    verbs: [a.verb],
  }));
  const admin = credsFromKubeconfig(kube.kubeconfigPath);
  for (const [url, body] of [
    [
      '/apis/rbac.authorization.k8s.io/v1/clusterroles',
      { apiVersion: 'rbac.authorization.k8s.io/v1', kind: 'ClusterRole', metadata: { name: 'labwright-ops' }, rules },
    ],
    [
      '/apis/rbac.authorization.k8s.io/v1/clusterrolebindings',
      {
        apiVersion: 'rbac.authorization.k8s.io/v1',
        kind: 'ClusterRoleBinding',
        metadata: { name: 'labwright-ops' },
        roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: 'labwright-ops' },
        subjects: [{ apiGroup: 'rbac.authorization.k8s.io', kind: 'User', name: 'labwright-ops' }],
      },
    ],
  ] as const) {
    const r = await kubeRequest(admin, 'POST', url, body);
    expect(r.status, r.body).toBe(201);
  }
  const config = JSON.parse(await fs.readFile(kube.kubeconfigPath, 'utf8')) as {
    users: Array<{ user: Record<string, string> }>;
  };
  const b64 = async (file: string) => (await fs.readFile(path.join(pkiDir, file))).toString('base64');
  config.users[0]!.user = { 'client-certificate-data': await b64('ops.crt'), 'client-key-data': await b64('ops.key') };
  return JSON.stringify(config);
}

describe('labwright check --live on the simulated lab', () => {
  let lab: SimulatedLab;
  let dir: string;

  beforeAll(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'labwright-check-live-'));
    lab = await startSimulatedLab(dir, [proxmoxPeer, ec2SimPeer, kubeSimPeer, talosPeer]);
    const secrets = new SecretStore(lab.env.LABWRIGHT_SECRETS_DIR!);
    const pve1 = lab.inventory.proxmox.hosts[0]!;
    const pve = pveCaller(pve1.apiUrl, await secrets.resolve(pve1.token), await fs.readFile(pve1.caFile!));
    const control = (body: unknown) => pve('POST', '/_labwright/control', body as Record<string, unknown>, true);
    // The hardware as the inventory says it, but for the deliberate mismatch: the A2000 on pve2
    // sits in IOMMU group 13 (a BIOS update regrouped it), the inventory says 12.
    await control({ op: 'pci_devices', node: 'pve1', devices: LAB_PCI_DEVICES.pve1 });
    await control({
      op: 'pci_devices',
      node: 'pve2',
      devices: LAB_PCI_DEVICES.pve2.map((d) => ({ ...d, iommugroup: d.iommugroup === 12 ? 13 : d.iommugroup })),
    });
    await control({
      op: 'pci_mappings',
      mappings: [
        { id: 'a5000', map: ['node=pve1,path=0000:01:00,id=10de:2231,iommugroup=14'] },
        { id: 'a2000', map: ['node=pve2,path=0000:01:00,id=10de:2531,iommugroup=12'] },
      ],
    });
    // pve2's token: a user's own token whose role was made without VM.Clone.
    const secret = 'b0c3a3c6-2f5e-4f0e-9c59-000000000016';
    await control({ op: 'api_token', tokenid: 'labwright@pve!ops', secret });
    const privs = [
      ...PVE_VM_PRIVILEGES.filter((p) => p !== 'VM.Clone'),
      'Datastore.AllocateSpace',
      'Datastore.Audit',
      'Sys.Audit',
      'SDN.Use',
      'Mapping.Use',
    ];
    await control({ op: 'grant', userid: 'labwright@pve!ops', path: '/', privs });
    await secrets.put('proxmox/pve2-token', `labwright@pve!ops=${secret}`);
    // The cluster's kubeconfig: a user whose ClusterRole has all the workflows need but Secrets.
    await secrets.put(talosStore.kubeconfig('home'), await kubeconfigWithoutSecrets(lab));
  }, 240_000);

  afterAll(async () => {
    await lab?.stop();
    if (dir) await fs.rm(dir, { recursive: true, force: true });
  });

  it('finds the GPU whose IOMMU group differs, the token without VM.Clone and the kubeconfig without Secrets; passes the rest and hears the Talos node that is on', async () => {
    const r = await labwrightCheck([lab.inventoryFile, '--live', '-o', 'json'], lab.env);
    expect(r.code).toBe(1);
    const report = JSON.parse(r.stdout) as CheckReport;
    console.log(renderCheck(report));
    const item = (subject: string) => report.items.find((i) => i.subject === subject);
    expect(item('GPU rtx-a2000')).toEqual({
      area: 'proxmox',
      subject: 'GPU rtx-a2000',
      status: 'problem',
      detail: 'gpus[1].iommuGroup: GPU rtx-a2000: 0000:01:00.0 is in IOMMU group 13 on pve2, the inventory says 12',
    });
    expect(item('pve2 privileges')).toMatchObject({
      status: 'problem',
      detail: 'proxmox.hosts[1].token lacks VM.Clone on /vms',
    });
    expect(item('pve2 token')).toMatchObject({ status: 'ok' });
    expect(item('pve1 privileges')).toMatchObject({ status: 'ok' });
    expect(item('GPU rtx-a5000')).toMatchObject({ status: 'ok' });
    // Everything else Proxmox and EC2 answer for holds: only the two deliberate mismatches are problems.
    const problems = report.items.filter((i) => (i.area === 'proxmox' || i.area === 'ec2') && i.status === 'problem');
    expect(problems.map((i) => i.subject)).toEqual(['pve2 privileges', 'GPU rtx-a2000']);
    expect(report.items.filter((i) => i.area === 'ec2').map((i) => [i.subject, i.status])).toEqual([
      ['g5-llm DescribeInstances', 'ok'],
      ['g5-llm RunInstances', 'ok'],
    ]);
    // The cluster's kubeconfig works but its user may not create Secrets (Flux's): the access review says so.
    expect(report.items.filter((i) => i.area === 'kubernetes')).toEqual([
      { area: 'kubernetes', subject: 'home', status: 'problem', detail: 'denied: create secrets in flux-system' },
    ]);
    // The Pi (bare metal, on) answers in maintenance mode; the VMs do not exist yet, which is no problem.
    const talos = report.items.filter((i) => i.area === 'talos');
    expect(talos.find((i) => i.subject.startsWith('home/rpi5 '))).toMatchObject({
      status: 'ok',
      detail: 'Talos answers (maintenance)',
    });
    expect(talos.filter((i) => !i.subject.startsWith('home/rpi5 ')).map((i) => i.status)).toEqual(
      Array(6).fill('skipped'),
    );
    expect(
      report.items
        .filter((i) => i.area === 'proxmox' && /storage|bridge/.test(i.subject))
        .every((i) => i.status === 'ok'),
    ).toBe(true);
  }, 120_000);
});
