/**
 * Flux bootstrap: Flux on one cluster of the inventory, synced from the lab's Git repository.
 * One workflow per cluster, ID `flux-bootstrap/<cluster>`. Running it again is the upgrade path:
 * everything is server-side applied, so only what differs changes, and the result lists what was
 * left as it was. The runbook it replaces (`flux bootstrap`, which gives up with "context deadline
 * exceeded" while the cluster is still converging):
 *
 *   1. Validate the input and the inventory's `flux` section; the manifest file must exist.
 *   2. Check the cluster: the API answers with the kubeconfig.
 *   3. Apply the Flux components manifest (server-side apply, field manager `labwright`): the
 *      worker reads the file (k8sApplyFile), so it never passes through history; its sha256 is
 *      reported.
 *   4. Wait for the controllers: every Deployment of the manifest Available, within
 *      `controllersTimeoutSeconds` in all (across retries; the deadline passing is final).
 *   5. Create the Git credentials Secret (in the shape source-controller accepts: ssh `identity`
 *      and `known_hosts`; https `username` and `password`, or `bearerToken`) and the SOPS age
 *      Secret, from secret references.
 *   6. Apply the GitRepository and the Kustomization `flux-system`; once kustomize-controller
 *      applies them from the repository's gotk-sync.yaml they are Git's, and are left alone.
 *   7. Wait, durably and with progress (in a heartbeating activity), until both are Ready at the expected revision
 *      (GitRepository status.artifact.revision, Kustomization status.lastAttemptedRevision,
 *      observedGeneration current, not suspended). Past `slowAfterSeconds` the run is reported
 *      slow (progress, `fluxStatus` query) and goes on waiting; it fails only on Ready=False with
 *      a terminal reason (the controller's message in the error) or at the deadline.
 */
import * as wf from '@temporalio/workflow';
import type { DrReportActivities } from '../activities/dr-reports.js';
import type { createKubernetesActivities } from '../activities/kubernetes.js';
import type { createTalosActivities } from '../activities/talos.js';
import { apiCall, waitFor } from '../common/activity-options.js';
import { nonRetryable } from '../common/errors.js';
import {
  DEFAULT_TERMINAL_REASONS,
  FIELD_MANAGER,
  FLUX_GIT_SECRET,
  FLUX_NAME,
  FLUX_NAMESPACE,
  FLUX_SOPS_SECRET,
  fluxBootstrapInputSchema,
  fluxGitSecretData,
  fluxSyncSettled,
  fluxSyncState,
  gitRepositoryObject,
  kustomizationObject,
  type FluxBootstrapResult,
  type FluxGitSettings,
  type FluxObjectView,
  type FluxStatus,
  type FluxSyncState,
} from '../common/flux-bootstrap.js';
import { formatDuration } from '../common/llm-burst.js';
import { ProgressTracker } from '../common/progress.js';
import { RESOURCE_KEY } from '../common/search-attributes.js';
import { LAB_RULES_PATCH, parseInventory, talosStore } from '../common/talos.js';
import { fluxCredentialsProblem } from '../hardware/schema.js';
import { parseInput } from '../common/validation.js';

type Kube = ReturnType<typeof createKubernetesActivities>;
type Talos = ReturnType<typeof createTalosActivities>;

const kube = wf.proxyActivities<Kube>(apiCall);
const kubeWait = wf.proxyActivities<Kube>(waitFor);
const talos = wf.proxyActivities<Talos>(apiCall);
const files = wf.proxyActivities<DrReportActivities>(apiCall);

export const fluxStatusQuery = wf.defineQuery<FluxStatus>('fluxStatus');

export const FLUX_BOOTSTRAP_STEPS = [
  'validate',
  'check cluster',
  'apply components',
  'wait for controllers',
  'secrets',
  'apply sync',
  'wait for Ready',
] as const;

export async function fluxBootstrap(raw: unknown): Promise<FluxBootstrapResult> {
  const input = parseInput(fluxBootstrapInputSchema, raw, 'flux-bootstrap input');
  wf.upsertSearchAttributes([{ key: RESOURCE_KEY, value: input.cluster }]);
  const progress = new ProgressTracker(FLUX_BOOTSTRAP_STEPS);
  const status: FluxStatus = { state: 'applying' };
  wf.setHandler(fluxStatusQuery, () => status);
  const changed: string[] = [];
  const unchanged: string[] = [];
  const record = (objects: Array<{ kind: string; namespace?: string; name: string; result: string }>): void => {
    for (const o of objects) {
      const name = `${o.kind} ${o.namespace ? `${o.namespace}/` : ''}${o.name}`;
      (o.result === 'unchanged' ? unchanged : changed).push(o.result === 'unchanged' ? name : `${name} ${o.result}`);
    }
  };

  // 1. validate: the input, the inventory's flux section, the manifest's file.
  const settings = await progress.run(
    'validate',
    async () => {
      const inventory = parseInventory(
        input.inventory ?? (await talos.talosLabInventory()),
        wf.patched(LAB_RULES_PATCH),
      );
      const cluster = inventory.clusters[input.cluster];
      if (!cluster) {
        throw nonRetryable(
          'validation',
          `invalid flux-bootstrap input: cluster: no cluster ${input.cluster} in the inventory`,
        );
      }
      const flux = cluster.flux;
      const git: FluxGitSettings = {
        url: input.git.url ?? flux?.url ?? '',
        branch: input.git.branch ?? flux?.branch ?? 'main',
        path: input.git.path ?? flux?.path ?? `./clusters/${input.cluster}`,
      };
      if (!git.url) {
        throw nonRetryable(
          'validation',
          `invalid flux-bootstrap input: clusters.${input.cluster}.flux.url: the cluster has no Flux repository (give git.url)`,
        );
      }
      const gitCredentials = input.gitCredentials ?? flux?.gitCredentials;
      const problem = gitCredentials && fluxCredentialsProblem(git.url, gitCredentials);
      if (problem) {
        const field = input.gitCredentials ? 'gitCredentials' : `clusters.${input.cluster}.flux.gitCredentials`;
        throw nonRetryable('validation', `invalid flux-bootstrap input: ${field}: ${problem}`);
      }
      const sopsAgeKey = input.sopsAgeKey ?? flux?.sopsAgeKey;
      const manifest = manifestPath(input.componentsManifest, input.labRepoDir, git.path);
      const facts = await files.drFileFacts({ path: manifest });
      return {
        git,
        gitCredentials,
        sopsAgeKey,
        manifest,
        manifestSha: facts.sha256,
        kubeconfig: input.kubeconfig ?? { store: talosStore.kubeconfig(input.cluster) },
      };
    },
    (s) => `${s.git.url} ${s.git.branch} ${s.git.path}; components ${s.manifest}`,
  );
  const { kubeconfig, git } = settings;

  // 2. check the cluster
  await progress.run(
    'check cluster',
    async () => {
      const ns = await kube.k8sGetObject({ kubeconfig, apiVersion: 'v1', kind: 'Namespace', name: 'kube-system' });
      if (!ns.exists)
        throw nonRetryable('precondition', `cluster ${input.cluster}: the API answers but has no kube-system`);
      const existing = await kube.k8sGetObject({
        kubeconfig,
        apiVersion: 'v1',
        kind: 'Namespace',
        name: FLUX_NAMESPACE,
      });
      return existing.exists;
    },
    (exists) => `the API answers; ${exists ? `${FLUX_NAMESPACE} exists (upgrade)` : 'no Flux yet'}`,
  );

  // 3. the components, server-side applied: the worker reads the file, so the manifest never
  //    enters history; its sha256 says which one was applied.
  const applied = await progress.run(
    'apply components',
    () => kube.k8sApplyFile({ kubeconfig, path: settings.manifest, fieldManager: FIELD_MANAGER }),
    (a) => `${settings.manifest} (sha256 ${a.sha256.slice(0, 12)}, ${a.bytes} bytes): ${describeApplied(a.objects)}`,
  );
  const components = applied.objects;
  record(components);

  // 4. the controllers: one deadline for all of them and across attempts (a retried wait only
  //    waits for what is left; reaching it is final).
  const deployments = components.filter((o) => o.kind === 'Deployment' && o.apiVersion === 'apps/v1');
  const controllersDeadline = Date.now() + input.controllersTimeoutSeconds * 1000;
  await progress.run(
    'wait for controllers',
    () =>
      Promise.all(
        deployments.map((d) =>
          kubeWait.k8sWaitCondition({
            kubeconfig,
            apiVersion: 'apps/v1',
            kind: 'Deployment',
            namespace: d.namespace ?? FLUX_NAMESPACE,
            name: d.name,
            conditionType: 'Available',
            status: 'True',
            currentGeneration: true,
            timeoutSeconds: input.controllersTimeoutSeconds,
            deadlineAt: controllersDeadline,
          }),
        ),
      ),
    () => `${deployments.map((d) => d.name).join(', ') || 'no Deployments'} Available`,
  );

  // 5. the secrets, from references (values never pass through the workflow)
  await progress.run(
    'secrets',
    async () => {
      const made: string[] = [];
      if (settings.gitCredentials) {
        const r = await kube.k8sCreateSecretFromRef({
          kubeconfig,
          namespace: FLUX_NAMESPACE,
          name: FLUX_GIT_SECRET,
          ...fluxGitSecretData(settings.gitCredentials),
          labels: { 'app.kubernetes.io/managed-by': 'labwright' },
          fieldManager: FIELD_MANAGER,
        });
        record([{ kind: 'Secret', namespace: FLUX_NAMESPACE, name: FLUX_GIT_SECRET, result: r.result }]);
        made.push(`${FLUX_GIT_SECRET} ${r.result}`);
      }
      if (settings.sopsAgeKey) {
        const r = await kube.k8sCreateSecretFromRef({
          kubeconfig,
          namespace: FLUX_NAMESPACE,
          name: FLUX_SOPS_SECRET,
          data: { 'age.agekey': settings.sopsAgeKey },
          labels: { 'app.kubernetes.io/managed-by': 'labwright' },
          fieldManager: FIELD_MANAGER,
        });
        record([{ kind: 'Secret', namespace: FLUX_NAMESPACE, name: FLUX_SOPS_SECRET, result: r.result }]);
        made.push(`${FLUX_SOPS_SECRET} ${r.result}`);
      }
      return made;
    },
    (made) => (made.length ? made.join(', ') : 'no credentials given (public repository, no SOPS)'),
  );

  // 6. the sync objects
  const gitRepository = gitRepositoryObject(git, input.interval, settings.gitCredentials !== undefined);
  const kustomization = kustomizationObject(git, input.interval, settings.sopsAgeKey !== undefined);
  const sync = await progress.run(
    'apply sync',
    async () =>
      (
        await kube.k8sApply({
          kubeconfig,
          manifests: [gitRepository, kustomization].map((o) => JSON.stringify(o)).join('\n---\n'),
          fieldManager: FIELD_MANAGER,
          // Once kustomize-controller applies the repository's own gotk-sync.yaml, the sync objects
          // are Git's: a re-run (the upgrade path) leaves them alone instead of conflicting.
          yieldTo: ['kustomize-controller'],
        })
      ).objects,
    (applied) => describeApplied(applied),
  );
  record(sync);

  // 7. wait for Ready at the expected revision, in a heartbeating activity: one call per chunk
  //    (the progress and the fluxStatus query are updated after each, and on turning slow), at
  //    most ~30 chunks however long the deadline; runs started before `flux-ready-wait-activity`
  //    replay the workflow-side poll they recorded.
  const terminal = {
    GitRepository: input.terminalReasons.GitRepository ?? DEFAULT_TERMINAL_REASONS.GitRepository,
    Kustomization: input.terminalReasons.Kustomization ?? DEFAULT_TERMINAL_REASONS.Kustomization,
  };
  progress.start('wait for Ready', `waiting for ${input.expectedRevision ?? 'the fetched revision'}`);
  status.state = 'waiting';
  const started = Date.now();
  const waitInActivity = wf.patched('flux-ready-wait-activity');
  const deadline = started + input.readyTimeoutSeconds * 1000;
  const slowAt = started + input.slowAfterSeconds * 1000;
  const chunkMs = Math.min(20 * 60_000, Math.max(60_000, (input.readyTimeoutSeconds * 1000) / 30));
  let revision = '';
  for (;;) {
    let sync: FluxSyncState;
    if (waitInActivity) {
      const now = Date.now();
      sync = await kubeWait.k8sWaitFluxReady({
        kubeconfig,
        ...(input.expectedRevision ? { expectedRevision: input.expectedRevision } : {}),
        terminal,
        pollMs: input.pollSeconds * 1000,
        returnAt: Math.min(deadline, now + chunkMs, status.state !== 'slow' && slowAt > now ? slowAt : Infinity),
      });
    } else {
      const [repo, ks] = await Promise.all([
        kube.k8sGetObject({ kubeconfig, ...fluxRef('source.toolkit.fluxcd.io/v1', 'GitRepository') }),
        kube.k8sGetObject({ kubeconfig, ...fluxRef('kustomize.toolkit.fluxcd.io/v1', 'Kustomization') }),
      ]);
      sync = fluxSyncState(
        (repo.object ?? null) as FluxObjectView | null,
        (ks.object ?? null) as FluxObjectView | null,
        input.expectedRevision,
        terminal,
      );
    }
    const { gitRepository: repoState, kustomization: ksState, want } = sync;
    const waited = Math.round((Date.now() - started) / 1000);
    Object.assign(status, { gitRepository: repoState, kustomization: ksState, waitedSeconds: waited });

    const settled = fluxSyncSettled(sync);
    if (settled === 'failed') {
      const detail = [repoState, ksState]
        .filter((s) => s.state === 'failed')
        .map((s) => s.detail)
        .join('; ');
      status.state = 'failed';
      progress.fail('wait for Ready', detail);
      progress.finishWith(`Flux on ${input.cluster} failed: ${detail}`);
      throw nonRetryable('precondition', `Flux on ${input.cluster} failed: ${detail}`, { status });
    }
    if (settled === 'ready') {
      revision = ksState.revision ?? want!;
      status.state = 'ready';
      break;
    }
    if (waited >= input.readyTimeoutSeconds) {
      status.state = 'failed';
      const detail = `${repoState.detail}; ${ksState.detail}`;
      progress.fail(
        'wait for Ready',
        `deadline of ${formatDuration(input.readyTimeoutSeconds * 1000)} passed: ${detail}`,
      );
      throw wf.ApplicationFailure.create({
        type: 'TimeoutError',
        nonRetryable: true,
        message: `Flux on ${input.cluster} not Ready within ${formatDuration(input.readyTimeoutSeconds * 1000)}: ${detail}`,
        details: [status],
      });
    }
    const slow = waited >= input.slowAfterSeconds;
    if (slow && status.state !== 'slow') {
      status.state = 'slow';
      status.warning = `slow: not Ready after ${formatDuration(waited * 1000)} (still converging; deadline ${formatDuration(input.readyTimeoutSeconds * 1000)})`;
      wf.log.warn('Flux bootstrap is slow', { cluster: input.cluster, waitedSeconds: waited });
    }
    progress.detail(
      'wait for Ready',
      `${slow ? 'SLOW ' : ''}${formatDuration(waited * 1000)}: ${repoState.detail}; ${ksState.detail}`,
    );
    if (!waitInActivity) await wf.sleep(input.pollSeconds * 1000);
  }
  const waitedSeconds = Math.round((Date.now() - started) / 1000);
  const slow = waitedSeconds >= input.slowAfterSeconds;
  progress.done(
    'wait for Ready',
    `Ready at ${revision} after ${formatDuration(waitedSeconds * 1000)}${slow ? ' (slow)' : ''}`,
  );
  const summary =
    changed.length === 0
      ? `Flux on ${input.cluster} Ready at ${revision}; nothing changed (${unchanged.length} objects unchanged)`
      : `Flux on ${input.cluster} Ready at ${revision}; ${changed.length} changed, ${unchanged.length} unchanged`;
  progress.finishWith(summary);
  return {
    cluster: input.cluster,
    revision,
    changed,
    unchanged,
    controllers: deployments.map((d) => d.name),
    componentsSha256: applied.sha256,
    slow,
    waitedSeconds,
    summary,
  };
}

function fluxRef(apiVersion: string, kind: string) {
  return { apiVersion, kind, namespace: FLUX_NAMESPACE, name: FLUX_NAME };
}

/** The components manifest: absolute, relative to the lab checkout, or the checkout's default. */
function manifestPath(given: string | undefined, repo: string | undefined, fluxPath: string): string {
  if (given?.startsWith('/')) return given;
  if (!repo) {
    throw nonRetryable(
      'validation',
      'invalid flux-bootstrap input: componentsManifest: give an absolute path, or labRepoDir with a relative one',
    );
  }
  const rel = given ?? `${fluxPath.replace(/^\.\//, '').replace(/\/$/, '')}/flux-system/gotk-components.yaml`;
  return `${repo.replace(/\/$/, '')}/${rel.replace(/^\.\//, '')}`;
}

function describeApplied(applied: Array<{ result: string }>): string {
  const count = (r: string): number => applied.filter((a) => a.result === r).length;
  return `${applied.length} objects: ${count('created')} created, ${count('configured')} configured, ${count('unchanged')} unchanged`;
}
