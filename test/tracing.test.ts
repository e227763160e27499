// OpenTelemetry tracing of the worker (lib/tracing.ts), configured by the standard OTEL variables:
// off by default; on, two real DR drills on fakepve export, over OTLP/HTTP protobuf to a local
// collector stand-in, one trace per workflow run holding that run's activities.
import { createRequire } from 'node:module';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { NativeConnection } from '@temporalio/worker';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DrReport } from '../common/dr-restore.js';
import { startTracing, tracingConfig } from '../lib/tracing.js';
import { createLabWorker } from '../workers/worker.js';
import { hassDrill, startDrLab, storeVmBackup, type DrLab } from './harness/dr-lab.js';
import {
  NAMESPACE,
  installQuietRuntime,
  temporalAddress,
  testClient,
  testDataConverter,
  uniqueName,
} from './harness/temporal.js';

interface Span {
  traceId: string;
  spanId: string;
  parentSpanId: string;
  name: string;
  attributes: Record<string, string>;
}

interface Collector {
  url: string;
  spans: Span[];
  /** Resource attributes of every export request. */
  resources: Array<Record<string, string>>;
  stop(): Promise<void>;
}

interface Decoded {
  resourceSpans: Array<{
    resource?: { attributes: KeyValue[] };
    scopeSpans: Array<{
      spans: Array<{
        traceId: Uint8Array;
        spanId: Uint8Array;
        parentSpanId?: Uint8Array;
        name: string;
        attributes: KeyValue[];
      }>;
    }>;
  }>;
}
type KeyValue = { key: string; value: { stringValue?: string } };

/** The OTLP protobuf messages, as the exporter's own package generates them. */
const otlp = createRequire(import.meta.url)('@opentelemetry/otlp-transformer/build/src/generated/root.js') as {
  opentelemetry: {
    proto: { collector: { trace: { v1: { ExportTraceServiceRequest: { decode(b: Uint8Array): Decoded } } } } };
  };
};
const ExportTraceServiceRequest = otlp.opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest;
const attrs = (kvs: KeyValue[] = []): Record<string, string> =>
  Object.fromEntries(kvs.map((kv) => [kv.key, kv.value.stringValue ?? '']));
const hex = (b: Uint8Array | undefined): string => Buffer.from(b ?? []).toString('hex');

/** An OTLP/HTTP collector as far as an exporter sees one: POST /v1/traces with a protobuf body. */
async function startCollector(): Promise<Collector> {
  const spans: Span[] = [];
  const resources: Array<Record<string, string>> = [];
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      if (
        req.method !== 'POST' ||
        req.url !== '/v1/traces' ||
        req.headers['content-type'] !== 'application/x-protobuf'
      ) {
        res.writeHead(404).end();
        return;
      }
      const decoded = ExportTraceServiceRequest.decode(Buffer.concat(chunks));
      for (const rs of decoded.resourceSpans) {
        resources.push(attrs(rs.resource?.attributes));
        for (const ss of rs.scopeSpans) {
          for (const s of ss.spans) {
            spans.push({
              traceId: hex(s.traceId),
              spanId: hex(s.spanId),
              parentSpanId: hex(s.parentSpanId),
              name: s.name,
              attributes: attrs(s.attributes),
            });
          }
        }
      }
      res.writeHead(200, { 'content-type': 'application/x-protobuf' }).end();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    spans,
    resources,
    stop: () => new Promise((resolve) => server.close(() => resolve())),
  };
}

let lab: DrLab;
let collector: Collector;
beforeAll(async () => {
  [lab, collector] = await Promise.all([startDrLab(), startCollector()]);
});
afterAll(async () => {
  await collector?.stop();
  await lab?.stop();
});

describe('tracing', () => {
  it('is off unless the OTEL variables ask for it', () => {
    expect(tracingConfig({})).toBeUndefined();
    expect(tracingConfig({ OTEL_EXPORTER_OTLP_ENDPOINT: collector.url, OTEL_TRACES_EXPORTER: 'none' })).toBeUndefined();
    expect(tracingConfig({ OTEL_EXPORTER_OTLP_ENDPOINT: collector.url, OTEL_SDK_DISABLED: 'true' })).toBeUndefined();
    expect(tracingConfig({ OTEL_TRACES_EXPORTER: 'otlp' })).toMatchObject({
      url: 'http://localhost:4318/v1/traces',
      protocol: 'http/protobuf',
    });
    expect(
      tracingConfig({
        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'http://127.0.0.1:1/traces',
        OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json',
      }),
    ).toMatchObject({ url: 'http://127.0.0.1:1/traces', protocol: 'http/json' });
    expect(() => tracingConfig({ OTEL_TRACES_EXPORTER: 'zipkin' })).toThrow(/only otlp is supported, not zipkin/);
    expect(() =>
      tracingConfig({ OTEL_EXPORTER_OTLP_ENDPOINT: collector.url, OTEL_EXPORTER_OTLP_PROTOCOL: 'grpc' }),
    ).toThrow(/grpc is not supported/);
  });

  it('exports one trace per workflow run to an OTLP collector, with the run’s activities in it', async () => {
    const tracing = await startTracing(
      tracingConfig({
        OTEL_EXPORTER_OTLP_ENDPOINT: collector.url,
        OTEL_SERVICE_NAME: 'labwright-test-worker',
        OTEL_RESOURCE_ATTRIBUTES: 'deployment.environment=test',
      })!,
    );
    expect(tracing.endpoint).toBe(`${collector.url}/v1/traces`);
    installQuietRuntime();
    const connection = await NativeConnection.connect({ address: temporalAddress() });
    const taskQueue = uniqueName('traced');
    // As workers/main.ts runs it with tracing on: the workflows bundled at start, with the interceptors.
    const worker = await createLabWorker({
      connection,
      namespace: NAMESPACE,
      taskQueue,
      dataConverter: testDataConverter,
      activities: lab.activities,
      shutdownGraceTime: '2 seconds',
      plugins: [tracing.plugin],
    });
    const client = await testClient();
    const runs: string[] = [];
    await storeVmBackup(lab, 120, 3600);
    await worker.runUntil(async () => {
      for (const plan of [uniqueName('traced'), uniqueName('traced')]) {
        const handle = await client.workflow.start('drRestore', {
          taskQueue,
          workflowId: `dr-drill/${plan}`,
          args: [hassDrill(lab, plan)],
        });
        expect(((await handle.result()) as DrReport).ok).toBe(true);
        runs.push(handle.firstExecutionRunId);
      }
    });
    await connection.close();
    await tracing.shutdown(); // sends what is still batched
    expect(collector.spans.length).toBeGreaterThan(0);

    const runOf = new Map<string, string>(); // trace ID -> the run its activities belong to
    for (const s of collector.spans.filter((s) => s.name.startsWith('RunActivity:'))) {
      expect(runOf.get(s.traceId) ?? s.attributes.run_id).toBe(s.attributes.run_id);
      runOf.set(s.traceId, s.attributes.run_id!);
    }
    // One trace per run, none shared.
    expect([...runOf.values()].sort()).toEqual([...runs].sort());
    for (const [traceId, runId] of runOf) {
      const trace = collector.spans.filter((s) => s.traceId === traceId);
      const names = trace.map((s) => s.name);
      expect(names.filter((n) => n === 'RunWorkflow:drRestore')).toHaveLength(1);
      // The drill's activities, each under the workflow's StartActivity span.
      for (const activity of ['pveListBackups', 'pveRestore', 'pveWaitForAgent', 'pveDelete', 'drSaveReport']) {
        expect(names, `${runId}: ${activity}`).toContain(`RunActivity:${activity}`);
      }
      const byId = new Map(trace.map((s) => [s.spanId, s]));
      for (const run of trace.filter((s) => s.name.startsWith('RunActivity:'))) {
        expect(byId.get(run.parentSpanId)?.name).toBe(run.name.replace('RunActivity:', 'StartActivity:'));
      }
      const root = trace.find((s) => s.name === 'RunWorkflow:drRestore')!;
      expect(trace.filter((s) => s.parentSpanId === '').map((s) => s.spanId)).toEqual([root.spanId]);
    }
    expect(collector.resources).toContainEqual(
      expect.objectContaining({ 'service.name': 'labwright-test-worker', 'deployment.environment': 'test' }),
    );
  });
});
