#!/usr/bin/env bash
# Makes sure a real Packer, built from the Go module in test/packer, is in the
# cache; prints its path on stdout.
#
#   packer=$(scripts/ensure-packer.sh)
#
# github.com/hashicorp/packer v1.8.7 (MPL-2.0) with the proxmox plugin v1.1.1
# bundled (proxmox-iso, proxmox-clone, API-token login). The binary lives in
# "${LABWRIGHT_CACHE:-<project root>/.cache}/packer-<version>-<hash>/", where
# <hash> covers test/packer's go.mod and go.sum, so changing the pin gives a
# fresh folder. Next to it, packer.versions lists the Packer and plugin module
# versions it was built from (activities/packer.ts hashes them into a build's
# inputs). The build goes to a temporary file that is renamed into place (an
# interrupted build never leaves a half-written binary), and concurrent callers
# are serialized by flock. Logs go to stderr.
#
# PACKER_BIN, when set, names a packer to use instead (the worker image sets
# it to the binary its build stage made with this script).
set -euo pipefail

log() { printf 'ensure-packer: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

if [[ -n "${PACKER_BIN:-}" ]]; then
  [[ -x "$PACKER_BIN" ]] || die "PACKER_BIN=$PACKER_BIN is not an executable file"
  printf '%s\n' "$PACKER_BIN"
  exit 0
fi

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mod="$root/test/packer"
[[ -f "$mod/go.mod" ]] || die "missing $mod/go.mod"

modver() { # version of a module required in test/packer/go.mod
  awk -v m="$1" '$1 == m && $2 ~ /^v/ { print $2; exit }' "$mod/go.mod"
}
packer_version="$(modver github.com/hashicorp/packer)"
plugin_version="$(modver github.com/hashicorp/packer-plugin-proxmox)"
[[ -n "$packer_version" && -n "$plugin_version" ]] || die "cannot read the pinned packer and proxmox plugin versions from $mod/go.mod"
src_hash="$(cat "$mod/go.mod" "$mod/go.sum" | sha256sum | cut -c1-12)"
cache="${LABWRIGHT_CACHE:-$root/.cache}"
dir="$cache/packer-${packer_version}-${src_hash}"
bin="$dir/packer"

if [[ -x "$bin" && -f "$dir/packer.versions" ]]; then
  printf '%s\n' "$bin"
  exit 0
fi

if ! command -v go >/dev/null 2>&1; then
  die "Go is not installed (or not on PATH). The test packer is built from Go modules: install Go >= 1.24 (https://go.dev/dl) and re-run."
fi

mkdir -p "$dir"
exec 9>"$dir/.lock"
if command -v flock >/dev/null 2>&1; then
  flock 9
fi

if [[ ! -x "$bin" || ! -f "$dir/packer.versions" ]]; then
  export GOFLAGS="${GOFLAGS:+$GOFLAGS }-mod=readonly -buildvcs=false"
  export CGO_ENABLED=0
  # Packer's release builds stamp the version with -X (its version.go lags behind the tag).
  commit="$(go mod download -json "github.com/hashicorp/packer@$packer_version" 2>/dev/null \
    | awk -F'"' '$2 == "Hash" { print substr($4, 1, 8); exit }')" || true
  v=github.com/hashicorp/packer/version
  ldflags="-s -w -X $v.Version=${packer_version#v} -X $v.VersionPrerelease= -X $v.GitCommit=${commit:-unknown}"
  log "building packer $packer_version (proxmox plugin $plugin_version) into $dir; a cold build takes several minutes ..."
  start=$(date +%s)
  tmp="$dir/.packer.tmp.$$"
  (cd "$mod" && go build -trimpath -ldflags "$ldflags" -o "$tmp" github.com/hashicorp/packer) >&2 \
    || { rm -f "$tmp"; die "go build of packer failed (see above)"; }
  "$tmp" version >/dev/null || { rm -f "$tmp"; die "the packer just built does not run"; }
  printf 'github.com/hashicorp/packer %s\ngithub.com/hashicorp/packer-plugin-proxmox %s\n' \
    "$packer_version" "$plugin_version" >"$dir/packer.versions"
  mv -f "$tmp" "$bin"
  log "built packer in $(( $(date +%s) - start ))s ($(du -h "$bin" | cut -f1))"
fi

[[ -x "$bin" ]] || die "packer missing in $dir after build"
printf '%s\n' "$bin"
