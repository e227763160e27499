// The worker image without a Docker engine: a lint of the Dockerfile and its build context (what
// the image holds, who it runs as, how it starts and reports health), and the `tools` stage's own
// commands run outside Docker, showing that each program the activities call comes out of them.
import { execFile, execFileSync } from 'node:child_process';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { parse as parseYaml } from 'yaml';
import { beforeAll, describe, expect, it } from 'vitest';
import { cacheDir, projectRoot } from '../lib/paths.js';
import { COMPILED_WORKER_FILE, WORKFLOW_BUNDLE_FILE } from '../workers/build.js';
import {
  buildContext,
  copyParts,
  execForm,
  instructions,
  keyValues,
  readDockerfile,
  stageEnv,
  type Dockerfile,
  type Stage,
} from './harness/dockerfile.js';

const run = promisify(execFile);
let dockerfile: Dockerfile;
let context: string[];
let final: Stage;

function stage(name: string): Stage {
  const s = dockerfile.stages.find((x) => x.name === name);
  if (!s) throw new Error(`the Dockerfile has no stage ${name}`);
  return s;
}

beforeAll(async () => {
  dockerfile = await readDockerfile();
  final = dockerfile.stages.at(-1)!;
  const files = execFileSync('git', ['ls-files', '--cached', '--others', '--exclude-standard'], {
    cwd: projectRoot,
    encoding: 'utf8',
  })
    .split('\n')
    .filter(Boolean);
  context = await buildContext(files);
});

describe('the worker image (Dockerfile lint)', () => {
  it('pins every base image, names its stages, and copies only what the context holds', () => {
    const names = dockerfile.stages.map((s) => s.name).filter(Boolean);
    expect(new Set(names).size).toBe(names.length);
    for (const s of dockerfile.stages) {
      expect(s.image, `FROM ${s.image}`).toMatch(/^[\w./-]+:[\w.-]+$/);
      expect(s.image).not.toMatch(/:latest$/);
    }
    dockerfile.stages.forEach((s, i) => {
      for (const copy of instructions(s, 'COPY').concat(instructions(s, 'ADD'))) {
        expect(copy.op, `line ${copy.line}: COPY, not ADD`).toBe('COPY');
        const { from, sources } = copyParts(copy);
        if (from) {
          // Only an earlier stage, never an image pulled by name in passing.
          expect(dockerfile.stages.slice(0, i).map((x) => x.name)).toContain(from);
          continue;
        }
        for (const src of sources) {
          const inContext = context.some((f) => f === src || f.startsWith(`${src.replace(/\/$/, '')}/`));
          expect(inContext, `line ${copy.line}: ${src} is not in the build context (.dockerignore)`).toBe(true);
        }
      }
    });
    for (const s of dockerfile.stages) {
      for (const r of instructions(s, 'RUN').filter((x) => x.args.includes('apt-get install'))) {
        expect(r.args).toMatch(/--no-install-recommends/);
        expect(r.args).toMatch(/rm -rf \/var\/lib\/apt\/lists/);
      }
    }
  });

  it('holds no simulated lab, test harness, PKI or key material', () => {
    expect(context.filter((f) => f.startsWith('sim/'))).toEqual([]);
    // Of test/, only the two Go modules that pin the tools the image builds.
    expect([...new Set(context.filter((f) => f.startsWith('test/')).map((f) => f.split('/')[1]))].sort()).toEqual([
      'packer',
      'talos',
    ]);
    expect(context.filter((f) => /\.(pem|key|crt|p12)$/.test(f) || /(^|\/)pki/.test(f))).toEqual([]);
    // What the worker runs never reaches into the simulated lab or the tests.
    const shipped = context.filter((f) => /\.(ts|mjs)$/.test(f));
    expect(shipped.length).toBeGreaterThan(20);
    return Promise.all(
      shipped.map(async (f) => {
        const text = await fs.readFile(path.join(projectRoot, f), 'utf8');
        expect(text, f).not.toMatch(/from '(?:\.\.?\/)+(?:sim|test)\//);
      }),
    );
  });

  it('runs as node with a state directory of its own, a prebuilt bundle, the tools and a healthcheck', () => {
    expect(instructions(final, 'USER').map((u) => u.args)).toEqual(['node']);
    const env = stageEnv(final);
    // The state directory: created and handed to node before it becomes a volume (a new named
    // volume copies the ownership), and the secret store inside it.
    const stateDir = env.LABWRIGHT_STATE_DIR!;
    expect(stateDir).toMatch(/^\//);
    expect(env.LABWRIGHT_SECRETS_DIR!.startsWith(`${stateDir}/`)).toBe(true);
    const runs = instructions(final, 'RUN').map((r) => r.args);
    expect(runs.some((r) => r.includes(`mkdir -p ${stateDir}`) && r.includes(`chown node:node ${stateDir}`))).toBe(
      true,
    );
    const volume = final.instructions.findIndex((i) => i.op === 'VOLUME');
    const chown = final.instructions.findIndex((i) => i.op === 'RUN' && i.args.includes(`chown node:node ${stateDir}`));
    expect(volume).toBeGreaterThan(chown);
    expect(final.instructions[volume]!.args).toBe(stateDir);

    // What the app stage builds is what the worker runs: its compiled file and its workflow bundle.
    const bundleRun = instructions(stage('app'), 'RUN').find((r) => r.args.includes('workers/bundle.ts'))!;
    const bundleOut = bundleRun.args.split(/\s+/).at(-1)!;
    const appDir = instructions(stage('app'), 'WORKDIR').at(-1)!.args;
    expect(env.LABWRIGHT_WORKFLOW_BUNDLE).toBe(path.posix.join(appDir, bundleOut, WORKFLOW_BUNDLE_FILE));
    expect(instructions(final, 'WORKDIR').at(-1)!.args).toBe(appDir);

    // The programs the activities call come from the tools stage's output folder.
    const toolsDir = stageEnv(stage('tools')).LABWRIGHT_TOOLS_DIR!;
    expect(instructions(final, 'COPY').map((c) => c.args)).toContain(`--from=tools ${toolsDir} ${toolsDir}`);
    expect(env.PACKER_BIN).toBe(`${toolsDir}/packer`);
    expect(env.LABWRIGHT_TALOSCTL).toBe(`${toolsDir}/talosctl`);

    // Exec forms (signals reach tini and the worker), a healthcheck script the image holds.
    expect(execForm(instructions(final, 'ENTRYPOINT')[0]!.args)).toEqual(['/usr/bin/tini', '--']);
    const cmd = execForm(instructions(final, 'CMD')[0]!.args)!;
    expect(cmd).toEqual(['node', path.posix.join(bundleOut, COMPILED_WORKER_FILE)]);
    const health = execForm(instructions(final, 'HEALTHCHECK')[0]!.args)!;
    expect(health[0]).toBe('node');
    expect(context).toContain(health[1]);
  });

  it("builds talosctl of the lab's Talos release: the build argument, the inventory and the pin agree", async () => {
    const arg = keyValues(dockerfile.globalArgs.find((a) => a.args.startsWith('TALOS_VERSION'))!.args).TALOS_VERSION;
    expect(instructions(stage('tools'), 'ARG').map((a) => a.args)).toContain('TALOS_VERSION');
    const inventory = parseYaml(await fs.readFile(path.join(projectRoot, 'hardware', 'lab.example.yaml'), 'utf8')) as {
      clusters: Record<string, { talosVersion: string }>;
    };
    const goMod = await fs.readFile(path.join(projectRoot, 'test', 'talos', 'go.mod'), 'utf8');
    const pinned = /^\s*github\.com\/siderolabs\/talos (v\S+)/m.exec(goMod)![1];
    expect(arg).toBe(inventory.clusters.home!.talosVersion);
    expect(arg).toBe(pinned);
  });
});

describe("the image's tools stage, run outside Docker", () => {
  /** The stage's RUN commands with its ENV, from the repository root (the layout its COPYs make). */
  async function runToolsStage(out: string, extraEnv: NodeJS.ProcessEnv = {}) {
    const tools = stage('tools');
    const workdir = instructions(tools, 'WORKDIR').at(-1)!.args;
    for (const copy of instructions(tools, 'COPY')) {
      const { sources, dest } = copyParts(copy);
      // Each COPY keeps the repository's relative path under WORKDIR, so the repository root is
      // the same tree the stage builds in.
      for (const src of sources) {
        expect(path.posix.join(dest.endsWith('/') ? path.posix.join(dest, path.posix.basename(src)) : dest)).toBe(src);
      }
    }
    expect(workdir).toMatch(/^\//);
    const globalTalos = keyValues(dockerfile.globalArgs.map((a) => a.args).join(' ')).TALOS_VERSION;
    const env = {
      PATH: process.env.PATH,
      HOME: process.env.HOME,
      ...stageEnv(tools),
      TALOS_VERSION: globalTalos,
      // Outside Docker: the shared build cache instead of the stage's /cache, a temp output folder.
      LABWRIGHT_CACHE: cacheDir,
      LABWRIGHT_TOOLS_DIR: out,
      ...extraEnv,
    };
    const outputs = [];
    for (const r of instructions(tools, 'RUN')) {
      outputs.push(await run('sh', ['-c', r.args], { cwd: projectRoot, env, maxBuffer: 16 << 20 }));
    }
    return outputs;
  }

  it('builds packer with the Proxmox plugin and talosctl, each of which runs', async () => {
    const out = await fs.mkdtemp(path.join(os.tmpdir(), 'labwright-tools-'));
    try {
      await runToolsStage(out);
      expect((await fs.readdir(out)).sort()).toEqual(['packer', 'packer.versions', 'talosctl']);
      const packer = await run(path.join(out, 'packer'), ['version'], { env: { CHECKPOINT_DISABLE: '1' } });
      expect(packer.stdout).toMatch(/^Packer v1\.8\.7/);
      expect(await fs.readFile(path.join(out, 'packer.versions'), 'utf8')).toBe(
        'github.com/hashicorp/packer v1.8.7\ngithub.com/hashicorp/packer-plugin-proxmox v1.1.1\n',
      );
      const talosctl = await run(path.join(out, 'talosctl'), ['version', '--client', '--short']);
      expect(talosctl.stdout).toMatch(/Talos v1\.11\.5/);
    } finally {
      await fs.rm(out, { recursive: true, force: true });
    }
  }, 600_000);

  it('refuses a TALOS_VERSION that test/talos does not pin, before building anything', async () => {
    const out = await fs.mkdtemp(path.join(os.tmpdir(), 'labwright-tools-'));
    try {
      const err = (await runToolsStage(out, { TALOS_VERSION: 'v1.12.0' }).catch((e: unknown) => e)) as {
        stderr: string;
      };
      expect(err.stderr).toMatch(
        /TALOS_VERSION=v1\.12\.0 but test\/talos pins talosctl v1\.11\.5: re-pin it \(cd test\/talos && go get github\.com\/siderolabs\/talos@v1\.12\.0/,
      );
      expect(await fs.readdir(out)).toEqual([]);
    } finally {
      await fs.rm(out, { recursive: true, force: true });
    }
  });
});
