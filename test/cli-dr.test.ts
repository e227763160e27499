/** `labwright plan | approve | reject` on a real DR restore waiting for its approval. */
import { WorkflowFailedError } from '@temporalio/client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DrPlan, DrStatus } from '../common/dr-restore.js';
import { appWithBackups, startDrLab, type DrLab } from './harness/dr-lab.js';
import { sharedKube } from './harness/kube.js';
import { TEST_CODEC_KEY_FILE, runTs } from './harness/processes.js';
import { temporalAddress, testClient, uniqueName, withWorker } from './harness/temporal.js';

let lab: DrLab;
beforeAll(async () => {
  lab = await startDrLab();
});
afterAll(async () => {
  await lab?.stop();
});

const labwright = (args: string[]) =>
  runTs('clients/labwright.ts', args, {
    TEMPORAL_ADDRESS: temporalAddress(),
    LABWRIGHT_CODEC_KEY_FILE: TEST_CODEC_KEY_FILE,
  });

function restoreInput(plan: string, namespace: string) {
  return {
    plan,
    mode: 'restore',
    kubeconfig: sharedKube().kubeconfig,
    targets: [
      {
        kind: 'pvc',
        namespace,
        pvc: 'grafana',
        sentinel: { path: '.labwright-sentinel', sha256: 'a'.repeat(64) },
        minSize: '512Mi',
      },
    ],
    maxBackupAge: '1d',
    pollSeconds: 0.2,
    syncTimeoutSeconds: 60,
    jobTimeoutSeconds: 60,
  };
}

/** The plan as `labwright plan -o json` gives it, once the workflow has computed it. */
async function planOf(plan: string): Promise<DrPlan> {
  let shown: DrPlan | null = null;
  await expect
    .poll(
      async () => {
        shown = JSON.parse((await labwright(['plan', plan, '-o', 'json'])).stdout) as DrPlan | null;
        return shown;
      },
      { timeout: 30_000, interval: 300 },
    )
    .not.toBeNull();
  return shown!;
}

describe('labwright plan, approve and reject', () => {
  it('shows the plan and its digest, refuses a stale digest with the reason, and approves with the right one', async () => {
    const app = await appWithBackups(['grafana'], 3600);
    const plan = uniqueName('cli-restore');
    const client = await testClient();
    await withWorker({ activities: lab.activities }, async ({ taskQueue }) => {
      const handle = await client.workflow.start('drRestore', {
        taskQueue,
        workflowId: `dr-restore/${plan}`,
        args: [restoreInput(plan, app)],
      });
      try {
        const shown = await planOf(plan);
        expect(shown.items.map((i) => i.target)).toEqual([`pvc ${app}/grafana`]);
        const overwrites = `the data of PVC ${app}/grafana; restores the snapshot as of ${shown.items[0]!.backup.takenAt}`;
        expect(shown.items[0]!.overwrites).toContain(overwrites);
        const text = await labwright(['plan', `dr-restore/${plan}`]);
        expect(text.stdout).toContain(`overwrites: ${overwrites}`);
        expect(text.stdout).toContain(`approve with: labwright approve dr-restore/${plan} --digest ${shown.digest}`);

        const stale = await labwright(['approve', plan, '--digest', 'deadbeef']);
        expect(stale.code).toBe(1);
        expect(stale.stderr.trim()).toBe(
          `dr-restore/${plan} refused: digest deadbeef is not the plan's ${shown.digest}: read the plan again (labwright plan) and approve what it shows`,
        );
        expect((await handle.query<DrStatus>('drStatus')).phase).toBe('awaiting-approval');

        const ok = await labwright([
          'approve',
          plan,
          '--digest',
          shown.digest,
          '--comment',
          'db corrupt',
          '-o',
          'json',
        ]);
        expect(ok.code, ok.stderr).toBe(0);
        const decided = JSON.parse(ok.stdout) as { workflowId: string; decision: string; by: string };
        expect(decided).toMatchObject({ workflowId: `dr-restore/${plan}`, decision: 'approved' });
        // Who approved is the CLI's Temporal identity as the server recorded it, not a name it typed.
        expect(decided.by).toMatch(/^\d+@/);
        expect((await handle.query<DrStatus>('drStatus')).approval).toEqual({
          digest: shown.digest,
          by: decided.by,
          comment: 'db corrupt',
        });
      } finally {
        await handle.terminate('test over').catch(() => undefined);
      }
    });
  });

  it('rejects a restore, which ends without touching anything', async () => {
    const app = await appWithBackups(['grafana'], 3600);
    const plan = uniqueName('cli-reject');
    const client = await testClient();
    const err = await withWorker({ activities: lab.activities }, async ({ taskQueue }) => {
      const handle = await client.workflow.start('drRestore', {
        taskQueue,
        workflowId: `dr-restore/${plan}`,
        args: [restoreInput(plan, app)],
      });
      await planOf(plan);
      const rejected = await labwright(['reject', plan, '--reason', 'wrong backup']);
      expect(rejected.code, rejected.stderr).toBe(0);
      expect(rejected.stdout).toMatch(new RegExp(`^dr-restore/${plan} rejected by \\d+@\\S+: wrong backup$`, 'm'));
      return handle.result().catch((e: unknown) => e);
    });
    expect(err).toBeInstanceOf(WorkflowFailedError);
    expect(((err as WorkflowFailedError).cause as Error).message).toMatch(
      /rejected by \d+@\S+: wrong backup; nothing was touched$/,
    );
  });
});
