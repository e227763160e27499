/**
 * Throw-away PKI for the local peers (kube-apiserver, fakepve): a CA and leaf certificates signed by
 * it, made with the openssl CLI, so clients verify TLS against a known CA instead of switching it off.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';

const EC_KEY = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
const DAYS = '3650';

async function openssl(args: string[], cwd: string): Promise<void> {
  try {
    await promisify(execFile)('openssl', args, { cwd });
  } catch (err) {
    const e = err as Error & { stderr?: string; code?: string };
    if (e.code === 'ENOENT') throw new Error('openssl CLI not found; the local peers need it to make certificates');
    throw new Error(`openssl ${args.join(' ')} failed: ${e.stderr ?? e.message}`);
  }
}

/** Writes `ca.key` (0600) and `ca.crt` into `dir`. */
export async function makeCa(dir: string, commonName: string): Promise<void> {
  await fs.mkdir(dir, { recursive: true, mode: 0o700 });
  await openssl(
    [
      'req',
      '-x509',
      ...EC_KEY,
      '-keyout',
      'ca.key',
      '-out',
      'ca.crt',
      '-days',
      DAYS,
      '-subj',
      `/CN=${commonName}`,
      '-addext',
      'basicConstraints=critical,CA:TRUE',
      '-addext',
      'keyUsage=critical,keyCertSign,cRLSign',
    ],
    dir,
  );
  await fs.chmod(path.join(dir, 'ca.key'), 0o600);
}

/** A positive 127-bit serial in openssl's hex form (RFC 5280 allows up to 20 octets). */
function randomSerial(): string {
  const bytes = randomBytes(16);
  bytes.writeUInt8(bytes.readUInt8(0) & 0x7f, 0);
  return `0x${bytes.toString('hex')}`;
}

export type LeafUsage = { server: string[] } | { client: true };

/**
 * Writes `<name>.key` (0600) and `<name>.crt`, signed by the CA in `dir`: a server certificate for
 * the given subject alternative names (`IP:127.0.0.1`, `DNS:localhost`) or a client certificate.
 */
export async function signLeaf(dir: string, name: string, subject: string, usage: LeafUsage): Promise<void> {
  const ext =
    'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n' +
    ('server' in usage
      ? `extendedKeyUsage=serverAuth\nsubjectAltName=${usage.server.join(',')}\n`
      : 'extendedKeyUsage=clientAuth\n');
  await fs.writeFile(path.join(dir, `${name}.ext`), ext);
  await openssl(['req', ...EC_KEY, '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', subject], dir);
  await openssl(
    [
      'x509',
      '-req',
      '-in',
      `${name}.csr`,
      '-CA',
      'ca.crt',
      '-CAkey',
      'ca.key',
      // A random serial per certificate: leaves signed at once share no serial file to race on,
      // and no two certificates of one CA share a serial.
      '-set_serial',
      randomSerial(),
      '-out',
      `${name}.crt`,
      '-days',
      DAYS,
      '-extfile',
      `${name}.ext`,
    ],
    dir,
  );
  await fs.chmod(path.join(dir, `${name}.key`), 0o600);
}
