#!/usr/bin/env bash
# Makes sure Debian's PostgreSQL server is installed (the production-topology test runs the real
# Temporal server on it); prints the folder of its programs (initdb, pg_ctl, postgres) on stdout.
# Installs it with apt-get when run as root; otherwise says what to run.
set -euo pipefail

log() { printf 'ensure-postgresql: %s\n' "$*" >&2; }

bindir() { # the newest installed major version's programs
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)
  [[ -n "$d" && -x "$d/initdb" && -x "$d/pg_ctl" ]] && printf '%s\n' "$d"
}

if bindir; then exit 0; fi
if [[ $(id -u) -ne 0 ]]; then
  log "error: PostgreSQL is not installed. The production-topology test runs Temporal on it: run 'sudo apt-get install -y postgresql' (Debian/Ubuntu) and re-run."
  exit 1
fi
command -v apt-get >/dev/null 2>&1 || { log "error: PostgreSQL is not installed and apt-get is missing: install PostgreSQL (initdb, pg_ctl) and re-run."; exit 1; }
log "installing postgresql with apt-get"
# Concurrent setups (several worktrees) serialize on dpkg's own lock.
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends -o DPkg::Lock::Timeout=300 postgresql >&2 ||
  { apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends -o DPkg::Lock::Timeout=300 postgresql >&2; }
bindir || { log "error: postgresql installed but no initdb under /usr/lib/postgresql/*/bin"; exit 1; }
