# Threadline node image.
#
#   docker build -t threadline .
#   docker run -d -p 8080:8080 \
#     -v "$PWD/deploy/threadline.toml:/etc/threadline/threadline.toml:ro" \
#     -v threadline-data:/var/lib/threadline \
#     --stop-timeout 60 threadline
#
# Needs BuildKit (the default builder since Docker 23) for the cache mounts.
# See docs/deployment.md.

# The toolchain the project builds and tests with (the workspace's
# rust-version, 1.90, is the oldest the locked dependencies accept).
ARG RUST_VERSION=1.95

# ---- build ------------------------------------------------------------
# Bookworm, like the runtime image below: the binary links against glibc,
# so it must not be built against a newer one than it runs on.
FROM rust:${RUST_VERSION}-slim-bookworm AS builder
WORKDIR /src
# The slim image's gcc is all the C parts need (aws-lc-sys, mimalloc);
# TLS is rustls and the CA roots are compiled in, so no OpenSSL.
COPY . .
# The registry and target directories are cache mounts, so a rebuild after a
# source change recompiles only the workspace's crates. A cache mount is not
# part of the image: the binary is copied out of it in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bin threadline \
    && install -D -m 0755 target/release/threadline /out/threadline \
    && install -d -m 0750 /out/data

# ---- run --------------------------------------------------------------
# distroless/cc: glibc and libgcc and nothing else (no shell, no package
# manager); the :nonroot tag runs as uid/gid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /out/threadline /usr/local/bin/threadline
# The data directory, owned by the node's user: a new named volume mounted
# here starts with this owner. A bind mount keeps the host directory's owner,
# which must then let uid 65532 write.
COPY --from=builder --chown=65532:65532 /out/data /var/lib/threadline
USER 65532:65532
WORKDIR /var/lib/threadline
# HTTP(S) (server.http). A cluster node also needs its [cluster] listen port
# reachable by its peers (the cluster configs in deploy/ use 7101-7103).
EXPOSE 8080
VOLUME ["/var/lib/threadline"]
# SIGTERM (the default stop signal) drains: up to 30 s for in-flight
# requests, up to 20 s more for a cluster node's hand-over, then the
# conversations and storage. Docker's default 10 s stop timeout is too
# short: run with --stop-timeout 60 (compose: stop_grace_period: 60s).
#
# No HEALTHCHECK: the image has no shell or HTTP client to run one, and the
# binary has no probe command. Probe GET /healthz (liveness) and
# GET /readyz (readiness) from the orchestrator or load balancer instead.
ENTRYPOINT ["threadline"]
# The config must be mounted at this path (see deploy/threadline.toml). It
# must set server.http to 0.0.0.0:8080 (the default 127.0.0.1 is unreachable
# from outside the container) and server.data_dir to /var/lib/threadline.
CMD ["serve", "--config", "/etc/threadline/threadline.toml"]
