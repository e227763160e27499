/**
 * OpenTelemetry tracing of the worker through Temporal's interceptors
 * (@temporalio/interceptors-opentelemetry): each workflow run is one trace, its activities spans
 * in it. Off by default; on with the standard variables:
 *   OTEL_TRACES_EXPORTER=otlp, or an OTLP endpoint set (OTEL_EXPORTER_OTLP_ENDPOINT, or
 *   OTEL_EXPORTER_OTLP_TRACES_ENDPOINT for the full URL); `none` or OTEL_SDK_DISABLED=true
 *   turns it off again.
 *   OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL   http/protobuf (default) or http/json
 *   OTEL_EXPORTER_OTLP_[TRACES_]HEADERS    e.g. an API key header
 *   OTEL_SERVICE_NAME (default labwright-worker), OTEL_RESOURCE_ATTRIBUTES, OTEL_BSP_* (batching)
 */
import type { OpenTelemetryPlugin } from '@temporalio/interceptors-opentelemetry';

export interface TracingConfig {
  url: string;
  protocol: 'http/protobuf' | 'http/json';
  headers: Record<string, string>;
  /** Resource attributes: service.name and OTEL_RESOURCE_ATTRIBUTES. */
  resource: Record<string, string>;
}

/** What tracing the environment asks for, or undefined when it is off. */
export function tracingConfig(env: NodeJS.ProcessEnv): TracingConfig | undefined {
  if (env.OTEL_SDK_DISABLED === 'true') return undefined;
  const exporters = (env.OTEL_TRACES_EXPORTER ?? '').split(',').map((e) => e.trim());
  if (exporters.includes('none')) return undefined;
  const unsupported = exporters.filter((e) => e !== '' && e !== 'otlp');
  if (unsupported.length > 0) {
    throw new Error(`OTEL_TRACES_EXPORTER: only otlp is supported, not ${unsupported.join(', ')}`);
  }
  const endpoint = env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT ?? tracesUrl(env.OTEL_EXPORTER_OTLP_ENDPOINT);
  if (!exporters.includes('otlp') && endpoint === undefined) return undefined;
  const protocol = env.OTEL_EXPORTER_OTLP_TRACES_PROTOCOL ?? env.OTEL_EXPORTER_OTLP_PROTOCOL ?? 'http/protobuf';
  if (protocol !== 'http/protobuf' && protocol !== 'http/json') {
    throw new Error(`OTEL_EXPORTER_OTLP_PROTOCOL: ${protocol} is not supported; use http/protobuf or http/json`);
  }
  return {
    url: endpoint ?? 'http://localhost:4318/v1/traces',
    protocol,
    headers: parseList(env.OTEL_EXPORTER_OTLP_TRACES_HEADERS ?? env.OTEL_EXPORTER_OTLP_HEADERS),
    resource: {
      'service.name': 'labwright-worker',
      ...parseList(env.OTEL_RESOURCE_ATTRIBUTES),
      ...(env.OTEL_SERVICE_NAME ? { 'service.name': env.OTEL_SERVICE_NAME } : {}),
    },
  };
}

export interface Tracing {
  /** The worker plugin: workflow, activity and client interceptors, and the workflow span sink. */
  plugin: OpenTelemetryPlugin;
  /** Where spans go (for the log line). */
  endpoint: string;
  /** Sends what is still batched; call before the process exits. */
  shutdown(): Promise<void>;
}

/**
 * Starts tracing: the process's tracer provider (registered globally, with the W3C trace context
 * propagator the interceptors carry across activity headers) and the worker plugin. Once per process.
 * The OpenTelemetry SDK is loaded here, so a worker with tracing off does not hold it.
 */
export async function startTracing(config: TracingConfig): Promise<Tracing> {
  const [
    { OTLPTraceExporter: OtlpJsonExporter },
    { OTLPTraceExporter: OtlpProtoExporter },
    { Resource },
    { BatchSpanProcessor },
    { NodeTracerProvider },
    { OpenTelemetryPlugin },
  ] = await Promise.all([
    import('@opentelemetry/exporter-trace-otlp-http'),
    import('@opentelemetry/exporter-trace-otlp-proto'),
    import('@opentelemetry/resources'),
    import('@opentelemetry/sdk-trace-base'),
    import('@opentelemetry/sdk-trace-node'),
    import('@temporalio/interceptors-opentelemetry'),
  ]);
  const options = { url: config.url, headers: config.headers };
  const exporter = config.protocol === 'http/json' ? new OtlpJsonExporter(options) : new OtlpProtoExporter(options);
  const spanProcessor = new BatchSpanProcessor(exporter);
  const resource = Resource.default().merge(new Resource(config.resource));
  const provider = new NodeTracerProvider({ resource, spanProcessors: [spanProcessor] });
  provider.register();
  return {
    plugin: new OpenTelemetryPlugin({ resource, spanProcessor, tracer: provider.getTracer('labwright') }),
    endpoint: config.url,
    shutdown: () => provider.shutdown(),
  };
}

/** OTEL_EXPORTER_OTLP_ENDPOINT is the base URL: traces go to its /v1/traces. */
function tracesUrl(base: string | undefined): string | undefined {
  return base === undefined || base === '' ? undefined : `${base.replace(/\/+$/, '')}/v1/traces`;
}

/** `k=v,k2=v2` (W3C baggage-like, values percent-encoded), as the OTEL_* list variables are. */
function parseList(text: string | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  for (const pair of (text ?? '').split(',')) {
    const i = pair.indexOf('=');
    if (i > 0) out[decodeURIComponent(pair.slice(0, i).trim())] = decodeURIComponent(pair.slice(i + 1).trim());
  }
  return out;
}
