/**
 * An HTTPS proxy in front of the kube-apiserver, for faults the apiserver has no switch for: per
 * rule it answers 429 (with Retry-After, as API priority and fairness does) or a 5xx Status
 * without forwarding, or forwards, lets the apiserver apply the request, then drops the
 * connection without answering (the lost response a retry must survive). Clients reach it with
 * the kubeconfig's own credentials; it serves a certificate of its own CA and speaks to the
 * apiserver as the admin user.
 */
import { promises as fs } from 'node:fs';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { makeCa, signLeaf } from '../../sim/pki.js';
import type { KubeCreds } from '../../sim/kube-apiserver.js';

export type KubeFault =
  | { kind: 'status'; status: 429 | 500 | 502 | 503 | 504 }
  /** Forwards, lets the apiserver apply it, then drops the connection without answering. */
  | { kind: 'drop-after-apply' }
  /** Waits, then forwards: a slow apiserver (an activity held long enough to be seen running). */
  | { kind: 'delay'; ms: number };

export interface KubeFaultRule {
  /** HTTP method (any when left out). */
  method?: string;
  /** Matches the request path (with query). */
  path?: RegExp;
  fault: KubeFault;
  /** How many matching requests it applies to (default 1; Infinity for all). */
  times?: number;
}

export interface KubeCall {
  method: string;
  path: string;
  status?: number;
  fault?: KubeFault['kind'];
}

export interface KubeFaultProxy {
  /** https://127.0.0.1:<port> */
  url: string;
  /** PEM of the CA that signed the proxy's certificate (put it in the kubeconfig). */
  caPem: string;
  calls: KubeCall[];
  add(rule: KubeFaultRule): void;
  clearRules(): void;
  stop(): Promise<void>;
}

const REASONS: Record<number, string> = {
  429: 'TooManyRequests',
  500: 'InternalError',
  502: 'InternalError',
  503: 'ServiceUnavailable',
  504: 'Timeout',
};

export async function startKubeFaultProxy(upstream: KubeCreds): Promise<KubeFaultProxy> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'labwright-kube-proxy-'));
  await makeCa(dir, 'labwright kube fault proxy CA');
  await signLeaf(dir, 'server', '/CN=kube-fault-proxy', { server: ['IP:127.0.0.1', 'DNS:localhost'] });
  const read = (f: string) => fs.readFile(path.join(dir, f), 'utf8');
  const [key, cert, caPem] = await Promise.all([read('server.key'), read('server.crt'), read('ca.crt')]);
  const rules: Array<KubeFaultRule & { left: number }> = [];
  const calls: KubeCall[] = [];
  const target = new URL(upstream.server);

  const server = https.createServer({ key, cert }, (req, res) => {
    const call: KubeCall = { method: req.method ?? 'GET', path: req.url ?? '/' };
    calls.push(call);
    const rule = rules.find(
      (r) => r.left > 0 && (!r.method || r.method === call.method) && (!r.path || r.path.test(call.path)),
    );
    if (rule) rule.left--;
    const fault = rule?.fault;
    call.fault = fault?.kind;
    if (fault?.kind === 'status') {
      call.status = fault.status;
      const reason = REASONS[fault.status] ?? 'InternalError';
      res.writeHead(fault.status, {
        'content-type': 'application/json',
        ...(fault.status === 429 ? { 'retry-after': '1' } : {}),
      });
      res.end(
        JSON.stringify({
          kind: 'Status',
          apiVersion: 'v1',
          status: 'Failure',
          message: `fault proxy: ${reason}`,
          reason,
          code: fault.status,
        }),
      );
      req.resume();
      return;
    }
    const forward = () => {
      const up = https.request(
        {
          host: target.hostname,
          port: target.port,
          method: req.method,
          path: req.url,
          headers: { ...req.headers, host: target.host },
          ca: upstream.caPem,
          cert: upstream.clientCertPem,
          key: upstream.clientKeyPem,
        },
        (upRes) => {
          call.status = upRes.statusCode;
          if (fault?.kind === 'drop-after-apply') {
            upRes.resume();
            upRes.once('end', () => req.socket.destroy());
            return;
          }
          res.writeHead(upRes.statusCode ?? 502, upRes.headers);
          upRes.pipe(res);
        },
      );
      up.on('error', () => req.socket.destroy());
      req.pipe(up);
    };
    if (fault?.kind === 'delay') setTimeout(forward, fault.ms);
    else forward();
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  return {
    url: `https://127.0.0.1:${port}`,
    caPem,
    calls,
    add: (rule) => rules.push({ ...rule, left: rule.times ?? 1 }),
    clearRules: () => rules.splice(0),
    stop: async () => {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await fs.rm(dir, { recursive: true, force: true });
    },
  };
}
