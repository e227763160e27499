#!/usr/bin/env bash
# Makes sure a real kube-apiserver and etcd, built from the Go module in
# test/kube, are in the cache; prints the folder that holds them on stdout.
#
#   dir=$(scripts/ensure-kube.sh)   # -> $dir/kube-apiserver, $dir/etcd
#
# The folder is "${LABWRIGHT_CACHE:-<project root>/.cache}/kube/<version>/",
# where <version> names the pinned kubernetes and etcd releases and a hash of
# test/kube's sources, so changing go.mod gives a fresh folder. Builds only
# what is missing; a build goes to a temporary folder that is renamed into
# place, so an interrupted build never leaves a half-written binary, and two
# concurrent callers are serialized by flock. Logs go to stderr.
set -euo pipefail

log() { printf 'ensure-kube: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mod="$root/test/kube"
[[ -f "$mod/go.mod" ]] || die "missing $mod/go.mod"

modver() { # version of a module required in test/kube/go.mod
  awk -v m="$1" '$1 == m && $2 ~ /^v/ { print $2; exit }' "$mod/go.mod"
}
k8s_version="$(modver k8s.io/kubernetes)"
etcd_version="$(modver go.etcd.io/etcd/server/v3)"
[[ -n "$k8s_version" && -n "$etcd_version" ]] || die "cannot read pinned versions from $mod/go.mod"

src_hash="$(cd "$mod" && cat go.mod go.sum $(find . -name '*.go' | LC_ALL=C sort) | sha256sum | cut -c1-12)"
version="${k8s_version}-etcd${etcd_version}-${src_hash}"
cache="${LABWRIGHT_CACHE:-$root/.cache}"
dir="$cache/kube/$version"

have_all() { [[ -x "$dir/kube-apiserver" && -x "$dir/etcd" ]]; }

if have_all; then
  printf '%s\n' "$dir"
  exit 0
fi

# Only a build needs Go.
if ! command -v go >/dev/null 2>&1; then
  die "Go is not installed (or not on PATH), and $dir lacks the binaries. The test kube-apiserver and etcd are built from the Go module in test/kube: install Go >= 1.25 and re-run."
fi

mkdir -p "$dir"
exec 9>"$dir/.lock"
if command -v flock >/dev/null 2>&1; then
  flock 9
fi

if ! have_all; then
  # go.sum is committed: never rewrite go.mod/go.sum during a build.
  export GOFLAGS="${GOFLAGS:+$GOFLAGS }-mod=readonly -buildvcs=false"
  export CGO_ENABLED=0
  # Go's build cache (~/.cache/go-build) is shared across clones, so a rebuild
  # in a fresh clone is mostly linking.
  for bin in etcd kube-apiserver; do
    [[ -x "$dir/$bin" ]] && continue
    log "building $bin ($k8s_version / etcd $etcd_version) into $dir; a cold build takes several minutes ..."
    start=$(date +%s)
    tmp="$dir/.$bin.tmp.$$"
    (cd "$mod" && go build -trimpath -ldflags "-s -w" -o "$tmp" "./cmd/$bin") >&2 \
      || { rm -f "$tmp"; die "go build of $bin failed (see above)"; }
    mv -f "$tmp" "$dir/$bin"
    log "built $bin in $(( $(date +%s) - start ))s ($(du -h "$dir/$bin" | cut -f1))"
  done
fi

have_all || die "binaries missing in $dir after build"
printf '%s\n' "$dir"
