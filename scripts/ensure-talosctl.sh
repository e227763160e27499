#!/usr/bin/env bash
# Makes sure a real talosctl, built from the Go module in test/talos, is in the
# cache; prints its path on stdout.
#
#   talosctl=$(scripts/ensure-talosctl.sh)
#
# The binary lives in "${LABWRIGHT_CACHE:-<project root>/.cache}/talosctl-<version>/",
# where <version> is the pinned github.com/siderolabs/talos tag plus a hash of
# test/talos's go.mod and go.sum, so changing the pin gives a fresh folder. The
# build goes to a temporary file that is renamed into place (an interrupted
# build never leaves a half-written binary), and concurrent callers are
# serialized by flock. Logs go to stderr.
#
# test/talos/go.sum was seeded from talos v1.11.5's own go.sum before `go mod
# tidy`: the checksum database has no entry for two of talos's forks
# (github.com/smira/dhcp, github.com/siderolabs/wgctrl-go pseudo-versions), so
# their hashes come from the talos release that pins them.
set -euo pipefail

log() { printf 'ensure-talosctl: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mod="$root/test/talos"
[[ -f "$mod/go.mod" ]] || die "missing $mod/go.mod"

if ! command -v go >/dev/null 2>&1; then
  die "Go is not installed (or not on PATH). The test talosctl is built from Go modules: install Go >= 1.24 (https://go.dev/dl) and re-run."
fi

talos_version="$(awk '$1 == "github.com/siderolabs/talos" && $2 ~ /^v/ { print $2; exit }' "$mod/go.mod")"
[[ -n "$talos_version" ]] || die "cannot read the pinned github.com/siderolabs/talos version from $mod/go.mod"
src_hash="$(cat "$mod/go.mod" "$mod/go.sum" | sha256sum | cut -c1-12)"
cache="${LABWRIGHT_CACHE:-$root/.cache}"
dir="$cache/talosctl-${talos_version}-${src_hash}"
bin="$dir/talosctl"

if [[ -x "$bin" ]]; then
  printf '%s\n' "$bin"
  exit 0
fi

mkdir -p "$dir"
exec 9>"$dir/.lock"
if command -v flock >/dev/null 2>&1; then
  flock 9
fi

if [[ ! -x "$bin" ]]; then
  export GOFLAGS="${GOFLAGS:+$GOFLAGS }-mod=readonly"
  export CGO_ENABLED=0
  log "building talosctl $talos_version into $dir; a cold build takes several minutes ..."
  start=$(date +%s)
  tmp="$dir/.talosctl.tmp.$$"
  (cd "$mod" && go build -trimpath -ldflags "-s -w" -o "$tmp" github.com/siderolabs/talos/cmd/talosctl) >&2 \
    || { rm -f "$tmp"; die "go build of talosctl failed (see above)"; }
  mv -f "$tmp" "$bin"
  log "built talosctl in $(( $(date +%s) - start ))s ($(du -h "$bin" | cut -f1))"
fi

[[ -x "$bin" ]] || die "talosctl missing in $dir after build"
printf '%s\n' "$bin"
