/**
 * An HTTP proxy for the EC2 query API in front of moto. It does two jobs:
 *
 * 1. Faults (moto has no fault injection of its own): it records every call (action,
 *    parameters, time spent upstream) and, per rule, answers with an EC2 error, throttles,
 *    delays, or drops the connection before or after moto applied the request — the last is the
 *    "lost response" a retry must survive without launching a second instance.
 *
 * 2. EC2's rules that moto is kinder about, each as EC2 documents it:
 *    - RunInstances `ClientToken` idempotency: a repeat with the same token answers the first
 *      launch's reservation instead of launching again; the same token with other parameters is
 *      `IdempotentParameterMismatch` (moto ignores the token).
 *    - Eventual consistency: an instance RunInstances created stays invisible to DescribeInstances
 *      and DescribeInstanceStatus for `visibilityDelayMs` (absent from filtered lists,
 *      `InvalidInstanceID.NotFound` when asked for by id; so are Stop/Start/TerminateInstances).
 *    - Request rate limits, when set (`setRequestRate`): a token bucket per action, as EC2
 *      throttles each account and region (DescribeInstances: 100 tokens, refilled at 20 a
 *      second); a call finding the bucket empty is `RequestLimitExceeded` (HTTP 503).
 *    - Persistent spot requests: a RunInstances with a persistent spot market option opens a
 *      spot instance request (`sir-…`, shown as the instance's `spotInstanceRequestId`). While
 *      the request is not cancelled, EC2 fulfils it again when its instance is terminated, from
 *      anywhere (the console, moto directly): the proxy watches moto and relaunches. Cancelling
 *      the request (CancelSpotInstanceRequests) leaves its instance as it is, as EC2 does.
 *      moto answers RunInstances' spot options with a spot lifecycle but opens no request.
 */
import { randomBytes } from 'node:crypto';
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
  /** A RunInstances answered from an earlier launch with the same ClientToken. */
  idempotentReplay?: boolean;
  /** Refused by the action's request rate limit. */
  rateLimited?: boolean;
}

/** A token bucket: `bucket` calls at once, then `refillPerSecond` a second. */
export interface RequestRate {
  bucket: number;
  refillPerSecond: number;
}

/** EC2's request rate for non-mutating actions such as DescribeInstances, per account and region. */
export const EC2_DESCRIBE_RATE: RequestRate = { bucket: 100, refillPerSecond: 20 };

export interface FaultRule {
  /** EC2 action, e.g. `RunInstances`; any when left out. */
  action?: string;
  when?: (params: URLSearchParams) => boolean;
  fault: Fault;
  /** How many matching calls it applies to (default 1; Infinity for all). */
  times?: number;
}

export interface SpotRequest {
  id: string;
  /** open (waiting to launch), active (its instance exists), cancelled. */
  state: 'open' | 'active' | 'cancelled';
  instanceId: string;
  /** Every instance EC2 launched for it, the first one included. */
  instanceIds: string[];
  /** The RunInstances it came from, replayed for each relaunch. */
  body: string;
  headers: http.IncomingHttpHeaders;
}

export interface FaultProxyOptions {
  /** How long a new instance stays invisible to Describe* (EC2's eventual consistency); default 0. */
  visibilityDelayMs?: number;
  /** How often open persistent spot requests are checked for a terminated instance (default 200 ms). */
  spotCheckMs?: number;
}

export interface FaultProxy {
  url: string;
  calls: Ec2Call[];
  add(rule: FaultRule): void;
  clearRules(): void;
  /** Calls of `action` (all calls when left out), optionally only those matching `when`. */
  count(action?: string, when?: (params: URLSearchParams) => boolean): number;
  /** Changes how long new instances stay invisible. */
  setVisibilityDelay(ms: number): void;
  /** Limits `action` to `rate` from now on (a full bucket); no limit when left out. */
  setRequestRate(action: string, rate?: RequestRate): void;
  /** The persistent spot requests EC2 would hold, for assertions. */
  spotRequests(): SpotRequest[];
  stop(): Promise<void>;
}

const EC2_XMLNS = 'http://ec2.amazonaws.com/doc/2016-11-15/';

function errorXml(code: string, message: string): string {
  return (
    `<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>${code}</Code>` +
    `<Message>${message}</Message></Error></Errors><RequestID>fault-proxy</RequestID></Response>`
  );
}

/** The top-level `<item>` blocks of the first `<setName>` in `xml`, with what comes before and after. */
function splitItems(xml: string, setName: string): { head: string; items: string[]; tail: string } | undefined {
  const open = xml.indexOf(`<${setName}>`);
  if (open < 0) return undefined;
  const start = open + setName.length + 2;
  const items: string[] = [];
  let depth = 0;
  let itemStart = -1;
  const tag = /<(\/?)item>|<\/([A-Za-z]+)>/g;
  tag.lastIndex = start;
  for (let m = tag.exec(xml); m; m = tag.exec(xml)) {
    if (m[2] === setName && depth === 0) {
      return { head: xml.slice(0, start), items, tail: xml.slice(m.index) };
    }
    if (m[2] !== undefined) continue;
    if (m[1] === '') {
      if (depth === 0) itemStart = m.index;
      depth++;
    } else {
      depth--;
      if (depth === 0) items.push(xml.slice(itemStart, m.index + '</item>'.length));
    }
  }
  return undefined;
}

const instanceIdsIn = (xml: string): string[] =>
  [...xml.matchAll(/<instanceId>(i-[0-9a-f]+)<\/instanceId>/g)].map((m) => m[1]!);

/** Instance ids a request names (InstanceId.N). */
const namedInstances = (params: URLSearchParams): string[] =>
  [...params.entries()].filter(([k]) => /^InstanceId\.\d+$/.test(k)).map(([, v]) => v);

/** The request's parameters that make a launch what it is: everything but the envelope and the token. */
function launchSignature(params: URLSearchParams): string {
  return [...params.entries()]
    .filter(([k]) => k !== 'ClientToken' && k !== 'Action' && k !== 'Version')
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([k, v]) => `${k}=${v}`)
    .join('&');
}

/** A request's headers for replaying it with another body (node sets the new length). */
function withoutLength(headers: http.IncomingHttpHeaders): http.IncomingHttpHeaders {
  const { 'content-length': _length, host: _host, ...rest } = headers;
  return rest;
}

const isPersistentSpot = (p: URLSearchParams): boolean =>
  p.get('InstanceMarketOptions.MarketType') === 'spot' &&
  p.get('InstanceMarketOptions.SpotOptions.SpotInstanceType') === 'persistent';

export async function startFaultProxy(upstream: string, opts: FaultProxyOptions = {}): Promise<FaultProxy> {
  const target = new URL(upstream);
  const rules: Array<FaultRule & { left: number }> = [];
  const calls: Ec2Call[] = [];
  const agent = new http.Agent({ keepAlive: true });
  let visibilityDelayMs = opts.visibilityDelayMs ?? 0;
  const buckets = new Map<string, RequestRate & { tokens: number; at: number }>();
  /** Takes a token of `action`'s bucket; false when it is empty. */
  function withinRate(action: string): boolean {
    const b = buckets.get(action);
    if (!b) return true;
    const now = performance.now();
    b.tokens = Math.min(b.bucket, b.tokens + ((now - b.at) / 1000) * b.refillPerSecond);
    b.at = now;
    if (b.tokens < 1) return false;
    b.tokens--;
    return true;
  }
  /** Instance id → performance.now() from which Describe* shows it. */
  const visibleFrom = new Map<string, number>();
  /** ClientToken → the first launch: its parameters and, once moto answered, its answer. */
  const tokens = new Map<
    string,
    { signature: string; answer: Promise<{ status: number; text: string } | undefined> }
  >();
  const spot = new Map<string, SpotRequest>();

  const hidden = (id: string): boolean => (visibleFrom.get(id) ?? 0) > performance.now();
  const hideNew = (ids: string[]): void => {
    for (const id of ids) visibleFrom.set(id, performance.now() + visibilityDelayMs);
  };

  function toMoto(method: string, path: string, headers: http.IncomingHttpHeaders, body: Buffer | string) {
    return new Promise<{ status: number; text: string }>((resolve, reject) => {
      const up = http.request(
        { host: target.hostname, port: target.port, method, path, headers: { ...headers, host: target.host }, agent },
        (upRes) => {
          const parts: Buffer[] = [];
          upRes.on('data', (c: Buffer) => parts.push(c));
          upRes.on('end', () => resolve({ status: upRes.statusCode ?? 502, text: Buffer.concat(parts).toString() }));
          upRes.on('error', reject);
        },
      );
      up.on('error', reject);
      up.end(body);
    });
  }

  /** What EC2 would answer instead of moto: invisible instances left out, spot requests shown. */
  function rewrite(action: string, text: string): string {
    if (action === 'DescribeInstances' || action === 'DescribeInstanceStatus') {
      const set = action === 'DescribeInstances' ? 'reservationSet' : 'instanceStatusSet';
      const split = splitItems(text, set);
      if (split) {
        const kept = split.items.filter((item) => !instanceIdsIn(item).some(hidden));
        text = split.head + kept.join('') + split.tail;
      }
    }
    if (action === 'DescribeInstances' || action === 'RunInstances') {
      for (const r of spot.values()) {
        for (const id of r.instanceIds) {
          text = text.replace(
            `<instanceId>${id}</instanceId>`,
            `<instanceId>${id}</instanceId><spotInstanceRequestId>${r.id}</spotInstanceRequestId>`,
          );
        }
      }
    }
    return text;
  }

  // ---------------------------------------------------------------- spot requests

  function spotAnswer(action: string, params: URLSearchParams): string {
    const asked = [...params.entries()].filter(([k]) => /^SpotInstanceRequestId\.\d+$/.test(k)).map(([, v]) => v);
    const wanted =
      asked.length > 0 ? asked.map((id) => spot.get(id)).filter((r) => r !== undefined) : [...spot.values()];
    if (action === 'CancelSpotInstanceRequests') {
      for (const r of wanted) r.state = 'cancelled';
      const items = wanted
        .map((r) => `<item><spotInstanceRequestId>${r.id}</spotInstanceRequestId><state>cancelled</state></item>`)
        .join('');
      return (
        `<?xml version="1.0" encoding="UTF-8"?>\n<CancelSpotInstanceRequestsResponse xmlns="${EC2_XMLNS}">` +
        `<requestId>fault-proxy</requestId><spotInstanceRequestSet>${items}</spotInstanceRequestSet>` +
        `</CancelSpotInstanceRequestsResponse>`
      );
    }
    const items = wanted
      .map(
        (r) =>
          `<item><spotInstanceRequestId>${r.id}</spotInstanceRequestId><state>${r.state}</state>` +
          `<type>persistent</type><instanceInterruptionBehavior>stop</instanceInterruptionBehavior>` +
          `<instanceId>${r.instanceId}</instanceId><status><code>${
            r.state === 'cancelled' ? 'request-canceled-and-instance-running' : 'fulfilled'
          }</code></status></item>`,
      )
      .join('');
    return (
      `<?xml version="1.0" encoding="UTF-8"?>\n<DescribeSpotInstanceRequestsResponse xmlns="${EC2_XMLNS}">` +
      `<requestId>fault-proxy</requestId><spotInstanceRequestSet>${items}</spotInstanceRequestSet>` +
      `</DescribeSpotInstanceRequestsResponse>`
    );
  }

  /** EC2 fulfils an uncancelled persistent request again once its instance is terminated. */
  async function relaunchTerminated(): Promise<void> {
    for (const r of spot.values()) {
      if (r.state !== 'active') continue;
      const described = await toMoto(
        'POST',
        '/',
        { ...r.headers, 'content-type': 'application/x-www-form-urlencoded; charset=utf-8' },
        `Action=DescribeInstances&Version=2016-11-15&InstanceId.1=${r.instanceId}`,
      ).catch(() => undefined);
      const state = /<instanceState>\s*<code>\d+<\/code>\s*<name>([a-z-]+)<\/name>/.exec(described?.text ?? '')?.[1];
      if (state !== 'terminated' || r.state !== 'active') continue;
      r.state = 'open';
      const params = new URLSearchParams(r.body);
      params.delete('ClientToken');
      const launched = await toMoto('POST', '/', r.headers, params.toString()).catch(() => undefined);
      const [id] = launched && launched.status < 300 ? instanceIdsIn(launched.text) : [];
      if (id && r.state === 'open') {
        r.instanceId = id;
        r.instanceIds.push(id);
        r.state = 'active';
        hideNew([id]);
      } else if (r.state === 'open') r.state = 'active'; // try again on the next round
    }
  }
  let checking = false;
  const spotTimer = setInterval(() => {
    if (checking || spot.size === 0) return;
    checking = true;
    void relaunchTerminated().finally(() => (checking = false));
  }, opts.spotCheckMs ?? 200);

  // ---------------------------------------------------------------- the server

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
      const drop = (): void => {
        call.endedAt = performance.now();
        req.socket.destroy();
      };
      if (fault?.kind === 'error')
        return finish(fault.status, errorXml(fault.code, fault.message ?? `injected ${fault.code}`));
      if (fault?.kind === 'throttle') return finish(503, errorXml('RequestLimitExceeded', 'Request limit exceeded.'));
      if (!withinRate(action)) {
        call.rateLimited = true;
        return finish(503, errorXml('RequestLimitExceeded', 'Request limit exceeded.'));
      }
      if (fault?.kind === 'drop') return drop();

      const answer = async (): Promise<void> => {
        const invisible = namedInstances(params).filter(hidden);
        if (invisible.length > 0 && /^(Describe|Start|Stop|Terminate)Instance/.test(action)) {
          return finish(
            400,
            errorXml('InvalidInstanceID.NotFound', `The instance IDs '${invisible.join(', ')}' do not exist`),
          );
        }
        if (action === 'DescribeSpotInstanceRequests' || action === 'CancelSpotInstanceRequests') {
          return finish(200, spotAnswer(action, params));
        }
        const token = action === 'RunInstances' ? params.get('ClientToken') : null;
        const earlier = token ? tokens.get(token) : undefined;
        if (earlier && earlier.signature !== launchSignature(params)) {
          return finish(
            400,
            errorXml(
              'IdempotentParameterMismatch',
              'The client token you have provided is associated with a resource that is already deleted or has other parameters',
            ),
          );
        }
        let result: { status: number; text: string } | undefined;
        if (earlier) {
          result = await earlier.answer;
          call.idempotentReplay = result !== undefined;
        }
        if (!result) {
          const sentAt = performance.now();
          const sent = toMoto(req.method ?? 'POST', req.url ?? '/', req.headers, body);
          if (token) {
            tokens.set(token, {
              signature: launchSignature(params),
              answer: sent.then(
                (r) => (r.status < 300 ? r : undefined),
                () => undefined,
              ),
            });
          }
          result = await sent;
          call.upstreamMs = performance.now() - sentAt;
          if (token && result.status >= 300) tokens.delete(token);
          if (action === 'RunInstances' && result.status < 300) {
            const ids = instanceIdsIn(result.text);
            hideNew(ids);
            if (isPersistentSpot(params)) {
              for (const id of ids) {
                const sir = `sir-${randomBytes(4).toString('hex')}`;
                spot.set(sir, {
                  id: sir,
                  state: 'active',
                  instanceId: id,
                  instanceIds: [id],
                  body: body.toString(),
                  headers: withoutLength(req.headers),
                });
              }
            }
          }
        }
        if (fault?.kind === 'drop-after-apply') return drop();
        const text = rewrite(action, result.text);
        call.status = result.status;
        res.writeHead(result.status, { 'content-type': 'text/xml', 'content-length': Buffer.byteLength(text) });
        res.end(text);
        call.endedAt = performance.now();
      };
      const run = (): void =>
        void answer().catch((err: unknown) =>
          finish(502, errorXml('InternalError', `fault proxy: ${err instanceof Error ? err.message : String(err)}`)),
        );
      if (fault?.kind === 'delay') setTimeout(run, fault.ms);
      else run();
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
    setVisibilityDelay: (ms) => (visibilityDelayMs = ms),
    setRequestRate: (action, rate) =>
      rate ? buckets.set(action, { ...rate, tokens: rate.bucket, at: performance.now() }) : buckets.delete(action),
    spotRequests: () => [...spot.values()].map((r) => ({ ...r, instanceIds: [...r.instanceIds] })),
    stop: () =>
      new Promise<void>((resolve) => {
        clearInterval(spotTimer);
        agent.destroy();
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
