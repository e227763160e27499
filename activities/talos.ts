/**
 * Talos activities: `talosctl` run as a subprocess, one command each.
 *
 * Secrets bundle, machine configs, talosconfig and kubeconfig live in the secret store and
 * travel as references: an activity resolves a reference into a 0600 file in a private temp
 * folder for talosctl, and removes the folder afterwards (a killed worker's folder goes when the
 * next worker starts: lib/processes.ts `PrivateTemp`). talosctl gets only `childEnv()`: PATH,
 * HOME, locale and proxies, none of the worker's credentials. Nothing talosctl prints that could
 * hold key material is returned.
 *
 * Output: talosctl's `-o json` writes a stream of indented JSON objects, one per resource (not an
 * array), and `version --json` one protojson object a line; `parseJsonStream` reads both.
 * `etcd members` only has a table.
 *
 * Addresses: a node's inventory address is dialled through `addressMap` when the address is
 * there. With `loopbackOnly` (tests, the simulated lab), an address that does not map to loopback
 * is refused before talosctl runs, so nothing ever connects to the lab's private range.
 *
 * Errors: talosctl prints gRPC status codes (`rpc error: code = Unavailable desc = ...`); they
 * are classified as common/errors.ts says (Unavailable, DeadlineExceeded: retried; InvalidArgument,
 * FailedPrecondition on a worker: not). `bootstrap` answering AlreadyExists is an outcome, not an error.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Context } from '@temporalio/activity';
import { parse as parseYaml } from 'yaml';
import { ApplicationFailure } from '@temporalio/common';
import { nonRetryable, retryable } from '../common/errors.js';
import type { SecretRef } from '../common/secret-ref.js';
import { talosStore, type NodePlan } from '../common/talos.js';
import { childEnv, PrivateTemp } from '../lib/processes.js';
import type { SecretStore } from '../lib/secrets.js';

export interface TalosDeps {
  /** Path of the talosctl binary (or a stand-in that answers like it). */
  talosctl: string;
  secrets: SecretStore;
  /** Inventory address -> address to dial, e.g. `192.168.1.101` -> `127.1.1.101` in tests. */
  addressMap?: Record<string, string>;
  /** Refuse to dial anything that is not loopback after mapping (tests, simulated lab). */
  loopbackOnly?: boolean;
  /**
   * Root of the private temp folders for talosctl's secret files (default
   * `<os temp dir>/labwright-talos`); leftovers of a killed worker are removed at the next start.
   */
  tmpDir?: string;
  /** Poll interval of the waits (default 2 s). */
  pollMs?: number;
  /** Environment talosctl runs with (default `childEnv()`: PATH, HOME, locale, proxies; no secrets). */
  env?: NodeJS.ProcessEnv;
  /** The worker's inventory, handed to workflows started without one. */
  inventory?: unknown;
}

export interface TalosRun {
  code: number;
  stdout: string;
  stderr: string;
}

export interface EtcdMember {
  id: string;
  hostname: string;
  peerUrls: string[];
  clientUrls: string[];
  learner: boolean;
}

/** `etcd members`: `reachable` false when etcd did not answer (not running yet, or restarting). */
export interface EtcdMembers {
  members: EtcdMember[];
  reachable: boolean;
  warning?: string;
}

export type NodeMode = 'maintenance' | 'configured' | 'unreachable';

export interface NodeProbe {
  mode: NodeMode;
  /** MachineStatus stage (`maintenance`, `booting`, `running`, ...). */
  stage?: string;
  ready?: boolean;
  detail: string;
}

/** Parses a stream of JSON values (`{...}\n{...}` or indented objects back to back). */
export function parseJsonStream(text: string): unknown[] {
  const out: unknown[] = [];
  let depth = 0;
  let start = -1;
  let inString = false;
  let escaped = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (inString) {
      if (escaped) escaped = false;
      else if (c === '\\') escaped = true;
      else if (c === '"') inString = false;
      continue;
    }
    if (c === '"') inString = true;
    else if (c === '{' || c === '[') {
      if (depth === 0) start = i;
      depth++;
    } else if (c === '}' || c === ']') {
      depth--;
      if (depth === 0 && start >= 0) {
        out.push(JSON.parse(text.slice(start, i + 1)));
        start = -1;
      }
    }
  }
  if (depth !== 0) throw new Error('talosctl output ended inside a JSON value');
  return out;
}

/** Parses `talosctl etcd members` (with or without the NODE column). */
export function parseEtcdMembers(text: string): EtcdMember[] {
  const lines = text.split('\n').filter((l) => l.trim() !== '');
  const header = lines[0];
  if (!header || !/\bID\b/.test(header)) return [];
  const withNode = header.trim().startsWith('NODE');
  return lines.slice(1).map((line) => {
    const cols = line.trim().split(/\s{2,}|\t/);
    const c = withNode ? cols.slice(1) : cols;
    return {
      id: c[0] ?? '',
      hostname: c[1] ?? '',
      peerUrls: (c[2] ?? '').split(',').filter(Boolean),
      clientUrls: (c[3] ?? '').split(',').filter(Boolean),
      learner: c[4] === 'true',
    };
  });
}

const GRPC_CODE = /code = (\w+) desc = ([^\n]*)/;

/** Classifies a failed talosctl run by the gRPC code it printed. */
export function classifyTalosctl(run: TalosRun, what: string): ApplicationFailure {
  const text = `${run.stderr}\n${run.stdout}`.trim();
  const firstLine = text.split('\n').find((l) => l.trim() !== '') ?? `exit ${run.code}`;
  const message = `${what}: ${text.replace(/\s*\n\s*/g, ' ').slice(0, 600) || firstLine}`;
  const code = GRPC_CODE.exec(text)?.[1];
  switch (code) {
    case 'Unavailable':
      return retryable('connection', message);
    case 'DeadlineExceeded':
      return retryable('timeout', message);
    case 'ResourceExhausted':
      return retryable('throttled', message);
    case 'InvalidArgument':
      return nonRetryable('validation', message);
    case 'AlreadyExists':
      return nonRetryable('conflict', message);
    case 'NotFound':
      return nonRetryable('notFound', message);
    case 'PermissionDenied':
    case 'Unauthenticated':
    case 'Unimplemented':
      return nonRetryable('client', message);
    case 'FailedPrecondition':
      return retryable('server', message);
    default:
      break;
  }
  if (/connection refused|no route to host|i\/o timeout|connection reset|EOF/i.test(text)) {
    return retryable('connection', message);
  }
  if (/unknown flag|unknown command|accepts \d+ arg|required flag/i.test(text)) return nonRetryable('client', message);
  return retryable('server', message);
}

function inActivity(): Context | undefined {
  try {
    return Context.current();
  } catch {
    return undefined;
  }
}

function heartbeat(details: unknown): void {
  inActivity()?.heartbeat(details);
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** `gen config` of one output type (`talosconfig`, `controlplane`, `worker`) from the cluster's secrets. */
/** Whether a talosconfig's current context trusts the CA of the secrets bundle (`certs.os.crt`). */
export function talosconfigMatches(talosconfig: string, secretsYaml: string): boolean {
  try {
    const tc = parseYaml(talosconfig) as { context?: string; contexts?: Record<string, { ca?: string }> };
    const bundle = parseYaml(secretsYaml) as { certs?: { os?: { crt?: string } } };
    const ca = tc.contexts?.[tc.context ?? '']?.ca;
    return ca !== undefined && ca === bundle.certs?.os?.crt;
  } catch {
    return false;
  }
}

function genConfig(
  c: { cluster: string; endpoint: string },
  secretsFile: string,
  outputType: string,
  out: string,
): string[] {
  return [
    'gen',
    'config',
    c.cluster,
    c.endpoint,
    '--with-secrets',
    secretsFile,
    '--output-types',
    outputType,
    '-o',
    out,
  ];
}

function isLoopback(address: string): boolean {
  const host = address.replace(/:\d+$/, '').replace(/^\[|\]$/g, '');
  return host === 'localhost' || host === '::1' || /^127\.\d+\.\d+\.\d+$/.test(host);
}

export function createTalosActivities(deps: TalosDeps) {
  const pollMs = deps.pollMs ?? 2000;

  /** The address talosctl dials for an inventory address. */
  function dial(address: string): string {
    const mapped = deps.addressMap?.[address] ?? address;
    if (deps.loopbackOnly && !isLoopback(mapped)) {
      throw nonRetryable(
        'validation',
        `refusing to dial ${address}: no loopback mapping for it (this worker only dials loopback)`,
      );
    }
    return mapped;
  }

  // Created with the activities, i.e. as the worker starts: a killed worker's leftovers go now.
  const temp = new PrivateTemp(deps.tmpDir ?? path.join(os.tmpdir(), 'labwright-talos'));
  const env = deps.env ?? childEnv();

  /** A private 0700 folder for talosctl's files, removed after `body`. */
  function withTemp<T>(body: (dir: string) => Promise<T>): Promise<T> {
    return temp.run('talosctl-', body);
  }

  /** `etcd members` on a control plane (see talosEtcdMembers). */
  function etcdMembers(address: string, talosconfig: SecretRef): Promise<EtcdMembers> {
    return withTemp(async (dir) => {
      const tc = await materialize(dir, 'talosconfig', talosconfig);
      const r = await must([...nodeArgs(address, tc), 'etcd', 'members'], `talosctl etcd members on ${address}`);
      const warning = r.stderr.trim();
      const members = parseEtcdMembers(r.stdout);
      const reachable = members.length > 0 || !/code = (Unavailable|DeadlineExceeded)|connection refused/.test(warning);
      return { members, reachable, ...(warning ? { warning } : {}) };
    });
  }

  async function materialize(dir: string, name: string, ref: SecretRef): Promise<string> {
    const file = path.join(dir, name);
    await fs.writeFile(file, await deps.secrets.resolve(ref), { mode: 0o600 });
    return file;
  }

  /** Runs talosctl; heartbeats while it runs; never throws for a non-zero exit. */
  function run(args: string[], opts: { timeoutMs?: number; cwd?: string } = {}): Promise<TalosRun> {
    return new Promise((resolve, reject) => {
      const ctx = inActivity();
      const child = execFile(
        deps.talosctl,
        args,
        {
          cwd: opts.cwd,
          env,
          timeout: opts.timeoutMs ?? 120_000,
          maxBuffer: 16 * 1024 * 1024,
          killSignal: 'SIGTERM',
        },
        (err, stdout, stderr) => {
          clearInterval(beat);
          ctx?.cancellationSignal.removeEventListener('abort', onCancel);
          if (err && typeof (err as NodeJS.ErrnoException).code === 'string') {
            const code = (err as NodeJS.ErrnoException).code;
            if (code === 'ENOENT') {
              reject(nonRetryable('validation', `talosctl not found at ${deps.talosctl}`));
              return;
            }
          }
          if (err && (err as { killed?: boolean }).killed) {
            reject(retryable('timeout', `talosctl ${args[0]} ${args[1] ?? ''} did not finish in time`));
            return;
          }
          const code = err ? Number((err as { code?: unknown }).code ?? 1) : 0;
          resolve({ code: Number.isFinite(code) ? code : 1, stdout: String(stdout), stderr: String(stderr) });
        },
      );
      // At once and every second (the SDK sends at most one per 0.8 × heartbeat timeout, or 5 s),
      // so that even a short heartbeat timeout never expires while talosctl runs.
      const beat = setInterval(() => heartbeat({ talosctl: args.slice(0, 2).join(' ') }), 1000);
      heartbeat({ talosctl: args.slice(0, 2).join(' ') });
      const onCancel = (): void => {
        child.kill('SIGTERM');
      };
      ctx?.cancellationSignal.addEventListener('abort', onCancel);
    });
  }

  async function must(
    args: string[],
    what: string,
    opts: { timeoutMs?: number; cwd?: string } = {},
  ): Promise<TalosRun> {
    const result = await run(args, opts);
    if (result.code !== 0) throw classifyTalosctl(result, what);
    return result;
  }

  /** `-e`/`-n` for one node, authenticated through a talosconfig. */
  const nodeArgs = (address: string, talosconfigFile: string): string[] => {
    const a = dial(address);
    return ['--talosconfig', talosconfigFile, '-e', a, '-n', a];
  };

  async function probe(address: string, talosconfig?: SecretRef): Promise<NodeProbe> {
    const a = dial(address);
    const stage = (r: TalosRun): { stage?: string; ready?: boolean } => {
      const status = parseJsonStream(r.stdout)[0] as { spec?: { stage?: string; status?: { ready?: boolean } } };
      return { stage: status?.spec?.stage, ready: status?.spec?.status?.ready };
    };
    return withTemp(async (dir) => {
      const details: string[] = [];
      if (talosconfig && (await deps.secrets.exists(talosconfig))) {
        const tc = await materialize(dir, 'talosconfig', talosconfig);
        const r = await run(['--talosconfig', tc, '-e', a, '-n', a, 'get', 'machinestatus', '-o', 'json'], {
          timeoutMs: 30_000,
        });
        if (r.code === 0) {
          const s = stage(r);
          return { mode: 'configured', ...s, detail: `stage ${s.stage ?? 'unknown'}` };
        }
        details.push(r.stderr.trim().split('\n')[0] ?? '');
      }
      const r = await run(['-n', a, '-e', a, 'get', 'machinestatus', '-o', 'json', '--insecure'], {
        timeoutMs: 30_000,
      });
      if (r.code === 0) {
        const s = stage(r);
        if (s.stage === 'maintenance') return { mode: 'maintenance', ...s, detail: 'maintenance mode' };
        return { mode: 'configured', ...s, detail: `stage ${s.stage ?? 'unknown'} (insecure)` };
      }
      if (/tls: certificate required/.test(r.stderr)) {
        // Up and configured, but not by our talosconfig (none stored yet, or one of other
        // secrets): the node answers; the secrets step makes the talosconfig that it trusts.
        const why = details.filter(Boolean).join('; ') || 'no talosconfig stored';
        return { mode: 'configured', detail: `configured, refuses our talosconfig: ${why}` };
      }
      details.push(r.stderr.trim().split('\n')[0] ?? '');
      return { mode: 'unreachable', detail: details.filter(Boolean).join('; ') || 'no answer' };
    });
  }

  return {
    /** The worker's inventory (as loaded), for workflows started without one; validated by them. */
    async talosLabInventory(): Promise<unknown> {
      if (deps.inventory === undefined) {
        throw nonRetryable('validation', 'this worker has no inventory: give the workflow one in its input');
      }
      return deps.inventory;
    },

    /** talosctl's own version (`version --client`), for notes and the secrets' contract. */
    async talosClientVersion(): Promise<string> {
      const r = await must(['version', '--client', '--short'], 'talosctl version --client');
      return /Talos (v\S+)/.exec(r.stdout)?.[1] ?? r.stdout.trim();
    },

    /** The Talos version a configured node runs (`version --json`). */
    async talosServerVersion(args: { address: string; talosconfig: SecretRef }): Promise<string> {
      return withTemp(async (dir) => {
        const tc = await materialize(dir, 'talosconfig', args.talosconfig);
        const r = await must(
          [...nodeArgs(args.address, tc), 'version', '--json'],
          `talosctl version on ${args.address}`,
        );
        const msg = parseJsonStream(r.stdout)[0] as { version?: { tag?: string } } | undefined;
        return msg?.version?.tag ?? 'unknown';
      });
    },

    /**
     * Generates the cluster's secrets bundle once (`gen secrets`) and a talosconfig from it
     * (`gen config --output-types talosconfig`); reuses both when the store has them.
     */
    async talosEnsureSecrets(args: {
      cluster: string;
      endpoint: string;
      /** Joining a node: the cluster's secrets must exist already (PreconditionFailed otherwise). */
      mustExist?: boolean;
    }): Promise<{ secrets: { store: string }; talosconfig: { store: string }; created: string[] }> {
      const secretsName = talosStore.secrets(args.cluster);
      const tcName = talosStore.talosconfig(args.cluster);
      const created: string[] = [];
      if (args.mustExist && !(await deps.secrets.exists({ store: secretsName }))) {
        throw nonRetryable(
          'precondition',
          `cluster ${args.cluster} has no Talos secrets in the secret store (${secretsName}): bootstrap it first (talos-bootstrap/${args.cluster})`,
        );
      }
      await withTemp(async (dir) => {
        let secretsFile: string;
        if (await deps.secrets.exists({ store: secretsName })) {
          secretsFile = await materialize(dir, 'secrets.yaml', { store: secretsName });
        } else {
          secretsFile = path.join(dir, 'secrets.yaml');
          await must(['gen', 'secrets', '-o', secretsFile], 'talosctl gen secrets');
          await deps.secrets.put(secretsName, await fs.readFile(secretsFile, 'utf8'));
          created.push('secrets');
        }
        // A talosconfig whose CA is not the secrets' (left from another set of secrets, e.g. of a
        // rebuilt cluster) cannot reach the nodes: it is made again from the secrets.
        const stale =
          (await deps.secrets.exists({ store: tcName })) &&
          !talosconfigMatches(await deps.secrets.resolve({ store: tcName }), await fs.readFile(secretsFile, 'utf8'));
        if (stale || !(await deps.secrets.exists({ store: tcName }))) {
          const out = path.join(dir, 'talosconfig');
          await must(genConfig(args, secretsFile, 'talosconfig', out), 'talosctl gen config (talosconfig)', {
            cwd: dir,
          });
          await deps.secrets.put(tcName, await fs.readFile(out, 'utf8'));
          created.push(stale ? 'talosconfig (the stored one was not signed by these secrets)' : 'talosconfig');
        }
      });
      return { secrets: { store: secretsName }, talosconfig: { store: tcName }, created };
    },

    /**
     * Generates one node's machine config from the cluster's secrets (`gen config` with the
     * node's patches), validates it (`validate --mode metal --strict`) and stores it. The output
     * is deterministic for the same secrets and inputs, so a re-run stores the same bytes.
     */
    async talosGenNodeConfig(args: {
      cluster: string;
      endpoint: string;
      kubernetesVersion: string;
      talosVersion: string;
      node: Pick<NodePlan, 'name' | 'role'>;
      /** Patches (YAML or JSON): the node's own first, then the cluster's. */
      patches: string[];
    }): Promise<{ config: { store: string }; sha256: string; changed: boolean }> {
      const name = talosStore.nodeConfig(args.cluster, args.node.name);
      return withTemp(async (dir) => {
        const secretsFile = await materialize(dir, 'secrets.yaml', { store: talosStore.secrets(args.cluster) });
        const patchArgs: string[] = [];
        for (const [i, patch] of args.patches.entries()) {
          const file = path.join(dir, `patch-${i}.yaml`);
          await fs.writeFile(file, patch, { mode: 0o600 });
          patchArgs.push('--config-patch', `@${file}`);
        }
        const out = path.join(dir, 'machine.yaml');
        const contract = /^v?(\d+\.\d+)/.exec(args.talosVersion)?.[1];
        await must(
          [
            ...genConfig(args, secretsFile, args.node.role, out),
            '--kubernetes-version',
            args.kubernetesVersion,
            ...(contract ? ['--talos-version', `v${contract}`] : []),
            '--with-docs=false',
            '--with-examples=false',
            ...patchArgs,
          ],
          `talosctl gen config for ${args.node.name}`,
          { cwd: dir },
        );
        const validation = await run(['validate', '--config', out, '--mode', 'metal', '--strict']);
        if (validation.code !== 0) {
          throw nonRetryable(
            'validation',
            `machine config of ${args.node.name} is invalid: ${(validation.stderr || validation.stdout).trim()}`,
          );
        }
        const text = await fs.readFile(out, 'utf8');
        const sha256 = createHash('sha256').update(text).digest('hex');
        const ref = { store: name };
        const before = (await deps.secrets.exists(ref)) ? await deps.secrets.resolve(ref) : undefined;
        if (before !== text) await deps.secrets.put(name, text);
        return { config: ref, sha256, changed: before !== text };
      });
    },

    /** Where a node is: in maintenance mode, configured (with its stage), or not answering. */
    async talosProbe(args: { address: string; talosconfig?: SecretRef }): Promise<NodeProbe> {
      return probe(args.address, args.talosconfig);
    },

    /**
     * Waits until the node's Talos API answers, in maintenance mode or already configured,
     * heartbeating. Gives up with a retryable TimeoutError after `timeoutSeconds`.
     */
    async talosWaitForApi(args: {
      address: string;
      talosconfig?: SecretRef;
      timeoutSeconds: number;
      /** Also wait for this stage when configured (e.g. `running` after an apply). */
      stage?: string;
    }): Promise<NodeProbe> {
      const deadline = Date.now() + args.timeoutSeconds * 1000;
      let last: NodeProbe = { mode: 'unreachable', detail: 'not asked yet' };
      for (;;) {
        last = await probe(args.address, args.talosconfig);
        heartbeat({ address: args.address, ...last });
        const wanted =
          last.mode === 'maintenance' ||
          (last.mode === 'configured' && (args.stage === undefined || last.stage === args.stage));
        if (wanted) return last;
        if (Date.now() > deadline) {
          throw retryable(
            'timeout',
            `Talos API of ${args.address} not ${args.stage ?? 'up'} after ${args.timeoutSeconds}s: ${last.detail}`,
          );
        }
        const ctx = inActivity();
        await (ctx ? Promise.race([sleep(pollMs), ctx.cancelled]) : sleep(pollMs));
      }
    },

    /**
     * Applies a stored machine config. In maintenance mode: `apply-config --insecure`. On a
     * configured node: a `--dry-run` first, and nothing is applied when it reports no changes.
     * A node asked `--insecure` that has left maintenance mode (an earlier attempt applied the
     * config and its answer was lost, e.g. with a worker that died) is asked authenticated instead.
     */
    async talosApplyConfig(args: {
      address: string;
      config: SecretRef;
      insecure: boolean;
      talosconfig: SecretRef;
    }): Promise<{ applied: boolean; detail: string }> {
      return withTemp(async (dir) => {
        const cfg = await materialize(dir, 'machine.yaml', args.config);
        const what = `talosctl apply-config on ${args.address}`;
        if (args.insecure) {
          const a = dial(args.address);
          const r = await run(['apply-config', '--insecure', '-n', a, '-e', a, '-f', cfg]);
          if (r.code === 0) {
            return { applied: true, detail: `${r.stdout}${r.stderr}`.trim() || 'applied in maintenance mode' };
          }
          if (!/tls: certificate required/.test(r.stderr)) throw classifyTalosctl(r, what);
        }
        const tc = await materialize(dir, 'talosconfig', args.talosconfig);
        const dry = await must(
          [...nodeArgs(args.address, tc), 'apply-config', '-f', cfg, '--dry-run'],
          `${what} --dry-run`,
        );
        // talosctl prints the mode details (and the dry run's config diff) on stderr.
        if (/Config diff:\s*No changes\./.test(`${dry.stdout}\n${dry.stderr}`)) {
          return { applied: false, detail: 'no changes' };
        }
        const r = await must([...nodeArgs(args.address, tc), 'apply-config', '-f', cfg], what);
        return { applied: true, detail: `${r.stdout}${r.stderr}`.trim() || 'applied' };
      });
    },

    /**
     * `etcd members` on a control plane. `reachable` is false when etcd did not answer (talosctl's
     * warning, `code = Unavailable`, with no members): not running yet, or restarting; an empty
     * list from an etcd that answered has `reachable` true.
     */
    async talosEtcdMembers(args: { address: string; talosconfig: SecretRef }): Promise<EtcdMembers> {
      return etcdMembers(args.address, args.talosconfig);
    },

    /**
     * Waits until etcd on a control plane lists a member (etcd starting from a recovered
     * snapshot), heartbeating, asking every poll interval. Returns the members once there are
     * some; at `returnAt` (a bound on one call, so a long wait is a few activities) or at
     * `deadlineAt` (`timedOut`) with none and talosctl's last warning. A retryable talosctl
     * failure (the node restarting) counts as no member yet.
     */
    async talosWaitEtcdMember(args: {
      address: string;
      talosconfig: SecretRef;
      deadlineAt: number;
      returnAt?: number;
    }): Promise<EtcdMembers & { timedOut: boolean }> {
      const ctx = inActivity();
      for (;;) {
        let last: EtcdMembers;
        try {
          last = await etcdMembers(args.address, args.talosconfig);
        } catch (err) {
          if (err instanceof ApplicationFailure && err.nonRetryable) throw err;
          last = { members: [], reachable: false, warning: (err as Error).message };
        }
        if (last.members.length > 0) return { ...last, timedOut: false };
        heartbeat({ address: args.address, waiting: 'etcd member', warning: last.warning });
        const now = Date.now();
        if (now >= args.deadlineAt) return { ...last, timedOut: true };
        if (args.returnAt !== undefined && now >= args.returnAt) return { ...last, timedOut: false };
        await (ctx ? Promise.race([sleep(pollMs), ctx.cancelled]) : sleep(pollMs));
      }
    },

    /**
     * Bootstraps etcd on one control plane, guarded: if etcd already has members there, nothing
     * is done; AlreadyExists (the etcd data directory is not empty) means it was done before.
     * `bootstrapped` means this call did it; `bootstrapped-by-earlier-attempt` that a retry of it
     * found etcd bootstrapped: the workflow calls it only after seeing no member on any control
     * plane, under its one-per-cluster ID, so the earlier attempt (whose answer was lost) did it.
     */
    async talosBootstrap(args: { address: string; talosconfig: SecretRef }): Promise<{
      outcome: 'bootstrapped' | 'bootstrapped-by-earlier-attempt' | 'already-member' | 'already-exists';
      members: number;
    }> {
      const retry = (inActivity()?.info.attempt ?? 1) > 1;
      return withTemp(async (dir) => {
        const tc = await materialize(dir, 'talosconfig', args.talosconfig);
        const node = nodeArgs(args.address, tc);
        const before = await must([...node, 'etcd', 'members'], `talosctl etcd members on ${args.address}`);
        const members = parseEtcdMembers(before.stdout);
        if (members.length > 0) {
          return { outcome: retry ? 'bootstrapped-by-earlier-attempt' : 'already-member', members: members.length };
        }
        const r = await run([...node, 'bootstrap']);
        if (r.code === 0) return { outcome: 'bootstrapped', members: 1 };
        if (/code = AlreadyExists/.test(r.stderr)) {
          return { outcome: retry ? 'bootstrapped-by-earlier-attempt' : 'already-exists', members: 0 };
        }
        throw classifyTalosctl(r, `talosctl bootstrap on ${args.address}`);
      });
    },

    /**
     * (issue 7) Recovers etcd from a snapshot file on the worker through Talos's recover path:
     * `talosctl bootstrap --recover-from=<snapshot>` on one control plane (talosctl reads the
     * snapshot's status, uploads it, and bootstraps etcd from it; etcd checks its appended sha256
     * unless `skipHashCheck`). Talos recovers only into an empty etcd: on the first attempt a
     * node whose etcd has members (or whose bootstrap answers AlreadyExists) is refused
     * (PreconditionFailed). On a retry (the reply of an earlier attempt lost) the same answers
     * mean that attempt's bootstrap went through: `already-recovered`. `recovered` means this
     * call did it, with the snapshot's status as talosctl printed it.
     */
    async talosRecoverEtcd(args: {
      address: string;
      talosconfig: SecretRef;
      snapshot: string;
      skipHashCheck?: boolean;
    }): Promise<{
      outcome: 'recovered' | 'already-recovered';
      snapshot?: { hash: string; revision: number; totalKeys: number; totalSize: number };
    }> {
      const retry = (inActivity()?.info.attempt ?? 1) > 1;
      const refuse = (why: string): ApplicationFailure =>
        nonRetryable(
          'precondition',
          `etcd on ${args.address} ${why}: recovering from a snapshot needs an empty etcd ` +
            '(reset every control plane with --system-labels-to-wipe=EPHEMERAL first)',
        );
      return withTemp(async (dir) => {
        const tc = await materialize(dir, 'talosconfig', args.talosconfig);
        const node = nodeArgs(args.address, tc);
        const before = await must([...node, 'etcd', 'members'], `talosctl etcd members on ${args.address}`);
        const members = parseEtcdMembers(before.stdout);
        if (members.length > 0) {
          if (retry) return { outcome: 'already-recovered' };
          throw refuse(`has ${members.length} member(s)`);
        }
        const flags = [`--recover-from=${args.snapshot}`, ...(args.skipHashCheck ? ['--recover-skip-hash-check'] : [])];
        const r = await run([...node, 'bootstrap', ...flags], { timeoutMs: 600_000 });
        if (r.code !== 0) {
          if (/code = AlreadyExists/.test(r.stderr)) {
            if (retry) return { outcome: 'already-recovered' };
            throw refuse('has data (AlreadyExists: etcd data directory is not empty)');
          }
          throw classifyTalosctl(r, `talosctl bootstrap --recover-from on ${args.address}`);
        }
        const m = /hash ([0-9a-f]+), revision (\d+), total keys (\d+), total size (\d+)/.exec(r.stdout);
        return {
          outcome: 'recovered',
          ...(m
            ? { snapshot: { hash: m[1]!, revision: Number(m[2]), totalKeys: Number(m[3]), totalSize: Number(m[4]) } }
            : {}),
        };
      });
    },

    /**
     * (issue 7) A DR drill's scratch cluster gets the cluster's secrets bundle (so a control plane
     * recovered from the cluster's etcd snapshot can read its data: Secrets encrypted with the
     * bundle's key, ServiceAccount tokens signed by it). Only into a `drill-` name.
     */
    async talosCopyClusterSecrets(args: { from: string; to: string }): Promise<{ secrets: { store: string } }> {
      if (!args.to.startsWith('drill-')) {
        throw nonRetryable('validation', `scratch cluster ${args.to}: a scratch cluster's name starts with drill-`);
      }
      const from = { store: talosStore.secrets(args.from) };
      if (!(await deps.secrets.exists(from))) {
        throw nonRetryable(
          'precondition',
          `cluster ${args.from} has no Talos secrets in the secret store (${from.store}): a scratch control plane cannot read its data without them`,
        );
      }
      const name = talosStore.secrets(args.to);
      await deps.secrets.put(name, await deps.secrets.resolve(from));
      return { secrets: { store: name } };
    },

    /** (issue 7) Removes a scratch cluster's Talos material (`talos/<drill-...>/`) from the store. */
    async talosForgetScratchCluster(args: { cluster: string }): Promise<{ removed: string }> {
      if (!args.cluster.startsWith('drill-')) {
        throw nonRetryable(
          'validation',
          `refusing to remove the Talos secrets of ${args.cluster}: not a drill- cluster`,
        );
      }
      const folder = `talos/${args.cluster}`;
      await deps.secrets.removeFolder(folder);
      return { removed: folder };
    },

    /**
     * (issue 7) `etcd snapshot` from a control plane into a private temp file, removed at once:
     * what talosctl prints of it (hash, revision, total keys), i.e. what that etcd serves now.
     */
    async talosEtcdSnapshotStatus(args: {
      address: string;
      talosconfig: SecretRef;
    }): Promise<{ hash: string; revision: number; totalKeys: number; totalSize: number }> {
      return withTemp(async (dir) => {
        const tc = await materialize(dir, 'talosconfig', args.talosconfig);
        const r = await must(
          [...nodeArgs(args.address, tc), 'etcd', 'snapshot', path.join(dir, 'etcd.snapshot')],
          `talosctl etcd snapshot on ${args.address}`,
          { timeoutMs: 600_000 },
        );
        const m = /hash ([0-9a-f]+), revision (\d+), total keys (\d+), total size (\d+)/.exec(r.stdout);
        if (!m) throw retryable('server', `talosctl etcd snapshot on ${args.address} printed no snapshot info`);
        return { hash: m[1]!, revision: Number(m[2]), totalKeys: Number(m[3]), totalSize: Number(m[4]) };
      });
    },

    /** `talosctl health` from the first control plane, over the given nodes. */
    async talosHealth(args: {
      address: string;
      talosconfig: SecretRef;
      controlPlanes: string[];
      workers: string[];
      timeoutSeconds: number;
    }): Promise<{ output: string }> {
      return withTemp(async (dir) => {
        const tc = await materialize(dir, 'talosconfig', args.talosconfig);
        const r = await must(
          [
            ...nodeArgs(args.address, tc),
            'health',
            '--wait-timeout',
            `${args.timeoutSeconds}s`,
            '--control-plane-nodes',
            args.controlPlanes.map(dial).join(','),
            ...(args.workers.length > 0 ? ['--worker-nodes', args.workers.map(dial).join(',')] : []),
          ],
          `talosctl health via ${args.address}`,
          { timeoutMs: (args.timeoutSeconds + 30) * 1000 },
        );
        return { output: `${r.stdout}${r.stderr}`.trim().split('\n').slice(-3).join('\n') };
      });
    },

    /**
     * Fetches an admin kubeconfig (`talosctl kubeconfig`) into the store. Kept as it is when the
     * store has one already and `refresh` is not set (a new one would carry a new client cert).
     */
    async talosKubeconfig(args: {
      cluster: string;
      address: string;
      talosconfig: SecretRef;
      refresh?: boolean;
    }): Promise<{ kubeconfig: { store: string }; fetched: boolean }> {
      const name = talosStore.kubeconfig(args.cluster);
      if (!args.refresh && (await deps.secrets.exists({ store: name }))) {
        return { kubeconfig: { store: name }, fetched: false };
      }
      return withTemp(async (dir) => {
        const tc = await materialize(dir, 'talosconfig', args.talosconfig);
        const out = path.join(dir, 'kubeconfig');
        await must(
          [...nodeArgs(args.address, tc), 'kubeconfig', out, '--force', '--merge=false'],
          `talosctl kubeconfig from ${args.address}`,
        );
        await deps.secrets.put(name, await fs.readFile(out, 'utf8'));
        return { kubeconfig: { store: name }, fetched: true };
      });
    },
  };
}

export type TalosActivities = ReturnType<typeof createTalosActivities>;

/**
 * Talos deps from the worker's environment:
 *   LABWRIGHT_TALOSCTL              path of talosctl (default: `talosctl` on PATH)
 *   LABWRIGHT_TALOS_ADDRESS_MAP     JSON object, inventory address -> address to dial
 *   LABWRIGHT_SIMULATED=1           dial loopback only (the simulated lab)
 *   LABWRIGHT_TALOS_TMPDIR          root of the private temp folders (default <os temp>/labwright-talos)
 */
export function talosDepsFromEnv(lab: { inventory: unknown; secrets: SecretStore; env: NodeJS.ProcessEnv }): TalosDeps {
  let addressMap: Record<string, string> | undefined;
  const raw = lab.env.LABWRIGHT_TALOS_ADDRESS_MAP;
  if (raw) {
    try {
      addressMap = JSON.parse(raw) as Record<string, string>;
    } catch {
      throw new Error('LABWRIGHT_TALOS_ADDRESS_MAP is not a JSON object of address -> address');
    }
  }
  return {
    talosctl: lab.env.LABWRIGHT_TALOSCTL ?? 'talosctl',
    secrets: lab.secrets,
    inventory: lab.inventory,
    ...(addressMap ? { addressMap } : {}),
    loopbackOnly: lab.env.LABWRIGHT_SIMULATED === '1',
    ...(lab.env.LABWRIGHT_TALOS_TMPDIR ? { tmpDir: lab.env.LABWRIGHT_TALOS_TMPDIR } : {}),
  };
}
