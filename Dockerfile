# tollgate: multi-stage build, small non-root runtime image.
#   docker build -t tollgate .
#   docker run -p 3128:3128 -v $PWD/config:/etc/tollgate:ro tollgate run -c /etc/tollgate/tollgate.yaml
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock rustfmt.toml ./
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --bin tollgate && strip target/release/tollgate

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/tollgate --create-home tollgate
COPY --from=build /src/target/release/tollgate /usr/local/bin/tollgate
COPY config/tollgate.yaml /etc/tollgate/tollgate.yaml
USER 10001:10001
WORKDIR /var/lib/tollgate
ENV TOLLGATE_CONFIG=/etc/tollgate/tollgate.yaml
EXPOSE 3128 9191
ENTRYPOINT ["/usr/local/bin/tollgate"]
CMD ["run"]
