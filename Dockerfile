# The labwright worker. Build: docker build -t labwright-worker .
#
# Stage 1 builds Packer 1.8.7 with its proxmox plugin 1.1.1 from the Go module proxy, exactly as
# the tests get it (scripts/ensure-packer.sh, pinned by test/packer/go.mod and go.sum).
FROM golang:1.24-bookworm AS packer
WORKDIR /src
COPY scripts/ensure-packer.sh scripts/
COPY test/packer test/packer
RUN LABWRIGHT_CACHE=/cache bash scripts/ensure-packer.sh >/packer-path \
  && mkdir -p /opt/packer \
  && cp "$(cat /packer-path)" "$(dirname "$(cat /packer-path)")/packer.versions" /opt/packer/

FROM node:20-bookworm-slim
# talosctl is the other external program activities drive: install your Talos release's or mount
# it in (LABWRIGHT_TALOSCTL). Packer comes from stage 1; the worker finds it through PACKER_BIN.
RUN apt-get update \
  && apt-get install -y --no-install-recommends ca-certificates tini \
  && rm -rf /var/lib/apt/lists/*
COPY --from=packer /opt/packer /opt/packer
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm install --omit=dev --no-audit --no-fund
COPY common ./common
COPY lib ./lib
COPY hardware ./hardware
COPY activities ./activities
COPY workflows ./workflows
COPY workers ./workers
COPY clients ./clients
COPY sim ./sim
COPY packer ./packer
ENV NODE_ENV=production LABWRIGHT_METRICS_ADDRESS=0.0.0.0:9464 LABWRIGHT_STATE_DIR=/var/lib/labwright \
  PACKER_BIN=/opt/packer/packer
USER node
EXPOSE 9464
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["node", "node_modules/tsx/dist/cli.mjs", "workers/main.ts"]
