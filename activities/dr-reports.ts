/**
 * The worker's local files the DR restore and the Flux bootstrap read and write, one operation
 * each:
 * - DR reports: each run's report is kept as JSON under `<dir>/<plan>/<mode>/`, so the next run
 *   (a weekly drill) reads the last one and reports the RTO trend; beside each, an HTML page of
 *   the plan's last runs with the RTO/RPO trend (lib/dr-report-page.ts);
 * - etcd snapshots (`talosctl etcd snapshot` files) in a folder: the newest, its time and size;
 * - a manifest file's facts (exists, size, sha256), so a workflow fails before it touches anything
 *   when the Flux components manifest is missing.
 */
import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { nonRetryable } from '../common/errors.js';
import type { DrMode, DrReport } from '../common/dr-restore.js';
import { REPORT_RUNS, reportPage } from '../lib/dr-report-page.js';
import { stateDir } from '../lib/paths.js';

export interface DrReportDeps {
  /** Folder of the reports (the worker's state dir: `.labwright/dr-reports`). */
  dir: string;
}

const SAFE = /^[a-z0-9][a-z0-9-]*$/;

export interface SnapshotFile {
  path: string;
  mtimeMs: number;
  size: number;
}

function reportFolder(dir: string, plan: string, mode: DrMode): string {
  if (!SAFE.test(plan) || !SAFE.test(mode)) throw nonRetryable('validation', `bad plan or mode: ${plan}/${mode}`);
  return path.join(dir, plan, mode);
}

/** The reports of a plan and mode, oldest first (the last `limit`); torn or foreign files are skipped. */
export async function readDrReports(
  dir: string,
  plan: string,
  mode: DrMode,
  limit = Infinity,
): Promise<Array<DrReport & { file: string }>> {
  const folder = reportFolder(dir, plan, mode);
  const files = (await fs.readdir(folder).catch(() => [] as string[])).filter((f) => f.endsWith('.json')).sort();
  const reports: Array<DrReport & { file: string }> = [];
  for (const f of files.reverse()) {
    if (reports.length >= limit) break;
    const file = path.join(folder, f);
    try {
      reports.push({ ...(JSON.parse(await fs.readFile(file, 'utf8')) as DrReport), file });
    } catch {
      // a torn or foreign file is skipped
    }
  }
  return reports.reverse();
}

/** Writes a file whole or not at all (a reader never sees half of it). */
async function writeAtomically(file: string, text: string): Promise<void> {
  const tmp = `${file}.${process.pid}.tmp`;
  await fs.writeFile(tmp, text, { mode: 0o600 });
  await fs.rename(tmp, file);
}

export function createDrReportActivities(deps: DrReportDeps) {
  const folder = (plan: string, mode: DrMode): string => reportFolder(deps.dir, plan, mode);

  return {
    /**
     * Saves a run's report (one file per run, named by its finish time and run ID) and beside it
     * the HTML page of the plan's last runs, this one included.
     */
    async drSaveReport(args: { report: DrReport }): Promise<{ file: string }> {
      const r = args.report;
      const dir = folder(r.plan, r.mode);
      await fs.mkdir(dir, { recursive: true, mode: 0o700 });
      const file = path.join(dir, `${r.finishedAt.replace(/[:.]/g, '-')}-${r.runId.slice(0, 8)}.json`);
      await writeAtomically(file, `${JSON.stringify(r, null, 2)}\n`);
      const runs = await readDrReports(deps.dir, r.plan, r.mode, REPORT_RUNS);
      await writeAtomically(file.replace(/\.json$/, '.html'), reportPage(r.plan, r.mode, runs));
      return { file };
    },

    /** The newest report of a plan and mode other than `exceptRunId`'s; null when there is none. */
    async drLastReport(args: { plan: string; mode: DrMode; exceptRunId?: string }): Promise<DrReport | null> {
      const reports = await readDrReports(deps.dir, args.plan, args.mode, 2);
      const report = reports.reverse().find((r) => r.runId !== args.exceptRunId);
      if (!report) return null;
      const { file: _file, ...rest } = report;
      return rest;
    },

    /** The newest etcd snapshot file (`*.snapshot`, `*.db`) in a folder; null when there is none. */
    async drNewestEtcdSnapshot(args: { dir: string }): Promise<SnapshotFile | null> {
      let names: string[];
      try {
        names = await fs.readdir(args.dir);
      } catch {
        return null;
      }
      let best: SnapshotFile | null = null;
      for (const name of names.filter((n) => /\.(snapshot|db)$/.test(n))) {
        const file = path.join(args.dir, name);
        const stat = await fs.stat(file).catch(() => undefined);
        if (!stat?.isFile()) continue;
        if (!best || stat.mtimeMs > best.mtimeMs) best = { path: file, mtimeMs: stat.mtimeMs, size: stat.size };
      }
      return best;
    },

    /**
     * An etcd snapshot's integrity, as a recovery checks it: talosctl reads the file as a bbolt
     * database first (`snapshot status`: the meta page's magic 0xED0CDAED, little-endian at offset
     * 16), and etcd's restore then checks the sha256 that `talosctl etcd snapshot` appends (the
     * file's size is then 32 bytes past a multiple of 512): it must match the data before it. A
     * raw copy of `member/snap/db` has none and is refused unless `skipHashCheck`
     * (`--recover-skip-hash-check`).
     */
    async drCheckEtcdSnapshot(args: {
      path: string;
      skipHashCheck?: boolean;
    }): Promise<{ ok: boolean; detail: string; sha256: string }> {
      const data = await fs.readFile(args.path).catch(() => {
        throw nonRetryable('notFound', `etcd snapshot ${args.path} cannot be read`);
      });
      const sha256 = createHash('sha256').update(data).digest('hex');
      const magic = data.length >= 20 ? data.readUInt32LE(16) : 0;
      if (magic !== 0xed0cdaed) {
        return {
          ok: false,
          sha256,
          detail: `not an etcd (bbolt) database: magic ${magic.toString(16)} at offset 16`,
        };
      }
      const appended = data.length % 512 === 32;
      let hash: string;
      if (appended) {
        const db = data.subarray(0, data.length - 32);
        const want = data.subarray(data.length - 32).toString('hex');
        const got = createHash('sha256').update(db).digest('hex');
        if (want !== got) {
          return {
            ok: false,
            sha256,
            detail: `its appended sha256 ${want.slice(0, 12)} does not match the data (${got.slice(0, 12)}): corrupt or truncated`,
          };
        }
        hash = 'appended sha256 matches';
      } else if (args.skipHashCheck) {
        hash = 'no appended sha256 (raw copy; skipHashCheck)';
      } else {
        return {
          ok: false,
          sha256,
          detail:
            'no appended sha256 (a raw copy of member/snap/db, not `talosctl etcd snapshot` output): ' +
            'etcd refuses it without skipHashCheck (--recover-skip-hash-check)',
        };
      }
      return {
        ok: true,
        sha256,
        detail: `bbolt database, ${data.length} bytes, ${hash}, sha256 ${sha256.slice(0, 12)}`,
      };
    },

    /**
     * A manifest file's text (multi-document YAML), for k8sApply. It travels through history, so
     * it is refused above 1.5 MB (Temporal's payload limit is 2 MB).
     */
    async drReadManifest(args: { path: string }): Promise<string> {
      const text = await fs.readFile(args.path, 'utf8').catch(() => {
        throw nonRetryable('notFound', `manifest ${args.path} does not exist on the worker`);
      });
      if (text.length > 1_500_000) {
        throw nonRetryable(
          'validation',
          `manifest ${args.path} is ${text.length} bytes: too big to pass through history`,
        );
      }
      return text;
    },

    /** Size and sha256 of a file on the worker; NotFoundError when it is missing. */
    async drFileFacts(args: { path: string }): Promise<{ size: number; sha256: string }> {
      const data = await fs.readFile(args.path).catch(() => {
        throw nonRetryable('notFound', `file ${args.path} does not exist on the worker`);
      });
      return { size: data.length, sha256: createHash('sha256').update(data).digest('hex') };
    },
  };
}

export type DrReportActivities = ReturnType<typeof createDrReportActivities>;

/** LABWRIGHT_DR_REPORTS_DIR, default `<state dir>/dr-reports`. */
export function drReportDepsFromEnv(env: NodeJS.ProcessEnv): DrReportDeps {
  return { dir: env.LABWRIGHT_DR_REPORTS_DIR ?? path.join(stateDir, 'dr-reports') };
}
