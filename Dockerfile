# plc2mqtt: multi-stage build on the official Node 24 slim image.
#   docker build -t plc2mqtt .
#   docker run -d --name plc2mqtt -v /etc/plc2mqtt:/config:ro -v plc2mqtt-data:/data \
#     -p 1883:1883 -p 9180:9180 --device /dev/ttyUSB0 --group-add dialout plc2mqtt
# Published ports reach the gateway only if the config binds them to 0.0.0.0 (broker listeners and
# http.host): 127.0.0.1 inside the container is the container's own loopback.
FROM node:24-bookworm-slim AS build
WORKDIR /app
# Compilers only in the build stage, for a native module (better-sqlite3, serialport) without a
# prebuilt binary for this platform (e.g. armv7 edge boxes).
RUN apt-get update && apt-get install -y --no-install-recommends python3 make g++ && rm -rf /var/lib/apt/lists/*
COPY package.json package-lock.json tsconfig.json ./
COPY src ./src
COPY drivers ./drivers
COPY config ./config
COPY test ./test
COPY bench ./bench
# `npm ci` builds (prepare: tsc and the console bundle); the runtime stage gets production dependencies only.
RUN npm ci --no-audit --no-fund && npm prune --omit=dev

FROM node:24-bookworm-slim
WORKDIR /app
ENV NODE_ENV=production
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist/src ./dist/src
COPY --from=build /app/dist/drivers ./dist/drivers
# The web console's page (index.html and the hashed bundle), served at / by the operations endpoint.
COPY --from=build /app/dist/console ./dist/console
COPY --from=build /app/package.json ./package.json
COPY config ./config
# Outbox, retained messages and OPC UA PKI live on the /data volume; the config is mounted at
# /config/gateway.json. The image's "node" user (uid 1000) owns /data and runs the gateway.
RUN mkdir -p /data /config && chown node:node /data /config
VOLUME ["/data"]
USER node
# MQTT, MQTT over TLS, MQTT over WebSocket, operations endpoint (health, metrics, status)
EXPOSE 1883 8883 8080 9180
# Asks the running gateway's /healthz at the host and port of the config's "http" section.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["node", "/app/dist/src/cli.js", "health", "-c", "/config/gateway.json"]
ENTRYPOINT ["node", "/app/dist/src/cli.js"]
CMD ["run", "-c", "/config/gateway.json", "--data-dir", "/data"]
