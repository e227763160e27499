/**
 * Packer activities: hash a build's inputs, and run `packer build -machine-readable` as a
 * subprocess that reports its current step through heartbeats. Cancelling the activity sends
 * Packer SIGINT and waits for Packer's own cleanup before reporting the cancellation.
 *
 * Labwright gives every template these variables as PKR_VAR_* environment variables (secrets
 * never appear on the command line): vm_id, template_name, proxmox_url, proxmox_username,
 * proxmox_token, proxmox_node, storage_pool. When the host has a caFile, SSL_CERT_FILE points at
 * it so Packer (Go) and the template's tools verify the API with the same CA.
 *
 * The template's VMID is read from the artifact lines: the Proxmox builder's artifact id is the
 * template's VMID; a build that makes its template another way (a provisioner, a post-processor,
 * the tests' file builder) reports it as an artifact file named `*.vmid` holding the number.
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createWriteStream, promises as fs } from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { Context } from '@temporalio/activity';
import { CancelledFailure } from '@temporalio/common';
import { nonRetryable, retryable } from '../common/errors.js';
import type { SecretRef } from '../common/secret-ref.js';
import type { Inventory } from '../hardware/schema.js';
import { projectRoot, stateDir } from '../lib/paths.js';
import { ensureTool } from '../lib/processes.js';
import type { SecretStore } from '../lib/secrets.js';

/** How Packer reaches the Proxmox host a template is built on. */
export interface PackerProxmoxAccess {
  /** https://pve1.lab:8006/api2/json, as Packer's proxmox builder wants it. */
  apiUrl: string;
  /** `user@realm!tokenid` */
  username: string;
  /** The token's secret. */
  token: string;
  caFile?: string;
}

export interface PackerDeps {
  /** Path of the packer binary (scripts/ensure-packer.sh finds or installs it). */
  packerBin: () => string;
  /** Relative template paths are resolved against this folder. */
  projectRoot: string;
  /** Builds run in <workDir>/<image>/<vmid>-<hash12>/ (log, var file, artifacts). */
  workDir: string;
  proxmoxAccess(host: string): Promise<PackerProxmoxAccess>;
  secrets: Pick<SecretStore, 'resolve'>;
  /** How long Packer may take to clean up after SIGINT before it is killed (default 5 minutes). */
  interruptGraceMs?: number;
}

export interface PackerBuildArgs {
  image: string;
  template: string;
  hash: string;
  variables: Record<string, string | number | boolean>;
  secretVariables: Record<string, SecretRef>;
  host: string;
  node: string;
  storage: string;
  vmid: number;
  templateName: string;
}

/** One machine-readable line: `timestamp,target,type,data...` */
export interface PackerLine {
  time: number;
  target: string;
  type: string;
  data: string[];
}

export interface PackerArtifact {
  index: number;
  builderId?: string;
  id?: string;
  string?: string;
  files: string[];
}

export interface PackerBuildResult {
  templateVmid: number;
  artifacts: PackerArtifact[];
  durationMs: number;
  /** The build folder, holding packer.log. */
  buildDir: string;
}

/** What the heartbeat carries while Packer runs. */
export interface PackerHeartbeat {
  pid?: number;
  step: string;
  lastMessage?: string;
  lines: number;
}

/** Parses one line of `packer build -machine-readable` output; null for anything else. */
export function parseMachineLine(line: string): PackerLine | null {
  const parts = line.split(',');
  if (parts.length < 3 || !/^\d+$/.test(parts[0]!)) return null;
  const unescape = (s: string): string =>
    s
      .replace(/%!\(PACKER_COMMA\)/g, ',')
      .replace(/\\n/g, '\n')
      .replace(/\\r/g, '\r');
  return {
    time: Number(parts[0]),
    target: parts[1]!,
    type: parts[2]!,
    data: parts.slice(3).map(unescape),
  };
}

/** Collects `artifact` lines into artifacts. */
export function collectArtifacts(lines: PackerLine[]): PackerArtifact[] {
  const byIndex = new Map<number, PackerArtifact>();
  for (const l of lines) {
    if (l.type !== 'artifact') continue;
    const index = Number(l.data[0]);
    const key = l.data[1];
    let a = byIndex.get(index);
    if (!a) byIndex.set(index, (a = { index, files: [] }));
    if (key === 'builder-id') a.builderId = l.data[2];
    else if (key === 'id') a.id = l.data[2];
    else if (key === 'string') a.string = l.data.slice(2).join(',');
    else if (key === 'file') a.files.push(l.data.slice(3).join(','));
  }
  return [...byIndex.values()].sort((x, y) => x.index - y.index);
}

/** The step a `ui,say` line announces (`==> proxmox.debian: Waiting for SSH...`), if any. */
export function stepOf(l: PackerLine): string | undefined {
  if (l.type !== 'ui' || l.data[0] !== 'say') return undefined;
  const text = (l.data[1] ?? '').trim();
  const m = /^==> (.*)$/s.exec(text);
  return m ? m[1]!.trim() : undefined;
}

/**
 * The template VMID from a build's artifacts: the Proxmox builder's artifact id, else the
 * content of an artifact file named `*.vmid` (read relative to the build folder).
 */
export async function templateVmidFrom(artifacts: PackerArtifact[], buildDir: string): Promise<number | undefined> {
  for (const a of artifacts) {
    if (a.builderId?.startsWith('proxmox') && /^\d+$/.test(a.id ?? '')) return Number(a.id);
  }
  for (const a of artifacts) {
    for (const file of a.files) {
      if (!file.endsWith('.vmid')) continue;
      const text = await fs.readFile(path.resolve(buildDir, file), 'utf8').catch(() => '');
      if (/^\s*\d+\s*$/.test(text)) return Number(text.trim());
    }
  }
  return undefined;
}

function inActivity(): Context | undefined {
  try {
    return Context.current();
  } catch {
    return undefined;
  }
}

async function readTemplate(deps: PackerDeps, template: string): Promise<{ file: string; text: Buffer }> {
  const file = path.resolve(deps.projectRoot, template);
  try {
    return { file, text: await fs.readFile(file) };
  } catch {
    throw nonRetryable('validation', `Packer template ${template} does not exist (looked at ${file})`);
  }
}

/** JSON with sorted keys, so the same variables always hash the same. */
function canonical(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonical).join(',')}]`;
  if (value && typeof value === 'object') {
    const entries = Object.entries(value as Record<string, unknown>).sort(([a], [b]) => (a < b ? -1 : 1));
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonical(v)}`).join(',')}}`;
  }
  return JSON.stringify(value);
}

export function createPackerActivities(deps: PackerDeps) {
  return {
    /**
     * sha256 over the template file, the other files of its folder that Packer reads (scripts,
     * *.pkrvars.hcl) and the variables. Secret variables count by reference, never by value.
     */
    async packerHashInputs(args: {
      template: string;
      variables: Record<string, string | number | boolean>;
      secretVariables: Record<string, SecretRef>;
    }): Promise<{ hash: string; templateFile: string }> {
      const { file, text } = await readTemplate(deps, args.template);
      const hash = createHash('sha256');
      hash.update(`template\0${text.length}\0`).update(text);
      const dir = path.dirname(file);
      const extra = await listFiles(path.join(dir, 'scripts'));
      for (const f of extra.sort()) {
        const body = await fs.readFile(f);
        hash.update(`file\0${path.relative(dir, f)}\0${body.length}\0`).update(body);
      }
      hash.update(`variables\0${canonical(args.variables)}\0secrets\0${canonical(args.secretVariables)}`);
      return { hash: hash.digest('hex'), templateFile: file };
    },

    /**
     * Runs `packer build -machine-readable` and returns the template's VMID. Heartbeats carry the
     * current step. On cancellation Packer gets SIGINT and this waits for it to exit.
     */
    async packerBuild(args: PackerBuildArgs): Promise<PackerBuildResult> {
      const ctx = inActivity();
      const { file } = await readTemplate(deps, args.template);
      const buildDir = path.join(deps.workDir, args.image, `${args.vmid}-${args.hash.slice(0, 12)}`);
      await fs.rm(buildDir, { recursive: true, force: true });
      await fs.mkdir(buildDir, { recursive: true, mode: 0o700 });
      const varFile = path.join(buildDir, 'variables.json');
      await fs.writeFile(varFile, JSON.stringify(args.variables, null, 2));

      const access = await deps.proxmoxAccess(args.host);
      const env: NodeJS.ProcessEnv = {
        ...process.env,
        CHECKPOINT_DISABLE: '1',
        PACKER_NO_COLOR: '1',
        PKR_VAR_vm_id: String(args.vmid),
        PKR_VAR_template_name: args.templateName,
        PKR_VAR_proxmox_url: access.apiUrl,
        PKR_VAR_proxmox_username: access.username,
        PKR_VAR_proxmox_token: access.token,
        PKR_VAR_proxmox_node: args.node,
        PKR_VAR_storage_pool: args.storage,
      };
      if (access.caFile) env.SSL_CERT_FILE = access.caFile;
      for (const [name, ref] of Object.entries(args.secretVariables)) {
        env[`PKR_VAR_${name}`] = await deps.secrets.resolve(ref);
      }

      const packer = deps.packerBin();
      const log = createWriteStream(path.join(buildDir, 'packer.log'));
      const started = Date.now();
      const child = spawn(packer, ['build', '-machine-readable', '-color=false', `-var-file=${varFile}`, file], {
        cwd: buildDir,
        env,
        stdio: ['ignore', 'pipe', 'pipe'],
        // Its own process group: Packer (a panicwrap parent and its child) stops on a SIGINT sent
        // to the group, as a terminal's Ctrl-C does; the parent alone ignores SIGINT.
        detached: true,
      });
      const lines: PackerLine[] = [];
      const errors: string[] = [];
      const beat: PackerHeartbeat = { pid: child.pid, step: 'starting packer', lines: 0 };
      ctx?.heartbeat(beat);
      const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve, reject) => {
        child.once('error', reject);
        child.once('close', (code, signal) => resolve({ code, signal }));
      });
      readline.createInterface({ input: child.stdout }).on('line', (raw) => {
        log.write(`${raw}\n`);
        const l = parseMachineLine(raw);
        if (!l) return;
        lines.push(l);
        beat.lines++;
        const step = stepOf(l);
        if (step) beat.step = step;
        else if (l.type === 'ui' && l.data[0] === 'message') beat.lastMessage = (l.data[1] ?? '').trim();
        else if (l.type === 'ui' && l.data[0] === 'error') errors.push((l.data[1] ?? '').trim());
        ctx?.heartbeat(beat);
      });
      readline.createInterface({ input: child.stderr }).on('line', (raw) => {
        log.write(`stderr: ${raw}\n`);
        errors.push(raw.trim());
      });

      // Packer can be silent for long (waiting for SSH, an OS install): heartbeat on a timer too,
      // so the heartbeat timeout only fires when the worker itself is gone.
      const ticker = setInterval(() => ctx?.heartbeat(beat), 10_000);
      void exited.finally(() => clearInterval(ticker)).catch(() => undefined);

      let cancelledWith: unknown;
      ctx?.cancelled.catch((err: unknown) => {
        cancelledWith = err;
        if (child.exitCode !== null || child.signalCode !== null) return;
        log.write(`labwright: cancelled (${err instanceof Error ? err.message : String(err)}); sending SIGINT\n`);
        signalGroup(child.pid, 'SIGINT');
        const grace = deps.interruptGraceMs ?? 5 * 60_000;
        const timer = setTimeout(() => {
          log.write(`labwright: packer still running ${grace} ms after SIGINT; killing it\n`);
          signalGroup(child.pid, 'SIGKILL');
        }, grace);
        void exited.finally(() => clearTimeout(timer));
      });

      let result: { code: number | null; signal: NodeJS.Signals | null };
      try {
        result = await exited;
      } catch (err) {
        log.end();
        throw nonRetryable('precondition', `cannot run packer (${packer}): ${(err as Error).message}`);
      }
      log.write(`labwright: packer exited with ${result.code ?? result.signal}\n`);
      await new Promise<void>((resolve) => log.end(resolve));
      if (cancelledWith !== undefined) {
        // Packer has finished its own cleanup; now report the cancellation.
        throw cancelledWith instanceof CancelledFailure
          ? cancelledWith
          : new CancelledFailure(
              `packer build of ${args.image} cancelled; packer exited with ${result.code ?? result.signal}`,
            );
      }
      if (result.code !== 0) {
        const reason = errors.filter(Boolean).slice(-3).join(' | ') || `exit ${result.code ?? result.signal}`;
        const message = `packer build of ${args.image} failed (exit ${result.code ?? result.signal}) at "${beat.step}": ${reason}`;
        // A dropped connection to the API is worth another build; a broken template is not.
        if (/connection refused|connection reset|i\/o timeout|no such host|TLS handshake timeout/i.test(reason)) {
          throw retryable('connection', message, { buildDir });
        }
        throw nonRetryable('precondition', message, { buildDir });
      }
      const artifacts = collectArtifacts(lines);
      const templateVmid = await templateVmidFrom(artifacts, buildDir);
      if (templateVmid === undefined) {
        throw nonRetryable(
          'precondition',
          `packer build of ${args.image} finished but its artifacts name no Proxmox template VMID ` +
            `(${artifacts.map((a) => `${a.builderId}:${a.id}`).join(', ') || 'no artifacts'})`,
          { buildDir },
        );
      }
      await fs.rm(varFile, { force: true });
      return { templateVmid, artifacts, durationMs: Date.now() - started, buildDir };
    },
  };
}

/** Signals a process group (the child was spawned detached, so its pid is the group id). */
function signalGroup(pid: number | undefined, signal: NodeJS.Signals): void {
  if (pid === undefined) return;
  try {
    process.kill(-pid, signal);
  } catch {
    // Already gone.
  }
}

async function listFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  const entries = await fs.readdir(dir, { withFileTypes: true }).catch(() => []);
  for (const e of entries) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) out.push(...(await listFiles(p)));
    else if (e.isFile()) out.push(p);
  }
  return out;
}

export type PackerActivities = ReturnType<typeof createPackerActivities>;

/** Packer's view of an inventory host: API URL with /api2/json and the token split in two. */
export function packerAccessFrom(host: { apiUrl: string; caFile?: string }, token: string): PackerProxmoxAccess {
  const match = /^([^@\s]+@[^!\s]+![^=\s]+)=(\S+)$/.exec(token.trim());
  if (!match) throw nonRetryable('validation', 'the Proxmox API token is not in the form user@realm!tokenid=secret');
  return {
    apiUrl: `${host.apiUrl.replace(/\/+$/, '')}/api2/json`,
    username: match[1]!,
    token: match[2]!,
    ...(host.caFile ? { caFile: host.caFile } : {}),
  };
}

/** The worker's Packer deps: packer from scripts/ensure-packer.sh, builds under the state dir. */
export function packerDepsFromLab(lab: {
  inventory: Pick<Inventory, 'proxmox'>;
  secrets: Pick<SecretStore, 'resolve'>;
  env: NodeJS.ProcessEnv;
}): PackerDeps {
  let packerPath: string | undefined;
  return {
    packerBin: () => (packerPath ??= lab.env.PACKER_BIN ?? ensureTool('ensure-packer.sh')),
    projectRoot,
    workDir: lab.env.LABWRIGHT_PACKER_WORKDIR ?? path.join(stateDir, 'packer'),
    secrets: lab.secrets,
    proxmoxAccess: async (name) => {
      const host = lab.inventory.proxmox.hosts.find((h) => h.name === name);
      if (!host) throw nonRetryable('notFound', `Proxmox host ${name} is not in the inventory`);
      return packerAccessFrom(host, await lab.secrets.resolve(host.token));
    },
  };
}
