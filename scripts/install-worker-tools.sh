#!/usr/bin/env bash
# The worker image's tool stage (Dockerfile, stage `tools`), also run outside Docker by
# test/worker-image.test.ts: builds the programs the activities call with the same pinned scripts
# the tests use (scripts/ensure-packer.sh, scripts/ensure-talosctl.sh), copies them into
# $LABWRIGHT_TOOLS_DIR and checks that each one runs:
#   packer            Packer with the Proxmox plugin bundled (packerImageBuild; PACKER_BIN), with
#                     packer.versions beside it (activities/packer.ts hashes it into build inputs)
#   talosctl          talosctl (talosBootstrap, gpuNodeJoin, etcd restores; LABWRIGHT_TALOSCTL)
# TALOS_VERSION (the image's build argument) must be the lab's Talos release, which is the version
# test/talos pins: another one is refused with what to re-pin, never built unpinned.
set -euo pipefail

log() { printf 'install-worker-tools: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${LABWRIGHT_TOOLS_DIR:?set LABWRIGHT_TOOLS_DIR to the folder the tools go to}"
pinned="$(awk '$1 == "github.com/siderolabs/talos" && $2 ~ /^v/ { print $2; exit }' "$root/test/talos/go.mod")"
if [[ -n "${TALOS_VERSION:-}" && "$TALOS_VERSION" != "$pinned" ]]; then
  die "TALOS_VERSION=$TALOS_VERSION but test/talos pins talosctl $pinned: re-pin it (cd test/talos && go get github.com/siderolabs/talos@$TALOS_VERSION && go mod tidy) so the image's talosctl is the tested one"
fi

packer="$(bash "$root/scripts/ensure-packer.sh")"
talosctl="$(bash "$root/scripts/ensure-talosctl.sh")"
mkdir -p "$out"
install -m 0755 "$packer" "$out/packer"
install -m 0644 "$(dirname "$packer")/packer.versions" "$out/packer.versions"
install -m 0755 "$talosctl" "$out/talosctl"

# Each must run, and packer must know the Proxmox builders (a template that names one validates).
"$out/packer" version >&2
"$out/talosctl" version --client --short >&2
check="$(mktemp -d)"
trap 'rm -rf "$check"' EXIT
cat >"$check/check.pkr.hcl" <<'HCL'
source "proxmox-clone" "check" {
  proxmox_url  = "https://127.0.0.1:8006/api2/json"
  username     = "packer@pve!check"
  token        = "check"
  node         = "pve1"
  clone_vm     = "template"
  ssh_username = "root"
}
source "proxmox-iso" "check" {
  proxmox_url  = "https://127.0.0.1:8006/api2/json"
  username     = "packer@pve!check"
  token        = "check"
  node         = "pve1"
  iso_file     = "local:iso/check.iso"
  ssh_username = "root"
}
build { sources = ["source.proxmox-clone.check", "source.proxmox-iso.check"] }
HCL
(cd "$check" && CHECKPOINT_DISABLE=1 PACKER_CONFIG_DIR="$check" "$out/packer" validate check.pkr.hcl) >&2 \
  || die "packer does not validate a template with the proxmox-clone and proxmox-iso builders"
log "tools in $out: $(cd "$out" && ls | tr '\n' ' ')"
