/**
 * How clients and workers reach Temporal: @temporalio/envconfig reads TEMPORAL_ADDRESS,
 * TEMPORAL_NAMESPACE, TEMPORAL_API_KEY, TLS settings and TEMPORAL_PROFILE from the
 * environment or the Temporal config file; the payload codec comes from lib/codec.ts.
 */
import { Client, Connection } from '@temporalio/client';
import type { DataConverter } from '@temporalio/common';
import { loadClientConnectConfig } from '@temporalio/envconfig';
import { NativeConnection } from '@temporalio/worker';
import { codecFromEnv } from './codec.js';

export const DEFAULT_TASK_QUEUE = 'labwright';

export function taskQueue(env: NodeJS.ProcessEnv = process.env): string {
  return env.LABWRIGHT_TASK_QUEUE ?? DEFAULT_TASK_QUEUE;
}

export interface TemporalSettings {
  connection: ReturnType<typeof loadClientConnectConfig>['connectionOptions'];
  namespace: string;
  dataConverter: DataConverter;
  plaintext: boolean;
}

export async function temporalSettings(env: NodeJS.ProcessEnv = process.env): Promise<TemporalSettings> {
  const config = loadClientConnectConfig({ overrideEnvVars: env as Record<string, string> });
  const codec = await codecFromEnv(env);
  return {
    connection: { address: 'localhost:7233', ...config.connectionOptions },
    namespace: config.namespace ?? 'default',
    dataConverter: codec.codec ? { payloadCodecs: [codec.codec] } : {},
    plaintext: codec.codec === undefined,
  };
}

export async function connectClient(settings?: TemporalSettings): Promise<Client> {
  const s = settings ?? (await temporalSettings());
  const connection = await Connection.connect(s.connection);
  return new Client({ connection, namespace: s.namespace, dataConverter: s.dataConverter });
}

export async function connectWorker(settings: TemporalSettings): Promise<NativeConnection> {
  return NativeConnection.connect(settings.connection);
}
