# Multi-stage build: static relay and authtool binaries on a distroless,
# non-root base (uid 65532). Base images are pinned by exact tag; pin the
# digests too before building for production:
#   docker buildx imagetools inspect golang:1.26.8-bookworm
#   docker buildx imagetools inspect gcr.io/distroless/static-debian12:nonroot
# and write them as FROM image:tag@sha256:... (no digest is recorded here:
# it could not be looked up where this file was written).
FROM golang:1.26.8-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# The VCS stamp (relay version, relay_build_info) needs .git in the build
# context; without it the version says unknown.
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/relay ./cmd/relay && \
    CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/authtool ./cmd/authtool && \
    mkdir -p /out/var/lib/relay/key

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/relay /out/authtool /usr/local/bin/
# The data and key directories belong to the relay's user, so a named
# volume mounted there is writable by it: `docker compose run --rm
# relay-keygen` writes the key (mode 0600, owner 65532) into the volume.
COPY --from=build --chown=65532:65532 /out/var/lib/relay /var/lib/relay
USER 65532:65532
# Metrics, health and status on the container's interface, not its
# loopback; relay health reads the same variable.
ENV RELAY_HTTP_ADDR=:9465 \
    RELAY_DATA_DIR=/var/lib/relay
EXPOSE 9465
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
  CMD ["/usr/local/bin/relay", "health"]
ENTRYPOINT ["/usr/local/bin/relay"]
CMD ["serve"]
