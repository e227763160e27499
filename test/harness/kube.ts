/**
 * The real kube-apiserver + etcd the tests talk to. The start code lives in sim/kube-apiserver.ts
 * (the simulated lab starts the same way, sim/kube.ts); this file re-exports it and adds what
 * test files use:
 *
 * - `sharedKube()`: the ONE instance test/harness/global-setup.ts starts for the whole run, in
 *   parallel with Temporal (the kubeconfig path comes through `inject('kubeconfigPath')`);
 * - `testNamespace(prefix)`: a fresh namespace per test, so test files sharing the instance
 *   never see each other's objects (no controller-manager runs, so namespaces are never
 *   deleted: they go with the instance at the end of the run).
 *
 * A test that needs a cluster of its own (e.g. one that deletes CRDs) still calls `startKube()`.
 */
import { randomUUID } from 'node:crypto';
import { CoreV1Api } from '@kubernetes/client-node';
import { inject } from 'vitest';
import type { SecretRef } from '../../common/secret-ref.js';
import { credsFromKubeconfig, type KubeCreds } from '../../sim/kube-apiserver.js';
import { kubeConfigFor } from './kube-controllers.js';

export * from '../../sim/kube-apiserver.js';
export { projectRoot } from '../../lib/paths.js';

declare module 'vitest' {
  export interface ProvidedContext {
    /** Admin kubeconfig (0600 file) of the run's shared kube-apiserver. */
    kubeconfigPath: string;
  }
}

export interface SharedKube extends KubeCreds {
  kubeconfigPath: string;
  /** The kubeconfig as a secret reference, the form activities take it in. */
  kubeconfig: SecretRef;
}

/** The run's shared kube-apiserver (started by the global setup). */
export function sharedKube(): SharedKube {
  const kubeconfigPath = inject('kubeconfigPath');
  if (!kubeconfigPath)
    throw new Error('no shared kube-apiserver: test/harness/global-setup.ts did not provide kubeconfigPath');
  return { kubeconfigPath, kubeconfig: { file: kubeconfigPath }, ...credsFromKubeconfig(kubeconfigPath) };
}

/**
 * Creates a namespace no other test uses (`<prefix>-<8 hex>`, with its `default` ServiceAccount) on the
 * shared instance, and returns its name.
 */
export async function testNamespace(prefix = 'test'): Promise<string> {
  const name = `${prefix}-${randomUUID().slice(0, 8)}`.toLowerCase();
  const core = kubeConfigFor(sharedKube().kubeconfigPath).makeApiClient(CoreV1Api);
  await core.createNamespace({ body: { metadata: { name, labels: { 'labwright.dev/test': prefix.slice(0, 63) } } } });
  // What kube-controller-manager would add: pods can't be created without it.
  await core.createNamespacedServiceAccount({ namespace: name, body: { metadata: { name: 'default' } } });
  return name;
}
