/**
 * Real bytes for the DR tests: a directory stands for each PVC's volume, and the controllers that
 * move data run the real programs on it.
 *
 * - VolSync's restic mover: a ReplicationSource's sync runs `restic backup --host volsync .` in the
 *   source PVC's directory (scheduled or manually triggered, never while `spec.paused`); a
 *   ReplicationDestination's manual sync picks the snapshot as VolSync's mover script does
 *   (`restoreAsOf`: the newest at or before that time; `previous`: skip that many older ones) and
 *   runs `restic restore` into the destination (copyMethod Direct: `destinationPVC`; Snapshot: its
 *   own `volsync-<rd>-dst` volume, then a VolumeSnapshot of it); `enableFileDeletion` removes
 *   what the snapshot does not hold (restic's `--delete`, done from `restic ls` where the
 *   installed restic predates the flag).
 * - The CSI provisioner: a PVC with a VolumeSnapshot dataSource gets the snapshot's bytes when a
 *   pod first uses it.
 * - The kubelet and the Job controller: a Job's container command runs in a private mount
 *   namespace whose root holds the host's programs and each PVC volume at its mountPath (read-only
 *   when asked); the Job completes or fails by the exit code.
 *
 * The repository is whatever the restic Secret's RESTIC_REPOSITORY says: tests use a local path.
 * Only the namespaces a test hands to `watch` are played, so parallel tests keep their own Jobs.
 */
import { execFile } from 'node:child_process';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import {
  BatchV1Api,
  CoreV1Api,
  CustomObjectsApi,
  PatchStrategy,
  setHeaderOptions,
  type V1Job,
} from '@kubernetes/client-node';
import {
  completeJob,
  completeReplicationDestination,
  createReadySnapshot,
  kubeConfigFor,
  type KubeTarget,
} from './kube-controllers.js';

const run = promisify(execFile);

/** What the lab did, for tests to line up against a workflow's steps. */
export type VolumeLabEvent =
  | { kind: 'backup'; namespace: string; name: string; snapshot: string; time: string; at: number }
  | { kind: 'backup-skipped'; namespace: string; name: string; why: string; at: number }
  | { kind: 'restore'; namespace: string; name: string; snapshot?: string; start: number; end: number; ok: boolean }
  | { kind: 'job'; namespace: string; name: string; exitCode: number; output: string; start: number; end: number };

export interface ResticSnapshot {
  id: string;
  time: string;
}

interface Rs {
  metadata: { name: string; namespace: string };
  spec: {
    sourcePVC: string;
    paused?: boolean;
    trigger?: { schedule?: string; manual?: string };
    restic: { repository: string };
  };
  status?: { lastSyncTime?: string; lastManualSync?: string };
}

interface Rd {
  metadata: { name: string; namespace: string };
  spec: {
    paused?: boolean;
    trigger?: { manual?: string };
    restic: {
      repository: string;
      copyMethod?: 'Direct' | 'Snapshot' | 'Clone' | 'None';
      destinationPVC?: string;
      capacity?: string;
      restoreAsOf?: string;
      previous?: number;
      enableFileDeletion?: boolean;
    };
  };
  status?: { lastManualSync?: string };
}

export interface VolumeLabOptions {
  kube: KubeTarget;
  /** Holds the volumes (`volumes/<ns>/<pvc>`) and VolumeSnapshot contents (`snapshots/<ns>/<name>`). */
  root: string;
  /** How often the lab looks at the watched namespaces. */
  pollMs?: number;
}

export class VolumeLab {
  readonly events: VolumeLabEvent[] = [];
  /** Watched namespaces, each with how often its scheduled ReplicationSources sync (their cron is not read). */
  private readonly namespaces = new Map<string, { scheduleEveryMs?: number }>();
  private readonly busy = new Set<string>();
  private readonly scheduledAt = new Map<string, number>();
  private loop?: Promise<void>;
  private stopping = false;
  private resticHasDelete?: boolean;
  private readonly custom: CustomObjectsApi;
  private readonly core: CoreV1Api;
  private readonly batch: BatchV1Api;

  constructor(private readonly opts: VolumeLabOptions) {
    const kc = kubeConfigFor(opts.kube);
    this.custom = kc.makeApiClient(CustomObjectsApi);
    this.core = kc.makeApiClient(CoreV1Api);
    this.batch = kc.makeApiClient(BatchV1Api);
  }

  volumeDir(namespace: string, pvc: string): string {
    return path.join(this.opts.root, 'volumes', namespace, pvc);
  }

  snapshotDir(namespace: string, name: string): string {
    return path.join(this.opts.root, 'snapshots', namespace, name);
  }

  /**
   * Plays the controllers in `namespace` from now on; `scheduleEveryMs`: a ReplicationSource with
   * a schedule syncs that often (default: only on a manual trigger).
   */
  watch(namespace: string, opts: { scheduleEveryMs?: number } = {}): void {
    this.namespaces.set(namespace, opts);
    this.loop ??= this.playLoop();
  }

  async stop(): Promise<void> {
    this.stopping = true;
    await this.loop;
  }

  /** One sync of a ReplicationSource (what its schedule or manual trigger starts). */
  async backup(namespace: string, name: string, manual?: string): Promise<ResticSnapshot | undefined> {
    const rs = (await this.custom.getNamespacedCustomObject({
      group: 'volsync.backube',
      version: 'v1alpha1',
      plural: 'replicationsources',
      namespace,
      name,
    })) as Rs;
    if (rs.spec.paused) {
      this.events.push({ kind: 'backup-skipped', namespace, name, why: 'spec.paused', at: Date.now() });
      return undefined;
    }
    const env = await this.resticEnv(namespace, rs.spec.restic.repository);
    if (
      !(await this.restic(env, ['cat', 'config']).then(
        () => true,
        () => false,
      ))
    )
      await this.restic(env, ['init']);
    const dir = this.volumeDir(namespace, rs.spec.sourcePVC);
    await fs.mkdir(dir, { recursive: true });
    await this.restic(env, ['backup', '--host', 'volsync', '--exclude', 'lost+found', '.'], dir);
    const snap = (await this.snapshots(env)).at(0)!;
    // The mover Job ends after restic does: lastSyncTime (seconds) is never before the snapshot.
    const done = Math.ceil(Date.parse(snap.time) / 1000) * 1000;
    if (Date.now() < done) await new Promise((r) => setTimeout(r, done - Date.now()));
    const lastSyncTime = new Date(Math.floor(Date.now() / 1000) * 1000).toISOString().replace('.000Z', 'Z');
    await this.custom.patchNamespacedCustomObjectStatus(
      {
        group: 'volsync.backube',
        version: 'v1alpha1',
        plural: 'replicationsources',
        namespace,
        name,
        body: {
          status: {
            lastSyncTime,
            lastSyncDuration: '1s',
            ...(manual ? { lastManualSync: manual } : {}),
            latestMoverStatus: { result: 'Successful', logs: `snapshot ${snap.id.slice(0, 8)} saved` },
          },
        },
      },
      setHeaderOptions('Content-Type', PatchStrategy.MergePatch),
    );
    this.events.push({ kind: 'backup', namespace, name, snapshot: snap.id, time: snap.time, at: Date.now() });
    return snap;
  }

  /** The repository's snapshots of host `volsync`, newest first. */
  async repositorySnapshots(namespace: string, secret: string): Promise<ResticSnapshot[]> {
    return this.snapshots(await this.resticEnv(namespace, secret));
  }

  private async snapshots(env: NodeJS.ProcessEnv): Promise<ResticSnapshot[]> {
    const { stdout } = await this.restic(env, ['snapshots', '--host', 'volsync', '--json']);
    const list = JSON.parse(stdout || '[]') as ResticSnapshot[];
    return list.map((s) => ({ id: s.id, time: s.time })).sort((a, b) => Date.parse(b.time) - Date.parse(a.time));
  }

  private async playLoop(): Promise<void> {
    while (!this.stopping) {
      for (const [ns, opts] of this.namespaces) {
        try {
          await this.playNamespace(ns, opts.scheduleEveryMs);
        } catch {
          // The namespace may be gone (a drill's cleanup): the next round looks again.
        }
      }
      await new Promise((r) => setTimeout(r, this.opts.pollMs ?? 100));
    }
  }

  private async playNamespace(namespace: string, every: number | undefined): Promise<void> {
    const list = async <T>(plural: string): Promise<T[]> =>
      (
        (await this.custom
          .listNamespacedCustomObject({ group: 'volsync.backube', version: 'v1alpha1', plural, namespace })
          .catch(() => ({ items: [] }))) as { items: T[] }
      ).items;
    for (const rs of await list<Rs>('replicationsources')) {
      const key = `rs/${namespace}/${rs.metadata.name}`;
      const manual = rs.spec.trigger?.manual;
      const last = this.scheduledAt.get(key) ?? Date.now();
      if (!this.scheduledAt.has(key)) this.scheduledAt.set(key, last);
      if (manual && manual !== rs.status?.lastManualSync) {
        await this.once(key, () => this.backup(namespace, rs.metadata.name, manual));
      } else if (rs.spec.trigger?.schedule && every !== undefined && Date.now() - last >= every) {
        this.scheduledAt.set(key, Date.now());
        await this.once(key, () => this.backup(namespace, rs.metadata.name));
      }
    }
    for (const rd of await list<Rd>('replicationdestinations')) {
      const manual = rd.spec.trigger?.manual;
      if (rd.spec.paused || !manual || manual === rd.status?.lastManualSync) continue;
      await this.once(`rd/${namespace}/${rd.metadata.name}/${manual}`, () => this.restore(rd, manual), true);
    }
    const jobs = await this.batch.listNamespacedJob({ namespace }).catch(() => ({ items: [] as V1Job[] }));
    for (const job of jobs.items) {
      const finished = (job.status?.conditions ?? []).some(
        (c) => (c.type === 'Complete' || c.type === 'Failed') && c.status === 'True',
      );
      if (!finished) await this.once(`job/${namespace}/${job.metadata!.name}`, () => this.runJob(job), true);
    }
  }

  /** Runs `body` unless it runs already (or, `onlyOnce`, ran before) for `key`. */
  private async once(key: string, body: () => Promise<unknown>, onlyOnce = false): Promise<void> {
    if (this.busy.has(key)) return;
    this.busy.add(key);
    try {
      await body();
    } finally {
      if (!onlyOnce) this.busy.delete(key);
    }
  }

  private async restore(rd: Rd, manual: string): Promise<void> {
    const { namespace, name } = rd.metadata;
    const start = Date.now();
    const m = rd.spec.restic;
    const fail = async (logs: string): Promise<void> => {
      this.events.push({ kind: 'restore', namespace, name, start, end: Date.now(), ok: false });
      await completeReplicationDestination(this.opts.kube, {
        namespace,
        name,
        manualTrigger: manual,
        result: 'Failed',
        logs,
      });
    };
    const env = await this.resticEnv(namespace, m.repository);
    const asOf = m.restoreAsOf ? Date.parse(m.restoreAsOf) : Infinity;
    const eligible = (await this.snapshots(env)).filter((s) => Date.parse(s.time) <= asOf);
    const chosen = eligible[m.previous ?? 0];
    if (!chosen)
      return fail(`No eligible snapshots found (restoreAsOf ${m.restoreAsOf ?? '-'}, previous ${m.previous ?? 0})`);
    const direct = m.copyMethod === 'Direct';
    if (direct && !m.destinationPVC) return fail('copyMethod Direct needs destinationPVC');
    const pvc = direct ? m.destinationPVC! : `volsync-${name}-dst`;
    const dir = this.volumeDir(namespace, pvc);
    await fs.mkdir(dir, { recursive: true });
    if (m.enableFileDeletion) await this.deleteOutside(env, chosen.id, dir);
    await this.restic(env, ['restore', chosen.id, '--target', dir]);
    let latestImage: { apiGroup: string; kind: string; name: string };
    if (direct) {
      latestImage = { apiGroup: '', kind: 'PersistentVolumeClaim', name: pvc };
    } else {
      const snapName = `volsync-${name}-dst-${new Date()
        .toISOString()
        .replace(/[-:TZ.]/g, '')
        .slice(0, 14)}`;
      await fs.rm(this.snapshotDir(namespace, snapName), { recursive: true, force: true });
      await fs.mkdir(path.dirname(this.snapshotDir(namespace, snapName)), { recursive: true });
      await fs.cp(dir, this.snapshotDir(namespace, snapName), { recursive: true });
      await createReadySnapshot(this.custom, namespace, snapName, pvc, m.capacity ?? '1Gi');
      latestImage = { apiGroup: 'snapshot.storage.k8s.io', kind: 'VolumeSnapshot', name: snapName };
    }
    this.events.push({ kind: 'restore', namespace, name, snapshot: chosen.id, start, end: Date.now(), ok: true });
    await completeReplicationDestination(this.opts.kube, {
      namespace,
      name,
      manualTrigger: manual,
      result: 'Successful',
      logs: `restored snapshot ${chosen.id.slice(0, 8)} of ${chosen.time}`,
      latestImage,
    });
  }

  /** restic restore --delete: removes what snapshot `id` does not hold from `dir`. */
  private async deleteOutside(env: NodeJS.ProcessEnv, id: string, dir: string): Promise<void> {
    this.resticHasDelete ??= (await this.restic(env, ['restore', '--help'])).stdout.includes('--delete');
    if (this.resticHasDelete) return void (await this.restic(env, ['restore', id, '--target', dir, '--delete']));
    const { stdout } = await this.restic(env, ['ls', '--json', id]);
    const keep = new Set(
      stdout
        .split('\n')
        .filter(Boolean)
        .map((l) => JSON.parse(l) as { struct_type?: string; path?: string })
        .filter((n) => n.struct_type === 'node' && n.path)
        .map((n) => n.path!),
    );
    const walk = async (rel: string): Promise<void> => {
      for (const e of await fs.readdir(path.join(dir, rel), { withFileTypes: true })) {
        const p = `${rel}/${e.name}`;
        if (!keep.has(p)) await fs.rm(path.join(dir, p), { recursive: true, force: true });
        else if (e.isDirectory()) await walk(p);
      }
    };
    await walk('');
  }

  /** The volume a claim stands for; a claim restored from a VolumeSnapshot gets its bytes on first use. */
  private async claimDir(namespace: string, claim: string): Promise<string | undefined> {
    const pvc = await this.core.readNamespacedPersistentVolumeClaim({ namespace, name: claim }).catch(() => undefined);
    if (!pvc) return undefined;
    const dir = this.volumeDir(namespace, claim);
    const exists = await fs.stat(dir).then(
      () => true,
      () => false,
    );
    if (!exists) {
      const source = pvc.spec?.dataSource;
      if (source?.kind === 'VolumeSnapshot') {
        await fs.cp(this.snapshotDir(namespace, source.name), dir, { recursive: true });
      } else {
        await fs.mkdir(dir, { recursive: true });
      }
    }
    return dir;
  }

  private async runJob(job: V1Job): Promise<void> {
    const namespace = job.metadata!.namespace!;
    const name = job.metadata!.name!;
    const spec = job.spec!.template.spec!;
    const container = spec.containers[0]!;
    const mounts: Array<{ dir: string; at: string; readOnly: boolean }> = [];
    for (const vm of container.volumeMounts ?? []) {
      const volume = (spec.volumes ?? []).find((v) => v.name === vm.name);
      const claim = volume?.persistentVolumeClaim;
      if (!claim) continue;
      const dir = await this.claimDir(namespace, claim.claimName);
      // Without its PVC the pod stays Pending, as on a cluster: the Job is looked at again.
      if (!dir) {
        this.busy.delete(`job/${namespace}/${name}`);
        return;
      }
      mounts.push({ dir, at: vm.mountPath, readOnly: Boolean(vm.readOnly || claim.readOnly) });
    }
    const start = Date.now();
    const { exitCode, output } = await runContained([...(container.command ?? []), ...(container.args ?? [])], mounts, {
      ...Object.fromEntries((container.env ?? []).map((e) => [e.name, e.value ?? ''])),
    });
    this.events.push({ kind: 'job', namespace, name, exitCode, output, start, end: Date.now() });
    await completeJob(this.opts.kube, namespace, name, exitCode === 0);
  }

  private async resticEnv(namespace: string, secret: string): Promise<NodeJS.ProcessEnv> {
    const s = await this.core.readNamespacedSecret({ namespace, name: secret });
    const data = Object.fromEntries(
      Object.entries(s.data ?? {}).map(([k, v]) => [k, Buffer.from(v, 'base64').toString('utf8')]),
    );
    if (!data.RESTIC_REPOSITORY || !data.RESTIC_PASSWORD) {
      throw new Error(`Secret ${namespace}/${secret} lacks RESTIC_REPOSITORY or RESTIC_PASSWORD`);
    }
    return {
      PATH: process.env.PATH,
      HOME: this.opts.root,
      RESTIC_CACHE_DIR: path.join(this.opts.root, 'restic-cache'),
      ...data,
    };
  }

  private async restic(
    env: NodeJS.ProcessEnv,
    args: string[],
    cwd?: string,
  ): Promise<{ stdout: string; stderr: string }> {
    try {
      return await run('restic', args, { env, cwd, maxBuffer: 64 * 1024 ** 2 });
    } catch (err) {
      const e = err as { stderr?: string; code?: number | string };
      if (e.code === 'ENOENT') throw new Error('restic is not installed: run scripts/ensure-restic.sh');
      throw new Error(`restic ${args.join(' ')} failed (${e.code}): ${e.stderr ?? ''}`.trim(), { cause: err });
    }
  }
}

/**
 * Runs `argv` as a container would: in a private mount namespace whose root is a tmpfs holding
 * the host's programs (/usr, /bin, /lib, /etc read-only) and each volume at its mount path.
 */
export async function runContained(
  argv: string[],
  mounts: Array<{ dir: string; at: string; readOnly: boolean }>,
  env: Record<string, string>,
): Promise<{ exitCode: number; output: string }> {
  const setup = [
    'set -eu',
    'root=$(mktemp -d)',
    'mount -t tmpfs labwright-pod "$root"',
    'for d in usr bin sbin lib lib32 lib64 etc; do',
    '  if [ -L "/$d" ]; then ln -s "$(readlink "/$d")" "$root/$d"',
    '  elif [ -d "/$d" ]; then mkdir "$root/$d"; mount --bind "/$d" "$root/$d"; mount -o remount,bind,ro "$root/$d"; fi',
    'done',
    'mkdir -p "$root/tmp" "$root/dev" "$root/proc"',
    'mount --rbind /dev "$root/dev"',
    ...mounts.flatMap((m, i) => [
      `mkdir -p "$root${m.at}"`,
      `mount --bind "$MOUNT_${i}" "$root${m.at}"`,
      ...(m.readOnly ? [`mount -o remount,bind,ro "$root${m.at}"`] : []),
    ]),
    'exec chroot "$root" "$@"',
  ].join('\n');
  const mountEnv = Object.fromEntries(mounts.map((m, i) => [`MOUNT_${i}`, m.dir]));
  try {
    const { stdout, stderr } = await run(
      'unshare',
      ['--mount', '--propagation', 'private', 'sh', '-c', setup, 'pod', ...argv],
      { env: { PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', ...env, ...mountEnv } },
    );
    return { exitCode: 0, output: `${stdout}${stderr}` };
  } catch (err) {
    const e = err as { code?: number | string; stdout?: string; stderr?: string };
    if (e.code === 'ENOENT') throw new Error('unshare (util-linux) is not installed: the Job runner needs it');
    return { exitCode: typeof e.code === 'number' ? e.code : 1, output: `${e.stdout ?? ''}${e.stderr ?? ''}` };
  }
}
