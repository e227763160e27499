// `labwright dr report <plan>` after three real VM drills on fakepve (the backups a little younger
// each time): the table's figures are the reports', the page beside each drill's report shows the
// runs up to it, and headless Chromium renders the trend with one point per drill.
// LABWRIGHT_WRITE_DOCS=1 also saves the screenshot as docs/dr-report.png.
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { formatDuration, type DrReport } from '../common/dr-restore.js';
import { projectRoot } from '../lib/paths.js';
import { testLog } from './harness/logs.js';
import { launchChromium } from './harness/browser.js';
import { hassDrill, startDrLab, storeVmBackup, type DrLab } from './harness/dr-lab.js';
import { runTs } from './harness/processes.js';
import { testClient, uniqueName, withWorker } from './harness/temporal.js';

let lab: DrLab;
beforeAll(async () => {
  lab = await startDrLab();
});
afterAll(async () => {
  await lab?.stop();
});

describe('labwright dr report', () => {
  it('shows the last three drills of a plan as a table and as a page with the RTO/RPO trend', async () => {
    const client = await testClient();
    const plan = uniqueName('trend');
    const reports: DrReport[] = [];
    await withWorker({ activities: lab.activities }, async ({ taskQueue }) => {
      for (const ageHours of [5, 3, 1]) {
        await storeVmBackup(lab, 120, ageHours * 3600);
        reports.push(
          (await client.workflow.execute('drRestore', {
            taskQueue,
            workflowId: `dr-drill/${plan}-${reports.length}`,
            args: [hassDrill(lab, plan)],
          })) as DrReport,
        );
      }
    });
    expect(reports.map((r) => r.ok)).toEqual([true, true, true]);
    // The newest backup is restored: the RPO falls from about 5h to about 1h.
    expect(reports.map((r) => Math.round(r.maxRpoMs / 3_600_000))).toEqual([5, 3, 1]);

    // Beside each drill's report, the page of the runs up to it.
    const folder = path.join(lab.reportsDir, plan, 'drill');
    const files = (await fs.readdir(folder)).sort();
    const pages = files.filter((f) => f.endsWith('.html'));
    expect(files.filter((f) => f.endsWith('.json')).map((f) => f.replace(/\.json$/, '.html'))).toEqual(pages);
    const pointsOf = (html: string): number => html.match(/<g class="point/g)?.length ?? 0;
    const beside = await Promise.all(pages.map((f) => fs.readFile(path.join(folder, f), 'utf8')));
    expect(beside.map(pointsOf)).toEqual([2, 4, 6]); // RTO and RPO: one point each per run so far

    const html = path.join(lab.pve.dir, 'report.html');
    const shown = await runTs(
      'clients/labwright.ts',
      ['dr', 'report', plan, '--dir', lab.reportsDir, '--html', html],
      {},
    );
    expect(shown.stderr).toBe('');
    expect(shown.code).toBe(0);
    const lines = shown.stdout.trim().split('\n');
    expect(lines[0]).toBe(`drill ${plan}: the last 3 run(s)`);
    expect(lines[1]).toMatch(/^finished\s+verdict\s+RTO\s+RPO\s+cleanup\s+targets$/);
    for (const [i, r] of reports.entries()) {
      const cells = lines[2 + i]!.split(/\s{2,}/);
      expect(cells).toEqual([
        r.finishedAt.replace(/\.\d+Z$/, 'Z'),
        'ok',
        formatDuration(r.totalRtoMs),
        formatDuration(r.maxRpoMs),
        formatDuration(r.cleanupMs),
        'vm hass (120)',
      ]);
    }
    expect(lines.at(-1)).toBe(`the page with the RTO/RPO trend: ${html}`);
    // The page beside the last drill's report is the one the command wrote.
    expect(await fs.readFile(html, 'utf8')).toBe(beside.at(-1));

    const browser = await launchChromium();
    try {
      const page = await browser.open(`file://${html}`);
      await expect.poll(() => page.evaluate<string>('document.readyState')).toBe('complete');
      const chart = (cls: string) =>
        page.evaluate<Array<{ ms: number; label: string; y: number }>>(
          `[...document.querySelectorAll('figure.${cls} g.point')].map((g) => ({
            ms: Number(g.dataset.ms), label: g.querySelector('text.value').textContent,
            y: g.querySelector('circle').getBoundingClientRect().y }))`,
        );
      const rto = await chart('rto');
      const rpo = await chart('rpo');
      expect(rto.map((p) => p.ms)).toEqual(reports.map((r) => r.totalRtoMs));
      expect(rto.map((p) => p.label)).toEqual(reports.map((r) => formatDuration(r.totalRtoMs)));
      expect(rpo.map((p) => p.label)).toEqual(reports.map((r) => formatDuration(r.maxRpoMs)));
      // Drawn as a trend: a younger backup sits lower on the RPO chart.
      expect(rpo[0]!.y).toBeLessThan(rpo[1]!.y);
      expect(rpo[1]!.y).toBeLessThan(rpo[2]!.y);
      const text = await page.text();
      expect(text).toContain(`DR drill report: ${plan}`);
      expect(text).toContain(reports[2]!.summary);

      const png = await page.screenshot(720);
      expect(png.subarray(1, 4).toString()).toBe('PNG');
      const shot = testLog('dr-report.png');
      await fs.mkdir(path.dirname(shot), { recursive: true });
      await fs.writeFile(shot, png);
      if (process.env.LABWRIGHT_WRITE_DOCS === '1') {
        await fs.writeFile(path.join(projectRoot, 'docs', 'dr-report.png'), png);
      }
    } finally {
      await browser.close();
    }
  });
});
