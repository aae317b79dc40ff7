#!/usr/bin/env bash
# Tests the web page in a real headless Chromium against a real server with a
# small Fashion-MNIST catalogue. Installs Chromium (Debian) and playwright-core
# (npm) when missing. Called by scripts/test.sh after the Rust tests.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
if ! command -v chromium > /dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium > /dev/null
fi
(cd tests/browser && npm ci --no-audit --no-fund --silent)
cargo build --quiet --locked -p lookalike -p lookalike-bench --bin lookalike --bin lookalike-data
bin="$CARGO_TARGET_DIR/debug"
work=$(mktemp -d)
trap 'kill "$server" 2>/dev/null || true; rm -rf "$work"' EXIT
"$bin/lookalike-data" fashion-mnist --out "$work/data" --catalogue-per-label 20 --queries-per-label 1 > /dev/null
assets="${LOOKALIKE_ASSETS:-/var/tmp/lookalike-assets}"
weights="$work/lite0.safetensors"
"$bin/lookalike" import-weights "$assets/efficientnet-lite0-57934424.pth" "$weights" > /dev/null
port=$((20000 + RANDOM % 20000))
LOOKALIKE__SERVER__ADDR=127.0.0.1:$port LOOKALIKE__DATA_DIR="$work/srv" LOOKALIKE__MODEL__INPUT_SIZE=64 \
    LOOKALIKE__MODEL__WEIGHTS="$weights" "$bin/lookalike" serve 2> "$work/server.log" &
server=$!
for _ in $(seq 240); do curl -fs "http://127.0.0.1:$port/readyz" > /dev/null && break; sleep 0.25; done
"$bin/lookalike" ingest "$work/data/catalogue.zip" --dataset fashion --server "http://127.0.0.1:$port" > /dev/null
query=$(find "$work/data/queries/sneaker" -name '*.png' | head -1)
(cd tests/browser && LOOKALIKE_URL="http://127.0.0.1:$port" QUERY_IMAGE="$query" node --test)
