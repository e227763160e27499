/**
 * `labwright check [lab.yaml] [--live]`: the inventory's offline checks, and with --live the
 * preflight against the lab (clients/check.ts). Exits 1 when any check finds a problem.
 */
import path from 'node:path';
import type { Command } from 'commander';
import { findInventoryFile } from '../../lib/inventory-file.js';
import { stateDir } from '../../lib/paths.js';
import { SecretStore } from '../../lib/secrets.js';
import { emit, withOutput, type Format } from './io.js';

export function registerCheckCommand(program: Command): void {
  withOutput(
    program
      .command('check')
      .description(
        "check the inventory against the lab's rules; --live also checks the lab itself (tokens, privileges, storages, bridges, GPUs, templates, VMIDs, Talos nodes)",
      )
      .argument('[inventory]', 'the inventory file (default: LABWRIGHT_INVENTORY, or the simulated lab’s)')
      .option('--live', 'also check the live lab: each API and what the inventory names in it', false),
  ).action(async (file: string | undefined, opts: { output: Format; live: boolean }) => {
    const env = process.env;
    // The live checks' SDKs (EC2, Kubernetes) load only for `check`, not for every command.
    const { renderCheck, runCheck } = await import('../check.js');
    const report = await runCheck(file ?? (await findInventoryFile(env)), {
      live: opts.live,
      deps: { secrets: new SecretStore(env.LABWRIGHT_SECRETS_DIR ?? path.join(stateDir, 'secrets')), env },
    });
    emit(opts.output, report, () => renderCheck(report));
    if (report.problems > 0) process.exitCode = 1;
  });
}
