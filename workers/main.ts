/**
 * The labwright worker. Configuration (all environment):
 *   TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, TEMPORAL_API_KEY, TEMPORAL_TLS*, TEMPORAL_PROFILE  (envconfig)
 *   LABWRIGHT_TASK_QUEUE        task queue to poll (default `labwright`)
 *   LABWRIGHT_INVENTORY         the lab inventory file (YAML or JSON)
 *   LABWRIGHT_SECRETS_DIR       the secret store (default .labwright/secrets)
 *   LABWRIGHT_CODEC_KEY[_FILE]  payload encryption key; LABWRIGHT_CODEC=plaintext for local dev only
 *   LABWRIGHT_METRICS_ADDRESS   Prometheus bind address (default 127.0.0.1:9464; `off` disables)
 *   LABWRIGHT_SHUTDOWN_GRACE    grace period for in-flight activities on SIGINT/SIGTERM (default 30s)
 *   LABWRIGHT_LOG_LEVEL         TRACE, DEBUG, INFO, WARN or ERROR
 *   LABWRIGHT_WORKFLOW_BUNDLE   a prebuilt workflow bundle (JS file) to load instead of bundling the
 *                               workflows from source at every start (not with tracing: the bundle
 *                               then needs the tracing interceptors, so it is built at start)
 *   OTEL_TRACES_EXPORTER, OTEL_EXPORTER_OTLP_*, OTEL_SERVICE_NAME   OpenTelemetry tracing, off by
 *                               default (lib/tracing.ts)
 */
import path from 'node:path';
import { Connection } from '@temporalio/client';
import { Runtime } from '@temporalio/worker';
import { HISTOGRAM_BUCKETS } from '../common/metrics.js';
import { SEARCH_ATTRIBUTE_KEYS } from '../common/search-attributes.js';
import { loadInventory } from '../hardware/load.js';
import { jsonLogger } from '../lib/log.js';
import { stateDir } from '../lib/paths.js';
import { SecretStore } from '../lib/secrets.js';
import { startTracing, tracingConfig, type Tracing } from '../lib/tracing.js';
import { connectWorker, taskQueue, temporalSettings, type TemporalSettings } from '../lib/temporal.js';
import { createLabActivities } from './activities.js';
import { createLabWorker } from './worker.js';

const env = process.env;
const logger = jsonLogger();
const metricsAddress = env.LABWRIGHT_METRICS_ADDRESS ?? '127.0.0.1:9464';
Runtime.install({
  logger,
  shutdownSignals: ['SIGINT', 'SIGTERM'],
  telemetryOptions:
    metricsAddress === 'off'
      ? {}
      : { metrics: { prometheus: { bindAddress: metricsAddress, histogramBucketOverrides: HISTOGRAM_BUCKETS } } },
});

let tracing: Tracing | undefined;
try {
  const traces = tracingConfig(env);
  tracing = traces && (await startTracing(traces));
  const settings = await temporalSettings(env);
  if (settings.plaintext) logger.warn('payload encryption is OFF (LABWRIGHT_CODEC=plaintext): local development only');
  if (!env.LABWRIGHT_INVENTORY) throw new Error('LABWRIGHT_INVENTORY is not set: point it at the lab inventory file');
  const inventory = await loadInventory(env.LABWRIGHT_INVENTORY);
  const secrets = new SecretStore(env.LABWRIGHT_SECRETS_DIR ?? path.join(stateDir, 'secrets'));

  await registerSearchAttributes(settings);
  const worker = await createLabWorker({
    connection: await connectWorker(settings),
    namespace: settings.namespace,
    taskQueue: taskQueue(env),
    dataConverter: settings.dataConverter,
    activities: await createLabActivities({ inventory, secrets, env }),
    workflowBundle: env.LABWRIGHT_WORKFLOW_BUNDLE && !tracing ? { codePath: env.LABWRIGHT_WORKFLOW_BUNDLE } : undefined,
    shutdownGraceTime: env.LABWRIGHT_SHUTDOWN_GRACE ?? '30 seconds',
    plugins: tracing ? [tracing.plugin] : undefined,
  });
  logger.info('worker started', {
    taskQueue: taskQueue(env),
    namespace: settings.namespace,
    address: settings.connection.address,
    metrics: metricsAddress === 'off' ? null : `http://${metricsAddress}/metrics`,
    traces: tracing?.endpoint ?? null,
    simulatedLab: env.LABWRIGHT_SIMULATED === '1',
  });
  await worker.run();
  logger.info('worker stopped');
} catch (err) {
  logger.error('worker failed', { error: err });
  process.exitCode = 1;
} finally {
  await tracing?.shutdown();
}

/** Adds the project's search attributes when missing, so workflows never fail on an unknown one. */
async function registerSearchAttributes({ connection: options, namespace }: TemporalSettings): Promise<void> {
  const connection = await Connection.connect(options);
  try {
    const existing = await connection.operatorService.listSearchAttributes({ namespace });
    const missing = SEARCH_ATTRIBUTE_KEYS.filter((k) => !(k.name in (existing.customAttributes ?? {})));
    if (missing.length === 0) return;
    await connection.operatorService.addSearchAttributes({
      namespace,
      searchAttributes: Object.fromEntries(missing.map((k) => [k.name, 2 /* KEYWORD */])),
    });
  } catch (err) {
    logger.warn(
      'could not check or register search attributes; register them with `temporal operator search-attribute create`',
      {
        error: (err as Error).message,
        attributes: SEARCH_ATTRIBUTE_KEYS.map((k) => k.name),
      },
    );
  } finally {
    await connection.close();
  }
}
