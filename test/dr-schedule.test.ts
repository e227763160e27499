// The weekly DR drill as a Temporal Schedule on the real dev server: created or updated by the
// client command's code (clients/schedules.ts), runs drRestore in drill mode, overlaps skipped,
// and each run compares its report with the previous one.
import { ScheduleOverlapPolicy, type Client } from '@temporalio/client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureDrillSchedule } from '../clients/schedules.js';
import type { DrReport } from '../common/dr-restore.js';
import { startDrLab, storeVmBackup, type DrLab } from './harness/dr-lab.js';
import { sharedKube } from './harness/kube.js';
import { testClient, uniqueName, withWorker } from './harness/temporal.js';

let lab: DrLab;
beforeAll(async () => {
  lab = await startDrLab();
  await storeVmBackup(lab, 120, 3600);
});
afterAll(async () => {
  await lab?.stop();
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function drillRuns(client: Client, plan: string): Promise<Array<{ workflowId: string; runId: string }>> {
  const runs: Array<{ workflowId: string; runId: string }> = [];
  for await (const w of client.workflow.list({
    query: `WorkflowType = 'drRestore' AND LabwrightResource = '${plan}'`,
  })) {
    runs.push({ workflowId: w.workflowId, runId: w.runId });
  }
  return runs;
}

async function scheduleIds(client: Client, prefix: string): Promise<string[]> {
  const ids: string[] = [];
  for await (const s of client.schedule.list()) if (s.scheduleId.startsWith(prefix)) ids.push(s.scheduleId);
  return ids;
}

describe('the weekly DR drill schedule', () => {
  it('is created once and updated in place, runs the drill with overlaps skipped, and each run compares with the last', async () => {
    const client = await testClient();
    const plan = uniqueName('weekly');
    const taskQueue = uniqueName('dr-schedule');
    const planInput = {
      plan,
      mode: 'restore', // forced to drill by the schedule
      kubeconfig: sharedKube().kubeconfig,
      inventory: lab.inventory,
      targets: [{ kind: 'vm', name: 'hass', host: 'pve1', node: 'pve1', vmid: 120, backupStorage: 'unraid-backup' }],
      maxBackupAge: '1d',
      agentTimeoutSeconds: 30,
      pollSeconds: 0.2,
    };

    const first = await ensureDrillSchedule(client, planInput, { taskQueue, paused: true });
    const second = await ensureDrillSchedule(client, planInput, { taskQueue, cron: '30 4 * * 6' });
    expect(first).toEqual({ scheduleId: `dr-drill/${plan}`, outcome: 'created' });
    expect(second).toEqual({ scheduleId: `dr-drill/${plan}`, outcome: 'updated' });
    await expect.poll(() => scheduleIds(client, `dr-drill/${plan}`), { timeout: 15_000 }).toEqual([`dr-drill/${plan}`]);

    const handle = client.schedule.getHandle(`dr-drill/${plan}`);
    try {
      const described = await handle.describe();
      expect(described.policies.overlap).toBe(ScheduleOverlapPolicy.SKIP);
      expect(described.state.paused).toBe(true); // the update keeps what it was not asked to change
      expect(described.spec.calendars).toEqual([
        expect.objectContaining({
          minute: [{ start: 30, end: 30, step: 1 }],
          hour: [{ start: 4, end: 4, step: 1 }],
          dayOfWeek: [{ start: 'SATURDAY', end: 'SATURDAY', step: 1 }],
        }),
      ]);
      expect(described.action).toMatchObject({
        type: 'startWorkflow',
        workflowType: 'drRestore',
        workflowId: `dr-drill/${plan}`,
        taskQueue,
      });
      const args = (described.action as { args?: unknown[] }).args;
      expect(args?.[0]).toMatchObject({ plan, mode: 'drill' });

      await withWorker({ activities: lab.activities, taskQueue }, async () => {
        // Two triggers at once: the second overlaps the first and is skipped.
        await handle.trigger();
        await handle.trigger();
        await expect.poll(() => drillRuns(client, plan), { timeout: 20_000 }).toHaveLength(1);
        const [run1] = await drillRuns(client, plan);
        const report1 = (await client.workflow.getHandle(run1!.workflowId, run1!.runId).result()) as DrReport;
        expect(report1.ok).toBe(true);
        expect(report1.mode).toBe('drill');
        expect(report1.previous).toBeUndefined();
        await sleep(500);
        expect(await drillRuns(client, plan)).toHaveLength(1);

        // The next week's run: its report carries the last one and the RTO trend.
        await handle.trigger();
        await expect.poll(() => drillRuns(client, plan), { timeout: 20_000 }).toHaveLength(2);
        const run2 = (await drillRuns(client, plan)).find((r) => r.runId !== run1!.runId)!;
        const report2 = (await client.workflow.getHandle(run2.workflowId, run2.runId).result()) as DrReport;
        expect(report2.ok).toBe(true);
        expect(report2.previous).toMatchObject({
          workflowId: run1!.workflowId,
          ok: true,
          totalRtoMs: report1.totalRtoMs,
        });
        expect(report2.rtoTrendMs).toBe(report2.totalRtoMs - report1.totalRtoMs);
        expect(report2.summary).toMatch(/RTO (up|down) \S+ from the last run/);
      });
    } finally {
      await handle.delete();
    }
  });
});
