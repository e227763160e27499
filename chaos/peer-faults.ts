/**
 * Faults of the lab's peers, each for one run of the matrix: PVE answering 5xx and "can't lock
 * file … got timeout" (fakepve's own catalogue), EC2 throttling, 5xx and a response dropped
 * after the request was applied (the EC2 fault proxy), the kube-apiserver answering 429/5xx or
 * dropping a response after it applied the request (the kube fault proxy), and a talosctl
 * whose first call to a node hangs.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import type { ChaosLab } from './lab.js';

export type LabSystem = 'pve' | 'ec2' | 'kube' | 'talos';

export interface PeerFault {
  name: string;
  /** The system that misbehaves: a workflow is run under the faults of the systems it uses. */
  system: LabSystem;
  /** Environment of the run's worker (a talosctl of the fault's own). */
  workerEnv?: NodeJS.ProcessEnv;
  inject(lab: ChaosLab): Promise<void>;
  clear(lab: ChaosLab): Promise<void>;
}

const clearPve = async (lab: ChaosLab) => void (await lab.pve.control({ op: 'clear_failures' }));
const clearEc2 = async (lab: ChaosLab) => lab.ec2.clearRules();
const clearKube = async (lab: ChaosLab) => lab.kubeFaults.clearRules();

/** The faults, given the lab (the hanging talosctl wraps the lab's own). */
export async function peerFaults(lab: ChaosLab): Promise<PeerFault[]> {
  return [
    {
      name: 'PVE 5xx',
      system: 'pve',
      inject: async (l) => {
        for (const suffix of ['/nodes/{node}/qemu/{vmid}/clone', '/nodes/{node}/qemu/{vmid}/status/start']) {
          await l.pve.control({
            op: 'fail',
            method: 'POST',
            suffix,
            status: 500,
            message: 'Internal Server Error',
            times: 2,
          });
        }
      },
      clear: clearPve,
    },
    {
      name: 'PVE lock timeout',
      system: 'pve',
      inject: async (l) => {
        for (const suffix of ['/nodes/{node}/qemu/{vmid}/status/start', '/nodes/{node}/qemu/{vmid}/config']) {
          await l.pve.control({ op: 'fail', method: 'POST', suffix, error: 'config_lock_timeout', times: 2 });
        }
      },
      clear: clearPve,
    },
    {
      name: 'EC2 throttling',
      system: 'ec2',
      inject: async (l) => l.ec2.add({ fault: { kind: 'throttle' }, times: 4 }),
      clear: clearEc2,
    },
    {
      name: 'EC2 5xx',
      system: 'ec2',
      inject: async (l) =>
        l.ec2.add({
          fault: { kind: 'error', status: 500, code: 'InternalError', message: 'An internal error has occurred' },
          times: 3,
        }),
      clear: clearEc2,
    },
    {
      name: 'EC2 response dropped after apply',
      system: 'ec2',
      inject: async (l) => l.ec2.add({ action: 'RunInstances', fault: { kind: 'drop-after-apply' } }),
      clear: clearEc2,
    },
    {
      name: 'kube 429',
      system: 'kube',
      inject: async (l) => l.kubeFaults.add({ fault: { kind: 'status', status: 429 }, times: 4 }),
      clear: clearKube,
    },
    {
      name: 'kube 5xx',
      system: 'kube',
      inject: async (l) => l.kubeFaults.add({ fault: { kind: 'status', status: 503 }, times: 3 }),
      clear: clearKube,
    },
    {
      name: 'kube response dropped after apply',
      system: 'kube',
      inject: async (l) => l.kubeFaults.add({ method: 'POST', fault: { kind: 'drop-after-apply' } }),
      clear: clearKube,
    },
    await hangingTalosctl(lab),
  ];
}

/**
 * A talosctl whose first call to a node (anything but the local `gen`, `validate`, `config`)
 * never returns, as a talosctl stuck on a half-open connection; later calls run the lab's own.
 */
async function hangingTalosctl(lab: ChaosLab): Promise<PeerFault> {
  const dir = path.join(lab.dir, 'hanging-talosctl');
  const script = path.join(dir, 'talosctl');
  const marker = path.join(dir, 'hung');
  await fs.mkdir(dir, { recursive: true });
  await fs.writeFile(
    script,
    [
      '#!/usr/bin/env bash',
      `case "$1" in gen|validate|config) exec ${JSON.stringify(lab.sim.env.LABWRIGHT_TALOSCTL)} "$@";; esac`,
      `if mkdir ${JSON.stringify(marker)} 2>/dev/null; then exec -a ${JSON.stringify(script)} sleep 100000; fi`,
      `exec ${JSON.stringify(lab.sim.env.LABWRIGHT_TALOSCTL)} "$@"`,
      '',
    ].join('\n'),
    { mode: 0o755 },
  );
  return {
    name: 'talosctl hangs',
    system: 'talos',
    workerEnv: { LABWRIGHT_TALOSCTL: script },
    inject: async () => fs.rm(marker, { recursive: true, force: true }),
    clear: async () => fs.rm(marker, { recursive: true, force: true }),
  };
}
