# The labwright worker (and, with another command, the LLM proxy). Build: docker build -t labwright-worker .
#
# Stage `tools` builds the programs the activities call, pinned exactly as the tests get them:
# Packer 1.8.7 with its Proxmox plugin 1.1.1 (test/packer) and talosctl of the lab's Talos release
# (test/talos), by scripts/install-worker-tools.sh, which test/worker-image.test.ts runs outside
# Docker too. TALOS_VERSION must be the inventory's talosVersion (the script refuses another one).
# Stage `app` installs the runtime dependencies and prebuilds the workflow bundle and the worker as
# one JavaScript file (workers/build.ts), so a worker starts with nothing to compile. The image holds
# no simulated lab (sim/), no test harness or PKI helpers (test/), and no build tools.
ARG TALOS_VERSION=v1.11.5

FROM golang:1.25-bookworm AS tools
ARG TALOS_VERSION
ENV LABWRIGHT_CACHE=/cache LABWRIGHT_TOOLS_DIR=/opt/labwright/tools
WORKDIR /src
COPY scripts/ensure-packer.sh scripts/ensure-talosctl.sh scripts/install-worker-tools.sh scripts/
COPY test/packer test/packer
COPY test/talos test/talos
RUN bash scripts/install-worker-tools.sh

FROM node:20-bookworm-slim AS app
WORKDIR /app
COPY package.json package-lock.json ./
# Not `npm ci`: the registry lacks some of @swc/core's optional platform packages, which `npm ci`
# refuses; `npm install` keeps to the lock and skips them.
RUN npm install --omit=dev --no-audit --no-fund
COPY common common
COPY lib lib
COPY hardware hardware
COPY activities activities
COPY workflows workflows
COPY workers workers
COPY clients clients
COPY packer packer
RUN node node_modules/tsx/dist/cli.mjs workers/bundle.ts dist

FROM node:20-bookworm-slim
RUN apt-get update \
  && apt-get install -y --no-install-recommends ca-certificates tini \
  && rm -rf /var/lib/apt/lists/*
COPY --from=tools /opt/labwright/tools /opt/labwright/tools
COPY --from=app /app /app
# The state directory (secret store, Packer workdir, DR reports) belongs to the runtime user; a
# named volume mounted here starts as a copy of it, so it is node's too. Mounted secrets must be
# readable by uid 1000 and by no one else (chown 1000 and chmod 600; see docker-compose.yml).
RUN mkdir -p /var/lib/labwright && chown node:node /var/lib/labwright && chmod 700 /var/lib/labwright
WORKDIR /app
ENV NODE_ENV=production \
  LABWRIGHT_STATE_DIR=/var/lib/labwright \
  LABWRIGHT_SECRETS_DIR=/var/lib/labwright/secrets \
  LABWRIGHT_WORKFLOW_BUNDLE=/app/dist/workflows.js \
  LABWRIGHT_METRICS_ADDRESS=0.0.0.0:9464 \
  PACKER_BIN=/opt/labwright/tools/packer \
  LABWRIGHT_TALOSCTL=/opt/labwright/tools/talosctl
USER node
VOLUME /var/lib/labwright
EXPOSE 9464
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 CMD ["node", "workers/healthcheck.mjs"]
ENTRYPOINT ["/usr/bin/tini", "--"]
# The compiled worker: no tsx loader transpiling the project's modules at every start.
CMD ["node", "dist/worker.mjs"]
