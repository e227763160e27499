import { execFile } from 'node:child_process';
import net from 'node:net';
import { promisify } from 'node:util';
import path from 'node:path';
import { Connection } from '@temporalio/client';
import { describe, expect, it } from 'vitest';
import { startDevServer } from '../sim/dev-server.js';
import { projectRoot } from '../lib/paths.js';
import { freePort } from '../lib/processes.js';
import { testLog } from './harness/logs.js';
import { temporalAddress } from './harness/temporal.js';

describe('Temporal provisioning', () => {
  it('says what to install when neither the CLI nor Go is there', async () => {
    const run = promisify(execFile)('bash', [path.join(projectRoot, 'scripts', 'ensure-temporal.sh')], {
      env: { PATH: '/usr/bin:/bin', HOME: '/nonexistent', LABWRIGHT_CACHE: '/nonexistent/cache' },
    });
    const err = (await run.catch((e: unknown) => e)) as { code: number; stderr: string };
    expect(err.code).toBe(1);
    expect(err.stderr).toContain('Go is not installed');
    expect(err.stderr).toContain('TEMPORAL_CLI');
  });

  it('fails with the server log when the dev server cannot start', async () => {
    const logFile = testLog('bad-db.log');
    // A directory where the SQLite file should be: the server itself refuses and exits.
    const err = await startDevServer({ dbFile: projectRoot, logFile, startTimeoutMs: 30_000 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(Error);
    expect((err as Error).message).toMatch(
      /temporal dev server on 127\.0\.0\.1:\d+ exited \(\d+\) before it was ready:/,
    );
    expect((err as Error).message).toMatch(/sqlite|database|is a directory/i);
  });

  it('refuses a port another server already holds instead of mistaking that server for its own', async () => {
    const busyPort = Number(temporalAddress().split(':')[1]);
    const logFile = testLog('busy-port.log');
    const err = await startDevServer({ port: busyPort, logFile }).catch((e: unknown) => e);
    expect((err as Error).message).toBe(`port ${busyPort} on 127.0.0.1 is already in use (another Temporal server?)`);
  });

  it('starts on other ports when one it picked is taken before the server binds it', async () => {
    // What another process, or an outgoing connection's source port, does between freePort() and
    // the server's bind: here the first port picked is one this test holds.
    const holder = net.createServer();
    await new Promise<void>((resolve) => holder.listen(0, '127.0.0.1', resolve));
    const taken = (holder.address() as net.AddressInfo).port;
    const picks: number[] = [];
    const pickPort = async () => {
      const p = picks.length === 0 ? taken : await freePort();
      picks.push(p);
      return p;
    };
    try {
      const server = await startDevServer({ port: await freePort(), logFile: testLog('taken-port.log'), pickPort });
      try {
        const connection = await Connection.connect({ address: server.address });
        await connection.workflowService.getSystemInfo({});
        await connection.close();
      } finally {
        await server.stop();
      }
      // The HTTP port was the taken one; the second start picked all its ports again.
      expect(picks[0]).toBe(taken);
      expect(picks.length).toBe(4);
    } finally {
      holder.close();
    }
  });
});
