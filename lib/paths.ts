/** Where the project keeps what it builds and what it remembers between runs. */
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const projectRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

/** Built and downloaded tools (temporal, kube-apiserver, venvs); git-ignored. */
export const cacheDir = process.env.LABWRIGHT_CACHE ?? path.join(projectRoot, '.cache');

/** Local state: dev server database, secrets written by workflows, codec key; git-ignored. */
export const stateDir = process.env.LABWRIGHT_STATE_DIR ?? path.join(projectRoot, '.labwright');
