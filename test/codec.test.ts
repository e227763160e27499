import { Connection } from '@temporalio/client';
import proto from '@temporalio/proto';
import { describe, expect, it } from 'vitest';
import { createDemoActivities } from './fixtures/demo-activities.js';
import { NAMESPACE, temporalAddress, testClient, uniqueName, withWorker } from './harness/temporal.js';

const SECRET = 'pve-token-5f1c9a7e-0d4b-4c1e-9f3a-hunter2';

/** The history exactly as the server returns it to a client without the codec, as raw bytes. */
async function rawHistory(workflowId: string): Promise<Buffer> {
  const connection = await Connection.connect({ address: temporalAddress() });
  try {
    const response = await connection.workflowService.getWorkflowExecutionHistory({
      namespace: NAMESPACE,
      execution: { workflowId },
    });
    return Buffer.from(proto.temporal.api.history.v1.History.encode(response.history ?? {}).finish());
  } finally {
    await connection.close();
  }
}

async function runWithNote(dataConverter?: Parameters<typeof withWorker>[0]['dataConverter']): Promise<Buffer> {
  const client = await testClient(dataConverter);
  const workflowId = uniqueName('codec');
  await withWorker({ activities: createDemoActivities(), dataConverter }, async ({ taskQueue }) => {
    await client.workflow.execute('stepsDemo', {
      taskQueue,
      workflowId,
      args: [{ name: 'pve1', steps: ['clone'], note: SECRET }],
    });
  });
  return rawHistory(workflowId);
}

describe('the payload codec', () => {
  it('keeps a secret-looking input out of the raw history', async () => {
    const raw = await runWithNote();
    expect(raw.includes('binary/encrypted')).toBe(true);
    expect(raw.includes(SECRET)).toBe(false);
    expect(raw.includes('pve1')).toBe(false);
  });

  it('is what keeps it out: without the codec the same input is in clear text', async () => {
    const raw = await runWithNote({});
    expect(raw.includes(SECRET)).toBe(true);
  });
});
