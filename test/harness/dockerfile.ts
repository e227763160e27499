/**
 * Reads the Dockerfile and .dockerignore the way `docker build` does, for the image checks
 * (test/worker-image.test.ts) and for the production-topology test, which starts the worker with
 * the image's own command: instructions with their continuation lines joined, build stages, the
 * JSON (exec) form of CMD/ENTRYPOINT/HEALTHCHECK, and which files the build context holds.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { projectRoot } from '../../lib/paths.js';

export interface Instruction {
  op: string;
  args: string;
  line: number;
}

export interface Stage {
  name?: string;
  image: string;
  instructions: Instruction[];
}

export interface Dockerfile {
  /** ARGs before the first FROM (usable in FROM lines and, re-declared, in stages). */
  globalArgs: Instruction[];
  stages: Stage[];
}

export function parseDockerfile(text: string): Dockerfile {
  const instructions: Instruction[] = [];
  let pending: { text: string; line: number } | undefined;
  text.split('\n').forEach((raw, i) => {
    const line = raw.trimEnd();
    if (!pending && (/^\s*#/.test(line) || line.trim() === '')) return;
    if (pending && /^\s*#/.test(line)) return; // comments inside a continued instruction
    const body = line.endsWith('\\') ? line.slice(0, -1) : line;
    pending = pending ? { text: `${pending.text} ${body.trim()}`, line: pending.line } : { text: body, line: i + 1 };
    if (!line.endsWith('\\')) {
      const m = /^\s*(\S+)\s*(.*)$/.exec(pending.text)!;
      instructions.push({ op: m[1]!.toUpperCase(), args: m[2]!.trim(), line: pending.line });
      pending = undefined;
    }
  });
  const globalArgs: Instruction[] = [];
  const stages: Stage[] = [];
  for (const ins of instructions) {
    if (ins.op === 'FROM') {
      const m = /^(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?$/i.exec(ins.args);
      if (!m) throw new Error(`Dockerfile line ${ins.line}: cannot read FROM ${ins.args}`);
      stages.push({ image: m[1]!, ...(m[2] ? { name: m[2] } : {}), instructions: [] });
    } else if (stages.length === 0) {
      if (ins.op !== 'ARG') throw new Error(`Dockerfile line ${ins.line}: ${ins.op} before the first FROM`);
      globalArgs.push(ins);
    } else {
      stages.at(-1)!.instructions.push(ins);
    }
  }
  return { globalArgs, stages };
}

export async function readDockerfile(): Promise<Dockerfile> {
  return parseDockerfile(await fs.readFile(path.join(projectRoot, 'Dockerfile'), 'utf8'));
}

/** The exec (JSON array) form of CMD, ENTRYPOINT or a HEALTHCHECK's CMD; undefined for the shell form. */
export function execForm(args: string): string[] | undefined {
  const json = args.replace(/^(?:--\S+\s+)*(?:CMD\s+)?/i, '');
  if (!json.startsWith('[')) return undefined;
  const parsed = JSON.parse(json) as unknown;
  return Array.isArray(parsed) && parsed.every((a) => typeof a === 'string') ? parsed : undefined;
}

/** `KEY=value KEY2="value 2"` (ENV, ARG, LABEL) as a record; `ARG NAME` without default gives ''. */
export function keyValues(args: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const m of args.matchAll(/([A-Za-z_][A-Za-z0-9_]*)(?:=("(?:[^"\\]|\\.)*"|\S*))?/g)) {
    const value = m[2] ?? '';
    out[m[1]!] = value.startsWith('"') ? (JSON.parse(value) as string) : value;
  }
  return out;
}

/** Every ENV a stage sets, in order (later ones win). */
export function stageEnv(stage: Stage): Record<string, string> {
  return Object.assign({}, ...stage.instructions.filter((i) => i.op === 'ENV').map((i) => keyValues(i.args)));
}

/** A stage's instructions of one kind. */
export function instructions(stage: Stage, op: string): Instruction[] {
  return stage.instructions.filter((i) => i.op === op);
}

/** COPY's sources and destination, and its --from stage if any. */
export function copyParts(ins: Instruction): { from?: string; sources: string[]; dest: string } {
  const words = ins.args.split(/\s+/);
  const flags = words.filter((w) => w.startsWith('--'));
  const paths = words.filter((w) => !w.startsWith('--'));
  const from = flags.find((f) => f.startsWith('--from='))?.slice('--from='.length);
  return { ...(from ? { from } : {}), sources: paths.slice(0, -1), dest: paths.at(-1)! };
}

/**
 * The files (repo-relative) `docker build` sends as context: the repository's files filtered by
 * .dockerignore (patterns of whole paths or their folders, `*` within one segment, `!` re-includes,
 * the last matching line wins).
 */
export async function buildContext(files: string[]): Promise<string[]> {
  const lines = (await fs.readFile(path.join(projectRoot, '.dockerignore'), 'utf8'))
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith('#'));
  const rules = lines.map((l) => {
    const include = l.startsWith('!');
    const pattern = (include ? l.slice(1) : l).replace(/\/+$/, '');
    const re = new RegExp(
      `^${pattern
        .split('/')
        .map((seg) => seg.replace(/[.+?^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '[^/]*'))
        .join('/')}(?:/.*)?$`,
    );
    return { include, re };
  });
  return files.filter((f) => {
    let kept = true;
    for (const r of rules) if (r.re.test(f)) kept = r.include;
    return kept;
  });
}
