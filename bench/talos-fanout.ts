/**
 * Bench: talosBootstrap's fan-out. For each cluster size (3 control planes, the rest workers, all
 * VMs over two PVE nodes), a whole bootstrap from nothing on fakepve and the Talos stand-in, with
 * a latency injected into every PVE API request (clone, start, their task polls…) and every
 * node-facing Talos call. Every activity's start and end is recorded and attributed to a node (by
 * VMID, address or name) or to the cluster (inventory, secrets, etcd, health, kubeconfig). Printed:
 *
 *   wall time:          the workflow's start until its result;
 *   critical path:      the slowest node's chain: the time in which one of its activities or a
 *                       cluster-wide one ran (overlaps counted once, as the workflow makes a node's
 *                       config beside its VM): what a bootstrap that does every node's work in
 *                       parallel and waits on nothing else takes on these peers;
 *   sequential runbook: every activity's time, one after another (a script's loop over the nodes).
 *
 * Run: npx tsx bench/talos-fanout.ts [--nodes 3,10,50] [--latency 100] [--runs 1]
 * Not a test: numbers depend on the machine; nothing is asserted.
 */
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { Client, Connection } from '@temporalio/client';
import { bundleWorkflowCode, NativeConnection, Runtime, Worker } from '@temporalio/worker';
import { quietLogger } from '../lib/log.js';
import { cacheDir, projectRoot } from '../lib/paths.js';
import { startDevServer } from '../sim/dev-server.js';
import { startTalosLab, type Draft } from '../test/harness/talos.js';
import { publish, runBench, type Row } from './report.js';

const { values } = parseArgs({
  options: { nodes: { type: 'string' }, latency: { type: 'string' }, runs: { type: 'string' } },
});
const SIZES = (values.nodes ?? '3,10,50').split(',').map(Number);
const LATENCY_MS = Number(values.latency ?? 100);
const RUNS = Number(values.runs ?? 1);
const cleanups: Array<() => Promise<unknown>> = [];

/** Activities of cluster-wide steps: on the critical path once, whatever the number of nodes. */
const CLUSTER_WIDE = new Set([
  'talosLabInventory',
  'pveListTemplates',
  'talosEnsureSecrets',
  'talosEtcdMembers',
  'talosBootstrap',
  'talosHealth',
  'talosKubeconfig',
  'k8sProbe',
  'k8sWaitNodesReady',
]);

interface Span {
  activity: string;
  node?: string;
  start: number;
  end: number;
}

/** `n` nodes: 3 control planes and n − 3 workers, VMs alternating between pve1 and pve2. */
function clusterOf(n: number): (home: Draft) => void {
  return (home) => {
    const vm = (i: number, name: string) => {
      const pve = i % 2 === 0 ? 'pve1' : 'pve2';
      return {
        kind: 'vm',
        name,
        host: pve,
        node: pve,
        vmid: 230 + i,
        mac: `bc:24:11:00:03:${i.toString(16).padStart(2, '0')}`,
        ip: `192.168.1.${20 + i}`,
        cores: 2,
        memoryMiB: 2048,
        diskGiB: 16,
        storage: 'local-lvm',
        bridge: 'vmbr0',
      };
    };
    home.controlPlane = [0, 1, 2].map((i) => vm(i, `fan-cp-${i + 1}`));
    home.workers = Array.from({ length: n - 3 }, (_, k) => vm(k + 3, `fan-w-${k + 1}`));
  };
}

/** Which node an activity call works on (undefined: cluster-wide). */
function nodeOf(activity: string, arg: Draft | undefined, nodes: Draft[]): string | undefined {
  if (CLUSTER_WIDE.has(activity) || !arg) return undefined;
  const byVmid = (vmid: unknown) => nodes.find((n) => n.vmid === Number(vmid))?.name as string | undefined;
  if (arg.newid !== undefined) return byVmid(arg.newid);
  if (arg.vmid !== undefined) return byVmid(arg.vmid);
  if (typeof arg.address === 'string') return nodes.find((n) => n.ip === arg.address)?.name as string | undefined;
  if (typeof arg.node?.name === 'string') return arg.node.name as string;
  return undefined;
}

/** Total length of the union of the intervals: time in which at least one of them ran. */
function unionMs(spans: Span[]): number {
  const sorted = [...spans].sort((a, b) => a.start - b.start);
  let total = 0;
  let open: { from: number; to: number } | undefined;
  for (const s of sorted) {
    if (open && s.start <= open.to) open.to = Math.max(open.to, s.end);
    else {
      if (open) total += open.to - open.from;
      open = { from: s.start, to: s.end };
    }
  }
  return total + (open ? open.to - open.from : 0);
}

async function main(): Promise<void> {
  Runtime.install({ logger: quietLogger(['error']) });
  const server = await startDevServer({ logFile: path.join(cacheDir, 'bench-logs', 'talos-fanout-temporal.log') });
  cleanups.push(() => server.stop());
  const connection = await Connection.connect({ address: server.address });
  cleanups.unshift(() => connection.close());
  const client = new Client({ connection });
  const workerConnection = await NativeConnection.connect({ address: server.address });
  cleanups.unshift(() => workerConnection.close());
  const bundle = await bundleWorkflowCode({
    workflowsPath: path.join(projectRoot, 'workflows', 'index.ts'),
    logger: quietLogger(['error']),
  });

  const rows: Row[] = [];
  const notes: string[] = [];
  for (const size of SIZES) {
    const wall: number[] = [];
    const critical: number[] = [];
    const sequential: number[] = [];
    for (let run = 0; run < RUNS; run++) {
      const cluster = `fanout${size}r${run}`;
      const lab = await startTalosLab({
        cluster: clusterOf(size),
        clusterName: cluster,
        latency: { pveMs: LATENCY_MS, talosMs: LATENCY_MS },
      });
      try {
        const nodes = [
          ...(lab.inventory.clusters[cluster].controlPlane as Draft[]),
          ...(lab.inventory.clusters[cluster].workers as Draft[]),
        ];
        const spans: Span[] = [];
        // A PVE task's UPID names the VM it acts on only sometimes (a clone's names the template):
        // a task wait belongs to the node whose call started the task.
        const taskOwner = new Map<string, string | undefined>();
        const activities = Object.fromEntries(
          Object.entries(lab.activities).map(([name, fn]) => [
            name,
            async (...args: never[]) => {
              const start = performance.now();
              const arg = args[0] as Draft | undefined;
              const node = typeof arg?.upid === 'string' ? taskOwner.get(arg.upid) : nodeOf(name, arg, nodes);
              try {
                const result = (await fn(...args)) as Draft | undefined;
                if (typeof result?.upid === 'string') taskOwner.set(result.upid, node);
                return result;
              } finally {
                spans.push({ activity: name, node, start, end: performance.now() });
              }
            },
          ]),
        );
        const taskQueue = `bench-fanout-${cluster}`;
        const worker = await Worker.create({
          connection: workerConnection,
          taskQueue,
          workflowBundle: { code: bundle.code },
          activities,
          shutdownGraceTime: '1 second',
        });
        const running = worker.run();
        const t0 = performance.now();
        try {
          await client.workflow.execute('talosBootstrap', {
            taskQueue,
            workflowId: `talos-bootstrap/${cluster}`,
            args: [{ cluster, inventory: lab.inventory, waitSeconds: 600 }],
          });
        } finally {
          worker.shutdown();
          await running;
        }
        const t1 = performance.now();
        const clusterSpans = spans.filter((s) => !s.node);
        const nodeNames = [...new Set(spans.flatMap((s) => (s.node ? [s.node] : [])))];
        const chain = nodeNames.map(
          (n) => [n, unionMs([...spans.filter((s) => s.node === n), ...clusterSpans])] as const,
        );
        const [slowest, slowestMs] = [...chain].sort((a, b) => b[1] - a[1])[0] ?? ['none', unionMs(clusterSpans)];
        const clusterMs = unionMs(clusterSpans);
        wall.push(t1 - t0);
        critical.push(slowestMs);
        sequential.push(spans.reduce((sum, s) => sum + s.end - s.start, 0));
        notes.push(
          `${size} nodes, run ${run + 1}: ${spans.length} activities; slowest chain ${slowest} ${slowestMs.toFixed(0)} ms (of which cluster-wide steps ${clusterMs.toFixed(0)} ms); wall ${(t1 - t0).toFixed(0)} ms`,
        );
        console.log(notes.at(-1));
        const byActivity = new Map<string, { n: number; ms: number; max: number; cluster: boolean }>();
        for (const sp of spans) {
          const e = byActivity.get(sp.activity) ?? { n: 0, ms: 0, max: 0, cluster: !sp.node };
          e.n++;
          e.ms += sp.end - sp.start;
          e.max = Math.max(e.max, sp.end - sp.start);
          byActivity.set(sp.activity, e);
        }
        for (const [name, e] of [...byActivity].sort((a, b) => b[1].ms - a[1].ms)) {
          const what = `${e.cluster ? 'cluster' : 'node'} ${e.n}× ${(e.ms / e.n).toFixed(0)} ms (max ${e.max.toFixed(0)})`;
          console.log(`  ${name.padEnd(22)} ${what}`);
        }
      } finally {
        await lab.stop();
      }
    }
    rows.push({
      name: `${size} nodes: wall vs critical path`,
      unit: 'ms',
      ours: wall,
      baseline: critical,
      baselineIs: 'the slowest node’s chain: the time its activities or the cluster-wide ones ran, from the same run',
      target: { ratioBelow: 1.2 },
    });
    rows.push({
      name: `${size} nodes: wall vs sequential runbook`,
      unit: 'ms',
      ours: wall,
      baseline: sequential,
      baselineIs: 'every activity of the same run one after another',
    });
  }
  const title = `talos-bootstrap fan-out (${LATENCY_MS} ms injected per PVE request and per Talos call, ${RUNS} run(s) per size)`;
  await publish('talos-fanout', title, rows, notes);
}

runBench(main, cleanups);
