/**
 * Headless Chromium (Debian's, from scripts/ensure-chromium.sh) driven over the Chrome DevTools
 * protocol: open a page, read what it shows. Every connection that is not to loopback is refused
 * (a dead proxy and a resolver that finds no other host), so a page can reach only the local peers.
 */
import type { ChildProcess } from 'node:child_process';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import WebSocket from 'ws';
import { ensureTool, spawnGroup, stopProcess } from '../../lib/processes.js';

export interface Browser {
  /** Opens `url` in a new tab. */
  open(url: string): Promise<Page>;
  close(): Promise<void>;
}

export interface Page {
  evaluate<T>(expression: string): Promise<T>;
  /** The page's visible text. */
  text(): Promise<string>;
  /** A PNG of the whole page, laid out `width` CSS pixels wide. */
  screenshot(width: number): Promise<Buffer>;
}

export async function launchChromium(): Promise<Browser> {
  const chromium = ensureTool('ensure-chromium.sh');
  const profile = await fs.mkdtemp(path.join(os.tmpdir(), 'labwright-chromium-'));
  // A group of its own: its renderer, GPU and crashpad helpers write into the profile too, and
  // stopProcess() waits for all of them before the profile is removed.
  const child = spawnGroup(
    chromium,
    [
      '--headless=new',
      '--no-sandbox', // root in CI
      '--disable-gpu',
      '--disable-dev-shm-usage',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--disable-default-apps',
      '--proxy-server=http://127.0.0.1:9',
      '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1',
      `--user-data-dir=${profile}`,
      '--remote-debugging-address=127.0.0.1',
      '--remote-debugging-port=0',
      'about:blank',
    ],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  try {
    const wsUrl = await devtoolsUrl(child);
    const cdp = await Cdp.connect(wsUrl);
    return {
      open: async (url) => {
        const { targetId } = await cdp.send<{ targetId: string }>('Target.createTarget', { url });
        const { sessionId } = await cdp.send<{ sessionId: string }>('Target.attachToTarget', {
          targetId,
          flatten: true,
        });
        const evaluate = async <T>(expression: string): Promise<T> => {
          const r = await cdp.send<{ result: { value: T }; exceptionDetails?: { text: string } }>(
            'Runtime.evaluate',
            { expression, returnByValue: true, awaitPromise: true },
            sessionId,
          );
          if (r.exceptionDetails) throw new Error(`page: ${r.exceptionDetails.text}`);
          return r.result.value;
        };
        const screenshot = async (width: number): Promise<Buffer> => {
          const height = await evaluate<number>('document.documentElement.scrollHeight');
          await cdp.send(
            'Emulation.setDeviceMetricsOverride',
            { width, height, deviceScaleFactor: 1, mobile: false },
            sessionId,
          );
          const { data } = await cdp.send<{ data: string }>('Page.captureScreenshot', { format: 'png' }, sessionId);
          return Buffer.from(data, 'base64');
        };
        // A new tab is about:blank, "complete", until the navigation commits: wait for the page itself.
        const deadline = Date.now() + 30_000;
        while (!(await evaluate<boolean>(`location.href !== 'about:blank' && document.readyState === 'complete'`))) {
          if (Date.now() > deadline) throw new Error(`chromium did not load ${url} within 30 s`);
          await new Promise((r) => setTimeout(r, 50));
        }
        return { evaluate, text: () => evaluate<string>('document.body ? document.body.innerText : ""'), screenshot };
      },
      close: async () => {
        cdp.close();
        await stopProcess(child);
        await fs.rm(profile, { recursive: true, force: true });
      },
    };
  } catch (err) {
    await stopProcess(child);
    throw err;
  }
}

function devtoolsUrl(child: ChildProcess): Promise<string> {
  return new Promise((resolve, reject) => {
    let seen = '';
    const timer = setTimeout(() => reject(new Error(`chromium did not open DevTools within 30 s:\n${seen}`)), 30_000);
    child.stderr!.on('data', (d: Buffer) => {
      seen += d.toString();
      const m = /DevTools listening on (ws:\/\/\S+)/.exec(seen);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]!);
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`chromium exited (${code}) before DevTools was up:\n${seen}`));
    });
  });
}

/** The DevTools protocol over one WebSocket: commands by id, sessions flattened into it. */
class Cdp {
  private nextId = 1;
  private readonly waiting = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();

  private constructor(private readonly socket: WebSocket) {
    socket.on('message', (data: Buffer) => {
      const msg = JSON.parse(data.toString()) as { id?: number; result?: unknown; error?: { message: string } };
      const pending = msg.id === undefined ? undefined : this.waiting.get(msg.id);
      if (!pending) return;
      this.waiting.delete(msg.id!);
      if (msg.error) pending.reject(new Error(`CDP: ${msg.error.message}`));
      else pending.resolve(msg.result);
    });
  }

  static connect(url: string): Promise<Cdp> {
    return new Promise((resolve, reject) => {
      const socket = new WebSocket(url, { perMessageDeflate: false });
      socket.once('open', () => resolve(new Cdp(socket)));
      socket.once('error', reject);
    });
  }

  send<T>(method: string, params: Record<string, unknown> = {}, sessionId?: string): Promise<T> {
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      this.waiting.set(id, { resolve: resolve as (v: unknown) => void, reject });
      this.socket.send(JSON.stringify({ id, method, params, ...(sessionId ? { sessionId } : {}) }));
    });
  }

  close(): void {
    this.socket.close();
  }
}
