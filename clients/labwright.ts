#!/usr/bin/env -S npx tsx
/**
 * The `labwright` command for people and scripts: `labwright --help` lists the commands,
 * `labwright <command> --help` explains one; `-o json` on each prints JSON for scripts.
 */
import { runLabwright } from './cli/program.js';

process.exit(await runLabwright(process.argv.slice(2)));
