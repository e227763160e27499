#!/usr/bin/env bash
# Prints the path of a `packer` binary: $PACKER_BIN, else one on PATH, else Debian's package
# installed with apt-get (only when running as root; otherwise it says what to do and fails).
# Idempotent: once packer is there it only prints the path. Logs go to stderr.
set -euo pipefail

if [ -n "${PACKER_BIN:-}" ]; then
  [ -x "$PACKER_BIN" ] || { echo "ensure-packer: PACKER_BIN=$PACKER_BIN is not an executable file" >&2; exit 1; }
  echo "$PACKER_BIN"; exit 0
fi
if command -v packer >/dev/null 2>&1; then command -v packer; exit 0; fi

if [ "$(id -u)" -ne 0 ]; then
  cat >&2 <<MSG
ensure-packer: packer is not installed and this is not root, so it cannot install it.
Install it with 'sudo apt-get install packer' (Debian/Ubuntu), or put a packer binary on PATH,
or point PACKER_BIN at one, and re-run.
MSG
  exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "ensure-packer: packer is not installed and there is no apt-get here; install packer and put it on PATH (or set PACKER_BIN)" >&2
  exit 1
fi
echo "ensure-packer: installing Debian's packer with apt-get (once)..." >&2
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y -qq packer >&2; then
  # A fresh machine has no package lists yet.
  apt-get update -qq >&2
  apt-get install -y -qq packer >&2
fi
command -v packer >/dev/null 2>&1 || { echo "ensure-packer: apt-get finished but packer is not on PATH" >&2; exit 1; }
command -v packer
