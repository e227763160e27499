/** Writes hardware/inventory.schema.json from the zod schema, for editors (`npm run schema`). */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { projectRoot } from '../lib/paths.js';
import { inventoryJsonSchema } from './json-schema.js';

const target = path.join(projectRoot, 'hardware', 'inventory.schema.json');
await fs.writeFile(target, inventoryJsonSchema());
console.log(`wrote ${path.relative(projectRoot, target)}`);
