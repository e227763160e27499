/** `labwright burst acquire | status | hold | unhold | shutdown <pool>`: the LLM burst pool by hand. */
import type { Command } from 'commander';
import {
  holdSignal,
  llmBurstWorkflowId,
  shutdownNowSignal,
  statusQuery,
  unholdSignal,
  formatDuration,
  type LlmBurstStatus,
} from '../../common/llm-burst.js';
import { loadLabInventory } from '../../lib/inventory-file.js';
import { taskQueue } from '../../lib/temporal.js';
import { LlmBurstClient } from '../llm-burst-client.js';
import { CliError, emit, withClient, withOutput, type Format } from './io.js';

export function registerBurstCommands(program: Command): void {
  const burst = program
    .command('burst')
    .description('the LLM burst pool on EC2: acquire, status, hold, unhold, shutdown');

  withOutput(
    burst
      .command('acquire')
      .description("start the pool if needed and print its endpoint (creates the pool's workflow)")
      .argument('<pool>', 'a burst pool of the inventory')
      .option('--deadline <seconds>', 'how long to wait for a ready instance', '900'),
  ).action(async (pool: string, opts: { deadline: string; output: Format }) => {
    const { file, inventory } = await loadLabInventory();
    const def = inventory.burstPools.find((p) => p.name === pool);
    if (!def)
      throw new CliError(
        `no burst pool ${pool} in ${file} (it has: ${inventory.burstPools.map((p) => p.name).join(', ') || 'none'})`,
      );
    const endpoint = await withClient((client) =>
      new LlmBurstClient({
        client,
        taskQueue: taskQueue(),
        pools: { [pool]: { pool: def } },
        acquireDeadlineSeconds: Number(opts.deadline),
      }).endpoint(pool),
    );
    emit(opts.output, endpoint, () => `${pool}: ${endpoint.endpoint} (instance ${endpoint.instanceId})`);
  });

  withOutput(
    burst
      .command('status')
      .description("the pool's state, instance, endpoint, idle deadline, running time and cost")
      .argument('<pool>'),
  ).action(async (pool: string, opts: { output: Format }) => {
    const status = await withClient((client) => client.workflow.getHandle(llmBurstWorkflowId(pool)).query(statusQuery));
    emit(opts.output, status, () => renderStatus(status));
  });

  const signals = [
    { name: 'hold', description: 'keep the instance up whatever the traffic, until unhold', send: holdSignal },
    { name: 'unhold', description: 'let idle shutdown apply again', send: unholdSignal },
  ] as const;
  for (const s of signals) {
    withOutput(burst.command(s.name).description(s.description).argument('<pool>')).action(
      async (pool: string, opts: { output: Format }) => {
        await withClient((client) => client.workflow.getHandle(llmBurstWorkflowId(pool)).signal(s.send));
        emit(opts.output, { pool, signal: s.name }, () => `${s.name} sent to ${llmBurstWorkflowId(pool)}`);
      },
    );
  }

  withOutput(
    burst
      .command('shutdown')
      .description('stop the instance now; only new demand starts it again')
      .argument('<pool>')
      .option('--reason <text>', "why, for the pool's events", 'labwright command line'),
  ).action(async (pool: string, opts: { reason: string; output: Format }) => {
    await withClient((client) =>
      client.workflow.getHandle(llmBurstWorkflowId(pool)).signal(shutdownNowSignal, opts.reason),
    );
    emit(
      opts.output,
      { pool, signal: 'shutdownNow', reason: opts.reason },
      () => `shutdown sent to ${llmBurstWorkflowId(pool)}`,
    );
  });
}

function renderStatus(s: LlmBurstStatus): string {
  const lines = [`${s.pool}: ${s.state} since ${s.since}${s.held ? ' (held)' : ''}`];
  if (s.instanceId) lines.push(`  instance:  ${s.instanceId} ${s.instanceType ?? ''} ${s.market ?? ''}`.trimEnd());
  if (s.endpoint) lines.push(`  endpoint:  ${s.endpoint}`);
  if (s.idleDeadline)
    lines.push(`  stops at:  ${s.idleDeadline} unless demand arrives (idle timeout ${s.idleTimeoutSeconds}s)`);
  if (s.reason) lines.push(`  reason:    ${s.reason}`);
  lines.push(
    `  running:   ${formatDuration(s.runningSeconds * 1000)} this run, $${s.costUsd.toFixed(2)}; today ${formatDuration(s.today.runningSeconds * 1000)}, $${s.today.costUsd.toFixed(2)}`,
  );
  return lines.join('\n');
}
