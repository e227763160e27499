#!/usr/bin/env node
// The `talosctl` the tests and the simulated lab run (see sim/talos-standin.ts).
//
// Commands that need no node (`gen ...`, `validate`, `version --client`) run the real talosctl
// (LABWRIGHT_TALOSCTL_REAL) with the same arguments. Every node-facing command is sent to the
// Talos stand-in (LABWRIGHT_TALOS_STANDIN_URL, on loopback) together with the files it names
// (-f/--file, --talosconfig), and its answer is printed as talosctl prints: stdout, stderr,
// exit code, and the files it writes (`kubeconfig <path>`).
import { spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import http from 'node:http';

const argv = process.argv.slice(2);
const real = process.env.LABWRIGHT_TALOSCTL_REAL;
const url = process.env.LABWRIGHT_TALOS_STANDIN_URL;

const words = argv.filter((a) => !a.startsWith('-'));
const local = words[0] === 'gen' || words[0] === 'validate' || (words[0] === 'version' && argv.includes('--client'));

if (local) {
  if (!real) {
    process.stderr.write('talos stand-in: no real talosctl (LABWRIGHT_TALOSCTL_REAL) for ' + words[0] + '\n');
    process.exit(1);
  }
  const r = spawnSync(real, argv, { stdio: 'inherit' });
  process.exit(r.status ?? 1);
}

if (!url) {
  process.stderr.write('talos stand-in: LABWRIGHT_TALOS_STANDIN_URL is not set\n');
  process.exit(1);
}

const files = {};
for (let i = 0; i < argv.length; i++) {
  const a = argv[i];
  let file;
  if (a === '-f' || a === '--file' || a === '--talosconfig') file = argv[i + 1];
  else if (a.startsWith('--file=') || a.startsWith('--talosconfig=')) file = a.slice(a.indexOf('=') + 1);
  if (file !== undefined) {
    try {
      files[file] = readFileSync(file, 'utf8');
    } catch {
      // talosctl reports a missing file itself; the stand-in does too.
    }
  }
}

// `bootstrap --recover-from=<snapshot>` uploads the snapshot (bytes, base64).
const uploads = {};
for (let i = 0; i < argv.length; i++) {
  const a = argv[i];
  const file = a === '--recover-from' ? argv[i + 1] : a.startsWith('--recover-from=') ? a.slice(15) : undefined;
  if (file === undefined) continue;
  try {
    uploads[file] = readFileSync(file).toString('base64');
  } catch {
    // the stand-in answers as talosctl does when the file cannot be opened
  }
}

const body = JSON.stringify({ argv, files, uploads });
const req = http.request(
  `${url}/run`,
  { method: 'POST', headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) } },
  (res) => {
    let text = '';
    res.setEncoding('utf8');
    res.on('data', (c) => (text += c));
    res.on('end', () => {
      let answer;
      try {
        answer = JSON.parse(text);
      } catch {
        process.stderr.write(`talos stand-in: bad answer (${res.statusCode}): ${text}\n`);
        process.exit(1);
      }
      for (const [file, content] of Object.entries(answer.write ?? {})) writeFileSync(file, content, { mode: 0o600 });
      for (const [file, b64] of Object.entries(answer.writeBase64 ?? {}))
        writeFileSync(file, Buffer.from(b64, 'base64'), { mode: 0o600 });
      process.stdout.write(answer.stdout ?? '');
      process.stderr.write(answer.stderr ?? '');
      process.exitCode = answer.code ?? 0;
    });
  },
);
req.on('error', (err) => {
  process.stderr.write(`talos stand-in unreachable at ${url}: ${err.message}\n`);
  process.exit(1);
});
req.end(body);
