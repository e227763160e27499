#!/usr/bin/env bash
# Prints the bin folder of a virtualenv holding the Python peers the tests and the simulated lab
# run: moto (EC2) and fakepve (Proxmox VE). Built once into the project's cache, pinned.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
requirements="$root/scripts/python-peers.txt"
stamp=$(sha256sum "$requirements" | cut -c1-12)
venv="${LABWRIGHT_CACHE:-$root/.cache}/venv-$stamp"
if [ -x "$venv/bin/moto_server" ] && [ -x "$venv/bin/fakepve" ]; then echo "$venv/bin"; exit 0; fi
command -v python3 >/dev/null 2>&1 || { echo "labwright needs python3 (3.10+) for its test peers: apt-get install python3 python3-venv" >&2; exit 1; }
echo "installing Python peers into $venv (once)..." >&2
rm -rf "$venv"
python3 -m venv "$venv" >&2
"$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements" >&2
echo "$venv/bin"
