# One image for all three roles: serve, operator, node-agent.
# scripts/build-image.mjs (tools/oci/image.ts) assembles the same final stage as an OCI archive
# without a Docker engine (the e2e test loads it into its cluster): change the two together.
FROM node:20-bookworm-slim AS build
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json ./
COPY bin ./bin
COPY mirror ./mirror
COPY operator ./operator
COPY tools ./tools
COPY test ./test
COPY bench ./bench
RUN npm run build && npm prune --omit=dev

FROM node:20-bookworm-slim
ENV NODE_ENV=production
WORKDIR /app
COPY --from=build /src/package.json ./
COPY --from=build /src/node_modules ./node_modules
COPY --from=build /src/dist/bin ./dist/bin
COPY --from=build /src/dist/mirror ./dist/mirror
COPY --from=build /src/dist/operator ./dist/operator
# The node user (uid 1000) owns nothing in the image: the root filesystem can be read-only;
# the store is a mounted volume.
USER 1000:1000
EXPOSE 5000
VOLUME ["/var/lib/registry-mirror"]
ENV MIRROR_STORAGE_PATH=/var/lib/registry-mirror
ENTRYPOINT ["node", "/app/dist/bin/registry-mirror.js"]
CMD ["serve"]
