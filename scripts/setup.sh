#!/usr/bin/env bash
# Installs (once, cached under .cache/) every peer the tests and the simulated lab use.
# Each scripts/ensure-*.sh is idempotent and prints where its tool is.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
[ -d "$root/node_modules" ] || (cd "$root" && npm install --no-audit --no-fund)
for script in "$root"/scripts/ensure-*.sh; do
  bash "$script" >/dev/null
done
