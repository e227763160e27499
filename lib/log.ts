/** Structured JSON logs, one object per line, for the worker and the local runner. */
import { DefaultLogger, type LogEntry, type LogLevel } from '@temporalio/worker';

const LEVELS: LogLevel[] = ['TRACE', 'DEBUG', 'INFO', 'WARN', 'ERROR'];

export function logLevel(env: NodeJS.ProcessEnv = process.env): LogLevel {
  const wanted = (env.LABWRIGHT_LOG_LEVEL ?? 'INFO').toUpperCase() as LogLevel;
  return LEVELS.includes(wanted) ? wanted : 'INFO';
}

export function writeJsonLog(entry: LogEntry): void {
  const line = {
    time: new Date(Number(entry.timestampNanos / 1_000_000n)).toISOString(),
    level: entry.level.toLowerCase(),
    msg: entry.message,
    ...entry.meta,
  };
  process.stdout.write(`${JSON.stringify(line, jsonSafe)}\n`);
}

export function jsonLogger(level: LogLevel = logLevel()): DefaultLogger {
  return new DefaultLogger(level, writeJsonLog);
}

function jsonSafe(_key: string, value: unknown): unknown {
  if (typeof value === 'bigint') return value.toString();
  if (value instanceof Error) return { name: value.name, message: value.message, stack: value.stack };
  return value;
}
