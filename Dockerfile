# Colony images, for hosts that can pull base images (see docker-compose.yml).
#   docker build -t colony/colony:dev .                             # the colony binary (default, last stage)
#   docker build --target agentd-image -t colony/agentd:dev .       # the agent image workers run tasks in
# On a machine without a registry, ops/build-agentd-image builds the agent
# image from the host's static agentd and busybox instead.

# ---------------------------------------------------------------- build
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# colony: dynamically linked against glibc (runs on debian:bookworm-slim).
# agentd: static (crt-static; a static-pie) so it runs on `scratch`.
RUN set -eux; \
    cargo build --release -p colony; \
    triple="$(uname -m)-unknown-linux-gnu"; \
    RUSTFLAGS="-C target-feature=+crt-static" \
        cargo build --release -p agentd --target "$triple"; \
    mkdir -p /out; \
    cp target/release/colony /out/colony; \
    strip -o /out/agentd "target/$triple/release/agentd"; \
    ldd /out/agentd 2>&1 | grep -qE 'statically linked|not a dynamic executable'

# ---------------------------------------------------------------- busybox
FROM debian:bookworm-slim AS busybox
RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends busybox-static; \
    rm -rf /var/lib/apt/lists/*

# ---------------------------------------------------------------- agentd-image
# The image tasks run in. Same layout as images/agentd/Dockerfile (which
# ops/build-agentd-image builds from the host's binaries without a registry):
# a static busybox, agentd, nobody (65534). agentd serves
# /run/colony/agent/agent.sock (the worker bind-mounts a per-container host
# dir, root's with an agent/ subdirectory for the container, there), runs
# requests in /workspace and kills what a run leaves behind (--sweep);
# docker's --init (tini) is PID 1.
FROM scratch AS agentd-image
COPY --from=busybox /bin/busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
COPY images/agentd/passwd images/agentd/group /etc/
COPY --from=build /out/agentd /usr/local/bin/agentd
RUN ["/bin/sh", "-c", "set -e; \
    mkdir -p /workspace /tmp /run/colony; \
    chown 65534:65534 /workspace; \
    chmod 0700 /workspace; \
    chmod 0755 /run/colony; \
    chmod 1777 /tmp; \
    chmod 0644 /etc/passwd /etc/group; \
    chmod 0755 /usr/local/bin/agentd"]
USER 65534:65534
WORKDIR /workspace
ENTRYPOINT ["/usr/local/bin/agentd", "--sweep"]

# ---------------------------------------------------------------- colony (default)
FROM debian:bookworm-slim
RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends ca-certificates; \
    rm -rf /var/lib/apt/lists/*
COPY --from=build /out/colony /usr/local/bin/colony
COPY roles /etc/colony/roles
ENV COLONY_HTTP_ADDR=0.0.0.0:8080 COLONY_ROLES_DIR=/etc/colony/roles
EXPOSE 8080
ENTRYPOINT ["colony"]
CMD ["all"]
