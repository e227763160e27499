/**
 * Where the peers a test run starts write their logs: inside the checkout, so that two runs
 * (two clones, two worktrees) never mix or wipe each other's logs. scripts/ci-report.mjs quotes
 * their tails on failure.
 */
import path from 'node:path';
import { projectRoot } from '../../lib/paths.js';

export const testLogDir = path.join(projectRoot, '.cache', 'test-logs');

/** A log file in testLogDir (its folder is created by whoever writes it). */
export const testLog = (...parts: string[]): string => path.join(testLogDir, ...parts);
