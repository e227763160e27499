/**
 * Kubernetes for the simulated lab: the same real kube-apiserver + etcd the tests use
 * (sim/kube-apiserver.ts, built by scripts/ensure-kube.sh), on loopback, with the pinned CRDs
 * (scripts/ensure-crds.sh). Its admin kubeconfig goes into the lab's secret store as `kubeconfig/home`;
 * activities take it as `{ store: 'kubeconfig/home' }`. No controllers run: objects are stored
 * and validated, nothing reconciles them.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { startKube } from './kube-apiserver.js';
import type { PeerStarter } from './index.js';

/** Store name of the simulated cluster's admin kubeconfig. */
export const SIM_KUBECONFIG_STORE = 'kubeconfig/home';

export const kubeSimPeer: PeerStarter = async (ctx) => {
  const kube = await startKube({
    // Kept after stop for its logs; wiped at the next start (every start is a new cluster).
    dataDir: path.join(ctx.dir, 'kube'),
    logDir: path.join(ctx.dir, 'logs', 'kube'),
  });
  try {
    const ref = await ctx.secrets.put(SIM_KUBECONFIG_STORE, await fs.readFile(kube.kubeconfigPath, 'utf8'));
    return {
      name: 'kubernetes',
      summary: `kube-apiserver on ${kube.server} (with etcd, Flux/VolSync/snapshot CRDs); kubeconfig ${JSON.stringify(ref)}`,
      env: { LABWRIGHT_SIM_KUBE_SERVER: kube.server, LABWRIGHT_SIM_KUBECONFIG: SIM_KUBECONFIG_STORE },
      handle: kube,
      stop: () => kube.stop(),
    };
  } catch (err) {
    await kube.stop();
    throw err;
  }
};
