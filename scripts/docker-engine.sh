#!/usr/bin/env bash
# Gets a working Docker engine on a Debian bookworm machine of the kind lookalike is developed and
# tested on: one that may ship a `docker` client but no daemon, cannot reach Docker Hub, and
# reaches the package registries through a TLS proxy with its own certificate authority.
# Safe to run again: every step first checks whether it is already done.
#
#   1. Debian's docker.io (dockerd, containerd, runc), docker-compose 1.29 and debootstrap, when
#      missing; `docker compose ...` is routed to docker-compose by a small CLI plugin.
#   2. dockerd, started in the background when no engine answers
#      (log: $DOCKERD_LOG, pid: $DOCKERD_PID; stop it with `kill "$(cat /tmp/lookalike-dockerd.pid)"`).
#   3. The two base images the Dockerfile names, made here instead of pulled:
#        debian:bookworm-slim   a debootstrap (minbase) of bookworm from this machine's apt mirror,
#                               trusting the same certificate authorities as this machine;
#        rust:1.95-bookworm     that, plus C build tools and this machine's Rust toolchain.
#      They stand in for the Docker Hub images of the same names; a machine that can pull those
#      needs none of this beyond a running engine.
#
# Never put a `# syntax=` line in a Dockerfile built here: it makes the builder pull an image.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

DOCKERD_LOG=${DOCKERD_LOG:-/tmp/lookalike-dockerd.log}
DOCKERD_PID=${DOCKERD_PID:-/tmp/lookalike-dockerd.pid}
SLIM_IMAGE=debian:bookworm-slim
RUST_IMAGE=rust:1.95-bookworm
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt

say() { printf 'docker-engine: %s\n' "$*"; }

install_packages() {
    local missing=()
    command -v dockerd > /dev/null || missing+=(docker.io)
    command -v docker-compose > /dev/null || missing+=(docker-compose)
    command -v debootstrap > /dev/null || missing+=(debootstrap)
    ((${#missing[@]} == 0)) && return
    say "installing ${missing[*]}"
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" > /dev/null
}

# The docker client runs `<plugin dir>/docker-compose docker-cli-plugin-metadata` to learn about a
# plugin, then `<plugin> compose ARGS...` for `docker compose ARGS...`.
install_compose_plugin() {
    local plugin=/usr/local/lib/docker/cli-plugins/docker-compose
    [[ -x $plugin ]] && return
    say "routing 'docker compose' to docker-compose"
    mkdir -p "$(dirname "$plugin")"
    cat > "$plugin" << 'SH'
#!/bin/sh
# `docker compose` -> Debian's docker-compose (v1), written by lookalike's scripts/docker-engine.sh.
if [ "$1" = docker-cli-plugin-metadata ]; then
    echo '{"SchemaVersion": "0.1.0", "Vendor": "Debian docker-compose", "Version": "1.29.2", "ShortDescription": "docker-compose v1"}'
    exit 0
fi
[ "$1" = compose ] && shift
exec /usr/bin/docker-compose "$@"
SH
    chmod 755 "$plugin"
}

start_engine() {
    docker info > /dev/null 2>&1 && return
    say "starting dockerd (log $DOCKERD_LOG)"
    nohup dockerd --storage-driver=overlay2 > "$DOCKERD_LOG" 2>&1 &
    echo $! > "$DOCKERD_PID"
    local waited=0
    until docker info > /dev/null 2>&1; do
        if ((waited >= 60)); then
            tail -n 30 "$DOCKERD_LOG" >&2
            say "dockerd did not answer within 60 s" >&2
            exit 1
        fi
        sleep 1
        waited=$((waited + 1))
    done
}

# The first Debian mirror this machine's apt uses (deb822 sources, or the one-line format).
apt_mirror() {
    local mirror=""
    if [[ -f /etc/apt/sources.list.d/debian.sources ]]; then
        mirror=$(awk '$1 == "URIs:" { print $2; exit }' /etc/apt/sources.list.d/debian.sources)
    fi
    if [[ -z $mirror && -f /etc/apt/sources.list ]]; then
        mirror=$(awk '$1 == "deb" { print $2; exit }' /etc/apt/sources.list)
    fi
    echo "${mirror:-http://deb.debian.org/debian}"
}

make_slim_image() {
    docker image inspect "$SLIM_IMAGE" > /dev/null 2>&1 && return
    local root mirror
    root=$(mktemp -d /var/tmp/lookalike-rootfs.XXXXXX)
    mirror=$(apt_mirror)
    say "making $SLIM_IMAGE: debootstrap of bookworm from $mirror"
    debootstrap --variant=minbase bookworm "$root" "$mirror" > /var/tmp/lookalike-debootstrap.log 2>&1 ||
        { tail -n 30 /var/tmp/lookalike-debootstrap.log >&2; exit 1; }
    # Slim like Docker Hub's -slim images: no manuals, docs (but copyrights) or translations, now
    # or from packages installed later.
    cat > "$root"/etc/dpkg/dpkg.cfg.d/lookalike-slim << 'SLIM'
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
SLIM
    rm -rf "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/* "$root"/usr/share/lintian/*
    find "$root"/usr/share/doc -mindepth 1 -not -name copyright -not -type d -delete
    # What a container gets from the engine or should not inherit from this machine.
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb
    rm -f "$root"/etc/hostname
    : > "$root"/etc/resolv.conf
    # Apt inside the image uses the same sources as this machine (security updates included).
    if [[ -f /etc/apt/sources.list.d/debian.sources ]]; then
        rm -f "$root"/etc/apt/sources.list
        cp /etc/apt/sources.list.d/debian.sources "$root"/etc/apt/sources.list.d/
    fi
    # Registries are reached through a TLS proxy: trust what this machine trusts. The local
    # authorities also go where update-ca-certificates finds them, so installing Debian's
    # ca-certificates in a later layer keeps them.
    mkdir -p "$root"/usr/local/share/ca-certificates "$root"/etc/ssl/certs
    find /usr/local/share/ca-certificates -maxdepth 1 -name '*.crt' -exec cp {} "$root"/usr/local/share/ca-certificates/ \;
    cp "$CA_BUNDLE" "$root$CA_BUNDLE"
    tar -C "$root" -c . | docker import \
        --change 'CMD ["bash"]' \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change "ENV SSL_CERT_FILE=$CA_BUNDLE CARGO_HTTP_CAINFO=$CA_BUNDLE PIP_CERT=$CA_BUNDLE" \
        - "$SLIM_IMAGE" > /dev/null
    rm -rf "$root"
}

make_rust_image() {
    docker image inspect "$RUST_IMAGE" > /dev/null 2>&1 && return
    local context sysroot toolchain
    context=$(mktemp -d /var/tmp/lookalike-rust-image.XXXXXX)
    # The toolchain `rustc` resolves to here (rustup's default, or a directory override).
    sysroot=$(rustc --print sysroot)
    toolchain=$(basename "$sysroot")
    say "making $RUST_IMAGE with the toolchain $toolchain"
    mkdir -p "$context/tree/rustup/toolchains" "$context/tree/cargo"
    cp -a "$sysroot" "$context/tree/rustup/toolchains/$toolchain"
    rm -rf "$context/tree/rustup/toolchains/$toolchain/share/doc"
    cp -a "$HOME/.cargo/bin" "$context/tree/cargo/bin"
    cat > "$context/tree/rustup/settings.toml" << EOF
version = "12"
default_toolchain = "$toolchain"
profile = "minimal"
auto_self_update = "disable"
EOF
    tar -C "$context/tree" -cf "$context/rust.tar" rustup cargo
    rm -rf "$context/tree"
    # Laid out like the Docker Hub image: RUSTUP_HOME and CARGO_HOME under /usr/local.
    cat > "$context/Dockerfile" << EOF
FROM $SLIM_IMAGE
RUN apt-get update \\
    && apt-get install -y --no-install-recommends ca-certificates curl git gcc g++ libc6-dev make pkg-config libssl-dev \\
    && rm -rf /var/lib/apt/lists/*
ADD rust.tar /usr/local/
ENV RUSTUP_HOME=/usr/local/rustup CARGO_HOME=/usr/local/cargo \\
    PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
EOF
    # (The legacy builder's deprecation notice is only shown when the build fails.)
    docker build --quiet --tag "$RUST_IMAGE" "$context" > /dev/null 2> "$context/build.log" ||
        { cat "$context/build.log" >&2; exit 1; }
    rm -rf "$context"
}

install_packages
install_compose_plugin
start_engine
make_slim_image
make_rust_image
docker version --format 'docker-engine: ready (client {{.Client.Version}}, engine {{.Server.Version}})'
