#!/usr/bin/env bash
# Prints the path of a headless-capable Chromium for the browser test of the Temporal UI: $CHROMIUM,
# else Debian's `chromium` on PATH, else installs Debian's package with apt-get (root only).
set -euo pipefail

if [ -n "${CHROMIUM:-}" ]; then
  [ -x "$CHROMIUM" ] || { echo "CHROMIUM=$CHROMIUM is not an executable file" >&2; exit 1; }
  echo "$CHROMIUM"; exit 0
fi
for name in chromium chromium-browser; do
  if command -v "$name" >/dev/null 2>&1; then command -v "$name"; exit 0; fi
done
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  cat >&2 <<MSG
labwright's browser test needs Chromium and could not install it (apt-get as root is needed).
Install it yourself (Debian/Ubuntu: 'sudo apt-get install chromium') or point CHROMIUM at a
Chromium or Chrome binary.
MSG
  exit 1
fi
echo "installing Debian's chromium (once)..." >&2
export DEBIAN_FRONTEND=noninteractive
apt-get install -y --no-install-recommends chromium >&2 ||
  { apt-get update >&2 && apt-get install -y --no-install-recommends chromium >&2; }
command -v chromium
