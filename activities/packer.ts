/**
 * Packer activities: hash a build's inputs, run `packer build -machine-readable` as a
 * subprocess that reports its current step through heartbeats, and stop a previous attempt's
 * Packer. Cancelling the activity sends Packer SIGINT and waits for Packer's own cleanup before
 * reporting the cancellation.
 *
 * Packer runs in a process group of its own, with its output going to the build folder's
 * packer.log (read back from there), so it outlives a worker that dies; the group is recorded in
 * <workDir>/<image>/packer.pid, where the next attempt finds and stops it (packerStopPrevious).
 *
 * Labwright gives every template these variables as PKR_VAR_* environment variables (secrets
 * never appear on a command line or in a file): vm_id, template_name, proxmox_url,
 * proxmox_username, proxmox_token, proxmox_node, storage_pool, and build_password, a password
 * generated for this build alone and never stored (a template that installs an OS gives it to
 * its build user and locks the account at the end). Packer's environment is otherwise only PATH,
 * HOME, locale and proxies. When the host has a caFile, SSL_CERT_FILE points at it so Packer
 * verifies the API with the lab's CA.
 *
 * The template's VMID is read from the artifact lines: the Proxmox builder's artifact id is the
 * template's VMID; a build that makes its template another way (a provisioner, a post-processor,
 * the tests' file builder) reports it as an artifact file named `*.vmid` holding the number.
 */
import { execFileSync, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, promises as fs } from 'node:fs';
import path from 'node:path';
import { StringDecoder } from 'node:string_decoder';
import { setTimeout as sleep } from 'node:timers/promises';
import { Context } from '@temporalio/activity';
import { CancelledFailure } from '@temporalio/common';
import { nonRetryable, retryable } from '../common/errors.js';
import type { SecretRef } from '../common/secret-ref.js';
import type { Inventory } from '../hardware/schema.js';
import { projectRoot, stateDir } from '../lib/paths.js';
import { childEnv, ensureTool } from '../lib/processes.js';
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

/** What Packer prints of PVE answering a 5xx, or of a VM lock PVE gave up waiting for. */
const PVE_TRANSIENT =
  /\b50[0234]\b.*(?:Internal Server Error|Bad Gateway|Service Unavailable|Gateway Time-?out)|can't lock file/i;

export interface PackerDeps {
  /** Path of the packer binary (scripts/ensure-packer.sh builds it). */
  packerBin: () => string;
  /** The environment Packer's own (PATH, HOME, proxies) comes from; default process.env. */
  baseEnv?: NodeJS.ProcessEnv;
  /** Relative template paths are resolved against this folder. */
  projectRoot: string;
  /** Builds run in <workDir>/<image>/<vmid>-<hash12>-<attempt>/ (log, var file, artifacts). */
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
  /** The workflow's attempt at this build (1, 2, ...): each gets its own build folder. */
  attempt: number;
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

/**
 * What Packer and its plugins are, for the hash: `packer version` and, from the packer.versions
 * file scripts/ensure-packer.sh writes next to the binary, the module versions it was built from
 * (the proxmox plugin is compiled in, so `packer plugins installed` does not list it).
 */
async function packerIdentity(bin: string): Promise<string> {
  const version = execFileSync(bin, ['version'], {
    encoding: 'utf8',
    env: childEnv({ CHECKPOINT_DISABLE: '1' }),
  }).split('\n')[0];
  const modules = await fs.readFile(path.join(path.dirname(bin), 'packer.versions'), 'utf8').catch(() => '');
  return `${version}\n${modules}`;
}

/** The process group of a running build, as packer.pid records it. */
interface RecordedPacker {
  pid: number;
  /** /proc/<pid>/stat's start time: a pid the kernel reused for another program is not ours. */
  started: string;
  buildDir: string;
}

/** Field 22 of /proc/<pid>/stat (start time in clock ticks); undefined if the process is gone. */
async function processStart(pid: number): Promise<string | undefined> {
  const stat = await fs.readFile(`/proc/${pid}/stat`, 'utf8').catch(() => undefined);
  if (!stat) return undefined;
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  if (fields[0] === 'Z') return undefined; // exited, not yet reaped
  return fields[19];
}

function pidFile(deps: PackerDeps, image: string): string {
  return path.join(deps.workDir, image, 'packer.pid');
}

export function createPackerActivities(deps: PackerDeps) {
  return {
    /**
     * sha256 over everything that changes the image: the template file, the files of its folder
     * that Packer reads (scripts/, http/ with the preseed, *.pkrvars.hcl), the variables, and the
     * Packer and plugin versions. Secret variables count by reference, never by value.
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
      const varFiles = (await fs.readdir(dir)).filter((f) => f.endsWith('.pkrvars.hcl')).map((f) => path.join(dir, f));
      const extra = [...(await listFiles(path.join(dir, 'scripts'))), ...(await listFiles(path.join(dir, 'http')))];
      for (const f of [...varFiles, ...extra].sort()) {
        const body = await fs.readFile(f);
        hash.update(`file\0${path.relative(dir, f)}\0${body.length}\0`).update(body);
      }
      hash.update(`variables\0${canonical(args.variables)}\0secrets\0${canonical(args.secretVariables)}`);
      hash.update(`packer\0${await packerIdentity(deps.packerBin())}`);
      return { hash: hash.digest('hex'), templateFile: file };
    },

    /**
     * Stops the Packer a previous attempt of this image's build left running (its worker died):
     * SIGINT to its recorded process group, so Packer cleans up as on Ctrl-C, and SIGKILL if it
     * outlives the grace period. Nothing to do when none is recorded or it has exited.
     */
    async packerStopPrevious(args: { image: string }): Promise<{ stopped?: number }> {
      const file = pidFile(deps, args.image);
      const text = await fs.readFile(file, 'utf8').catch(() => undefined);
      if (text === undefined) return {};
      const recorded = JSON.parse(text) as RecordedPacker;
      const alive = async (): Promise<boolean> => (await processStart(recorded.pid)) === recorded.started;
      if (!(await alive())) {
        await fs.rm(file, { force: true });
        return {};
      }
      await note(recorded.buildDir, `labwright: a new attempt stops this packer (pid ${recorded.pid}); sending SIGINT`);
      signalGroup(recorded.pid, 'SIGINT');
      const deadline = Date.now() + (deps.interruptGraceMs ?? 5 * 60_000);
      while ((await alive()) && Date.now() < deadline) {
        inActivity()?.heartbeat({ stopping: recorded.pid });
        await sleep(200);
      }
      if (await alive()) {
        await note(recorded.buildDir, `labwright: packer ${recorded.pid} still running after SIGINT; killing it`);
        signalGroup(recorded.pid, 'SIGKILL');
        while (await alive()) await sleep(100);
      }
      await fs.rm(file, { force: true });
      return { stopped: recorded.pid };
    },

    /**
     * Runs `packer build -machine-readable` and returns the template's VMID. Heartbeats carry the
     * current step. On cancellation Packer gets SIGINT and this waits for it to exit.
     */
    async packerBuild(args: PackerBuildArgs): Promise<PackerBuildResult> {
      const ctx = inActivity();
      const { file } = await readTemplate(deps, args.template);
      const buildDir = path.join(deps.workDir, args.image, `${args.vmid}-${args.hash.slice(0, 12)}-${args.attempt}`);
      await fs.rm(buildDir, { recursive: true, force: true });
      await fs.mkdir(buildDir, { recursive: true, mode: 0o700 });
      // Not secret (secret variables go through the environment), but the build's own business.
      const varFile = path.join(buildDir, 'variables.json');
      await fs.writeFile(varFile, JSON.stringify(args.variables, null, 2), { mode: 0o600 });

      const access = await deps.proxmoxAccess(args.host);
      const own: Record<string, string> = {
        CHECKPOINT_DISABLE: '1',
        PACKER_NO_COLOR: '1',
        // Packer's plugin and cache folders inside the build, not the worker's home.
        PACKER_CONFIG_DIR: buildDir,
        PACKER_CACHE_DIR: path.join(buildDir, 'cache'),
        PKR_VAR_vm_id: String(args.vmid),
        PKR_VAR_template_name: args.templateName,
        PKR_VAR_proxmox_url: access.apiUrl,
        PKR_VAR_proxmox_username: access.username,
        PKR_VAR_proxmox_token: access.token,
        PKR_VAR_proxmox_node: args.node,
        PKR_VAR_storage_pool: args.storage,
        PKR_VAR_build_password: randomBytes(24).toString('base64url'),
      };
      if (access.caFile) own.SSL_CERT_FILE = access.caFile;
      for (const [name, ref] of Object.entries(args.secretVariables)) {
        own[`PKR_VAR_${name}`] = await deps.secrets.resolve(ref);
      }

      const packer = deps.packerBin();
      const logFile = path.join(buildDir, 'packer.log');
      const out = await fs.open(logFile, 'a', 0o600);
      const started = Date.now();
      const child = spawn(packer, ['build', '-machine-readable', '-color=false', `-var-file=${varFile}`, file], {
        cwd: buildDir,
        env: childEnv(own, deps.baseEnv ?? process.env),
        // Output to the log file, not a pipe to this worker: Packer keeps going (and can be stopped
        // cleanly by the next attempt) when the worker dies, instead of dying on a broken pipe.
        stdio: ['ignore', out.fd, out.fd],
        // Its own process group: Packer (a panicwrap parent and its child) stops on a SIGINT sent
        // to the group, as a terminal's Ctrl-C does; the parent alone ignores SIGINT.
        detached: true,
      });
      await out.close();
      const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve, reject) => {
        child.once('error', reject);
        child.once('close', (code, signal) => resolve({ code, signal }));
      });
      const recordFile = pidFile(deps, args.image);
      if (child.pid !== undefined) {
        const record: RecordedPacker = { pid: child.pid, started: (await processStart(child.pid)) ?? '', buildDir };
        await fs.writeFile(recordFile, JSON.stringify(record), { mode: 0o600 });
      }

      const lines: PackerLine[] = [];
      const errors: string[] = [];
      const beat: PackerHeartbeat = { pid: child.pid, step: 'starting packer', lines: 0 };
      ctx?.heartbeat(beat);
      const onLine = (raw: string): void => {
        const l = parseMachineLine(raw);
        if (!l) {
          if (raw.trim() && !raw.startsWith('labwright: ')) errors.push(raw.trim());
          return;
        }
        lines.push(l);
        beat.lines++;
        const step = stepOf(l);
        if (step) beat.step = step;
        else if (l.type === 'ui' && l.data[0] === 'message') beat.lastMessage = (l.data[1] ?? '').trim();
        else if (l.type === 'ui' && l.data[0] === 'error') errors.push((l.data[1] ?? '').trim());
        ctx?.heartbeat(beat);
      };
      let done = false;
      const reading = followLines(logFile, onLine, () => done);

      // Packer can be silent for long (waiting for SSH, an OS install): heartbeat on a timer too,
      // so the heartbeat timeout only fires when the worker itself is gone.
      const ticker = setInterval(() => ctx?.heartbeat(beat), 10_000);

      let cancelledWith: unknown;
      ctx?.cancelled.catch((err: unknown) => {
        cancelledWith = err;
        if (child.exitCode !== null || child.signalCode !== null) return;
        void note(
          buildDir,
          `labwright: cancelled (${err instanceof Error ? err.message : String(err)}); sending SIGINT`,
        );
        signalGroup(child.pid, 'SIGINT');
        const grace = deps.interruptGraceMs ?? 5 * 60_000;
        const timer = setTimeout(() => {
          void note(buildDir, `labwright: packer still running ${grace} ms after SIGINT; killing it`);
          signalGroup(child.pid, 'SIGKILL');
        }, grace);
        void exited.finally(() => clearTimeout(timer)).catch(() => undefined);
      });

      let result: { code: number | null; signal: NodeJS.Signals | null };
      try {
        result = await exited;
      } catch (err) {
        throw nonRetryable('precondition', `cannot run packer (${packer}): ${(err as Error).message}`);
      } finally {
        clearInterval(ticker);
        done = true;
        await reading;
        await fs.rm(varFile, { force: true });
        await fs.rm(recordFile, { force: true });
      }
      await note(buildDir, `labwright: packer exited with ${result.code ?? result.signal}`);
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
        // A dropped connection to the API is worth another build; a broken template is not, and a
        // VMID another VM holds is a conflict (the workflow removes only its own half-made VMs).
        if (/connection refused|connection reset|i\/o timeout|no such host|TLS handshake timeout/i.test(reason)) {
          throw retryable('connection', message, { buildDir });
        }
        // PVE's passing troubles (a 5xx, a VM lock another task held past PVE's timeout): the
        // workflow clears this build's half-made VM and runs Packer again.
        if (PVE_TRANSIENT.test(reason)) throw retryable('server', message, { buildDir });
        if (/already exists on node|config file already exists/i.test(reason)) {
          throw nonRetryable('conflict', message, { buildDir });
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
      return { templateVmid, artifacts, durationMs: Date.now() - started, buildDir };
    },
  };
}

/** Appends one of labwright's own lines to a build's packer.log (Packer writes there too, appending). */
async function note(buildDir: string, line: string): Promise<void> {
  await fs.appendFile(path.join(buildDir, 'packer.log'), `${line}\n`).catch(() => undefined);
}

/** Calls `onLine` for each line appended to `file` until `stop()` is true, then for the rest. */
async function followLines(file: string, onLine: (line: string) => void, stop: () => boolean): Promise<void> {
  const handle = await fs.open(file, 'r');
  let offset = 0;
  let partial = '';
  const decoder = new StringDecoder('utf8');
  const buf = Buffer.alloc(64 * 1024);
  try {
    for (;;) {
      const finished = stop();
      const { bytesRead } = await handle.read(buf, 0, buf.length, offset);
      if (bytesRead > 0) {
        offset += bytesRead;
        const parts = (partial + decoder.write(buf.subarray(0, bytesRead))).split('\n');
        partial = parts.pop()!;
        parts.forEach(onLine);
        continue;
      }
      if (finished) break;
      await sleep(100);
    }
    partial += decoder.end();
    if (partial) onLine(partial);
  } finally {
    await handle.close();
  }
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

/** scripts/ensure-packer.sh's packer; a worker without the script (an image) must set PACKER_BIN. */
function ensurePacker(): string {
  if (!existsSync(path.join(projectRoot, 'scripts', 'ensure-packer.sh'))) {
    throw nonRetryable(
      'precondition',
      'PACKER_BIN is not set and scripts/ensure-packer.sh is not here to build packer',
    );
  }
  return ensureTool('ensure-packer.sh');
}

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

/**
 * The worker's Packer deps: packer from PACKER_BIN (the worker image sets it) or
 * scripts/ensure-packer.sh, builds under the state dir, Packer's environment from the worker's.
 */
export function packerDepsFromLab(lab: {
  inventory: Pick<Inventory, 'proxmox'>;
  secrets: Pick<SecretStore, 'resolve'>;
  env: NodeJS.ProcessEnv;
}): PackerDeps {
  let packerPath: string | undefined;
  return {
    packerBin: () => (packerPath ??= lab.env.PACKER_BIN ?? ensurePacker()),
    baseEnv: lab.env,
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
