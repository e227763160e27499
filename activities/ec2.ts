/**
 * EC2 for the LLM burst pool: thin activities, one EC2 operation (or one poll) each.
 *
 * Idempotency: every launch attempt sends a ClientToken derived from the launch token the workflow
 * chose before the first try (and the attempt's instance type and market), so a retry after a lost
 * RunInstances response gets the same instance back from EC2 itself. The instance also carries
 * `labwright:pool` and the launch token (`labwright:launch-token`) as tags, but a tag lookup
 * alone is not enough: DescribeInstances is eventually consistent and may not show an instance
 * launched a moment ago. The SDK's own retries are off (maxAttempts 1): Temporal's retry policy is
 * the only retry layer.
 *
 * Spot instances are launched as persistent requests (stopping a spot instance needs one). EC2
 * fulfils such a request again whenever its instance is terminated, so the request is cancelled
 * before every terminate and whenever the pool forgets an instance.
 *
 * The model server is reached through an address resolver: production talks to the instance's
 * private address; the simulated lab and the tests map it to a fake model server on loopback.
 */
import { createHash } from 'node:crypto';
import { Context } from '@temporalio/activity';
import type * as Ec2Sdk from '@aws-sdk/client-ec2';
import type { Filter, Instance, RunInstancesCommandInput } from '@aws-sdk/client-ec2';
import { CancelledFailure, type ApplicationFailure } from '@temporalio/common';
import { classifyUnknown, failureForHttpStatus, nonRetryable, retryable } from '../common/errors.js';
import {
  identityResolver,
  parseAddressMap,
  TAG_LAUNCH_TOKEN,
  TAG_MANAGED_BY,
  TAG_POOL,
  type AddressResolver,
} from '../common/llm-burst.js';
import type { BurstPool } from '../hardware/schema.js';
import { batchedLookup, type BatchedLookup } from '../lib/batched-lookup.js';
import type { SecretStore } from '../lib/secrets.js';

export interface Ec2Deps {
  secrets: SecretStore;
  /** AWS_ENDPOINT_URL_EC2 / AWS_ENDPOINT_URL (moto), AWS_ACCESS_KEY_ID…, LABWRIGHT_EC2_ADDRESS_MAP, LABWRIGHT_EC2_POLL_MS. */
  env?: NodeJS.ProcessEnv;
  /** Where this worker reaches an instance's model server; LABWRIGHT_EC2_ADDRESS_MAP or the address itself. */
  resolveAddress?: AddressResolver;
  /** Pause between polls while waiting for EC2 or the model server (default 5 s). */
  pollIntervalMs?: number;
  /** Timeout of one health-check request (default 5 s). */
  healthTimeoutMs?: number;
}

export type InstanceStateName = 'pending' | 'running' | 'stopping' | 'stopped' | 'shutting-down' | 'terminated';

/** What the workflow keeps of an instance: no secrets, nothing the SDK would not serialise. */
export interface InstanceView {
  instanceId: string;
  state: InstanceStateName;
  instanceType?: string;
  market: 'spot' | 'on-demand';
  privateIp?: string;
  launchToken?: string;
  /** EC2's reason for the last transition, e.g. `Client.UserInitiatedShutdown`. */
  stateReason?: string;
  /** The persistent spot request that launched it (spot only). */
  spotRequestId?: string;
}

export interface LaunchResult extends InstanceView {
  /** The launches EC2 refused for capacity before this one succeeded (spot, then on-demand). */
  refused: string[];
  /** True when a retry found the instance a lost response had already launched. */
  found: boolean;
}

const LIVE_STATES = ['pending', 'running', 'stopping', 'stopped'];
/**
 * Instance IDs in one DescribeInstances or StopInstances sent for many pools at once, and tag
 * values in one DescribeInstances filter (EC2 takes up to 200 values per filter).
 */
const BATCH = 100;
const THROTTLING = new Set([
  'Throttling',
  'ThrottlingException',
  'RequestLimitExceeded',
  'RequestThrottled',
  'RequestThrottledException',
  'TooManyRequestsException',
  'EC2ThrottledException',
  'SlowDown',
]);
const CAPACITY = new Set([
  'InsufficientInstanceCapacity',
  'InsufficientCapacity',
  'InsufficientHostCapacity',
  'InsufficientReservedInstanceCapacity',
  'InsufficientCapacityOnHost',
  'SpotMaxPriceTooLow',
  'MaxSpotInstanceCountExceeded',
  'capacity-not-available',
  'capacity-oversubscribed',
  'Unsupported',
]);

interface AwsError {
  name?: string;
  message?: string;
  Code?: string;
  $metadata?: { httpStatusCode?: number };
}

function awsCode(err: unknown): string | undefined {
  if (typeof err !== 'object' || err === null) return undefined;
  const e = err as AwsError;
  return e.Code ?? (e.$metadata ? e.name : undefined);
}

/** True when EC2 refused a launch for lack of capacity (the spot → on-demand fallback's trigger). */
export function isCapacityError(err: unknown): boolean {
  const code = awsCode(err);
  if (code === 'Unsupported') return /spot|capacity/i.test((err as AwsError).message ?? '');
  return code !== undefined && CAPACITY.has(code);
}

/**
 * Classifies an EC2 SDK error: throttling retries, capacity and other 4xx do not, 5xx and lost
 * connections retry. The message names the operation and EC2's error code.
 */
export function ec2Failure(err: unknown, what: string): ApplicationFailure {
  const code = awsCode(err);
  const status = (err as AwsError | undefined)?.$metadata?.httpStatusCode;
  if (code === undefined || status === undefined) return classifyUnknown(err, `EC2 ${what}`);
  const message = `EC2 ${what}: ${code}: ${(err as AwsError).message ?? ''}`.trim();
  if (THROTTLING.has(code)) return retryable('throttled', message);
  if (isCapacityError(err)) return nonRetryable('precondition', message);
  if (code === 'IncorrectInstanceState' || code === 'InvalidInstanceID.NotFound' || code === 'ServiceUnavailable') {
    // The instance is between states, or not yet visible (EC2 is eventually consistent): a later try cures it.
    return retryable(code === 'ServiceUnavailable' ? 'server' : 'timeout', message);
  }
  if (code === 'AuthFailure' || code === 'UnauthorizedOperation' || code === 'InvalidClientTokenId') {
    return nonRetryable('client', message);
  }
  return failureForHttpStatus(status, message);
}

interface CurrentContext {
  heartbeat(details?: unknown): void;
  sleep(ms: number): Promise<void>;
  cancellationSignal?: AbortSignal;
}

/** The activity context, or a stand-in so the helpers also run outside a worker (the bench's baseline). */
function context(): CurrentContext {
  try {
    return Context.current();
  } catch {
    return { heartbeat: () => undefined, sleep: (ms) => new Promise((r) => setTimeout(r, ms)) };
  }
}

/**
 * Awaits `work` while heartbeating every second, so that a cancellation reaches the activity; the
 * work itself is never abandoned (EC2 may apply a request whose caller gave up on it).
 */
async function heartbeatWhile<T>(ctx: CurrentContext, what: string, work: Promise<T>): Promise<T> {
  ctx.heartbeat(what);
  const beat = setInterval(() => ctx.heartbeat(what), 1000);
  try {
    return await work;
  } finally {
    clearInterval(beat);
  }
}

function view(i: Instance): InstanceView {
  const tags = new Map((i.Tags ?? []).map((t) => [t.Key ?? '', t.Value ?? '']));
  return {
    instanceId: i.InstanceId ?? '',
    state: (i.State?.Name ?? 'pending') as InstanceStateName,
    instanceType: i.InstanceType,
    market: i.InstanceLifecycle === 'spot' ? 'spot' : 'on-demand',
    privateIp: i.PrivateIpAddress,
    launchToken: tags.get(TAG_LAUNCH_TOKEN),
    stateReason: i.StateReason?.Code,
    spotRequestId: i.SpotInstanceRequestId,
  };
}

/**
 * RunInstances' idempotency token for one launch attempt: the same launch token, instance type and
 * market give the same token, so EC2 answers a retry with the instance it already launched. (EC2
 * refuses a token reused with other parameters, hence one per attempt; at most 64 ASCII characters.)
 */
export function clientTokenFor(launchToken: string, instanceType: string, market: 'spot' | 'on-demand'): string {
  return `lw-${createHash('sha256').update(`${launchToken}|${instanceType}|${market}`).digest('hex').slice(0, 48)}`;
}

/**
 * The AWS SDK's EC2 client costs ~90 MiB and half a second of CPU to load: it is loaded by the
 * first EC2 call, not when the worker starts (most labs' workers never burst).
 */
let sdk: Promise<typeof Ec2Sdk> | undefined;
function loadSdk(): Promise<typeof Ec2Sdk> {
  return (sdk ??= import('@aws-sdk/client-ec2'));
}

const STATE_RANK: Record<string, number> = { running: 0, pending: 1, stopping: 2, stopped: 3 };

/**
 * EC2 clients per pool region and credentials: the pool's own credentials, the environment's, or
 * the SDK's default chain; AWS_ENDPOINT_URL_EC2 / AWS_ENDPOINT_URL aims them at moto.
 */
export function ec2ClientsFor(
  secrets: Pick<SecretStore, 'resolve'>,
  env: NodeJS.ProcessEnv,
): (pool: BurstPool) => Promise<Ec2Sdk.EC2Client> {
  const endpoint = env.AWS_ENDPOINT_URL_EC2 ?? env.AWS_ENDPOINT_URL;
  async function credentialsFor(pool: BurstPool) {
    if (pool.credentials) {
      return {
        accessKeyId: (await secrets.resolve(pool.credentials.accessKeyId)).trim(),
        secretAccessKey: (await secrets.resolve(pool.credentials.secretAccessKey)).trim(),
      };
    }
    if (env.AWS_ACCESS_KEY_ID && env.AWS_SECRET_ACCESS_KEY) {
      return {
        accessKeyId: env.AWS_ACCESS_KEY_ID,
        secretAccessKey: env.AWS_SECRET_ACCESS_KEY,
        sessionToken: env.AWS_SESSION_TOKEN,
      };
    }
    return undefined; // the SDK's default chain: profile, SSO, instance role
  }

  /** The promise is kept, not the client: pools asking at once share one client (and one batch of looks). */
  const clients = new Map<string, Promise<Ec2Sdk.EC2Client>>();
  function ec2(pool: BurstPool): Promise<Ec2Sdk.EC2Client> {
    const key = `${pool.region}|${JSON.stringify(pool.credentials ?? null)}`;
    let client = clients.get(key);
    if (!client) {
      client = (async () =>
        new (await loadSdk()).EC2Client({
          region: pool.region,
          endpoint,
          credentials: await credentialsFor(pool),
          maxAttempts: 1,
          requestHandler: { connectionTimeout: 5000, requestTimeout: 30_000 },
        }))();
      clients.set(key, client);
      client.catch(() => clients.delete(key)); // a secret that could not be read is read again next time
    }
    return client;
  }

  return ec2;
}

export function createEc2Activities(deps: Ec2Deps) {
  const env = deps.env ?? process.env;
  const pollMs = deps.pollIntervalMs ?? (Number(env.LABWRIGHT_EC2_POLL_MS) || 5000);
  const healthTimeoutMs = deps.healthTimeoutMs ?? 5000;
  const resolve =
    deps.resolveAddress ??
    (env.LABWRIGHT_EC2_ADDRESS_MAP ? parseAddressMap(env.LABWRIGHT_EC2_ADDRESS_MAP) : identityResolver);

  const ec2 = ec2ClientsFor(deps.secrets, env);

  async function call<T>(what: string, run: () => Promise<T>): Promise<T> {
    try {
      return await run();
    } catch (err) {
      throw ec2Failure(err, what);
    }
  }

  async function describe(client: Ec2Sdk.EC2Client, filters: Filter[]): Promise<Instance[]> {
    const out: Instance[] = [];
    let token: string | undefined;
    do {
      const page = await call('DescribeInstances', async () =>
        client.send(new (await loadSdk()).DescribeInstancesCommand({ Filters: filters, NextToken: token })),
      );
      for (const r of page.Reservations ?? []) out.push(...(r.Instances ?? []));
      token = page.NextToken;
    } while (token);
    return out;
  }

  /**
   * The live instances tagged `tag` = `value`. Like the looks by ID, the lookups of all pools on
   * one account and region go out together, one filter with many values: every DescribeInstances
   * counts against the same request rate (and moto, like EC2, pays for each filtered call across
   * all instances).
   */
  const tagLookups = new WeakMap<Ec2Sdk.EC2Client, Map<string, BatchedLookup<string, InstanceView[]>>>();
  async function describeTagged(pool: BurstPool, tag: string, value: string): Promise<InstanceView[]> {
    const client = await ec2(pool);
    const byTag = tagLookups.get(client) ?? new Map<string, BatchedLookup<string, InstanceView[]>>();
    tagLookups.set(client, byTag);
    let lookup = byTag.get(tag);
    if (!lookup) {
      lookup = batchedLookup(
        async (values: string[]) => {
          const found = await describe(client, [
            { Name: `tag:${tag}`, Values: values },
            { Name: 'instance-state-name', Values: LIVE_STATES },
          ]);
          const out = new Map<string, InstanceView[]>(values.map((v) => [v, []]));
          for (const i of found) out.get(i.Tags?.find((t) => t.Key === tag)?.Value ?? '')?.push(view(i));
          return out;
        },
        { maxBatch: BATCH },
      );
      byTag.set(tag, lookup);
    }
    return (await lookup(value)) ?? [];
  }

  /**
   * One instance by ID, null when DescribeInstances does not show it (gone, or not visible yet).
   * The looks of all pools on one account and region go out together: EC2 allows each account
   * about 20 DescribeInstances a second, and hundreds of pools polling alone would exceed it.
   */
  const looks = new WeakMap<Ec2Sdk.EC2Client, BatchedLookup<string, InstanceView>>();
  async function describeOne(pool: BurstPool, instanceId: string): Promise<InstanceView | null> {
    const client = await ec2(pool);
    let look = looks.get(client);
    if (!look) {
      look = batchedLookup((ids: string[]) => describeIds(client, ids), { maxBatch: BATCH });
      looks.set(client, look);
    }
    return (await look(instanceId)) ?? null;
  }

  /**
   * DescribeInstances of `ids`. EC2 fails the whole call when one of them is unknown or not
   * visible yet, naming it: those are left out (not found) and the others asked again.
   */
  async function describeIds(client: Ec2Sdk.EC2Client, ids: string[]): Promise<Map<string, InstanceView>> {
    try {
      const page = await client.send(new (await loadSdk()).DescribeInstancesCommand({ InstanceIds: ids }));
      const found = (page.Reservations ?? []).flatMap((r) => (r.Instances ?? []).map(view));
      return new Map(found.map((i) => [i.instanceId, i]));
    } catch (err) {
      if (awsCode(err) !== 'InvalidInstanceID.NotFound') throw ec2Failure(err, 'DescribeInstances');
      if (ids.length === 1) return new Map();
      const named = new Set((err as AwsError).message?.match(/\bi-[0-9a-f]+\b/g) ?? []);
      const rest = ids.filter((id) => !named.has(id));
      if (rest.length === ids.length) {
        // It named none of them: each on its own.
        const each = await Promise.all(ids.map((id) => describeIds(client, [id])));
        return new Map(each.flatMap((m) => [...m]));
      }
      return rest.length > 0 ? describeIds(client, rest) : new Map();
    }
  }

  /** StopInstances of one instance, sent with the other pools' stops of the moment (one call, not hundreds). */
  const stops = new WeakMap<Ec2Sdk.EC2Client, BatchedLookup<string, true>>();
  async function stopOne(pool: BurstPool, instanceId: string): Promise<void> {
    const client = await ec2(pool);
    let stop = stops.get(client);
    if (!stop) {
      stop = batchedLookup((ids: string[]) => stopIds(client, ids), { maxBatch: BATCH });
      stops.set(client, stop);
    }
    await stop(instanceId);
  }

  async function stopIds(client: Ec2Sdk.EC2Client, ids: string[]): Promise<Map<string, true | Error>> {
    try {
      await client.send(new (await loadSdk()).StopInstancesCommand({ InstanceIds: ids }));
      return new Map(ids.map((id) => [id, true]));
    } catch (err) {
      const status = (err as AwsError).$metadata?.httpStatusCode ?? 0;
      if (ids.length === 1 || status < 400 || status >= 500 || THROTTLING.has(awsCode(err) ?? '')) {
        return new Map(ids.map((id) => [id, ec2Failure(err, `StopInstances ${id}`)]));
      }
      // EC2 refuses the whole call for one instance it cannot stop: each on its own, with its own answer.
      const each = await Promise.all(ids.map((id) => stopIds(client, [id])));
      return new Map(each.flatMap((m) => [...m]));
    }
  }

  /** An instance this pool launched: not yet visible is retried (DescribeInstances is eventually consistent). */
  async function describeKnown(pool: BurstPool, instanceId: string): Promise<InstanceView> {
    const found = await describeOne(pool, instanceId);
    if (!found)
      throw retryable('timeout', `instance ${instanceId} of pool ${pool.name} is not visible to DescribeInstances yet`);
    return found;
  }

  /** Cancels the instance's persistent spot request if it is still open, so EC2 launches no replacement. */
  async function cancelSpotRequest(pool: BurstPool, instance: InstanceView): Promise<string | undefined> {
    const id = instance.spotRequestId;
    if (!id) return undefined;
    const client = await ec2(pool);
    const found = await call(`DescribeSpotInstanceRequests ${id}`, async () =>
      client.send(new (await loadSdk()).DescribeSpotInstanceRequestsCommand({ SpotInstanceRequestIds: [id] })),
    );
    const state = found.SpotInstanceRequests?.[0]?.State;
    if (state === 'cancelled' || state === 'closed') return undefined;
    await call(`CancelSpotInstanceRequests ${id}`, async () =>
      client.send(new (await loadSdk()).CancelSpotInstanceRequestsCommand({ SpotInstanceRequestIds: [id] })),
    );
    return id;
  }

  async function terminate(pool: BurstPool, instance: InstanceView): Promise<void> {
    await cancelSpotRequest(pool, instance);
    if (instance.state === 'terminated' || instance.state === 'shutting-down') return;
    const client = await ec2(pool);
    await call(`TerminateInstances ${instance.instanceId}`, async () =>
      client.send(new (await loadSdk()).TerminateInstancesCommand({ InstanceIds: [instance.instanceId] })),
    );
  }

  /**
   * Terminates what a cancelled launch made. The instance is brand new, so EC2 may not know it yet
   * (InvalidInstanceID.NotFound): retried on plain timers (the activity's own sleep ends at once
   * once it is cancelled) for up to a minute.
   */
  async function terminateLaunched(pool: BurstPool, instance: InstanceView): Promise<void> {
    const giveUpAt = Date.now() + 60_000;
    for (;;) {
      try {
        await terminate(pool, instance);
        return;
      } catch (err) {
        const notVisible = err instanceof Error && /InvalidInstanceID\.NotFound/.test(err.message);
        if (!notVisible || Date.now() > giveUpAt) throw err;
        await new Promise((r) => setTimeout(r, Math.min(pollMs, 1000)));
      }
    }
  }

  async function healthy(
    pool: BurstPool,
    privateIp: string,
    timeoutMs = healthTimeoutMs,
  ): Promise<{ ok: boolean; detail: string }> {
    const target = resolve(privateIp, pool.modelPort);
    const url = `http://${target.host}:${target.port}${pool.healthPath}`;
    try {
      const res = await fetch(url, { signal: AbortSignal.timeout(timeoutMs) });
      await res.body?.cancel();
      return { ok: res.ok, detail: `HTTP ${res.status}` };
    } catch (err) {
      return { ok: false, detail: err instanceof Error ? err.message : String(err) };
    }
  }

  /** Whether the instance runs with both status checks ok (`ready`), and what it is doing if not. */
  async function runningCheck(
    pool: BurstPool,
    instanceId: string,
  ): Promise<{ ready: InstanceView | null; detail: string }> {
    const current = await describeOne(pool, instanceId);
    if (current && ['stopping', 'stopped', 'shutting-down', 'terminated'].includes(current.state)) {
      throw nonRetryable(
        'precondition',
        `instance ${instanceId} of pool ${pool.name} went ${current.state} while starting${current.stateReason ? ` (${current.stateReason})` : ''}`,
      );
    }
    if (current?.state !== 'running') return { ready: null, detail: `is ${current?.state ?? 'not visible yet'}` };
    const client = await ec2(pool);
    const status = await call(`DescribeInstanceStatus ${instanceId}`, async () =>
      client.send(
        new (await loadSdk()).DescribeInstanceStatusCommand({ InstanceIds: [instanceId], IncludeAllInstances: true }),
      ),
    );
    const s = status.InstanceStatuses?.[0];
    const checks = [s?.InstanceStatus?.Status, s?.SystemStatus?.Status];
    if (checks.every((c) => c === 'ok')) return { ready: current, detail: 'running, status checks ok' };
    return { ready: null, detail: `running, status checks ${checks.join('/')}` };
  }

  return {
    /** The pool's live instances (not terminated), best first: running, pending, stopping, stopped. */
    async ec2FindPoolInstances(pool: BurstPool): Promise<InstanceView[]> {
      const found = await describeTagged(pool, TAG_POOL, pool.name);
      return found.sort(
        (a, b) => (STATE_RANK[a.state] ?? 9) - (STATE_RANK[b.state] ?? 9) || a.instanceId.localeCompare(b.instanceId),
      );
    },

    /** One instance's state; null once it is gone (terminated instances disappear after a while). */
    async ec2DescribeInstance(pool: BurstPool, instanceId: string): Promise<InstanceView | null> {
      return describeOne(pool, instanceId);
    },

    /**
     * Launches the pool's instance, unless one tagged with `launchToken` is visible already. Spot
     * first when the pool allows it, then on-demand, each instance type in the pool's order, moving
     * on only when EC2 refuses for capacity. Each attempt's ClientToken makes a retry after a lost
     * response return the same instance even while DescribeInstances does not show it yet.
     *
     * Cancelled while RunInstances is in flight, it waits for EC2's answer and terminates what the
     * launch made (cancelling its spot request first), then reports the cancellation: it heartbeats
     * so that the cancellation reaches it, and the workflow waits for that clean-up.
     */
    async ec2LaunchInstance(pool: BurstPool, launchToken: string): Promise<LaunchResult> {
      const ctx = context();
      const [existing] = await describeTagged(pool, TAG_LAUNCH_TOKEN, launchToken);
      if (existing) return { ...existing, refused: [], found: true };

      const client = await ec2(pool);
      const markets: Array<'spot' | 'on-demand'> =
        pool.market === 'spot' ? ['spot'] : pool.market === 'on-demand' ? ['on-demand'] : ['spot', 'on-demand'];
      const refused: string[] = [];
      const tags = [
        { Key: TAG_POOL, Value: pool.name },
        { Key: TAG_LAUNCH_TOKEN, Value: launchToken },
        { Key: TAG_MANAGED_BY, Value: 'labwright' },
        { Key: 'Name', Value: `labwright-${pool.name}` },
      ];
      for (const market of markets) {
        for (const instanceType of pool.instanceTypes) {
          const input: RunInstancesCommandInput = {
            ClientToken: clientTokenFor(launchToken, instanceType, market),
            MinCount: 1,
            MaxCount: 1,
            InstanceType: instanceType as RunInstancesCommandInput['InstanceType'],
            LaunchTemplate: pool.launchTemplate
              ? { LaunchTemplateName: pool.launchTemplate.name, Version: pool.launchTemplate.version }
              : undefined,
            ImageId: pool.ami,
            SubnetId: pool.subnetId,
            SecurityGroupIds: pool.securityGroupIds.length > 0 ? pool.securityGroupIds : undefined,
            // Stopping a spot instance needs a persistent request that stops on interruption.
            InstanceMarketOptions:
              market === 'spot'
                ? {
                    MarketType: 'spot',
                    SpotOptions: { SpotInstanceType: 'persistent', InstanceInterruptionBehavior: 'stop' },
                  }
                : undefined,
            TagSpecifications: [
              { ResourceType: 'instance', Tags: tags },
              { ResourceType: 'volume', Tags: tags },
            ],
          };
          const what = `RunInstances ${instanceType} ${market} for pool ${pool.name}`;
          try {
            const out = await heartbeatWhile(ctx, what, client.send(new (await loadSdk()).RunInstancesCommand(input)));
            const instance = out.Instances?.[0];
            if (!instance?.InstanceId) throw retryable('server', 'EC2 RunInstances answered without an instance');
            const launched: LaunchResult = { ...view(instance), market, refused, found: false };
            if (ctx.cancellationSignal?.aborted) {
              await terminateLaunched(pool, launched);
              throw new CancelledFailure(`launch cancelled: terminated ${launched.instanceId}`);
            }
            return launched;
          } catch (err) {
            if (err instanceof CancelledFailure) throw err;
            if (ctx.cancellationSignal?.aborted && !isCapacityError(err)) {
              // The answer was lost while we were being cancelled: ask again with the same token
              // (EC2 answers with the instance if the first request made one) and terminate it.
              const again = await client.send(new (await loadSdk()).RunInstancesCommand(input)).catch(() => undefined);
              const made = again?.Instances?.[0];
              if (made?.InstanceId) await terminateLaunched(pool, { ...view(made), market });
              throw new CancelledFailure(
                `launch cancelled${made?.InstanceId ? `: terminated ${made.InstanceId}` : ''}`,
              );
            }
            if (isCapacityError(err)) {
              refused.push(`${instanceType} ${market}: ${awsCode(err)}`);
              continue;
            }
            throw ec2Failure(err, what);
          }
        }
      }
      throw nonRetryable(
        'precondition',
        `no EC2 capacity for pool ${pool.name} in ${pool.region}: ${refused.join('; ')}`,
        { refused },
      );
    },

    /**
     * Starts a stopped instance; running or pending is already done. Waits out a `stopping` first.
     * `previous` is the state it was found in (`stopped` when this call started it).
     */
    async ec2StartInstance(
      pool: BurstPool,
      instanceId: string,
    ): Promise<InstanceView & { previous: InstanceStateName }> {
      const ctx = context();
      for (;;) {
        const current = await describeOne(pool, instanceId);
        if (!current || current.state === 'terminated' || current.state === 'shutting-down') {
          throw nonRetryable('notFound', `instance ${instanceId} of pool ${pool.name} is gone (terminated)`);
        }
        if (current.state === 'running' || current.state === 'pending') return { ...current, previous: current.state };
        if (current.state === 'stopped') break;
        ctx.heartbeat(`instance ${instanceId} is ${current.state}`);
        await ctx.sleep(pollMs);
      }
      const client = await ec2(pool);
      const out = await call(`StartInstances ${instanceId}`, async () =>
        client.send(new (await loadSdk()).StartInstancesCommand({ InstanceIds: [instanceId] })),
      );
      const state = out.StartingInstances?.[0]?.CurrentState?.Name as InstanceStateName | undefined;
      return {
        ...((await describeOne(pool, instanceId)) ?? { instanceId, market: 'on-demand' }),
        state: state ?? 'pending',
        previous: 'stopped',
      };
    },

    /**
     * One look, no waiting: the instance if it runs and passes both status checks, null while it
     * is not there yet; fails if it stopped or went away while starting.
     */
    async ec2CheckRunning(pool: BurstPool, instanceId: string): Promise<InstanceView | null> {
      return (await runningCheck(pool, instanceId)).ready;
    },

    /**
     * The cold path's one look after a start: whether the instance runs with both status checks
     * passed and, if so, whether its model server answers (within `timeoutMs`).
     */
    async ec2CheckReady(
      pool: BurstPool,
      instanceId: string,
      timeoutMs: number,
    ): Promise<{ running: InstanceView | null; modelServerOk: boolean }> {
      const { ready } = await runningCheck(pool, instanceId);
      const ip = ready?.privateIp;
      return { running: ready, modelServerOk: ip ? (await healthy(pool, ip, timeoutMs)).ok : false };
    },

    /** Polls until the instance runs and both status checks pass; fails if it stops or goes away meanwhile. */
    async ec2WaitRunning(pool: BurstPool, instanceId: string): Promise<InstanceView> {
      const ctx = context();
      for (;;) {
        const { ready, detail } = await runningCheck(pool, instanceId);
        if (ready) return ready;
        ctx.heartbeat(`instance ${instanceId} ${detail}`);
        await ctx.sleep(pollMs);
      }
    },

    /** One health check of the model server (GET healthPath), through the address resolver. */
    async ec2CheckModelServer(
      pool: BurstPool,
      privateIp: string,
      timeoutMs = healthTimeoutMs,
    ): Promise<{ ok: boolean; detail: string }> {
      return healthy(pool, privateIp, timeoutMs);
    },

    /** Polls the model server until it answers 2xx on healthPath. */
    async ec2WaitModelServer(pool: BurstPool, privateIp: string): Promise<void> {
      const ctx = context();
      for (;;) {
        const h = await healthy(pool, privateIp);
        if (h.ok) return;
        ctx.heartbeat(`model server on ${privateIp}:${pool.modelPort}: ${h.detail}`);
        await ctx.sleep(pollMs);
      }
    },

    /** Stops the instance (EBS kept). Stopped, stopping or gone count as done. */
    async ec2StopInstance(pool: BurstPool, instanceId: string): Promise<InstanceView | null> {
      const current = await describeKnown(pool, instanceId);
      if (['stopping', 'stopped', 'shutting-down', 'terminated'].includes(current.state)) return current;
      await stopOne(pool, instanceId);
      return describeOne(pool, instanceId);
    },

    /** Polls until the instance is stopped (or gone). */
    async ec2WaitStopped(pool: BurstPool, instanceId: string): Promise<InstanceView | null> {
      const ctx = context();
      for (;;) {
        const current = await describeOne(pool, instanceId);
        if (!current || ['stopped', 'terminated'].includes(current.state)) return current;
        if (current.state === 'running' || current.state === 'pending') {
          throw retryable('timeout', `instance ${instanceId} is ${current.state} again while waiting for it to stop`);
        }
        ctx.heartbeat(`instance ${instanceId} is ${current.state}`);
        await ctx.sleep(pollMs);
      }
    },

    /** Cancels the instance's spot request (so EC2 launches no replacement), then terminates it; gone counts as done. */
    async ec2TerminateInstance(pool: BurstPool, instanceId: string): Promise<void> {
      await terminate(pool, await describeKnown(pool, instanceId));
    },

    /**
     * Cancels the persistent spot request of an instance the pool is about to forget (found
     * terminated, interrupted): else EC2 launches a replacement that bills unseen. Returns the
     * request id when it cancelled one.
     */
    async ec2CancelSpotRequest(pool: BurstPool, instanceId: string): Promise<string | null> {
      const current = await describeOne(pool, instanceId);
      return (current && (await cancelSpotRequest(pool, current))) ?? null;
    },
  };
}

export type Ec2Activities = ReturnType<typeof createEc2Activities>;
