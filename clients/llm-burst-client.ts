/**
 * The LLM proxy's side of the burst pool. It keeps each pool's endpoint in memory:
 *
 * - warm path: a cached ready endpoint is returned at once, with no round trip to Temporal; at
 *   most one `demand` signal per pool per interval goes out in the background, however many
 *   requests arrive, which keeps the workflow's idle deadline moving;
 * - cold path: `acquire` with update-with-start (the first call creates the pool's workflow),
 *   shared by every request that arrives while it is under way.
 *
 * A cached endpoint is trusted only while the pool cannot have gone idle: until the last demand
 * the workflow saw plus its idle timeout, less a margin. After that, or after the caller reports
 * the endpoint dead (`invalidate`), the next request takes the cold path again.
 */
import {
  WithStartWorkflowOperation,
  WorkflowUpdateFailedError,
  type Client,
  type WorkflowHandle,
} from '@temporalio/client';
import { RESOURCE_KEY } from '../common/search-attributes.js';
import { describeIssues } from '../common/validation.js';
import {
  acquireUpdate,
  demandSignal,
  LLM_BURST_WORKFLOW,
  llmBurstInputSchema,
  llmBurstWorkflowId,
  statusQuery,
  type AcquireResult,
  type LlmBurstInput,
  type LlmBurstStatus,
} from '../common/llm-burst.js';

export interface BurstClientOptions {
  client: Client;
  taskQueue: string;
  /** The workflow input per pool name: used to create the pool's workflow on the first acquire. */
  pools: Record<string, LlmBurstInput>;
  /** At most one demand signal per pool per this many ms (default 30 s, capped at a third of idleTimeout). */
  demandIntervalMs?: number;
  /** How long a cold request waits for the instance (default 15 minutes). */
  acquireDeadlineSeconds?: number;
  /** After a refused or failed acquire, requests fail fast for this long instead of asking again (default 5 s). */
  failureTtlMs?: number;
  /** Workflow ID for a pool (default `llm-burst/<pool>`). */
  workflowId?: (pool: string) => string;
  now?: () => number;
}

export interface BurstEndpoint {
  pool: string;
  endpoint: string;
  instanceId: string;
  /** True when this call went to Temporal (acquire); false on the warm path. */
  cold: boolean;
}

export interface BurstClientStats {
  warmHits: number;
  acquires: number;
  demandSignals: number;
}

export class BurstUnavailableError extends Error {
  constructor(
    readonly pool: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'BurstUnavailableError';
  }
}

interface PoolEntry {
  handle: WorkflowHandle;
  input: LlmBurstInput;
  ready?: { endpoint: string; instanceId: string; idleTimeoutMs: number };
  /** An endpoint the caller could not reach, reported with the next acquire. */
  unreachable?: string;
  /** When the workflow last heard from us (a demand signal sent or an acquire answered). */
  lastContactAt: number;
  signalInFlight: boolean;
  acquiring?: Promise<BurstEndpoint>;
  failure?: { error: BurstUnavailableError; until: number };
  stats: BurstClientStats;
}

export class LlmBurstClient {
  private readonly entries = new Map<string, PoolEntry>();
  private readonly now: () => number;
  private readonly demandIntervalMs: number;

  constructor(private readonly opts: BurstClientOptions) {
    this.now = opts.now ?? Date.now;
    this.demandIntervalMs = opts.demandIntervalMs ?? 30_000;
    for (const [name, input] of Object.entries(opts.pools)) {
      const parsed = llmBurstInputSchema.safeParse(input);
      if (!parsed.success) {
        throw new Error(`burst pool ${name}: ${describeIssues(parsed.error).join('; ')}`);
      }
      if (parsed.data.pool.name !== name)
        throw new Error(`burst pool ${name}: input names pool ${parsed.data.pool.name}`);
      const workflowId = (opts.workflowId ?? llmBurstWorkflowId)(name);
      this.entries.set(name, {
        handle: opts.client.workflow.getHandle(workflowId),
        input,
        lastContactAt: 0,
        signalInFlight: false,
        stats: { warmHits: 0, acquires: 0, demandSignals: 0 },
      });
    }
  }

  /** The pool's ready endpoint: from the cache when warm, through `acquire` when cold. */
  async endpoint(pool: string): Promise<BurstEndpoint> {
    const entry = this.entry(pool);
    const now = this.now();
    const ready = entry.ready;
    if (ready && now < entry.lastContactAt + ready.idleTimeoutMs - this.margin(ready.idleTimeoutMs)) {
      entry.stats.warmHits++;
      this.touch(pool, entry, now);
      return { pool, endpoint: ready.endpoint, instanceId: ready.instanceId, cold: false };
    }
    if (entry.failure && now < entry.failure.until) throw entry.failure.error;
    entry.acquiring ??= this.acquire(pool, entry).finally(() => (entry.acquiring = undefined));
    return entry.acquiring;
  }

  /**
   * Forgets a cached endpoint that turned out dead (refused connection): the next call acquires,
   * telling the workflow, which then checks the instance with EC2 before it answers.
   */
  invalidate(pool: string): void {
    const entry = this.entry(pool);
    entry.unreachable = entry.ready?.endpoint ?? entry.unreachable;
    entry.ready = undefined;
  }

  /**
   * The pool's ready endpoint if this client holds a valid one, without asking Temporal and
   * without counting as demand (for listings and other requests that must never start the pool).
   */
  peek(pool: string): { endpoint: string; instanceId: string } | undefined {
    const entry = this.entry(pool);
    const ready = entry.ready;
    if (!ready || this.now() >= entry.lastContactAt + ready.idleTimeoutMs - this.margin(ready.idleTimeoutMs)) {
      return undefined;
    }
    return { endpoint: ready.endpoint, instanceId: ready.instanceId };
  }

  /** The workflow's own view (one query; not on the request path). */
  async status(pool: string): Promise<LlmBurstStatus> {
    return this.entry(pool).handle.query(statusQuery);
  }

  stats(pool: string): BurstClientStats {
    return { ...this.entry(pool).stats };
  }

  private entry(pool: string): PoolEntry {
    const entry = this.entries.get(pool);
    if (!entry) throw new BurstUnavailableError(pool, `unknown burst pool ${pool}`);
    return entry;
  }

  /** Keeps the cache valid well before the workflow's idle deadline could pass. */
  private margin(idleTimeoutMs: number): number {
    return Math.min(Math.max(1000, idleTimeoutMs / 10), 60_000);
  }

  private interval(idleTimeoutMs: number): number {
    return Math.min(this.demandIntervalMs, (idleTimeoutMs - this.margin(idleTimeoutMs)) / 3);
  }

  private touch(pool: string, entry: PoolEntry, now: number): void {
    const ready = entry.ready!;
    if (entry.signalInFlight || now - entry.lastContactAt < this.interval(ready.idleTimeoutMs)) return;
    entry.signalInFlight = true;
    entry.stats.demandSignals++;
    entry.handle
      .signal(demandSignal)
      .then(() => {
        entry.lastContactAt = Math.max(entry.lastContactAt, now);
      })
      .catch(() => {
        // The workflow is gone or unreachable: let the next request find out through acquire.
        entry.ready = undefined;
      })
      .finally(() => {
        entry.signalInFlight = false;
      });
  }

  private async acquire(pool: string, entry: PoolEntry): Promise<BurstEndpoint> {
    entry.stats.acquires++;
    const sentAt = this.now();
    try {
      const result: AcquireResult = await this.opts.client.workflow.executeUpdateWithStart(acquireUpdate, {
        args: [{ deadlineSeconds: this.opts.acquireDeadlineSeconds ?? 900, unreachable: entry.unreachable }],
        startWorkflowOperation: new WithStartWorkflowOperation(LLM_BURST_WORKFLOW, {
          workflowId: entry.handle.workflowId,
          taskQueue: this.opts.taskQueue,
          args: [entry.input],
          workflowIdConflictPolicy: 'USE_EXISTING',
          typedSearchAttributes: [{ key: RESOURCE_KEY, value: pool }],
        }),
      });
      entry.ready = { endpoint: result.endpoint, instanceId: result.instanceId, idleTimeoutMs: result.idleTimeoutMs };
      // The workflow's idle window opened when it answered: at least heldMs after we sent.
      entry.lastContactAt = sentAt + result.heldMs;
      entry.failure = undefined;
      entry.unreachable = undefined;
      return { pool, endpoint: result.endpoint, instanceId: result.instanceId, cold: true };
    } catch (err) {
      entry.ready = undefined;
      const cause = err instanceof WorkflowUpdateFailedError ? err.cause : err;
      const message = cause instanceof Error ? cause.message : String(cause);
      const error = new BurstUnavailableError(pool, `burst pool ${pool} is unavailable: ${message}`, { cause: err });
      entry.failure = { error, until: this.now() + (this.opts.failureTtlMs ?? 5000) };
      throw error;
    }
  }
}
