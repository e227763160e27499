# The labwright worker. Build: docker build -t labwright-worker .
FROM node:20-bookworm-slim
# talosctl and packer are the external programs activities drive; install the versions your lab
# uses (Debian's packer here; talosctl from your Talos release) or mount them in.
RUN apt-get update \
  && apt-get install -y --no-install-recommends packer ca-certificates tini \
  && rm -rf /var/lib/apt/lists/*
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
ENV NODE_ENV=production LABWRIGHT_METRICS_ADDRESS=0.0.0.0:9464 LABWRIGHT_STATE_DIR=/var/lib/labwright
USER node
EXPOSE 9464
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["node", "node_modules/tsx/dist/cli.mjs", "workers/main.ts"]
