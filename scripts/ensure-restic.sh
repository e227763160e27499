#!/usr/bin/env bash
# Makes sure Debian's restic is installed (the Volsync mover the DR tests run uses it); prints its
# path on stdout. Installs it with apt-get when run as root; otherwise says what to run.
set -euo pipefail

log() { printf 'ensure-restic: %s\n' "$*" >&2; }

if command -v restic >/dev/null 2>&1; then
  command -v restic
  exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
  log "error: restic is not installed. The DR tests run Volsync's mover with the real restic: run 'sudo apt-get install -y restic' (Debian/Ubuntu) and re-run."
  exit 1
fi
command -v apt-get >/dev/null 2>&1 || { log "error: restic is not installed and apt-get is missing: install restic (https://restic.net) and re-run."; exit 1; }
log "installing restic with apt-get"
# Concurrent setups (several worktrees) serialize on dpkg's own lock.
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends -o DPkg::Lock::Timeout=300 restic >&2 ||
  { apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends -o DPkg::Lock::Timeout=300 restic >&2; }
command -v restic
