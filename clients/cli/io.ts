/**
 * What every `labwright` command shares: the output format (`-o text|json`), input files read with
 * errors that name the file, and a Temporal client opened and closed around the command.
 */
import { promises as fs } from 'node:fs';
import { Option, type Command } from 'commander';
import type { Client } from '@temporalio/client';
import { connectClient } from '../../lib/temporal.js';

export type Format = 'text' | 'json';

/** An error the command reports as it is (no stack), with the exit code it asks for. */
export class CliError extends Error {
  constructor(
    message: string,
    readonly exitCode = 1,
  ) {
    super(message);
    this.name = 'CliError';
  }
}

/** Adds `-o, --output <text|json>` to a command. */
export function withOutput(cmd: Command): Command {
  return cmd.addOption(
    new Option('-o, --output <format>', 'text for people, json for scripts').choices(['text', 'json']).default('text'),
  );
}

/** Prints the result: `json` as one JSON document on stdout, `text` as the lines `text()` gives. */
export function emit(format: Format, value: unknown, text: () => string): void {
  if (format === 'json') console.log(JSON.stringify(value, null, 2));
  else {
    const out = text();
    if (out) console.log(out);
  }
}

/** Reads a JSON file; a missing file or bad JSON is reported with the file's name. */
export async function readJsonFile(file: string): Promise<unknown> {
  let text: string;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new CliError(`${file}: ${code === 'ENOENT' ? 'no such file' : (err as Error).message}`);
  }
  try {
    return JSON.parse(text) as unknown;
  } catch (err) {
    throw new CliError(`${file}: not valid JSON (${(err as Error).message})`);
  }
}

export async function withClient<T>(body: (client: Client) => Promise<T>): Promise<T> {
  const client = await connectClient();
  try {
    return await body(client);
  } finally {
    await client.connection.close();
  }
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
