#!/usr/bin/env bash
# Makes sure the CRDs pinned in scripts/crds.txt are in the cache; prints their folder on stdout.
#
#   dir=$(scripts/ensure-crds.sh)   # -> $dir/*.yaml
#
# Each module is fetched with `go mod download` from the Go module proxy (GOPROXY, default
# proxy.golang.org) and checked against the sum pinned beside it; the named files are copied from
# it. The folder is "${LABWRIGHT_CACHE:-<project root>/.cache}/crds/<hash of crds.txt>/", so a
# change to the pins gives a fresh folder. It is filled in a temporary folder that is renamed
# into place (an interrupted fetch leaves nothing half-written), and concurrent callers are
# serialized by flock. Logs go to stderr.
set -euo pipefail

log() { printf 'ensure-crds: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
pins="$root/scripts/crds.txt"
[[ -f "$pins" ]] || die "missing $pins"
version="$(sha256sum <"$pins" | cut -c1-12)"
base="${LABWRIGHT_CACHE:-$root/.cache}/crds"
dir="$base/$version"

if [[ -f "$dir/.complete" ]]; then
  printf '%s\n' "$dir"
  exit 0
fi
command -v go >/dev/null 2>&1 \
  || die "Go is not installed (or not on PATH), and $dir is missing. The CRDs come from pinned Go modules: install Go >= 1.25 and re-run."

mkdir -p "$base"
exec 9>"$base/.lock"
if command -v flock >/dev/null 2>&1; then
  flock 9
fi

if [[ ! -f "$dir/.complete" ]]; then
  tmp="$(mktemp -d "$base/.tmp.XXXXXX")"
  trap 'rm -rf "$tmp"' EXIT
  # Outside any go.mod, so that only the named module versions are resolved.
  work="$tmp/.go"
  mkdir -p "$work"
  while read -r module ver sum folder files; do
    [[ -z "$module" || "$module" == \#* ]] && continue
    log "fetching $module@$ver"
    json="$(cd "$work" && GOFLAGS=-mod=mod go mod download -json "$module@$ver")" \
      || die "go mod download $module@$ver failed: $(printf '%s' "$json" | grep '"Error"' || true)"
    field() { printf '%s\n' "$json" | sed -n "s/^[[:space:]]*\"$1\": \"\(.*\)\",\{0,1\}$/\1/p" | head -n1; }
    got="$(field Sum)"
    [[ "$got" == "$sum" ]] || die "$module@$ver has sum $got, crds.txt pins $sum"
    src="$(field Dir)/$folder"
    for f in $files; do
      [[ -f "$src/$f" ]] || die "$module@$ver has no $folder/$f"
      cp "$src/$f" "$tmp/$f"
      chmod 0644 "$tmp/$f"
    done
  done <"$pins"
  rm -rf "$work"
  cp "$pins" "$tmp/crds.txt"
  touch "$tmp/.complete"
  chmod 0755 "$tmp"
  rm -rf "$dir"
  mv "$tmp" "$dir"
  trap - EXIT
fi
printf '%s\n' "$dir"
