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
# agentd: statically linked (crt-static) so it runs in a FROM-scratch image.
RUN set -eux; \
    cargo build --release -p colony; \
    triple="$(uname -m)-unknown-linux-gnu"; \
    RUSTFLAGS="-C target-feature=+crt-static" \
        cargo build --release -p agentd --target "$triple"; \
    mkdir -p /out; \
    cp target/release/colony /out/colony; \
    cp "target/$triple/release/agentd" /out/agentd; \
    if ldd /out/agentd >/dev/null 2>&1; then echo "agentd is not static" >&2; exit 1; fi

# ---------------------------------------------------------------- agent rootfs
FROM debian:bookworm-slim AS agent-rootfs
RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends busybox-static; \
    rm -rf /var/lib/apt/lists/*; \
    mkdir -p /rootfs/bin /rootfs/etc /rootfs/tmp /rootfs/workspace /rootfs/run/colony; \
    cp /bin/busybox /rootfs/bin/busybox; \
    for applet in $(/bin/busybox --list); do \
        [ -e "/rootfs/bin/$applet" ] || ln -s busybox "/rootfs/bin/$applet"; \
    done; \
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/workspace:/bin/sh\n' > /rootfs/etc/passwd; \
    printf 'root:x:0:\nnobody:x:65534:\n' > /rootfs/etc/group; \
    chmod 1777 /rootfs/tmp; \
    chown 65534:65534 /rootfs/workspace /rootfs/run/colony

# ---------------------------------------------------------------- agentd-image
# What the worker runs each task in: busybox, agentd, an unprivileged user.
# agentd serves /run/colony/agent.sock (bind-mounted per container by the
# worker) and runs requests in /workspace. Docker's --init (tini) is PID 1.
FROM scratch AS agentd-image
COPY --from=agent-rootfs /rootfs/ /
COPY --from=build /out/agentd /usr/local/bin/agentd
ENV PATH=/usr/local/bin:/bin
WORKDIR /workspace
USER 65534:65534
ENTRYPOINT ["/usr/local/bin/agentd"]

# ---------------------------------------------------------------- colony (default)
FROM debian:bookworm-slim
RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends ca-certificates; \
    rm -rf /var/lib/apt/lists/*
COPY --from=build /out/colony /usr/local/bin/colony
ENV COLONY_HTTP_ADDR=0.0.0.0:8080
EXPOSE 8080
ENTRYPOINT ["colony"]
CMD ["all"]
