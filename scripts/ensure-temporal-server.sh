#!/usr/bin/env bash
# Makes sure a real Temporal server and its SQL tool, built from the Go module in
# test/temporal-server, are in the cache; prints their folder on stdout.
#
#   dir=$(scripts/ensure-temporal-server.sh)
#   "$dir/temporal-server" …   "$dir/temporal-sql-tool" …   "$dir/schema/postgresql/v12/…"
#
# go.temporal.io/server is pinned to the version github.com/temporalio/cli v1.5.1 (the dev server
# of scripts/ensure-temporal.sh) requires, and every other module to the CLI's versions, so the two
# builds share Go's module and build caches. The folder is
# "${LABWRIGHT_CACHE:-<project root>/.cache}/temporal-server-<version>-<hash>/", where <hash> covers
# test/temporal-server's go.mod and go.sum. Next to the binaries, schema/ is the server module's
# SQL schema tree (what temporal-sql-tool's update-schema -d reads; the admin-tools image ships the
# same tree at /etc/temporal/schema) and config/docker.yaml its config template, which the
# temporalio/server image starts with (`--env docker`), filled from the environment. Builds go to temporary names renamed into place, concurrent
# callers are serialized by flock, logs go to stderr.
set -euo pipefail

log() { printf 'ensure-temporal-server: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mod="$root/test/temporal-server"
[[ -f "$mod/go.mod" ]] || die "missing $mod/go.mod"

server_version="$(awk '$1 == "go.temporal.io/server" && $2 ~ /^v/ { print $2; exit }' "$mod/go.mod")"
[[ -n "$server_version" ]] || die "cannot read the pinned go.temporal.io/server version from $mod/go.mod"
src_hash="$(cat "$mod/go.mod" "$mod/go.sum" | sha256sum | cut -c1-12)"
cache="${LABWRIGHT_CACHE:-$root/.cache}"
dir="$cache/temporal-server-${server_version}-${src_hash}"

binaries() { [[ -x "$dir/temporal-server" && -x "$dir/temporal-sql-tool" ]]; }
built() { binaries && [[ -d "$dir/schema/postgresql" && -f "$dir/config/docker.yaml" ]]; }
if built; then
  printf '%s\n' "$dir"
  exit 0
fi

if ! command -v go >/dev/null 2>&1; then
  die "Go is not installed (or not on PATH). The Temporal server is built from Go modules: install Go >= 1.25 (https://go.dev/dl) and re-run."
fi

mkdir -p "$dir"
exec 9>"$dir/.lock"
if command -v flock >/dev/null 2>&1; then
  flock 9
fi

if ! binaries; then
  export GOFLAGS="${GOFLAGS:+$GOFLAGS }-mod=readonly -buildvcs=false"
  export CGO_ENABLED=0
  log "building temporal-server and temporal-sql-tool $server_version into $dir; a cold build takes several minutes ..."
  start=$(date +%s)
  for pair in temporal-server:go.temporal.io/server/cmd/server temporal-sql-tool:go.temporal.io/server/cmd/tools/sql; do
    name="${pair%%:*}" pkg="${pair#*:}"
    tmp="$dir/.$name.tmp.$$"
    (cd "$mod" && go build -trimpath -ldflags "-s -w" -o "$tmp" "$pkg") >&2 \
      || { rm -f "$tmp"; die "go build of $pkg failed (see above)"; }
    mv -f "$tmp" "$dir/$name"
  done
  log "built the Temporal server in $(( $(date +%s) - start ))s"
fi
if ! built; then
  src="$(cd "$mod" && GOFLAGS=-mod=readonly go list -m -f '{{.Dir}}' go.temporal.io/server)"
  for tree in schema config; do
    rm -rf "$dir/.$tree.tmp" && cp -r "$src/$tree" "$dir/.$tree.tmp" && chmod -R u+w "$dir/.$tree.tmp"
    rm -rf "${dir:?}/$tree" && mv "$dir/.$tree.tmp" "$dir/$tree"
  done
fi

built || die "temporal-server, temporal-sql-tool, schema/ or config/docker.yaml missing in $dir after build"
printf '%s\n' "$dir"
