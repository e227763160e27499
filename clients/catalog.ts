/**
 * The workflows people start by name: input schema, deterministic workflow ID and resource name.
 * `labwright start <name>` validates against the schema before it starts anything.
 */
import type { z } from 'zod';
import { llmBurstInputSchema, llmBurstWorkflowId } from '../common/llm-burst.js';

export interface CatalogEntry<S extends z.ZodType = z.ZodType> {
  description: string;
  input: S;
  /** One workflow ID per resource, e.g. `talos-bootstrap/home`. */
  workflowId(input: z.output<S>): string;
}

function entry<S extends z.ZodType>(e: CatalogEntry<S>): CatalogEntry {
  return e as unknown as CatalogEntry;
}

export const CATALOG: Record<string, CatalogEntry> = {
  llmBurst: entry({
    description: 'LLM burst pool on EC2: starts on demand, stops when idle (one per pool)',
    input: llmBurstInputSchema,
    workflowId: (input) => llmBurstWorkflowId(input.pool.name),
  }),
};

export { entry as catalogEntry };
