#!/usr/bin/env bash
# Installs (once, cached under .cache/) every peer the tests and the simulated lab use.
# Each scripts/ensure-*.sh is idempotent and prints where its tool is. `--test` also installs what
# only the tests need (Chromium, for the browser test of the Temporal UI; PostgreSQL and the
# Temporal server, for the production-topology test).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
[ -d "$root/node_modules" ] || (cd "$root" && npm install --no-audit --no-fund)
for script in "$root"/scripts/ensure-*.sh; do
  case "$(basename "$script")" in
    ensure-chromium.sh | ensure-postgresql.sh | ensure-temporal-server.sh) [ "${1:-}" = --test ] || continue ;;
  esac
  bash "$script" >/dev/null
done
