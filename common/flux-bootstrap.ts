/**
 * The Flux bootstrap's contract: input schema, workflow ID, the objects it applies (GitRepository
 * and Kustomization `flux-system`, the secrets' names), and the pure readiness check the workflow
 * polls with: Ready at the expected revision, slow, or failed for good.
 *
 * Pure: no I/O, so the workflow decides deterministically from what the API server reports.
 */
import { z } from 'zod';
import { fluxGitCredentialsSchema, nameSchema, type FluxGitCredentials } from '../hardware/schema.js';
import { secretRefSchema, type SecretRef } from './secret-ref.js';

export const FLUX_NAMESPACE = 'flux-system';
export const FLUX_NAME = 'flux-system';
/** The Secret with the Git credentials the GitRepository reads (`secretRef`). */
export const FLUX_GIT_SECRET = 'flux-system';
/** The Secret with the SOPS age key the Kustomization decrypts with. */
export const FLUX_SOPS_SECRET = 'sops-age';
/** The field manager of every object labwright applies. */
export const FIELD_MANAGER = 'labwright';

/** Ready=False reasons that retrying will not cure (the controllers keep saying the same). */
export const DEFAULT_TERMINAL_REASONS = {
  GitRepository: ['AuthenticationFailed', 'URLInvalid', 'GitOperationFailed', 'InvalidSTSConfiguration'],
  Kustomization: ['ReconciliationFailed', 'BuildFailed', 'ValidationFailed', 'PruneFailed', 'HealthCheckFailed'],
};

export const fluxBootstrapInputSchema = z.strictObject({
  /** The inventory's cluster, e.g. `home`; its `flux` section gives the repository. */
  cluster: nameSchema,
  /** The lab inventory; the worker's own when left out. Validated in full either way. */
  inventory: z.record(z.string(), z.unknown()).optional(),
  /** Admin kubeconfig; default the one talos-bootstrap stored (`talos/<cluster>/kubeconfig`). */
  kubeconfig: secretRefSchema.optional(),
  /**
   * The Flux components manifest (`flux install --export` output): an absolute path, or relative
   * to `labRepoDir`. Default `<labRepoDir>/<flux path>/flux-system/gotk-components.yaml`.
   */
  componentsManifest: z.string().min(1).optional(),
  /** A checkout of the lab's Git repository on the worker: absolute, or relative to the worker's working directory. */
  labRepoDir: z.string().min(1).optional(),
  /** Overrides of the inventory's `flux` section (url, branch, path). */
  git: z
    .strictObject({
      url: z.string().min(1).optional(),
      branch: z.string().min(1).optional(),
      path: z.string().min(1).optional(),
    })
    .default({}),
  /**
   * The Git credentials, in the shapes source-controller accepts (ssh: identity and knownHosts;
   * https: username and password, or bearerToken). Default the inventory's `flux.gitCredentials`.
   */
  gitCredentials: fluxGitCredentialsSchema.optional(),
  /** SOPS age key; default the inventory's `flux.sopsAgeKey`. None: no decryption. */
  sopsAgeKey: secretRefSchema.optional(),
  /** The revision both must reach, e.g. `main@sha1:0123…`. Default: whatever the source fetched. */
  expectedRevision: z.string().min(1).optional(),
  /** spec.interval of both objects. */
  interval: z
    .string()
    .regex(/^\d+[smh]$/, 'expected a Go duration like 1m')
    .default('1m'),
  /** How long the controllers (Deployments) may take to become Available, in seconds. */
  controllersTimeoutSeconds: z.int().min(1).max(3600).default(300),
  /** How long to wait for GitRepository and Kustomization to be Ready, in seconds (the deadline). */
  readyTimeoutSeconds: z.int().min(1).max(86_400).default(1800),
  /** After this many seconds of waiting the run is reported slow (not failed), in seconds. */
  slowAfterSeconds: z.int().min(1).max(86_400).default(300),
  /** How often the workflow looks at both objects, in seconds. */
  pollSeconds: z.number().min(0.2).max(600).default(10),
  /** Ready=False reasons that fail the run at once (per kind); defaults in DEFAULT_TERMINAL_REASONS. */
  terminalReasons: z
    .strictObject({ GitRepository: z.array(z.string()).optional(), Kustomization: z.array(z.string()).optional() })
    .default({}),
});
export type FluxBootstrapInput = z.input<typeof fluxBootstrapInputSchema>;

export function fluxBootstrapWorkflowId(cluster: string): string {
  return `flux-bootstrap/${cluster}`;
}

export interface FluxGitSettings {
  url: string;
  branch: string;
  path: string;
}

// ------------------------------------------------------------------ objects

/** The Git credentials Secret's keys as source-controller reads them: references, and the plain username. */
export function fluxGitSecretData(c: FluxGitCredentials): {
  data: Record<string, SecretRef>;
  literals: Record<string, string>;
} {
  if ('identity' in c) {
    return {
      data: {
        identity: c.identity,
        known_hosts: c.knownHosts,
        ...(c.identityPub ? { 'identity.pub': c.identityPub } : {}),
      },
      literals: {},
    };
  }
  if ('bearerToken' in c) return { data: { bearerToken: c.bearerToken }, literals: {} };
  if ('username' in c) return { data: { password: c.password }, literals: { username: c.username } };
  throw new TypeError('a bare credentials reference is refused by fluxCredentialsProblem first');
}

const labels = { 'app.kubernetes.io/managed-by': 'labwright', 'app.kubernetes.io/part-of': 'flux' };

export function gitRepositoryObject(git: FluxGitSettings, interval: string, withSecret: boolean) {
  return {
    apiVersion: 'source.toolkit.fluxcd.io/v1',
    kind: 'GitRepository',
    metadata: { name: FLUX_NAME, namespace: FLUX_NAMESPACE, labels },
    spec: {
      interval,
      url: git.url,
      ref: { branch: git.branch },
      ...(withSecret ? { secretRef: { name: FLUX_GIT_SECRET } } : {}),
    },
  };
}

export function kustomizationObject(git: FluxGitSettings, interval: string, withSops: boolean) {
  return {
    apiVersion: 'kustomize.toolkit.fluxcd.io/v1',
    kind: 'Kustomization',
    metadata: { name: FLUX_NAME, namespace: FLUX_NAMESPACE, labels },
    spec: {
      interval,
      path: git.path,
      prune: true,
      sourceRef: { kind: 'GitRepository', name: FLUX_NAME },
      ...(withSops ? { decryption: { provider: 'sops', secretRef: { name: FLUX_SOPS_SECRET } } } : {}),
    },
  };
}

// ------------------------------------------------------------------ readiness

export interface Condition {
  type: string;
  status: string;
  reason?: string;
  message?: string;
  observedGeneration?: number;
}

/** The part of a GitRepository or Kustomization the readiness check reads. */
export interface FluxObjectView {
  metadata?: { generation?: number };
  spec?: { suspend?: boolean };
  status?: {
    observedGeneration?: number;
    conditions?: Condition[];
    artifact?: { revision?: string };
    lastAttemptedRevision?: string;
    lastAppliedRevision?: string;
  };
}

export type FluxState = 'ready' | 'progressing' | 'failed';

export interface FluxObjectState {
  state: FluxState;
  /** What the controller reports, for progress and errors. */
  detail: string;
  /** The source's artifact revision, or the Kustomization's last attempted one. */
  revision?: string;
}

function readyCondition(obj: FluxObjectView): Condition | undefined {
  return (obj.status?.conditions ?? []).find((c) => c.type === 'Ready');
}

/**
 * One object's state. `expected`: the revision it must be at (none: any). Ready needs
 * observedGeneration current, not suspended, Ready=True and the revision; failed needs a current
 * Ready=False (or Stalled=True) with a terminal reason, about the expected revision.
 */
export function fluxObjectState(
  kind: 'GitRepository' | 'Kustomization',
  obj: FluxObjectView | null,
  expected: string | undefined,
  terminalReasons: readonly string[],
): FluxObjectState {
  const what = `${kind} ${FLUX_NAMESPACE}/${FLUX_NAME}`;
  if (!obj) return { state: 'progressing', detail: `${what} does not exist yet` };
  if (obj.spec?.suspend) return { state: 'failed', detail: `${what} is suspended (spec.suspend: true)` };
  const generation = obj.metadata?.generation ?? 1;
  const observed = obj.status?.observedGeneration ?? -1;
  const revision = kind === 'GitRepository' ? obj.status?.artifact?.revision : obj.status?.lastAttemptedRevision;
  if (observed < generation) {
    return {
      state: 'progressing',
      detail: `${what}: generation ${generation} not observed yet (observed ${observed < 0 ? 'none' : observed})`,
      ...(revision ? { revision } : {}),
    };
  }
  const ready = readyCondition(obj);
  const stalled = (obj.status?.conditions ?? []).find((c) => c.type === 'Stalled' && c.status === 'True');
  const atExpected = expected === undefined || revision === expected;
  if (ready?.status === 'True') {
    const applied = kind === 'Kustomization' ? obj.status?.lastAppliedRevision : revision;
    if (atExpected && (expected === undefined || applied === expected)) {
      return {
        state: 'ready',
        detail: `${what} Ready at ${revision ?? 'unknown revision'}`,
        ...(revision ? { revision } : {}),
      };
    }
    return {
      state: 'progressing',
      detail: `${what} Ready at ${revision ?? 'no revision'}, waiting for ${expected}`,
      ...(revision ? { revision } : {}),
    };
  }
  const failing = stalled ?? (ready?.status === 'False' ? ready : undefined);
  const current = failing && (failing.observedGeneration === undefined || failing.observedGeneration >= generation);
  if (failing && current && atExpected && (stalled || terminalReasons.includes(failing.reason ?? ''))) {
    return {
      state: 'failed',
      detail:
        `${what} ${stalled ? 'Stalled' : 'Ready=False'} (${failing.reason ?? 'no reason'}): ${failing.message ?? ''}`.trim(),
      ...(revision ? { revision } : {}),
    };
  }
  const said = ready
    ? `Ready=${ready.status} (${ready.reason ?? ''}): ${ready.message ?? ''}`
    : 'no Ready condition yet';
  return { state: 'progressing', detail: `${what} ${said}`.trim(), ...(revision ? { revision } : {}) };
}

/** Both sync objects' states; `want`: the revision the Kustomization must be at. */
export interface FluxSyncState {
  gitRepository: FluxObjectState;
  kustomization: FluxObjectState;
  want?: string;
}

/**
 * The GitRepository's and the Kustomization's states. Without an expected revision, the
 * Kustomization must be at what the source fetched.
 */
export function fluxSyncState(
  repo: FluxObjectView | null,
  ks: FluxObjectView | null,
  expectedRevision: string | undefined,
  terminal: { GitRepository: readonly string[]; Kustomization: readonly string[] },
): FluxSyncState {
  const gitRepository = fluxObjectState('GitRepository', repo, expectedRevision, terminal.GitRepository);
  const want = expectedRevision ?? gitRepository.revision;
  const kustomization = fluxObjectState('Kustomization', ks, want, terminal.Kustomization);
  return { gitRepository, kustomization, ...(want !== undefined ? { want } : {}) };
}

/** Settled: one of them failed, or both are Ready at the wanted revision. */
export function fluxSyncSettled(s: FluxSyncState): 'failed' | 'ready' | undefined {
  if (s.gitRepository.state === 'failed' || s.kustomization.state === 'failed') return 'failed';
  if (s.gitRepository.state === 'ready' && s.kustomization.state === 'ready' && s.want !== undefined) return 'ready';
  return undefined;
}

export interface FluxStatus {
  /** waiting: not Ready yet; slow: not Ready after slowAfterSeconds (a warning, not a failure). */
  state: 'applying' | 'waiting' | 'slow' | 'ready' | 'failed';
  gitRepository?: FluxObjectState;
  kustomization?: FluxObjectState;
  waitedSeconds?: number;
  warning?: string;
}

export interface FluxBootstrapResult {
  cluster: string;
  revision: string;
  /** Objects this run created or changed (`Kind namespace/name`). */
  changed: string[];
  /** Objects that were already as wanted. */
  unchanged: string[];
  controllers: string[];
  /** sha256 of the components manifest file that was applied. */
  componentsSha256: string;
  /** Whether the wait passed the slow threshold; how long it took. */
  slow: boolean;
  waitedSeconds: number;
  summary: string;
}
