#!/usr/bin/env bash
# Prints the path of a `temporal` CLI: $TEMPORAL_CLI, else one on PATH, else one built with
# `go install` into the project's git-ignored cache (built once, reused after).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
version=v1.5.1 # later tags carry a replace directive and won't `go install`
bin_dir="${LABWRIGHT_CACHE:-$root/.cache}/temporal-$version"

if [ -n "${TEMPORAL_CLI:-}" ]; then
  [ -x "$TEMPORAL_CLI" ] || { echo "TEMPORAL_CLI=$TEMPORAL_CLI is not an executable file" >&2; exit 1; }
  echo "$TEMPORAL_CLI"; exit 0
fi
if command -v temporal >/dev/null 2>&1; then command -v temporal; exit 0; fi
if [ -x "$bin_dir/temporal" ]; then echo "$bin_dir/temporal"; exit 0; fi
if ! command -v go >/dev/null 2>&1; then
  cat >&2 <<MSG
labwright needs the Temporal CLI and could not build it: Go is not installed.
Install Go 1.23 or newer (https://go.dev/doc/install, or 'apt-get install golang'), or install
the Temporal CLI yourself and put it on PATH or point TEMPORAL_CLI at it.
MSG
  exit 1
fi
echo "building temporal CLI $version into $bin_dir (once; a few minutes)..." >&2
mkdir -p "$bin_dir"
GOBIN="$bin_dir" GOFLAGS=-trimpath go install "github.com/temporalio/cli/cmd/temporal@$version" >&2
echo "$bin_dir/temporal"
