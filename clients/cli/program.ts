/**
 * The `labwright` command's program (commander): every command registers here. Connection and codec
 * settings come from the environment, as for the worker (lib/temporal.ts).
 */
import { Command, CommanderError } from 'commander';
import { WorkflowExecutionAlreadyStartedError, WorkflowNotFoundError } from '@temporalio/client';
import { InputError, UnknownWorkflowError } from '../start.js';
import { registerBurstCommands } from './burst-commands.js';
import { registerCheckCommand } from './check-commands.js';
import { registerCodecCommands } from './codec-commands.js';
import { registerCompletionCommand } from './completion.js';
import { registerDrCommands } from './dr-commands.js';
import { registerProxyCommand } from './proxy-commands.js';
import { registerStateCommands } from './state-commands.js';
import { CliError } from './io.js';
import { registerWorkflowCommands } from './workflow-commands.js';

/** Each adds its commands to the program; `--help`, completion and the help test pick a new one up. */
export const COMMAND_GROUPS: Array<(program: Command) => void> = [
  registerWorkflowCommands,
  registerDrCommands,
  registerBurstCommands,
  registerProxyCommand,
  registerCodecCommands,
  registerStateCommands,
  registerCheckCommand,
  registerCompletionCommand,
];

export function createProgram(): Command {
  const program = new Command('labwright')
    .description('durable homelab operations on Temporal: start, follow and drive labwright workflows')
    .enablePositionalOptions()
    .showHelpAfterError('(add --help for usage)')
    .exitOverride();
  for (const register of COMMAND_GROUPS) register(program);
  // Subcommands report usage errors through the same exit path as the program.
  const override = (cmd: Command): void => {
    cmd.exitOverride();
    cmd.commands.forEach(override);
  };
  override(program);
  return program;
}

/** Runs the command line; resolves to the exit code (0 ok, 1 failed, 2 usage). */
export async function runLabwright(argv: string[]): Promise<number> {
  const program = createProgram();
  try {
    await program.parseAsync(argv, { from: 'user' });
    return typeof process.exitCode === 'number' ? process.exitCode : 0;
  } catch (err) {
    if (err instanceof CommanderError) {
      // --help and --version end here too, with exit code 0.
      return err.exitCode === 0 ? 0 : 2;
    }
    console.error(describeError(err));
    return err instanceof CliError ? err.exitCode : 1;
  }
}

function describeError(err: unknown): string {
  if (err instanceof InputError || err instanceof UnknownWorkflowError || err instanceof CliError) return err.message;
  if (err instanceof WorkflowExecutionAlreadyStartedError) {
    return `already running: ${err.workflowId}; follow it with: labwright watch ${err.workflowId}`;
  }
  if (err instanceof WorkflowNotFoundError) return `no workflow ${err.workflowId} (${err.message})`;
  return `labwright: ${err instanceof Error ? err.message : String(err)}`;
}
