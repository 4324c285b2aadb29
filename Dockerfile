# Multi-stage build: a static relay binary on a distroless, non-root base.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/relay ./cmd/relay && \
    CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/authtool ./cmd/authtool

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/relay /out/authtool /usr/local/bin/
USER nonroot:nonroot
EXPOSE 9465
ENTRYPOINT ["/usr/local/bin/relay"]
CMD ["serve"]
