# plc2mqtt: multi-stage build on the official Node 24 slim image.
FROM node:24-bookworm-slim AS build
WORKDIR /app
# Toolchain only in the build stage, in case a native module has no prebuilt binary for this platform.
RUN apt-get update && apt-get install -y --no-install-recommends python3 make g++ && rm -rf /var/lib/apt/lists/*
COPY package.json package-lock.json tsconfig.json ./
COPY src ./src
COPY drivers ./drivers
COPY config ./config
COPY test ./test
COPY bench ./bench
RUN npm ci --no-audit --no-fund && npm prune --omit=dev

FROM node:24-bookworm-slim
WORKDIR /app
ENV NODE_ENV=production
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist/src ./dist/src
COPY --from=build /app/dist/drivers ./dist/drivers
COPY --from=build /app/package.json ./package.json
COPY config ./config
# Outbox, retained state and PKI live on a volume; the config is mounted at /config/gateway.json.
RUN mkdir -p /data /config && chown node:node /data /config
VOLUME ["/data"]
USER node
# MQTT, MQTT over TLS, MQTT over WebSocket, HTTP (health/metrics)
EXPOSE 1883 8883 8080 9180
ENTRYPOINT ["node", "/app/dist/src/cli.js"]
CMD ["run", "-c", "/config/gateway.json"]
