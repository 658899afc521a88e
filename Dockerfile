# The gofe image: one binary, `gofe`, that runs as the proxy, the controller or the metrics
# adapter depending on its arguments (see charts/gofe). Build and push it yourself:
#   docker build -t REGISTRY/gofe:0.1.0 .
#   docker push REGISTRY/gofe:0.1.0
# Nothing here needs protoc or a C toolchain beyond what the rust image ships (TLS is rustls
# with ring; the xDS types come prebuilt from envoy-types).

# --- build -----------------------------------------------------------------------------------
# The toolchain the project is tested with; the workspace's rust-version (1.89) is the floor.
ARG RUST_VERSION=1.95
FROM rust:${RUST_VERSION}-slim-trixie AS build
WORKDIR /src
COPY . .
# The lock file is part of the source: --locked fails instead of resolving anew.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin gofe \
 && install -D -m 0755 target/release/gofe /out/gofe

# --- run -------------------------------------------------------------------------------------
FROM debian:trixie-slim
# iptables: `gofe inject init --capture` installs the sidecar's redirect rules with it.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates iptables \
 && rm -rf /var/lib/apt/lists/*
# A fixed numeric uid/gid, so Kubernetes' runAsNonRoot can verify it without a passwd lookup.
RUN groupadd --system --gid 65532 gofe \
 && useradd --system --uid 65532 --gid 65532 --no-create-home --shell /usr/sbin/nologin gofe
COPY --from=build /out/gofe /usr/local/bin/gofe
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/gofe"]
CMD ["--help"]
