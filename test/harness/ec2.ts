/**
 * EC2 peers for the llm-burst tests: moto behind the fault proxy (which adds EC2's ClientToken
 * idempotency, eventual consistency and persistent spot requests), a fake model server for the
 * instances (every private address maps to it), and helpers to look at moto directly.
 */
import os from 'node:os';
import path from 'node:path';
import { promises as fs } from 'node:fs';
import {
  DescribeInstancesCommand,
  StopInstancesCommand,
  TerminateInstancesCommand,
  type EC2Client,
  type Instance,
} from '@aws-sdk/client-ec2';
import { WithStartWorkflowOperation, type Client } from '@temporalio/client';
import { afterAll, beforeAll } from 'vitest';
import { createEc2Activities } from '../../activities/ec2.js';
import {
  acquireUpdate,
  llmBurstWorkflowId,
  parseAddressMap,
  TAG_POOL,
  type AcquireResult,
  type AddressResolver,
  type LlmBurstInput,
} from '../../common/llm-burst.js';
import type { BurstPool } from '../../hardware/schema.js';
import { testLog } from './logs.js';
import { SecretStore } from '../../lib/secrets.js';
import {
  ec2Env,
  motoClient,
  prepareBurstPool,
  startFakeModelServer,
  startMotoServer,
  type FakeModelServer,
  type MotoServer,
} from '../../sim/ec2.js';
import { startFaultProxy, type FaultProxy } from './fault-proxy.js';
import { testClient } from './temporal.js';

process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED = 'true';

export const LAUNCH_TEMPLATE = 'llm-gpu-worker';

export interface Ec2Peers {
  moto: MotoServer;
  faults: FaultProxy;
  /** The model server every instance address maps to. */
  model: FakeModelServer;
  /** Environment for a worker: EC2 through the fault proxy, dummy keys, the address map. */
  env: Record<string, string>;
  resolve: AddressResolver;
  /** Straight to moto, for assertions and for acting "behind labwright's back". */
  sdk: EC2Client;
  secrets: SecretStore;
  activities(): ReturnType<typeof createEc2Activities>;
  /** The pool's instances that are not terminated. */
  instances(pool: string): Promise<Instance[]>;
  stopOutside(instanceId: string): Promise<void>;
  /** Terminates an instance the way the console does, straight at moto. */
  terminateOutside(instanceId: string): Promise<void>;
  stop(): Promise<void>;
}

/** A burst pool like the example's, under a name no other test uses. */
export function testPool(name: string, overrides: Partial<Record<keyof BurstPool, unknown>> = {}): BurstPool {
  return {
    name,
    region: 'us-east-1',
    instanceTypes: ['g5.xlarge', 'g5.2xlarge'],
    market: 'spot-then-on-demand',
    launchTemplate: { name: LAUNCH_TEMPLATE, version: '$Latest' },
    securityGroupIds: [],
    modelPort: 11434,
    healthPath: '/api/tags',
    idleTimeoutMinutes: 15,
    hourlyPriceUsd: 1.006,
    ...overrides,
  } as BurstPool;
}

/** How long a new instance stays invisible to DescribeInstances unless a test says otherwise. */
export const DEFAULT_VISIBILITY_DELAY_MS = 500;

export async function startEc2Peers(): Promise<Ec2Peers> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'labwright-ec2-'));
  const moto = await startMotoServer({ logFile: testLog(`moto-${process.pid}.log`) });
  const faults = await startFaultProxy(moto.endpoint, { visibilityDelayMs: DEFAULT_VISIBILITY_DELAY_MS });
  const model = await startFakeModelServer({ name: 'burst' });
  await prepareBurstPool(moto.endpoint, testPool('setup'));
  const env = ec2Env(faults.url, model.port);
  const resolve = parseAddressMap(env.LABWRIGHT_EC2_ADDRESS_MAP!);
  const sdk = motoClient(moto.endpoint);
  const secrets = new SecretStore(path.join(dir, 'secrets'), env);
  return {
    moto,
    faults,
    model,
    env,
    resolve,
    sdk,
    secrets,
    activities: () => createEc2Activities({ secrets, env, resolveAddress: resolve, pollIntervalMs: 100 }),
    instances: async (pool) => {
      const out = await sdk.send(
        new DescribeInstancesCommand({
          Filters: [
            { Name: `tag:${TAG_POOL}`, Values: [pool] },
            { Name: 'instance-state-name', Values: ['pending', 'running', 'stopping', 'stopped'] },
          ],
        }),
      );
      return (out.Reservations ?? []).flatMap((r) => r.Instances ?? []);
    },
    stopOutside: async (instanceId) => {
      await sdk.send(new StopInstancesCommand({ InstanceIds: [instanceId] }));
    },
    terminateOutside: async (instanceId) => {
      await sdk.send(new TerminateInstancesCommand({ InstanceIds: [instanceId] }));
    },
    stop: async () => {
      sdk.destroy();
      await faults.stop();
      await model.stop();
      await moto.stop();
      await fs.rm(dir, { recursive: true, force: true });
    },
  };
}

/** A test file's EC2 peers and Temporal client, there from its beforeAll on. */
export interface BurstLab {
  readonly peers: Ec2Peers;
  readonly client: Client;
}

/** Starts the EC2 peers and a client before the file's tests (beforeAll) and stops the peers after them. */
export function useBurstLab(): BurstLab {
  const lab = {} as { peers: Ec2Peers; client: Client };
  beforeAll(async () => {
    lab.peers = await startEc2Peers();
    lab.client = await testClient();
  });
  afterAll(async () => {
    await lab.peers?.stop();
  });
  return lab;
}

/** A pool's workflow ID in a test: `llm-burst/<pool>` made unique with the test's task queue. */
export const burstWorkflowId = (taskQueue: string, pool: string): string => `${llmBurstWorkflowId(pool)}-${taskQueue}`;

/** acquire with update-with-start (the first call creates the pool's workflow) on a test's task queue. */
export function acquireBurst(
  client: Client,
  taskQueue: string,
  input: LlmBurstInput,
  deadlineSeconds = 30,
): Promise<AcquireResult> {
  return client.workflow.executeUpdateWithStart(acquireUpdate, {
    args: [{ deadlineSeconds }],
    startWorkflowOperation: new WithStartWorkflowOperation('llmBurst', {
      workflowId: burstWorkflowId(taskQueue, input.pool.name),
      taskQueue,
      args: [input],
      workflowIdConflictPolicy: 'USE_EXISTING',
    }),
  });
}
