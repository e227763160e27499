/**
 * A fault-injecting HTTP proxy for the EC2 query API (moto has no fault injection of its own).
 * It records every call (action, parameters, time spent upstream) and, per rule, answers with an
 * EC2 error, throttles, delays, or drops the connection before or after moto applied the request
 * — the last is the "lost response" a retry must survive without launching a second instance.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { performance } from 'node:perf_hooks';

export type Fault =
  /** Answers with an EC2 error document without forwarding. */
  | { kind: 'error'; status: number; code: string; message?: string }
  /** RequestLimitExceeded, HTTP 503, without forwarding. */
  | { kind: 'throttle' }
  /** Waits, then forwards. */
  | { kind: 'delay'; ms: number }
  /** Forwards, lets moto apply it, then drops the connection without answering. */
  | { kind: 'drop-after-apply' }
  /** Drops the connection without forwarding. */
  | { kind: 'drop' };

export interface Ec2Call {
  action: string;
  params: URLSearchParams;
  /** performance.now() when the request arrived and when its answer left (or it was dropped). */
  startedAt: number;
  endedAt: number;
  /** Time spent waiting for moto (0 when not forwarded). */
  upstreamMs: number;
  status?: number;
  fault?: Fault['kind'];
}

export interface FaultRule {
  /** EC2 action, e.g. `RunInstances`; any when left out. */
  action?: string;
  when?: (params: URLSearchParams) => boolean;
  fault: Fault;
  /** How many matching calls it applies to (default 1; Infinity for all). */
  times?: number;
}

export interface FaultProxy {
  url: string;
  calls: Ec2Call[];
  add(rule: FaultRule): void;
  clearRules(): void;
  /** Calls of `action` (all calls when left out), optionally only those matching `when`. */
  count(action?: string, when?: (params: URLSearchParams) => boolean): number;
  stop(): Promise<void>;
}

function errorXml(code: string, message: string): string {
  return (
    `<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>${code}</Code>` +
    `<Message>${message}</Message></Error></Errors><RequestID>fault-proxy</RequestID></Response>`
  );
}

export async function startFaultProxy(upstream: string): Promise<FaultProxy> {
  const target = new URL(upstream);
  const rules: Array<FaultRule & { left: number }> = [];
  const calls: Ec2Call[] = [];
  const agent = new http.Agent({ keepAlive: true });

  const server = http.createServer((req, res) => {
    const startedAt = performance.now();
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      const params = new URLSearchParams(body.toString());
      const action = params.get('Action') ?? new URL(req.url ?? '/', 'http://x').searchParams.get('Action') ?? '?';
      const call: Ec2Call = { action, params, startedAt, endedAt: startedAt, upstreamMs: 0 };
      calls.push(call);
      const rule = rules.find((r) => r.left > 0 && (!r.action || r.action === action) && (!r.when || r.when(params)));
      if (rule) rule.left--;
      const fault = rule?.fault;
      call.fault = fault?.kind;

      const finish = (status: number, text: string, type = 'text/xml'): void => {
        call.status = status;
        call.endedAt = performance.now();
        res.writeHead(status, { 'content-type': type, 'content-length': Buffer.byteLength(text) }).end(text);
      };
      if (fault?.kind === 'error') {
        finish(fault.status, errorXml(fault.code, fault.message ?? `injected ${fault.code}`));
        return;
      }
      if (fault?.kind === 'throttle') {
        finish(503, errorXml('RequestLimitExceeded', 'Request limit exceeded.'));
        return;
      }
      if (fault?.kind === 'drop') {
        call.endedAt = performance.now();
        req.socket.destroy();
        return;
      }
      const forward = (): void => {
        const sentAt = performance.now();
        const up = http.request(
          {
            host: target.hostname,
            port: target.port,
            method: req.method,
            path: req.url,
            headers: { ...req.headers, host: target.host },
            agent,
          },
          (upRes) => {
            const parts: Buffer[] = [];
            upRes.on('data', (c: Buffer) => parts.push(c));
            upRes.on('end', () => {
              call.upstreamMs = performance.now() - sentAt;
              if (fault?.kind === 'drop-after-apply') {
                call.endedAt = performance.now();
                req.socket.destroy();
                return;
              }
              call.status = upRes.statusCode;
              const text = Buffer.concat(parts);
              res.writeHead(upRes.statusCode ?? 502, {
                'content-type': upRes.headers['content-type'] ?? 'text/xml',
                'content-length': text.length,
              });
              res.end(text);
              call.endedAt = performance.now();
            });
          },
        );
        up.on('error', (err) => finish(502, errorXml('InternalError', `fault proxy: ${err.message}`)));
        up.end(body);
      };
      if (fault?.kind === 'delay') setTimeout(forward, fault.ms);
      else forward();
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    calls,
    add: (rule) => rules.push({ ...rule, left: rule.times ?? 1 }),
    clearRules: () => void rules.splice(0),
    count: (action, when) => calls.filter((c) => (!action || c.action === action) && (!when || when(c.params))).length,
    stop: () =>
      new Promise<void>((resolve) => {
        agent.destroy();
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
