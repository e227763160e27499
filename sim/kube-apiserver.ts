/**
 * A real kube-apiserver + etcd on loopback, for the tests (test/harness/kube.ts) and the simulated
 * lab (sim/kube.ts): one start code for both.
 *
 * The binaries are built from the Go module in test/kube by
 * scripts/ensure-kube.sh (cached under .cache/kube/<version>/). startKube()
 * makes a throw-away PKI with the openssl CLI, starts etcd and kube-apiserver
 * on free loopback ports, writes an admin kubeconfig (client certificate in
 * group system:masters), waits for /readyz and installs the CRDs pinned in
 * scripts/crds.txt (fetched by scripts/ensure-crds.sh). Nothing listens on
 * anything but 127.0.0.1.
 *
 * There is no kube-controller-manager, scheduler or kubelet: the tests play
 * the controllers themselves (see sim/kube-controllers.ts). So a Namespace that is
 * deleted stays Terminating, nothing garbage-collects owned objects, and no
 * "default" ServiceAccount is made in new namespaces.
 */
import { execFileSync, type ChildProcess } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import * as fs from 'node:fs';
import * as https from 'node:https';
import * as http from 'node:http';
import * as os from 'node:os';
import * as path from 'node:path';
import { parseAllDocuments } from 'yaml';
import { projectRoot } from '../lib/paths.js';
import { makeCa, signLeaf } from './pki.js';
import { ensureTool, freePort, spawnLogged, stopProcess } from '../lib/processes.js';

export interface KubeHandle {
  /** Admin kubeconfig (client certificate in group system:masters, data embedded). */
  kubeconfigPath: string;
  /** https://127.0.0.1:<port> */
  server: string;
  /** PEM of the cluster CA (also embedded in the kubeconfig). */
  caPem: string;
  /** PEM of the admin client certificate and key (also embedded in the kubeconfig). */
  clientCertPem: string;
  clientKeyPem: string;
  /** http://127.0.0.1:<port> of the etcd behind it. */
  etcdEndpoint: string;
  /** Folder holding pki/, etcd/, the kubeconfig (and logs/ unless logDir was given). */
  dataDir: string;
  /** Folder holding etcd.log and kube-apiserver.log. */
  logDir: string;
  /** Stops kube-apiserver, then etcd (SIGTERM, SIGKILL after 5 s); removes dataDir unless it was given. */
  stop(): Promise<void>;
}

export interface StartKubeOptions {
  /**
   * Where to keep PKI, etcd data and kubeconfig; default a new temp dir, removed by stop().
   * A given dir is kept after stop() (for its logs); its etcd/ and pki/ are wiped at start: every start is a new cluster.
   */
  dataDir?: string;
  /** Where etcd.log and kube-apiserver.log go; default <dataDir>/logs. */
  logDir?: string;
  /** Folder of CRD YAML files to install; default $LABWRIGHT_CRDS_DIR, else the pinned CRDs (ensureCrds()). false: install none. */
  crdsDir?: string | false;
  /** How long to wait for /readyz (and then for the CRDs), default 60 s each. */
  timeoutMs?: number;
  /** kube-apiserver --authorization-mode, default "Node,RBAC". */
  authorizationMode?: string;
  /** Extra kube-apiserver flags, e.g. ['--feature-gates=Foo=true']. */
  extraApiServerArgs?: string[];
}

/** Runs scripts/ensure-kube.sh (building the binaries when missing) and returns their folder. */
export function ensureKubeBinaries(): { dir: string; kubeApiServer: string; etcd: string } {
  const script = path.join(projectRoot, 'scripts', 'ensure-kube.sh');
  const out = execFileSync('bash', [script], {
    cwd: projectRoot,
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'inherit'],
    maxBuffer: 1024 * 1024,
  });
  const dir = out.trim().split('\n').pop() ?? '';
  const kubeApiServer = path.join(dir, 'kube-apiserver');
  const etcd = path.join(dir, 'etcd');
  if (!dir || !fs.existsSync(kubeApiServer) || !fs.existsSync(etcd)) {
    throw new Error(`ensure-kube.sh printed ${JSON.stringify(out)}, but no binaries are there`);
  }
  return { dir, kubeApiServer, etcd };
}

/** Runs scripts/ensure-crds.sh (fetching the pinned CRDs when missing) and returns their folder. */
export function ensureCrds(): string {
  const dir = ensureTool('ensure-crds.sh');
  if (!fs.existsSync(path.join(dir, '.complete')))
    throw new Error(`ensure-crds.sh printed ${JSON.stringify(dir)}, but no CRDs are there`);
  return dir;
}

export function defaultCrdsDir(): string {
  return process.env.LABWRIGHT_CRDS_DIR || ensureCrds();
}

async function freePorts(n: number): Promise<number[]> {
  const ports = new Set<number>();
  while (ports.size < n) ports.add(await freePort());
  return [...ports];
}

function tail(file: string, lines = 40): string {
  try {
    const text = fs.readFileSync(file, 'utf8');
    return text
      .split('\n')
      .slice(-lines - 1)
      .join('\n');
  } catch (err) {
    return `(cannot read ${file}: ${(err as Error).message})`;
  }
}

interface Pki {
  caCert: string;
  servingCert: string;
  servingKey: string;
  clientCert: string;
  clientKey: string;
  saPub: string;
  saKey: string;
}

/** CA, a serving cert for 127.0.0.1/localhost, an admin client cert (O=system:masters), the SA key pair. */
async function makePki(dir: string): Promise<Pki> {
  await makeCa(dir, 'labwright-test-ca');
  const kubeNames = ['kubernetes', 'kubernetes.default', 'kubernetes.default.svc'].map((n) => `DNS:${n}`);
  await Promise.all([
    signLeaf(dir, 'serving', '/CN=kube-apiserver', { server: ['IP:127.0.0.1', 'DNS:localhost', ...kubeNames] }),
    signLeaf(dir, 'admin', '/O=system:masters/CN=labwright-admin', { client: true }),
  ]);
  const sa = generateKeyPairSync('ec', {
    namedCurve: 'prime256v1',
    publicKeyEncoding: { type: 'spki', format: 'pem' },
    privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
  });
  fs.writeFileSync(path.join(dir, 'sa.pub'), sa.publicKey);
  fs.writeFileSync(path.join(dir, 'sa.key'), sa.privateKey, { mode: 0o600 });
  const read = (f: string) => fs.readFileSync(path.join(dir, f), 'utf8');
  return {
    caCert: read('ca.crt'),
    servingCert: path.join(dir, 'serving.crt'),
    servingKey: path.join(dir, 'serving.key'),
    clientCert: read('admin.crt'),
    clientKey: read('admin.key'),
    saPub: path.join(dir, 'sa.pub'),
    saKey: path.join(dir, 'sa.key'),
  };
}

function b64(s: string): string {
  return Buffer.from(s).toString('base64');
}

function kubeconfigJson(server: string, pki: Pki): string {
  // JSON is YAML: every kubeconfig reader takes it.
  return JSON.stringify(
    {
      apiVersion: 'v1',
      kind: 'Config',
      clusters: [{ name: 'labwright-test', cluster: { server, 'certificate-authority-data': b64(pki.caCert) } }],
      users: [
        {
          name: 'labwright-admin',
          user: { 'client-certificate-data': b64(pki.clientCert), 'client-key-data': b64(pki.clientKey) },
        },
      ],
      contexts: [{ name: 'labwright-test', context: { cluster: 'labwright-test', user: 'labwright-admin' } }],
      'current-context': 'labwright-test',
      preferences: {},
    },
    null,
    2,
  );
}

export interface RawResponse {
  status: number;
  body: string;
  json<T = unknown>(): T;
}

/** Credentials for kubeRequest(): a KubeHandle, or the PEMs of a kubeconfig. */
export interface KubeCreds {
  server: string;
  caPem: string;
  clientCertPem: string;
  clientKeyPem: string;
}

/** Reads server and credentials back out of a kubeconfig written by startKube(). */
export function credsFromKubeconfig(kubeconfigPath: string): KubeCreds {
  const cfg = JSON.parse(fs.readFileSync(kubeconfigPath, 'utf8')) as {
    clusters: { cluster: { server: string; 'certificate-authority-data': string } }[];
    users: { user: { 'client-certificate-data': string; 'client-key-data': string } }[];
  };
  const cluster = cfg.clusters[0]?.cluster;
  const user = cfg.users[0]?.user;
  if (!cluster || !user) throw new Error(`${kubeconfigPath}: no cluster or user`);
  const unb64 = (s: string) => Buffer.from(s, 'base64').toString('utf8');
  return {
    server: cluster.server,
    caPem: unb64(cluster['certificate-authority-data']),
    clientCertPem: unb64(user['client-certificate-data']),
    clientKeyPem: unb64(user['client-key-data']),
  };
}

/** A plain HTTPS request to the test apiserver as the admin user. Does not throw on HTTP errors. */
export function kubeRequest(
  creds: KubeCreds,
  method: string,
  urlPath: string,
  body?: unknown,
  contentType = 'application/json',
  timeoutMs = 10_000,
): Promise<RawResponse> {
  return new Promise((resolve, reject) => {
    const url = new URL(urlPath, creds.server);
    const data = body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body);
    const req = https.request(
      url,
      {
        method,
        ca: creds.caPem,
        cert: creds.clientCertPem,
        key: creds.clientKeyPem,
        headers: {
          Accept: 'application/json',
          ...(data !== undefined ? { 'Content-Type': contentType, 'Content-Length': Buffer.byteLength(data) } : {}),
        },
        timeout: timeoutMs,
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          resolve({ status: res.statusCode ?? 0, body: text, json: <T>() => JSON.parse(text) as T });
        });
        res.on('error', reject);
      },
    );
    req.on('timeout', () => req.destroy(new Error(`${method} ${url} timed out after ${timeoutMs} ms`)));
    req.on('error', reject);
    if (data !== undefined) req.write(data);
    req.end();
  });
}

function httpGet(url: string, timeoutMs = 2000): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { timeout: timeoutMs }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
  });
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/**
 * Starts etcd + kube-apiserver on loopback; resolves once /readyz is ok and
 * the CRDs are Established. Free ports are found by binding port 0 and
 * closing it, so another process can take one before etcd or the apiserver
 * binds it: such a start is retried, up to 3 times in all.
 */
export async function startKube(opts: StartKubeOptions = {}): Promise<KubeHandle> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await startKubeOnce(opts);
    } catch (err) {
      if (attempt >= 3 || !/address already in use/.test((err as Error).message)) throw err;
    }
  }
}

async function startKubeOnce(opts: StartKubeOptions): Promise<KubeHandle> {
  const timeoutMs = opts.timeoutMs ?? 60_000;
  const t0 = Date.now();
  // LABWRIGHT_KUBE_DEBUG=1 prints how long each step took.
  const step = (what: string) => {
    if (process.env.LABWRIGHT_KUBE_DEBUG) process.stderr.write(`startKube: ${what} at ${Date.now() - t0} ms\n`);
  };
  const bins = ensureKubeBinaries();
  step('binaries ready');
  const ownDataDir = !opts.dataDir;
  const dataDir = opts.dataDir ?? fs.mkdtempSync(path.join(os.tmpdir(), 'labwright-kube-'));
  fs.mkdirSync(dataDir, { recursive: true });
  // Every start is a new cluster: a given dataDir's old etcd data and PKI go.
  for (const sub of ['etcd', 'pki']) fs.rmSync(path.join(dataDir, sub), { recursive: true, force: true });
  const logDir = opts.logDir ?? path.join(dataDir, 'logs');
  fs.mkdirSync(logDir, { recursive: true });
  const etcdLog = path.join(logDir, 'etcd.log');
  const apiLog = path.join(logDir, 'kube-apiserver.log');

  let etcd: ChildProcess | undefined;
  let apiserver: ChildProcess | undefined;
  let stopped = false;
  const stop = async (): Promise<void> => {
    if (stopped) return;
    stopped = true;
    if (apiserver) await stopProcess(apiserver);
    if (etcd) await stopProcess(etcd);
    if (ownDataDir) fs.rmSync(dataDir, { recursive: true, force: true });
  };
  const fail = async (what: string, cause?: unknown): Promise<never> => {
    const msg =
      `startKube: ${what}${cause ? `: ${(cause as Error).message ?? String(cause)}` : ''}\n` +
      `--- kube-apiserver log tail (${apiLog}) ---\n${tail(apiLog)}\n` +
      `--- etcd log tail (${etcdLog}) ---\n${tail(etcdLog)}`;
    await stop().catch(() => undefined);
    throw new Error(msg);
  };
  const spawnPeer = (bin: string, args: string[], log: string): ChildProcess => {
    // LABWRIGHT_EXIT_WITH_PARENT: the binaries (test/kube) exit by themselves
    // if this process dies without stop(), e.g. a worker killed by a signal.
    const env = { ...process.env, LABWRIGHT_EXIT_WITH_PARENT: '1' };
    return spawnLogged(bin, args, log, { cwd: dataDir, env });
  };
  const exitedEarly = (child: ChildProcess | undefined) =>
    child && (child.exitCode !== null || child.signalCode !== null)
      ? `exited early (code ${child.exitCode}, signal ${child.signalCode})`
      : undefined;

  try {
    const [pki, [etcdClientPort, etcdPeerPort, apiPort]] = await Promise.all([
      makePki(path.join(dataDir, 'pki')),
      freePorts(3),
    ]);
    step('PKI made');
    const etcdEndpoint = `http://127.0.0.1:${etcdClientPort}`;
    const peer = `http://127.0.0.1:${etcdPeerPort}`;
    etcd = spawnPeer(
      bins.etcd,
      [
        '--name=labwright',
        `--data-dir=${path.join(dataDir, 'etcd')}`,
        `--listen-client-urls=${etcdEndpoint}`,
        `--advertise-client-urls=${etcdEndpoint}`,
        `--listen-peer-urls=${peer}`,
        `--initial-advertise-peer-urls=${peer}`,
        `--initial-cluster=labwright=${peer}`,
        '--initial-cluster-state=new',
        '--unsafe-no-fsync=true',
        // One member on loopback: elect it leader at once.
        '--heartbeat-interval=10',
        '--election-timeout=100',
        '--log-level=warn',
      ],
      etcdLog,
    );

    // etcd first: the apiserver gives up on an etcd that is not there soon enough.
    const etcdDeadline = Date.now() + timeoutMs;
    for (;;) {
      const early = exitedEarly(etcd);
      if (early) return await fail(`etcd ${early}`);
      const r = await httpGet(`${etcdEndpoint}/health`).catch(() => undefined);
      if (r?.status === 200 && r.body.includes('"health":"true"')) break;
      if (Date.now() > etcdDeadline) return await fail(`etcd not healthy after ${timeoutMs} ms`);
      await sleep(50);
    }
    step('etcd healthy');

    const server = `https://127.0.0.1:${apiPort}`;
    apiserver = spawnPeer(
      bins.kubeApiServer,
      [
        '--bind-address=127.0.0.1',
        '--advertise-address=127.0.0.1',
        `--secure-port=${apiPort}`,
        `--cert-dir=${path.join(dataDir, 'pki')}`,
        `--tls-cert-file=${pki.servingCert}`,
        `--tls-private-key-file=${pki.servingKey}`,
        `--client-ca-file=${path.join(dataDir, 'pki', 'ca.crt')}`,
        `--etcd-servers=${etcdEndpoint}`,
        '--service-account-issuer=https://kubernetes.default.svc.cluster.local',
        `--service-account-key-file=${pki.saPub}`,
        `--service-account-signing-key-file=${pki.saKey}`,
        '--service-cluster-ip-range=10.0.0.0/24',
        `--authorization-mode=${opts.authorizationMode ?? 'Node,RBAC'}`,
        // No controller-manager runs, and the endpoints of the "kubernetes"
        // service may not be a loopback address: reconcile none.
        '--endpoint-reconciler-type=none',
        '--allow-privileged=true',
        '--profiling=false',
        '--enable-priority-and-fairness=false',
        ...(opts.extraApiServerArgs ?? []),
      ],
      apiLog,
    );

    const kubeconfigPath = path.join(dataDir, 'kubeconfig');
    fs.writeFileSync(kubeconfigPath, kubeconfigJson(server, pki), { mode: 0o600 });
    const creds: KubeCreds = { server, caPem: pki.caCert, clientCertPem: pki.clientCert, clientKeyPem: pki.clientKey };

    const deadline = Date.now() + timeoutMs;
    let notReady: string | undefined;
    const whyStop = () => notReady ?? exitedEarly(apiserver) ?? exitedEarly(etcd);

    // The CRDs go in while the apiserver finishes its post-start hooks (their
    // requests are retried until it answers), which hides most of the 2 s that
    // a freshly Established CRD makes creates wait.
    const crdsDir = opts.crdsDir === undefined ? defaultCrdsDir() : opts.crdsDir;
    const crdsInstalled: Promise<unknown> =
      crdsDir === false
        ? Promise.resolve()
        : installCrdsWith(creds, crdsDir, deadline + timeoutMs, whyStop).then(() =>
            step('CRDs established and settled'),
          );
    crdsInstalled.catch(() => undefined); // awaited below; no unhandled rejection meanwhile

    let last = '';
    for (;;) {
      const early = exitedEarly(apiserver) ?? exitedEarly(etcd);
      if (early) {
        notReady = early;
        return await fail(`${exitedEarly(apiserver) ? 'kube-apiserver' : 'etcd'} ${early}`);
      }
      try {
        const r = await kubeRequest(creds, 'GET', '/readyz', undefined, undefined, 2000);
        if (r.status === 200 && r.body.trim() === 'ok') break;
        last = `/readyz ${r.status}: ${r.body.slice(0, 2000)}`;
      } catch (err) {
        last = (err as Error).message;
      }
      if (Date.now() > deadline) {
        notReady = 'kube-apiserver never got ready';
        return await fail(`kube-apiserver not ready after ${timeoutMs} ms (last: ${last})`);
      }
      await sleep(100);
    }
    step('kube-apiserver ready');

    try {
      await crdsInstalled;
    } catch (err) {
      return await fail(`installing CRDs from ${String(crdsDir)} failed`, err);
    }

    return {
      kubeconfigPath,
      server,
      caPem: pki.caCert,
      clientCertPem: pki.clientCert,
      clientKeyPem: pki.clientKey,
      etcdEndpoint,
      dataDir,
      logDir,
      stop,
    };
  } catch (err) {
    if (stopped) throw err;
    return await fail('start failed', err);
  }
}

interface Crd {
  apiVersion?: string;
  kind?: string;
  metadata?: { name?: string; resourceVersion?: string };
  spec?: { group?: string; names?: { plural?: string }; versions?: { name: string; served?: boolean }[] };
  status?: {
    conditions?: { type: string; status: string; reason?: string; message?: string; lastTransitionTime?: string }[];
  };
}

/**
 * Creates (or replaces) every CustomResourceDefinition found in the *.yaml /
 * *.yml / *.json files of dir, then waits until each is Established and each
 * served version answers a LIST (right after Established, the watch cache of
 * a new resource still answers 429 "storage is (re)initializing" for a moment).
 * Returns the names of the CRDs.
 */
export async function installCrds(kubeconfigPath: string, dir: string, timeoutMs = 60_000): Promise<string[]> {
  return installCrdsWith(credsFromKubeconfig(kubeconfigPath), dir, Date.now() + timeoutMs, () => undefined);
}

function readCrds(dir: string): Crd[] {
  const files = fs
    .readdirSync(dir)
    .filter((f) => /\.(ya?ml|json)$/i.test(f))
    .sort();
  const crds: Crd[] = [];
  for (const f of files) {
    const text = fs.readFileSync(path.join(dir, f), 'utf8');
    for (const doc of parseAllDocuments(text)) {
      if (doc.errors.length) throw new Error(`${f}: ${doc.errors[0]?.message}`);
      const obj = doc.toJS() as Crd | null;
      if (obj && obj.kind === 'CustomResourceDefinition') {
        if (!obj.metadata?.name) throw new Error(`${f}: CRD without metadata.name`);
        crds.push(obj);
      }
    }
  }
  return crds;
}

/** Error statuses of an apiserver that is still starting (0: no connection): worth another try. */
const transient = new Set([0, 404, 429, 500, 503]);

/**
 * installCrds() against an apiserver that may still be starting: requests are
 * retried (connection refused, 404/429/5xx) until the deadline, or until
 * abort() names a reason to give up.
 */
async function installCrdsWith(
  creds: KubeCreds,
  dir: string,
  deadline: number,
  abort: () => string | undefined,
): Promise<string[]> {
  const crds = readCrds(dir);
  const base = '/apis/apiextensions.k8s.io/v1/customresourcedefinitions';
  const until = async (what: string, attempt: () => Promise<RawResponse>, done: (r: RawResponse) => boolean) => {
    for (;;) {
      const r = await attempt().catch(
        (err: Error) => ({ status: 0, body: err.message, json: () => ({}) }) as RawResponse,
      );
      if (done(r)) return r;
      if (r.status >= 400 && !transient.has(r.status))
        throw new Error(`${what}: HTTP ${r.status}: ${r.body.slice(0, 2000)}`);
      const why = abort();
      if (why) throw new Error(`${what}: ${why}`);
      if (Date.now() > deadline)
        throw new Error(`${what}: still HTTP ${r.status} at the deadline: ${r.body.slice(0, 500)}`);
      await sleep(50);
    }
  };

  await Promise.all(
    crds.map(async (crd) => {
      const name = crd.metadata?.name ?? '';
      const body = { ...crd, apiVersion: 'apiextensions.k8s.io/v1', status: undefined };
      const created = await until(
        `creating CRD ${name}`,
        () => kubeRequest(creds, 'POST', base, body),
        // status 0 is no connection yet, not a create
        (r) => (r.status >= 200 && r.status < 300) || r.status === 409,
      );
      if (created.status === 409) {
        const cur = await kubeRequest(creds, 'GET', `${base}/${name}`);
        const rv = cur.json<Crd>().metadata?.resourceVersion;
        const r = await kubeRequest(creds, 'PUT', `${base}/${name}`, {
          ...body,
          metadata: { ...crd.metadata, resourceVersion: rv },
        });
        if (r.status >= 300) throw new Error(`replacing CRD ${name}: HTTP ${r.status}: ${r.body.slice(0, 2000)}`);
      }
    }),
  );

  let lastEstablished = 0;
  await Promise.all(
    crds.map(async (crd) => {
      const name = crd.metadata?.name ?? '';
      const r = await until(
        `waiting for CRD ${name} to be Established`,
        () => kubeRequest(creds, 'GET', `${base}/${name}`),
        (r) =>
          r.status === 200 &&
          (r.json<Crd>().status?.conditions ?? []).some((c) => c.type === 'Established' && c.status === 'True'),
      );
      const established = r.json<Crd>().status?.conditions?.find((c) => c.type === 'Established');
      lastEstablished = Math.max(lastEstablished, Date.parse(established?.lastTransitionTime ?? '') || Date.now());
      for (const v of crd.spec?.versions ?? []) {
        if (v.served === false) continue;
        const list = `/apis/${crd.spec?.group}/${v.name}/${crd.spec?.names?.plural}?limit=1`;
        await until(
          `GET ${list}`,
          () => kubeRequest(creds, 'GET', list),
          (r) => r.status === 200,
        );
      }
    }),
  );
  // The apiserver holds every create of a custom resource for 2 s while its
  // CRD has been Established for less than 2 s (customresource_handler.go,
  // "justCreated"). Wait that out here, so that tests see steady latencies.
  // (lastTransitionTime has whole seconds, rounded down, so +2 s is enough.)
  const settled = lastEstablished + 2_050 - Date.now();
  if (settled > 0) await sleep(settled);
  return crds.map((c) => c.metadata?.name ?? '');
}
