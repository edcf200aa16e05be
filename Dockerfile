# syntax=docker/dockerfile:1
# Sluice: one image with both binaries, `sluice` (CLI, `sluice serve`, `sluice exporter`)
# and `sluice-worker` (`sluice-worker serve`). Build from the repository root:
#   docker build -t sluice .
# docs/operations.md runs it with deploy/compose.yaml or deploy/k8s/.
# No secret is baked in: the Redis URL, admin token and cache key come from the
# environment at run time (deploy/*.env.example list them).

ARG RUST_IMAGE=rust:1.95-slim-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

# --- build stage -----------------------------------------------------------------
FROM ${RUST_IMAGE} AS build
WORKDIR /src

# Dependencies first, in their own layer: the manifests, the lock file and stub crates
# (an empty library and `fn main() {}` per crate, the bench targets worker/Cargo.toml
# names), built once. A change to the sources alone rebuilds only the four workspace
# crates on top of this layer.
COPY Cargo.toml Cargo.lock ./
COPY shared/Cargo.toml shared/
COPY worker/Cargo.toml worker/
COPY scheduler/Cargo.toml scheduler/
COPY tests/Cargo.toml tests/
RUN mkdir -p shared/src worker/src worker/benches/cold_start scheduler/src tests/src \
    && touch shared/src/lib.rs worker/src/lib.rs scheduler/src/lib.rs tests/src/lib.rs \
    && for main in worker/src/main.rs scheduler/src/main.rs \
                   worker/benches/sandbox.rs worker/benches/cold_start/main.rs; do \
         echo 'fn main() {}' > "$main"; \
       done \
    && cargo build --release --locked -p sluice-worker -p sluice-scheduler --bins

# The sources. COPY keeps the files' own modification times, which can be older than
# the stub build's outputs, so they are touched: cargo then rebuilds the workspace
# crates instead of taking the stubs for fresh.
COPY shared shared
COPY worker worker
COPY scheduler scheduler
RUN find shared worker scheduler -name '*.rs' -exec touch {} + \
    && cargo build --release --locked -p sluice-worker -p sluice-scheduler --bins \
    && install -D -m 0755 target/release/sluice /out/sluice \
    && install -D -m 0755 target/release/sluice-worker /out/sluice-worker

# --- runtime stage ---------------------------------------------------------------
FROM ${RUNTIME_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="sluice" \
      org.opencontainers.image.description="Job-queue batch worker running untrusted WebAssembly over Redis: sluice (CLI, HTTP API, dispatcher) and sluice-worker" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/debian:bookworm-slim"

# Nothing is installed: TLS to Redis uses rustls with its compiled-in roots, and the
# health check speaks HTTP with bash alone. A fixed non-root user owns only the
# artifact cache directory (--cache-dir).
RUN useradd --system --no-log-init --uid 10001 --user-group --home-dir /nonexistent \
        --shell /usr/sbin/nologin sluice \
    && install -d -o sluice -g sluice -m 0700 /var/cache/sluice
COPY --from=build /out/sluice /out/sluice-worker /usr/local/bin/
COPY deploy/healthcheck /usr/local/bin/sluice-healthcheck

USER 10001:10001
# Listen beyond the container's loopback: `sluice serve` on 8080, the worker's
# /metrics, /healthz and /readyz on 9464. Each binary reads only its own variable.
ENV SLUICE_LISTEN=0.0.0.0:8080 \
    SLUICE_METRICS_ADDR=0.0.0.0:9464 \
    SLUICE_CACHE_DIR=/var/cache/sluice
EXPOSE 8080 9464
# /healthz of the worker (the default command: liveness, 503 when its claim loop is
# stuck, not when Redis is down); a `sluice serve` container sets
# SLUICE_HEALTHCHECK_PORT=8080 (deploy/compose.yaml does).
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["/usr/local/bin/sluice-healthcheck"]
CMD ["sluice-worker", "serve"]
