/**
 * Runbook: build a golden VM template with Packer on Proxmox.
 *
 * 1. validate the input (nothing is touched when it is wrong);
 * 2. hash the template file, its scripts and variables;
 * 3. look up: a template of this image with this hash already promoted is the answer, and
 *    nothing is built; a half-made VM of this very build (same name) is removed first;
 * 4. take the lowest free VMID of the range;
 * 5. run `packer build -machine-readable` (heartbeating its step; cancelling sends it SIGINT
 *    and waits for its own cleanup), and read the template's VMID from its artifacts; an attempt
 *    whose worker died is followed by one that first stops that attempt's Packer and removes its
 *    half-made VM (a VM at the VMID that is not this build's is a conflict);
 * 6. verify the template in Proxmox (exists, is a template, has the build's name);
 * 7. optionally boot a linked-clone canary, wait for its guest agent, and destroy it (a canary
 *    that cannot be deleted is reported in the result and the progress, the template stands);
 * 8. promote: tag the template `labwright`, `image-<image>`, `sha-<hash>`, `built-<time>`;
 * 9. retention: delete this image's templates beyond `keep`, never one a linked clone uses.
 * A failure (or cancellation) in 5-8 removes whatever VM the build left behind.
 *
 * Workflow ID `packer-image-build/<image>`.
 */
import * as wf from '@temporalio/workflow';
import type { PackerActivities } from '../activities/packer.js';
import type { ProxmoxActivities, TaskOutcome, VmSummary } from '../activities/proxmox.js';
import { apiCall, longProgram, waitFor, withHeartbeat } from '../common/activity-options.js';
import { NON_RETRYABLE_ERROR_TYPES, nonRetryable } from '../common/errors.js';
import {
  LABWRIGHT_TAG,
  builtAtOf,
  builtTag,
  hashTag,
  imageTag,
  packerImageBuildInput,
  shortHash,
  templateVmName,
  type PackerImageBuildResult,
} from '../common/packer-image-build.js';
import { ProgressTracker } from '../common/progress.js';
import { runPveTask } from '../common/pve-tasks.js';
import { RESOURCE_KEY } from '../common/search-attributes.js';
import { parseInput } from '../common/validation.js';

const pve = wf.proxyActivities<ProxmoxActivities>(apiCall);
const pveWait = wf.proxyActivities<ProxmoxActivities>(waitFor);
const packerApi = wf.proxyActivities<PackerActivities>(apiCall);
const packerWait = wf.proxyActivities<PackerActivities>(waitFor);

/** Attempts of `packer build`; each after the first starts by clearing what the last one left. */
const PACKER_ATTEMPTS = 3;

export const PACKER_IMAGE_BUILD_STEPS = [
  'validate',
  'hash',
  'look up',
  'allocate VMID',
  'packer build',
  'verify',
  'canary',
  'promote',
  'retention',
] as const;

export async function packerImageBuild(raw: unknown): Promise<PackerImageBuildResult> {
  const input = parseInput(packerImageBuildInput, raw, 'packerImageBuild input');
  const progress = new ProgressTracker(PACKER_IMAGE_BUILD_STEPS);
  progress.done('validate', `${input.image} on ${input.host}/${input.node}`);
  wf.upsertSearchAttributes([{ key: RESOURCE_KEY, value: input.image }]);

  const { host, node } = input;
  // One attempt per activity: the workflow retries, so that each retry first stops the previous
  // attempt's Packer and removes its half-made VM.
  const packer = wf.proxyActivities<PackerActivities>({
    ...withHeartbeat(longProgram, input.heartbeatSeconds),
    retry: { maximumAttempts: 1 },
  });
  const wait = (upid: string): Promise<TaskOutcome> => pveWait.pveWaitForTask({ host, upid });

  const { hash } = await progress.run(
    'hash',
    () =>
      packerApi.packerHashInputs({
        template: input.template,
        variables: input.variables,
        secretVariables: input.secretVariables,
      }),
    (h) => `sha256 ${shortHash(h.hash)}`,
  );
  const name = templateVmName(input.image, hash);
  const tags = { image: imageTag(input.image), hash: hashTag(hash) };

  // 3. look up
  progress.start('look up');
  const vms = await pve.pveListVms({ host });
  const promoted = vms.find((v) => v.template && v.tags.includes(tags.image) && v.tags.includes(tags.hash));
  if (promoted) {
    progress.done('look up', `template ${promoted.vmid} (${promoted.name}) has hash ${shortHash(hash)}`);
    for (const step of PACKER_IMAGE_BUILD_STEPS.slice(3)) progress.skip(step, 'already built');
    progress.finishWith(`template ${promoted.vmid} (${promoted.name}) is up to date; nothing built`);
    return {
      image: input.image,
      hash,
      templateVmid: promoted.vmid,
      templateName: promoted.name,
      built: false,
      retention: { kept: [promoted.vmid], deleted: [], inUse: [] },
    };
  }
  // A template of this build that was never promoted (the run stopped after Packer) is adopted;
  // a plain VM of this build is what a failed or interrupted Packer left: it goes.
  const adopted = vms.find((v) => v.template && v.name === name && v.node === node);
  for (const leftover of vms.filter((v) => !v.template && v.name === name)) {
    await removeVm(leftover.vmid, leftover.node, name, wait);
  }
  progress.done('look up', adopted ? `adopting unpromoted template ${adopted.vmid}` : `no template with this hash`);

  const madeVmids: number[] = [];
  let templateVmid: number;
  let canaryVmid: number | undefined;
  const canaryName = `canary-${shortHash(hash)}`;
  let canaryResult: PackerImageBuildResult['canary'];
  try {
    if (adopted) {
      templateVmid = adopted.vmid;
      progress.skip('allocate VMID', `adopted ${adopted.vmid}`);
      progress.skip('packer build', `adopted ${adopted.vmid}`);
    } else {
      const vmid = await progress.run(
        'allocate VMID',
        () => pve.pveNextFreeVmid({ host, range: input.vmidRange }),
        (id) => `VMID ${id}`,
      );
      madeVmids.push(vmid);
      const build = await progress.run(
        'packer build',
        async () => {
          for (let attempt = 1; ; attempt++) {
            if (attempt > 1) {
              const { stopped } = await packerWait.packerStopPrevious({ image: input.image });
              progress.detail(
                'packer build',
                `attempt ${attempt}` + (stopped ? `: stopped the previous attempt's packer (pid ${stopped})` : ''),
              );
              await clearVmid(vmid);
            }
            try {
              return await packer.packerBuild({
                image: input.image,
                template: input.template,
                hash,
                variables: input.variables,
                secretVariables: input.secretVariables,
                host,
                node,
                storage: input.storage,
                vmid,
                templateName: name,
                attempt,
              });
            } catch (err) {
              if (attempt >= PACKER_ATTEMPTS || !worthAnotherBuild(err)) throw err;
              await wf.sleep(`${5 * attempt} seconds`);
            }
          }
        },
        (b) => `template VMID ${b.templateVmid} in ${Math.round(b.durationMs / 1000)} s`,
      );
      templateVmid = build.templateVmid;
      if (templateVmid !== vmid) madeVmids.push(templateVmid);
    }

    // 6. verify
    await progress.run(
      'verify',
      async () => {
        const vm = await pve.pveGetVm({ host, node, vmid: templateVmid });
        if (!vm) throw nonRetryable('notFound', `Packer reported template ${templateVmid}, but ${node} has no such VM`);
        if (vm.name !== name) {
          throw nonRetryable('conflict', `VM ${templateVmid} on ${node} is ${vm.name}, not this build's ${name}`);
        }
        if (!vm.template) throw nonRetryable('precondition', `VM ${templateVmid} (${name}) is not a template`);
        return vm;
      },
      (vm) => `VM ${vm.vmid} is template ${vm.name}`,
    );

    // 7. canary
    if (input.canary) {
      const canary = input.canary;
      progress.start('canary');
      const vmid = await pve.pveNextFreeVmid({ host, range: input.vmidRange, exclude: [templateVmid] });
      canaryVmid = vmid;
      const ref = { host, node, vmid };
      progress.detail('canary', `cloning ${templateVmid} to ${vmid}`);
      await runPveTask(
        `clone template ${templateVmid} to canary ${vmid}`,
        () => pve.pveClone({ host, node, vmid: templateVmid, newid: vmid, name: canaryName, full: false }),
        wait,
      );
      progress.detail('canary', `starting ${vmid}`);
      await runPveTask(`start canary ${vmid}`, () => pve.pveStart(ref), wait, { okReasons: ['already-running'] });
      progress.detail('canary', `waiting for the guest agent of ${vmid}`);
      const ifaces = await pveWait.pveWaitForAgent({ ...ref, timeoutSeconds: canary.agentTimeoutSeconds });
      const canaryIpv4 = ifaces.filter((i) => i.name !== 'lo').flatMap((i) => i.ipv4);
      progress.detail('canary', `agent up (${canaryIpv4.join(', ') || 'no IPv4'}); shutting down`);
      const shutdown = await runShutdown(vmid, canary.shutdownTimeoutSeconds, wait);
      canaryVmid = undefined;
      const removalError = await removeVm(vmid, node, canaryName, wait).then(
        () => undefined,
        (err: unknown) => failureMessage(err),
      );
      canaryResult = {
        vmid,
        ipv4: canaryIpv4,
        removed: removalError === undefined,
        ...(removalError ? { removalError } : {}),
      };
      progress.done(
        'canary',
        `canary ${vmid} booted (${canaryIpv4.join(', ') || 'no IPv4'}); ${shutdown}; ` +
          (removalError ? `NOT destroyed: ${removalError} (delete VM ${vmid} by hand)` : 'destroyed'),
      );
    } else {
      progress.skip('canary', 'not asked for');
    }

    // 8. promote
    await progress.run(
      'promote',
      () =>
        pve.pveSetConfig({
          host,
          node,
          vmid: templateVmid,
          guard: { name },
          config: {
            tags: [LABWRIGHT_TAG, tags.image, tags.hash, builtTag(new Date())],
            description: `labwright image ${input.image}, sha256 ${hash}, built by workflow ${wf.workflowInfo().workflowId}`,
          },
        }),
      () => `tagged ${tags.image} ${tags.hash}`,
    );
  } catch (err) {
    await wf.CancellationScope.nonCancellable(async () => {
      if (canaryVmid !== undefined) {
        const left = canaryVmid;
        await removeVm(left, node, canaryName, wait).catch((removal: unknown) => {
          progress.detail('canary', `failed, and canary ${left} could not be deleted: ${failureMessage(removal)}`);
        });
      }
      for (const vmid of madeVmids) await removeVm(vmid, node, name, wait);
    });
    throw err;
  }

  // 9. retention
  const retention = await progress.run(
    'retention',
    () => applyRetention(input.host, input.image, templateVmid, input.keep, wait),
    (r) =>
      `kept ${r.kept.join(', ')}` +
      (r.deleted.length ? `; deleted ${r.deleted.join(', ')}` : '') +
      (r.inUse.length ? `; in use by linked clones: ${r.inUse.join(', ')}` : ''),
  );
  progress.finishWith(`template ${templateVmid} (${name}) built and promoted`);
  return {
    image: input.image,
    hash,
    templateVmid,
    templateName: name,
    built: !adopted,
    ...(canaryResult ? { canary: canaryResult } : {}),
    retention,
  };

  /** Stops (if running) and deletes a VM of this build, only if it still carries our name. */
  async function removeVm(
    vmid: number,
    on: string,
    expectName: string,
    waitTask: (upid: string) => Promise<TaskOutcome>,
  ): Promise<void> {
    const vm = await pve.pveGetVm({ host, node: on, vmid });
    if (!vm || vm.name !== expectName) return;
    const ref = { host, node: on, vmid };
    if (vm.status !== 'stopped') await runPveTask(`stop VM ${vmid}`, () => pve.pveStop(ref), waitTask);
    await runPveTask(`delete VM ${vmid}`, () => pve.pveDelete({ ...ref, guard: { name: expectName } }), waitTask);
  }

  /**
   * Makes `vmid` free for a new attempt: this build's VM there (half-made, or a template the
   * stopped Packer finished but nobody promoted) goes; another VM there is a conflict.
   */
  async function clearVmid(vmid: number): Promise<void> {
    const vm = await pve.pveGetVm({ host, node, vmid });
    if (!vm) return;
    if (vm.name !== name) {
      throw nonRetryable('conflict', `VMID ${vmid} on ${node} is taken by ${vm.name}, not this build's ${name}`);
    }
    await removeVm(vmid, node, name, wait);
  }

  /** ACPI shutdown; a guest that outlasts the timeout (PVE: `got timeout`) is stopped hard. */
  async function runShutdown(
    vmid: number,
    timeoutSeconds: number,
    waitTask: (upid: string) => Promise<TaskOutcome>,
  ): Promise<string> {
    const ref = { host, node, vmid };
    const started = await pve.pveShutdown({ ...ref, timeoutSeconds });
    if (started.upid === null) return started.note ?? 'already stopped';
    const outcome = await waitTask(started.upid);
    if (outcome.ok) return 'shut down';
    progress.detail('canary', `shutdown of ${vmid} failed (${outcome.exitStatus}); stopping it`);
    await runPveTask(`stop canary ${vmid}`, () => pve.pveStop(ref), waitTask);
    return `shutdown failed (${outcome.exitStatus}), stopped`;
  }
}

/** Deletes this image's templates beyond `keep` (newest first by build time), sparing linked-clone bases. */
async function applyRetention(
  host: string,
  image: string,
  current: number,
  keep: number,
  wait: (upid: string) => Promise<TaskOutcome>,
): Promise<PackerImageBuildResult['retention']> {
  const templates = await pve.pveListTemplates({ host, tags: [LABWRIGHT_TAG, imageTag(image)] });
  const newestFirst = [...templates].sort(byBuildTimeDesc);
  const kept = [current];
  const older: VmSummary[] = [];
  for (const t of newestFirst) {
    if (t.vmid === current) continue;
    if (kept.length < keep) kept.push(t.vmid);
    else older.push(t);
  }
  const users = older.length > 0 ? await pve.pveLinkedClones({ host, templates: older.map((t) => t.vmid) }) : {};
  const deleted: number[] = [];
  const inUse: number[] = [];
  for (const t of older) {
    if ((users[t.vmid] ?? []).length > 0) {
      inUse.push(t.vmid);
      continue;
    }
    await runPveTask(
      `delete old template ${t.vmid} (${t.name})`,
      () =>
        pve.pveDelete({
          host,
          node: t.node,
          vmid: t.vmid,
          guard: { name: t.name, tags: [LABWRIGHT_TAG, imageTag(image)] },
        }),
      wait,
    );
    deleted.push(t.vmid);
  }
  return { kept, deleted, inUse };
}

/** A failed build attempt another may fix: its worker died (timeout) or the failure is retryable. */
function worthAnotherBuild(err: unknown): boolean {
  const cause = err instanceof wf.ActivityFailure ? err.cause : err;
  if (cause instanceof wf.TimeoutFailure) return true;
  if (cause instanceof wf.ApplicationFailure) {
    return !cause.nonRetryable && !NON_RETRYABLE_ERROR_TYPES.includes(cause.type ?? '');
  }
  return false;
}

function failureMessage(err: unknown): string {
  const cause = err instanceof wf.ActivityFailure && err.cause ? err.cause : err;
  return cause instanceof Error ? cause.message : String(cause);
}

function byBuildTimeDesc(a: VmSummary, b: VmSummary): number {
  const ta = builtAtOf(a.tags) ?? '';
  const tb = builtAtOf(b.tags) ?? '';
  if (ta !== tb) return ta < tb ? 1 : -1;
  return b.vmid - a.vmid;
}
