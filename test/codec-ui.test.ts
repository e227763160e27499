/**
 * The Temporal UI in a real browser: the dev server's UI with labwright's codec server, headless
 * Chromium on a finished workflow's page, reading what an operator would read there.
 */
import { Client, Connection } from '@temporalio/client';
import { NativeConnection } from '@temporalio/worker';
import { inject, describe, expect, it } from 'vitest';
import { startCodecServer } from '../lib/codec-server.js';
import { startDevServer } from '../sim/dev-server.js';
import { testLog } from './harness/logs.js';
import { freePort } from '../lib/processes.js';
import { createLabWorker } from '../workers/worker.js';
import { launchChromium } from './harness/browser.js';
import { createDemoActivities } from './fixtures/demo-activities.js';
import { installQuietRuntime, NAMESPACE, testDataConverter, uniqueName } from './harness/temporal.js';

const codec = testDataConverter.payloadCodecs![0]!;

describe('the Temporal UI with the codec server', () => {
  it("shows a finished workflow's result and progress steps in clear, in a real browser", async () => {
    const uiPort = await freePort();
    const origin = `http://127.0.0.1:${uiPort}`;
    const codecServer = await startCodecServer({ codec, namespace: NAMESPACE, allowedOrigins: [origin] });
    const server = await startDevServer({
      uiPort,
      codecEndpoint: codecServer.url,
      logFile: testLog(`temporal-ui-${process.pid}.log`),
    });
    installQuietRuntime();
    const connection = await NativeConnection.connect({ address: server.address });
    const taskQueue = uniqueName('tq-ui');
    const worker = await createLabWorker({
      connection,
      namespace: NAMESPACE,
      taskQueue,
      dataConverter: testDataConverter,
      activities: createDemoActivities(),
      workflowBundle: { codePath: inject('workflowBundlePath') },
      shutdownGraceTime: '1 second',
    });
    const running = worker.run();
    const browser = await launchChromium();
    const clientConnection = await Connection.connect({ address: server.address });
    try {
      const client = new Client({
        connection: clientConnection,
        namespace: NAMESPACE,
        dataConverter: testDataConverter,
      });
      const workflowId = uniqueName('ui-demo');
      const handle = await client.workflow.start('stepsDemo', {
        taskQueue,
        workflowId,
        args: [{ name: 'pve7', steps: ['clone', 'boot'] }],
      });
      expect(await handle.result()).toEqual(['clone:pve7', 'boot:pve7']);

      const runPage = `${origin}/namespaces/${NAMESPACE}/workflows/${workflowId}/${handle.firstExecutionRunId}`;
      const page = await browser.open(`${runPage}/history`);
      let text = '';
      await expect
        .poll(
          async () => {
            text = await page.text();
            return text;
          },
          { timeout: 60_000, interval: 500 },
        )
        .toContain('boot:pve7');
      // The input and result, decoded (ciphertext would show as binary/encrypted), and the steps.
      expect(text).toContain('pve7');
      expect(text).not.toContain('binary/encrypted');
      // The steps: the `progress` query, run from the Queries tab (the worker answers, the codec decodes).
      const queries = await browser.open(`${runPage}/query`);
      await expect.poll(() => queries.text(), { timeout: 60_000, interval: 500 }).toContain('Run Query');
      await expect
        .poll(() => queries.evaluate<string>(`document.querySelector('[data-testid="query-select"]')?.value ?? ''`), {
          timeout: 30_000,
          interval: 500,
        })
        .toBe('progress');
      await queries.evaluate(
        `[...document.querySelectorAll('button')].find((b) => b.textContent.trim() === 'Run Query').click()`,
      );
      await expect
        .poll(() => queries.text(), { timeout: 30_000, interval: 500 })
        .toContain('"result": "2 steps done for pve7"');
      const answer = (await queries.text()).replace(/\s+/g, ' ');
      expect(answer).toContain('"name": "clone", "status": "done", "detail": "clone:pve7"');
      expect(answer).toContain('"name": "boot", "status": "done", "detail": "boot:pve7"');
    } finally {
      await browser.close();
      worker.shutdown();
      await running;
      await connection.close();
      await clientConnection.close();
      await server.stop();
      await codecServer.close();
    }
  });
});
