/**
 * `labwright proxy`: the LLM proxy (clients/llm-proxy.ts) in front of the local model server and
 * the EC2 burst pool. Each option defaults to the environment variable runProxy documents.
 */
import type { Command } from 'commander';
import { findInventoryFile } from '../../lib/inventory-file.js';
import { runProxy } from '../llm-proxy.js';

export function registerProxyCommand(program: Command): void {
  program
    .command('proxy')
    .description(
      'serve the LLM proxy: local model server first, the EC2 burst pool when it is down, busy or lacks the model',
    )
    .option(
      '--listen <host:port>',
      'where to serve ([v6]:port for IPv6; default LABWRIGHT_PROXY_LISTEN or 127.0.0.1:11435)',
    )
    .option('--pool <name>', "the burst pool (default LABWRIGHT_BURST_POOL, else the inventory's first)")
    .option('--local <url>', 'the local model server (default LABWRIGHT_LOCAL_LLM or http://127.0.0.1:11434)')
    .option('--local-health-path <path>', 'its health path (/api/tags for Ollama, /health for vLLM or llama.cpp)')
    .option('--local-concurrency <n>', 'requests the local server takes at once before the pool is used')
    .action(
      async (opts: {
        listen?: string;
        pool?: string;
        local?: string;
        localHealthPath?: string;
        localConcurrency?: string;
      }) => {
        const running = await runProxy({
          inventory: await findInventoryFile(),
          listen: opts.listen,
          pool: opts.pool,
          localUrl: opts.local,
          localHealthPath: opts.localHealthPath,
          localConcurrency: opts.localConcurrency === undefined ? undefined : Number(opts.localConcurrency),
        });
        console.log(`llm proxy on ${running.proxy.url} for burst pool ${running.pool}`);
        await new Promise<void>((resolve) => {
          for (const signal of ['SIGINT', 'SIGTERM'] as const) process.once(signal, () => resolve());
        });
        await running.close();
      },
    );
}
