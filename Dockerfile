# syntax=docker/dockerfile:1
# tollgate: a multi-stage build and a small non-root runtime image with the default config and a health check.
#   docker build -t tollgate .
#   docker run -d --name tollgate -p 127.0.0.1:3128:3128 tollgate            # deploy/docker/tollgate.yaml
#   docker run -d -p 3128:3128 -v $PWD/myconfig:/etc/tollgate:ro tollgate   # your own config (tollgate.yaml)
# docs/deploy.md ("Docker") says what was verified of this file and what was not.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# The registry and target caches persist between builds (BuildKit); the binary is copied out of them.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin tollgate \
    && install -D -m 0755 target/release/tollgate /out/tollgate \
    && strip /out/tollgate

FROM debian:bookworm-slim
# ca-certificates: the system roots for upstream TLS (upstream.trust.system_roots). No curl: the health check
# below needs only bash, which the image has.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 tollgate \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/tollgate --create-home \
       --shell /usr/sbin/nologin tollgate \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/tollgate/var
COPY --from=build /out/tollgate /usr/local/bin/tollgate
COPY deploy/docker/tollgate.yaml /etc/tollgate/tollgate.yaml
USER 10001:10001
WORKDIR /var/lib/tollgate
ENV TOLLGATE_CONFIG=/etc/tollgate/tollgate.yaml
EXPOSE 3128
# The audit file and the embedded state: keep them on a named volume (-v tollgate-var:/var/lib/tollgate/var);
# with it the container also runs with --read-only.
VOLUME ["/var/lib/tollgate/var"]
# Healthy while /readyz on the admin listener (127.0.0.1:9191 in the default config) answers 200.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["/bin/bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9191 && printf 'GET /readyz HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]
# SIGTERM (docker stop): no new connections, open tunnels get server.shutdown_grace, audit records are written.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/tollgate"]
CMD ["run", "--log-format", "json"]
