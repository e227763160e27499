/**
 * `labwright plan | approve | reject` for DR restores, `schedule-drill` for weekly drills, and
 * `dr report` for a plan's last runs. A restore shows its plan (the `plan` query) and touches
 * nothing until it is approved with the digest of the plan the operator read.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { WorkflowUpdateFailedError } from '@temporalio/client';
import type { Command } from 'commander';
import { drReportDepsFromEnv, readDrReports } from '../../activities/dr-reports.js';
import {
  DR_MODES,
  drRestoreWorkflowId,
  formatBytes,
  formatDuration,
  planQuery,
  type ApproveRequest,
  type ApproveResult,
  type DrMode,
  type DrPlan,
} from '../../common/dr-restore.js';
import { REPORT_RUNS, reportPage, reportRows, reportTable } from '../../lib/dr-report-page.js';
import { approveRestore } from '../approve-restore.js';
import { ensureDrillSchedule } from '../schedules.js';
import { Option } from 'commander';
import { CliError, emit, readJsonFile, withClient, withOutput, type Format } from './io.js';

const ID_HELP = 'the workflow ID (dr-restore/<plan>), or just the plan name';

export function registerDrCommands(program: Command): void {
  withOutput(
    program
      .command('plan')
      .description('what a DR restore will restore and overwrite, and the digest an approval must carry')
      .argument('<id>', ID_HELP),
  ).action(async (id: string, opts: { output: Format }) => {
    const workflowId = drWorkflowId(id);
    const plan = await withClient((client) => client.workflow.getHandle(workflowId).query(planQuery));
    emit(opts.output, plan, () =>
      plan ? renderPlan(workflowId, plan) : `${workflowId} has no plan yet: the backups are still being checked`,
    );
  });

  withOutput(
    program
      .command('approve')
      .description('approve a DR restore: it proceeds only when the digest is that of its current plan')
      .argument('<id>', ID_HELP)
      .requiredOption('--digest <digest>', 'the digest `labwright plan` shows')
      .option('--comment <text>', 'why, for the report'),
  ).action(async (id: string, opts: { digest: string; comment?: string; output: Format }) => {
    const workflowId = drWorkflowId(id);
    const result = await decide(workflowId, { digest: opts.digest, approve: true, reason: opts.comment });
    emit(
      opts.output,
      { workflowId, ...result },
      () => `${workflowId} approved by ${result.by}; follow it with: labwright watch ${workflowId}`,
    );
  });

  withOutput(
    program
      .command('reject')
      .description('reject a DR restore: it ends without touching anything')
      .argument('<id>', ID_HELP)
      .requiredOption('--reason <text>', 'why, for the report')
      .option('--digest <digest>', 'the digest of the plan rejected (default: its current plan)'),
  ).action(async (id: string, opts: { reason: string; digest?: string; output: Format }) => {
    const workflowId = drWorkflowId(id);
    const digest =
      opts.digest ??
      (await withClient((client) => client.workflow.getHandle(workflowId).query(planQuery)))?.digest ??
      '';
    const result = await decide(workflowId, { digest, approve: false, reason: opts.reason });
    emit(
      opts.output,
      { workflowId, ...result, reason: opts.reason },
      () => `${workflowId} rejected by ${result.by}: ${opts.reason}`,
    );
  });

  withOutput(
    program
      .command('schedule-drill')
      .description("create or update a plan's weekly DR drill (a Temporal Schedule)")
      .requiredOption('-i, --input <file>', 'the DR plan as a JSON file (the mode is forced to drill)')
      .option('--cron <expression>', 'when, in UTC', '0 3 * * 0')
      .option('--task-queue <queue>', 'the task queue the worker polls'),
  ).action(async (opts: { input: string; cron: string; taskQueue?: string; output: Format }) => {
    const plan = await readJsonFile(opts.input);
    const r = await withClient((client) =>
      ensureDrillSchedule(client, plan, { cron: opts.cron, taskQueue: opts.taskQueue, inputFile: opts.input }),
    );
    emit(opts.output, r, () =>
      [
        `${r.outcome} schedule ${r.scheduleId}`,
        `see it with: labwright temporal schedule describe --schedule-id ${r.scheduleId}`,
      ].join('\n'),
    );
  });

  const dr = program.command('dr').description('DR reports');
  withOutput(
    dr
      .command('report')
      .description("a plan's last drills (or restores) as a table, and an HTML page with the RTO/RPO trend")
      .argument('<plan>', 'the plan name')
      .addOption(new Option('--mode <mode>', 'drills or restores').choices([...DR_MODES]).default('drill'))
      .option('--runs <n>', 'how many of the last runs', String(REPORT_RUNS))
      .option('--html <file>', 'where to write the page', 'dr-report-<plan>.html')
      .option(
        '--dir <dir>',
        "the worker's DR reports folder (default LABWRIGHT_DR_REPORTS_DIR or <state dir>/dr-reports)",
      ),
  ).action(async (plan: string, opts: { mode: DrMode; runs: string; html: string; dir?: string; output: Format }) => {
    const runs = Number(opts.runs);
    if (!Number.isInteger(runs) || runs < 1)
      throw new CliError(`--runs: expected a positive whole number, got ${opts.runs}`);
    const dir = opts.dir ?? drReportDepsFromEnv(process.env).dir;
    const reports = await readDrReports(dir, plan, opts.mode, runs).catch((err: Error) => {
      throw new CliError(`plan ${plan}: ${err.message}`);
    });
    if (reports.length === 0) throw new CliError(`no ${opts.mode} reports of plan ${plan} in ${dir}`);
    const html = path.resolve(opts.html.replace('<plan>', plan));
    await fs.writeFile(html, reportPage(plan, opts.mode, reports));
    emit(
      opts.output,
      { plan, mode: opts.mode, html, runs: reportRows(reports), reports: reports.map((r) => r.file) },
      () => `${reportTable(plan, opts.mode, reports)}\nthe page with the RTO/RPO trend: ${html}`,
    );
  });
}

/** `home` is the restore of plan home; a full workflow ID is taken as it is. */
export function drWorkflowId(id: string): string {
  return id.includes('/') ? id : drRestoreWorkflowId(id, 'restore');
}

/** The `approve` update; the workflow's refusal (a stale digest, a decided plan) becomes the error. */
async function decide(workflowId: string, req: ApproveRequest): Promise<ApproveResult> {
  try {
    return await withClient((client) => approveRestore(client, workflowId, req));
  } catch (err) {
    if (err instanceof WorkflowUpdateFailedError) {
      throw new CliError(`${workflowId} refused: ${err.cause?.message ?? err.message}`);
    }
    throw err;
  }
}

function renderPlan(workflowId: string, plan: DrPlan): string {
  const lines = [`${plan.mode} ${plan.plan} (${workflowId}), computed ${plan.computedAt}, digest ${plan.digest}:`];
  for (const item of plan.items) {
    const size = item.backup.size !== undefined ? `, ${formatBytes(item.backup.size)}` : '';
    lines.push(`  ${item.target}`);
    lines.push(
      `    backup:     ${item.backup.id} (taken ${item.backup.takenAt}, ${formatDuration(item.backup.ageMs)} old${size})`,
    );
    lines.push(item.overwrites ? `    overwrites: ${item.overwrites}` : `    into:       ${item.into}`);
  }
  if (plan.mode === 'restore') {
    lines.push(`approve with: labwright approve ${workflowId} --digest ${plan.digest}`);
    lines.push(`reject with:  labwright reject ${workflowId} --reason '...'`);
  }
  return lines.join('\n');
}
