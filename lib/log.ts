/** Structured JSON logs, one object per line, for the worker and the local runner. */
import { DefaultLogger, type LogEntry, type Logger, type LogLevel } from '@temporalio/worker';

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

/** A logger that drops the SDK's own lines, but for the levels named, which go to the console. */
export function quietLogger(keep: Array<'warn' | 'error'> = []): Logger {
  const drop = (): undefined => undefined;
  return {
    log: drop,
    trace: drop,
    debug: drop,
    info: drop,
    warn: keep.includes('warn') ? (message: string) => console.warn(message) : drop,
    error: keep.includes('error') ? (message: string) => console.error(message) : drop,
  };
}

function jsonSafe(_key: string, value: unknown): unknown {
  if (typeof value === 'bigint') return value.toString();
  if (value instanceof Error) return { name: value.name, message: value.message, stack: value.stack };
  return value;
}
