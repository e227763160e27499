#!/usr/bin/env bash
# Validates docker-compose.yml against the Compose schema without a Docker engine, using Debian's
# docker-compose (its `config` resolves and checks the file client-side), in a scratch folder with
# the placeholder files the compose file mounts.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
if ! command -v docker-compose >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get install -y -qq docker-compose >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq docker-compose; }) >&2
  else
    echo "validate-compose needs docker-compose (apt-get install docker-compose)" >&2; exit 1
  fi
fi
scratch=$(mktemp -d); trap 'rm -rf "$scratch"' EXIT
cp "$root/docker-compose.yml" "$root/Dockerfile" "$scratch/"
cp -r "$root/deploy" "$scratch/deploy"
mkdir -p "$scratch/secrets" "$scratch/lab"
touch "$scratch"/secrets/{codec.key,pve1-token,pve2-token,proxy-token} "$scratch/lab.yaml" \
  "$scratch"/lab/{pve-ca.pem,flux-deploy-key,flux-known-hosts,age.key}
echo "POSTGRES_PASSWORD=placeholder" > "$scratch/.env"
(cd "$scratch" && docker-compose config -q)
echo "docker-compose.yml is valid"
