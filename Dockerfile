# syntax=docker/dockerfile:1
#
# Mercato: one image, one binary (`mercato`), every service.
#
#   docker build -t mercato:dev .
#   docker run --rm mercato:dev --help
#   docker run --rm -p 8080:8080 mercato:dev serve gateway   # with the MERCATO_* environment
#
# Stages:
#   chef     - rust:1.95-bookworm (gcc included: sqlite and ring build C) + cargo-chef
#   planner  - reduces the workspace to a "recipe" (manifests, lock file, target layout)
#   builder  - builds the dependencies from the recipe only (cached layer while no Cargo.toml
#              or Cargo.lock changes), then the workspace itself
#   runtime  - debian:bookworm-slim, ca-certificates, the binary, a non-root user
#
# cargo-chef is used instead of hand-made dummy sources: with twelve workspace crates (lib, bin
# and lib+bin) the dummy approach has to mirror every target kind and then defeat cargo's mtime
# fingerprints; cargo-chef does both correctly and keeps working as crates come and go.

ARG RUST_VERSION=1.95
ARG CARGO_CHEF_VERSION=0.1.78

FROM rust:${RUST_VERSION}-bookworm AS chef
ARG CARGO_CHEF_VERSION
# Only the registry is cached across builds; cargo-chef itself lands in /usr/local/cargo/bin.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    cargo install cargo-chef --locked --version "${CARGO_CHEF_VERSION}"
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
ENV CARGO_TERM_COLOR=never \
    CARGO_INCREMENTAL=0
COPY --from=planner /src/recipe.json recipe.json
# Dependencies only: this layer is rebuilt when a manifest or Cargo.lock changes, not when
# Rust sources do. The registry cache mount saves the downloads across those rebuilds too.
# No --locked here, on purpose: cargo-chef masks the workspace crates' versions in the
# skeleton's Cargo.lock but not in references that carry a version, and our crate `inventory`
# shares its name with a crates.io crate in the graph, so mercato's entry points at
# "inventory 0.1.0", which the skeleton no longer has; --locked then refuses to repair it.
# Every registry crate stays at its locked version (the lock file is there), and the real
# build below is --locked against the untouched Cargo.lock.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    cargo chef cook --release -p mercato --recipe-path recipe.json
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    cargo build --release --locked -p mercato \
    && install -D -m 0755 target/release/mercato /out/mercato

FROM debian:bookworm-slim AS runtime
# ca-certificates: rustls' native roots (HTTPS to a payment provider, JWKS, SMTP over TLS).
# Not version-pinned: bookworm point releases drop superseded versions, and the base image tag
# already fixes the release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
# A fixed numeric UID/GID, so Kubernetes' runAsNonRoot can verify it without a name lookup.
RUN groupadd --system --gid 10001 mercato \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/mercato --no-create-home \
       --shell /usr/sbin/nologin mercato \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/mercato
COPY --from=builder /out/mercato /usr/local/bin/mercato

ENV MERCATO_HOST=0.0.0.0 \
    MERCATO_PORT=8080 \
    MERCATO_DATA_DIR=/var/lib/mercato \
    MERCATO_LOG_FORMAT=json
WORKDIR /var/lib/mercato
USER 10001:10001
EXPOSE 8080

# No curl or wget in the slim image, and none is added: bash (always in debian-slim) speaks
# HTTP/1.0 to /health/live over /dev/tcp and requires a 200 status line. Compose and
# Kubernetes define their own probes (readiness on /health/ready) and do not depend on this.
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${MERCATO_PORT:-8080} && printf 'GET /health/live HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]

ENTRYPOINT ["mercato"]
# The all-in-one mode; deployments pass `serve <service>` or `migrate --service <service>`.
CMD ["run"]
