/** Where the project keeps what it builds and what it remembers between runs. */
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * The nearest folder above this module holding package.json: lib/ when run from source, dist/ when
 * compiled into the worker image's single file (workers/build.ts).
 */
function findProjectRoot(from: string): string {
  for (let dir = from; ; dir = path.dirname(dir)) {
    if (existsSync(path.join(dir, 'package.json'))) return dir;
    if (path.dirname(dir) === dir) throw new Error(`no package.json in any folder above ${from}`);
  }
}

export const projectRoot = findProjectRoot(path.dirname(fileURLToPath(import.meta.url)));

/** Built and downloaded tools (temporal, kube-apiserver, venvs); git-ignored. */
export const cacheDir = process.env.LABWRIGHT_CACHE ?? path.join(projectRoot, '.cache');

/** Local state: dev server database, secrets written by workflows, codec key; git-ignored. */
export const stateDir = process.env.LABWRIGHT_STATE_DIR ?? path.join(projectRoot, '.labwright');
