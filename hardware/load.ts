/** Reads and validates an inventory file (YAML or JSON), reporting every problem with its path. */
import { promises as fs } from 'node:fs';
import { parse as parseYaml } from 'yaml';
import { describeIssues } from '../common/validation.js';
import { labInventorySchema } from './lab-rules.js';
import type { Inventory } from './schema.js';

export class InventoryError extends Error {
  constructor(
    readonly file: string,
    readonly problems: string[],
  ) {
    super(`${file} is not a valid inventory:\n${problems.map((p) => `  - ${p}`).join('\n')}`);
    this.name = 'InventoryError';
  }
}

export function parseInventory(text: string, file: string): Inventory {
  let data: unknown;
  try {
    data = parseYaml(text, { prettyErrors: true });
  } catch (err) {
    throw new InventoryError(file, [(err as Error).message]);
  }
  const result = labInventorySchema.safeParse(data);
  if (!result.success) throw new InventoryError(file, describeIssues(result.error));
  return result.data;
}

export async function loadInventory(file: string): Promise<Inventory> {
  return parseInventory(await fs.readFile(file, 'utf8'), file);
}
