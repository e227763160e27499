/**
 * The `labwright` command as people and scripts run it (a separate process), against the real dev
 * server: every command's --help, start's refusals, status/watch/list/cancel, -o json, the burst
 * pool on moto, the Temporal CLI pass-through with the codec, and shell completion.
 */
import { execFile, spawn } from 'node:child_process';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { Context } from '@temporalio/activity';
import { ApplicationFailure } from '@temporalio/common';
import { WorkflowNotFoundError } from '@temporalio/client';
import type { Command } from 'commander';
import { parse as parseYaml } from 'yaml';
import { describe, expect, it } from 'vitest';
import { createProgram } from '../clients/cli/program.js';
import type { LlmBurstStatus } from '../common/llm-burst.js';
import { ensureTool } from '../lib/processes.js';
import { projectRoot } from '../lib/paths.js';
import { createDemoActivities } from './fixtures/demo-activities.js';
import { testPool, useBurstLab } from './harness/ec2.js';
import { TEST_CODEC_KEY_FILE, runTs, tsArgv } from './harness/processes.js';
import { temporalAddress, testClient, uniqueName, withWorker } from './harness/temporal.js';

function labwright(args: string[], env: NodeJS.ProcessEnv = {}) {
  return runTs('clients/labwright.ts', args, {
    TEMPORAL_ADDRESS: temporalAddress(),
    LABWRIGHT_CODEC_KEY_FILE: TEST_CODEC_KEY_FILE,
    ...env,
  });
}

/** `labwright` in the background, its output collected as it comes. */
function spawnLabwright(
  args: string[],
  [program, ...argv] = [process.execPath, ...tsArgv('clients/labwright.ts', ...args)],
): { output: () => string; exited: Promise<number> } {
  const child = spawn(program!, argv, {
    cwd: projectRoot,
    env: { ...process.env, TEMPORAL_ADDRESS: temporalAddress(), LABWRIGHT_CODEC_KEY_FILE: TEST_CODEC_KEY_FILE },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout.on('data', (d: Buffer) => (output += d.toString()));
  child.stderr.on('data', (d: Buffer) => (output += d.toString()));
  const exited = new Promise<number>((resolve) => child.once('exit', (code) => resolve(code ?? 1)));
  return { output: () => output, exited };
}

async function inputFile(value: unknown): Promise<string> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'labwright-cli-'));
  const file = path.join(dir, 'input.json');
  await fs.writeFile(file, JSON.stringify(value));
  return file;
}

/** Every command path of the program (`start`, `burst acquire`, ...), found by walking it. */
function commandPaths(cmd: Command, prefix: string[] = []): string[][] {
  return cmd.commands.flatMap((c) => [[...prefix, c.name()], ...commandPaths(c, [...prefix, c.name()])]);
}

const lab = useBurstLab();

describe('labwright --help', () => {
  it('exits 0 with usage for the program and for every command it has', async () => {
    const paths = commandPaths(createProgram()).filter((p) => p.at(-1) !== 'help');
    expect(paths.map((p) => p.join(' '))).toEqual(
      expect.arrayContaining([
        'start',
        'list',
        'cancel',
        'plan',
        'approve',
        'reject',
        'burst acquire',
        'temporal',
        'codec-server',
      ]),
    );
    const top = await labwright(['--help']);
    expect(top.code).toBe(0);
    for (const p of paths.filter((q) => q.length === 1)) expect(top.stdout).toContain(`  ${p[0]}`);
    for (let i = 0; i < paths.length; i += 4) {
      const batch = paths.slice(i, i + 4);
      const results = await Promise.all(batch.map((p) => labwright([...p, '--help'])));
      results.forEach((r, j) => {
        const name = batch[j]!.join(' ');
        expect(r.code, `labwright ${name} --help: ${r.stderr}`).toBe(0);
        // `temporal` passes --help on to the Temporal CLI, after saying what it adds.
        expect(r.stdout).toContain(name === 'temporal' ? 'Usage:\n  temporal [command]' : `Usage: labwright ${name}`);
      });
    }
    // One real start per command (~40), each loading every command's modules: minutes under load.
  }, 300_000);
});

describe('labwright start', () => {
  it('validates, derives the workflow ID, starts a registered workflow, and says so in text or JSON', async () => {
    const cluster = uniqueName('cli-start');
    const taskQueue = uniqueName('tq-nobody'); // nothing polls it: the run only needs to exist
    const file = await inputFile({ cluster });
    const started = await labwright([
      'start',
      'talosBootstrap',
      '--input',
      file,
      '--task-queue',
      taskQueue,
      '-o',
      'json',
    ]);
    expect(started.stderr).toBe('');
    const out = JSON.parse(started.stdout) as { workflowId: string; runId: string };
    expect(out.workflowId).toBe(`talos-bootstrap/${cluster}`);
    const handle = (await testClient()).workflow.getHandle(out.workflowId);
    const info = await handle.describe();
    expect(info.runId).toBe(out.runId);
    expect(info.type).toBe('talosBootstrap');
    expect(info.searchAttributes.LabwrightResource).toEqual([cluster]);
    await handle.terminate('test over');
  });

  it('refuses a workflow type the worker does not register, and starts nothing', async () => {
    const workflowId = uniqueName('cli-unregistered');
    const file = await inputFile({ name: 'pve1', steps: ['clone'] });
    const result = await labwright(['start', 'stepsDemo', '--input', file, '--id', workflowId]);
    expect(result.code).toBe(1);
    expect(result.stderr).toContain('unknown workflow stepsDemo: the labwright worker registers talosBootstrap');
    expect(result.stderr).toContain('nothing was started');
    const client = await testClient();
    await expect(client.workflow.getHandle(workflowId).describe()).rejects.toBeInstanceOf(WorkflowNotFoundError);
  });

  it('names the file when the input is missing, not JSON, or invalid, and starts nothing', async () => {
    const cluster = uniqueName('cli-bad');
    const missing = await labwright(['start', 'talosBootstrap', '--input', '/nonexistent/home.json']);
    expect(missing.stderr.trim()).toBe('/nonexistent/home.json: no such file');
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'labwright-cli-'));
    const broken = path.join(dir, 'broken.json');
    await fs.writeFile(broken, '{"cluster": ');
    expect((await labwright(['start', 'talosBootstrap', '--input', broken])).stderr).toContain(
      `${broken}: not valid JSON`,
    );
    const invalid = await inputFile({ cluster, extra: 1 });
    const bad = await labwright(['start', 'talosBootstrap', '--input', invalid]);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toContain(`invalid talosBootstrap input in ${invalid}:`);
    const client = await testClient();
    await expect(client.workflow.getHandle(`talos-bootstrap/${cluster}`).describe()).rejects.toBeInstanceOf(
      WorkflowNotFoundError,
    );
  });
});

/** stepsDemo held after its first step until the `proceed` signal. */
async function startHeldDemo(taskQueue: string, workflowId: string) {
  const client = await testClient();
  return client.workflow.start('stepsDemo', {
    taskQueue,
    workflowId,
    args: [{ name: 'pve1', steps: ['clone', 'boot'], holdAfterFirst: true }],
  });
}

describe('labwright status, watch, list and cancel', () => {
  it('shows the steps while a run goes on, lists it, and watches it to the end', async () => {
    const workflowId = uniqueName('cli-demo');
    await withWorker({ activities: createDemoActivities() }, async ({ taskQueue }) => {
      const handle = await startHeldDemo(taskQueue, workflowId);
      await expect
        .poll(async () => (await handle.query<{ steps: { status: string }[] }>('progress')).steps[0]?.status)
        .toBe('done');
      const status = await labwright(['status', workflowId]);
      expect(status.stdout).toContain(`stepsDemo ${workflowId}: RUNNING`);
      expect(status.stdout).toMatch(/\[ok\] clone: clone:pve1/);
      expect(status.stdout).toMatch(/\[ {2}\] boot/);
      const json = JSON.parse((await labwright(['status', workflowId, '-o', 'json'])).stdout) as {
        status: string;
        progress: { steps: Array<{ name: string; status: string }> };
      };
      expect(json.status).toBe('RUNNING');
      expect(json.progress.steps.map((s) => [s.name, s.status])).toEqual([
        ['clone', 'done'],
        ['boot', 'pending'],
      ]);

      await expect
        .poll(async () => {
          const listed = await labwright(['list', '--query', `WorkflowId = '${workflowId}'`, '-o', 'json']);
          return JSON.parse(listed.stdout) as Array<{ workflowId: string; type: string; status: string; step: string }>;
        })
        .toEqual([expect.objectContaining({ workflowId, type: 'stepsDemo', status: 'RUNNING', step: 'idle' })]);
      const listed = await labwright(['list', '--type', 'stepsDemo', '--status', 'Running']);
      expect(listed.stdout).toContain(workflowId);

      await handle.signal('proceed');
      const watched = await labwright(['watch', workflowId, '--interval', '0.2']);
      expect(watched.code).toBe(0);
      expect(watched.stdout).toContain('COMPLETED');
      expect(watched.stdout).toContain('=> 2 steps done for pve1');
      expect(watched.stdout).toContain('completed: ["clone:pve1","boot:pve1"]');
      // Not a terminal: plain lines, no cursor movement.
      expect(watched.stdout).not.toContain('\x1b[');
    });
  });

  it("shows the running activity's heartbeat details, attempt and last failure while watching", async () => {
    const workflowId = uniqueName('cli-heartbeat');
    let release!: () => void;
    const released = new Promise<void>((r) => (release = r));
    const activities = {
      async performStep(name: string, step: string): Promise<string> {
        const { attempt } = Context.current().info;
        if (attempt === 1) throw ApplicationFailure.retryable(`VM 201 on ${name} is locked (backup)`, 'ServerError');
        Context.current().heartbeat({ waitingFor: `VM 201 lock on ${name}`, step });
        await released;
        return `${step}:${name}`;
      },
    };
    await withWorker({ activities }, async ({ taskQueue }) => {
      const client = await testClient();
      const handle = await client.workflow.start('stepsDemo', {
        taskQueue,
        workflowId,
        args: [{ name: 'pve1', steps: ['clone'] }],
      });
      const watching = spawnLabwright(['watch', workflowId, '--interval', '0.2']);
      // Released only once the watch has shown the retried attempt's heartbeat.
      await expect.poll(() => watching.output(), { timeout: 30_000 }).toContain('heartbeat:');
      const seen = await labwright(['status', workflowId]);
      release();
      const watched = { code: await watching.exited, stdout: watching.output() };
      expect(watched.code).toBe(0);
      for (const out of [seen.stdout, watched.stdout]) {
        expect(out, out).toMatch(/activity performStep \(started, attempt 2\/10\)/);
        expect(out).toContain('heartbeat: {"waitingFor":"VM 201 lock on pve1","step":"clone"}');
        expect(out).toContain('last failure: VM 201 on pve1 is locked (backup)');
      }
      expect(watched.stdout).toContain('completed: ["clone:pve1"]');
      const json = JSON.parse((await labwright(['status', workflowId, '-o', 'json'])).stdout) as { status: string };
      expect(json.status).toBe('COMPLETED');
      await handle.result();
    });
  });

  it('redraws in place on a terminal', async () => {
    const workflowId = uniqueName('cli-tty');
    await withWorker({ activities: createDemoActivities() }, async ({ taskQueue }) => {
      const handle = await startHeldDemo(taskQueue, workflowId);
      // `script` gives the watch a pseudo-terminal, as a person's shell would.
      const command = [
        process.execPath,
        ...tsArgv('clients/labwright.ts', 'watch', workflowId, '--interval', '0.2'),
      ].join(' ');
      const watching = spawnLabwright([], ['script', '-qfec', command, '/dev/null']);
      await expect.poll(() => watching.output(), { timeout: 30_000 }).toContain('[ok] clone');
      await handle.signal('proceed');
      expect(await watching.exited).toBe(0);
      const out = watching.output();
      expect(out).toContain('\x1b[0J'); // the previous frame cleared before the next is drawn
      expect(out).toContain('completed: ["clone:pve1","boot:pve1"]');
    });
  });

  it('reports a failed run with its reason and a non-zero exit', async () => {
    const workflowId = uniqueName('cli-bad');
    await withWorker({ activities: createDemoActivities() }, async ({ taskQueue }) => {
      const client = await testClient();
      await client.workflow.start('stepsDemo', { taskQueue, workflowId, args: [{ name: 'pve1', steps: [] }] });
      const watched = await labwright(['watch', workflowId, '--interval', '0.2', '-o', 'json']);
      expect(watched.code).toBe(1);
      const last = JSON.parse(watched.stdout.trim().split('\n').at(-1)!) as { outcome: string; error: string };
      expect(last).toEqual({
        workflowId,
        outcome: 'failed',
        error: 'invalid stepsDemo input: steps: Too small: expected array to have >=1 items',
      });
    });
  });

  it('cancels a run, which ends as cancelled', async () => {
    const workflowId = uniqueName('cli-cancel');
    await withWorker({ activities: createDemoActivities() }, async ({ taskQueue }) => {
      const handle = await startHeldDemo(taskQueue, workflowId);
      const cancelled = await labwright(['cancel', workflowId, '-o', 'json']);
      expect(JSON.parse(cancelled.stdout)).toEqual({ workflowId, cancelRequested: true });
      await expect.poll(async () => (await handle.describe()).status.name).toBe('CANCELLED');
      const gone = await labwright(['cancel', uniqueName('no-such-run')]);
      expect(gone.code).toBe(1);
      expect(gone.stderr).toMatch(/^no workflow no-such-run-/);
    });
  });
});

describe('labwright temporal', () => {
  it('runs the pinned Temporal CLI on the right server with the codec, so results show in clear', async () => {
    const workflowId = uniqueName('cli-temporal');
    await withWorker({ activities: createDemoActivities() }, async ({ taskQueue }) => {
      const client = await testClient();
      await client.workflow.execute('stepsDemo', {
        taskQueue,
        workflowId,
        args: [{ name: 'pve9', steps: ['snapshot'] }],
      });
      // TEMPORAL_ADDRESS alone says where; the pass-through adds the namespace and the codec endpoint.
      const shown = await labwright(['temporal', 'workflow', 'show', '--workflow-id', workflowId]);
      expect(shown.code, shown.stderr).toBe(0);
      expect(shown.stdout).toContain('snapshot:pve9');
      const queried = await labwright([
        'temporal',
        'workflow',
        'query',
        '--workflow-id',
        workflowId,
        '--type',
        'progress',
      ]);
      expect(queried.stdout, queried.stdout + queried.stderr).toContain(
        '"result":"1 steps done for pve9","steps":[{"detail":"snapshot:pve9"',
      );
      // The plain CLI without the codec sees only ciphertext.
      const temporal = ensureTool('ensure-temporal.sh');
      const raw = await promisify(execFile)(temporal, [
        'workflow',
        'show',
        '--address',
        temporalAddress(),
        '--workflow-id',
        workflowId,
        '--output',
        'json',
      ]);
      expect(raw.stdout).toContain('YmluYXJ5L2VuY3J5cHRlZA'); // base64 of binary/encrypted
      expect(raw.stdout).not.toContain('snapshot:pve9');
    });
  });
});

describe('labwright burst', () => {
  // Twelve `labwright` processes one after another, each a Node start that loads the Temporal
  // client and the inventory schema: 2.5 s each on a quiet machine, four times that with two CI
  // runs on two cores, where the 120 s default ran out with every step still correct.
  it('acquires the pool from the inventory, shows its status, holds, unholds and shuts it down', async () => {
    const pool = uniqueName('cli-pool');
    const example = parseYaml(
      await fs.readFile(path.join(projectRoot, 'hardware', 'lab.example.yaml'), 'utf8'),
    ) as Record<string, unknown>;
    const inventory = await inputFile({ ...example, burstPools: [testPool(pool)] });
    await withWorker({ activities: lab.peers.activities() }, async ({ taskQueue }) => {
      const env = { LABWRIGHT_INVENTORY: inventory, LABWRIGHT_TASK_QUEUE: taskQueue };
      const burst = async (...args: string[]) => {
        const r = await labwright(['burst', ...args, pool, '-o', 'json'], env);
        expect(r.code, r.stderr).toBe(0);
        return JSON.parse(r.stdout) as Record<string, unknown>;
      };
      const acquired = await burst('acquire', '--deadline', '60');
      expect(acquired).toMatchObject({ pool, cold: true });
      expect(acquired.endpoint).toMatch(/^http:\/\/10\.\d+\.\d+\.\d+:11434$/);
      const ready = (await burst('status')) as unknown as LlmBurstStatus;
      expect(ready).toMatchObject({ pool, state: 'ready', held: false, instanceId: acquired.instanceId });
      const text = await labwright(['burst', 'status', pool], env);
      expect(text.stdout).toContain(`${pool}: ready since`);
      expect(text.stdout).toContain(`endpoint:  ${String(acquired.endpoint)}`);

      await burst('hold');
      const held = async () => ((await burst('status')) as unknown as LlmBurstStatus).held;
      await expect.poll(held, { timeout: 60_000 }).toBe(true);
      await burst('unhold');
      await expect.poll(held, { timeout: 60_000 }).toBe(false);
      await burst('shutdown', '--reason', 'cli test');
      await expect
        .poll(async () => ((await burst('status')) as unknown as LlmBurstStatus).state, { timeout: 60_000 })
        .toBe('stopped');
      expect((await lab.peers.instances(pool)).map((i) => i.State?.Name)).toEqual(['stopped']);

      const unknown = await labwright(['burst', 'acquire', 'no-such-pool'], env);
      expect(unknown.code).toBe(1);
      expect(unknown.stderr).toContain(`no burst pool no-such-pool in ${inventory}`);
      await lab.client.workflow.getHandle(`llm-burst/${pool}`).cancel();
    });
  }, 360_000);
});

describe('labwright completion', () => {
  it('completes commands, subcommands and options in bash', async () => {
    const script = await labwright(['completion', 'bash']);
    expect(script.code).toBe(0);
    const complete = async (words: string[]) => {
      const line = `COMP_WORDS=(${words.map((w) => `'${w}'`).join(' ')}); COMP_CWORD=${words.length - 1}; _labwright; echo "\${COMPREPLY[*]}"`;
      const { stdout } = await promisify(execFile)('bash', ['-c', `${script.stdout}\n${line}`]);
      return stdout.trim().split(' ');
    };
    expect(await complete(['labwright', 'st'])).toEqual(['start', 'status', 'state']);
    expect(await complete(['labwright', 'burst', ''])).toEqual(expect.arrayContaining(['acquire', 'hold', 'shutdown']));
    expect(await complete(['labwright', 'start', 'talos'])).toEqual(['talosBootstrap']);
    expect(await complete(['labwright', 'watch', 'x', '--'])).toEqual(
      expect.arrayContaining(['--interval', '--output']),
    );
    const zsh = await labwright(['completion', 'zsh']);
    expect(zsh.stdout).toContain('bashcompinit');
  });
});
