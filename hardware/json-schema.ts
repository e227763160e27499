import { z } from 'zod';
import { inventorySchema } from './schema.js';

/** The inventory's JSON Schema as text; a test keeps the committed file equal to it. */
export function inventoryJsonSchema(): string {
  const schema = z.toJSONSchema(inventorySchema, { io: 'input', unrepresentable: 'any' });
  return `${JSON.stringify({ ...schema, title: 'labwright lab inventory' }, null, 2)}\n`;
}
