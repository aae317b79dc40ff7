#!/usr/bin/env bash
# Baseline quality and speed on Fashion-MNIST through the real server:
# the catalogue is the training split, the queries the official test split.
#
#   bash bench/fashion_eval.sh [CATALOGUE_PER_LABEL] [QUERIES_PER_LABEL] [INPUT_SIZE]
#
# 0 per label means the whole split (6,000 and 1,000 per label). Prints the
# ingest result, the `lookalike eval` table (k = R, for MAP@R) and a latency
# pass of ordinary k = 10 searches from one client; writes bench/out/*.json.
set -euo pipefail
cd "$(dirname "$0")/.."
per_label=${1:-0}
queries_per_label=${2:-0}
input_size=${3:-64}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/lookalike-target}"
cargo build --quiet --bins
bin="$CARGO_TARGET_DIR/debug"
work=$(mktemp -d)
out=bench/out
mkdir -p "$out"
trap 'kill "$server" 2>/dev/null || true; rm -rf "$work"' EXIT

"$bin/lookalike-data" fashion-mnist --out "$work/fmnist" \
    --catalogue-per-label "$per_label" --queries-per-label "$queries_per_label"
port=$((20000 + RANDOM % 20000))
export LOOKALIKE__SERVER__ADDR=127.0.0.1:$port LOOKALIKE__DATA_DIR="$work/data" LOOKALIKE__MODEL__INPUT_SIZE=$input_size
if [[ -n "${LOOKALIKE_WEIGHTS:-}" ]]; then export LOOKALIKE__MODEL__WEIGHTS="$LOOKALIKE_WEIGHTS"; fi
"$bin/lookalike" serve 2> "$work/server.log" &
server=$!
for _ in $(seq 600); do
    curl -fs "http://127.0.0.1:$port/readyz" > /dev/null && break
    sleep 0.5
done
echo "== input size $input_size px, catalogue per label: ${per_label:-all}, queries per label: ${queries_per_label:-all}"
"$bin/lookalike" ingest "$work/fmnist/catalogue.zip" --dataset fashion --server "http://127.0.0.1:$port"
curl -fs "http://127.0.0.1:$port/jobs?dataset=fashion" > "$out/ingest-$input_size.json"
"$bin/lookalike" eval --dataset fashion --queries "$work/fmnist/queries" --server "http://127.0.0.1:$port" \
    --json "$out/eval-$input_size.json"
echo "== ordinary searches (k = 10), one client at a time: latency"
"$bin/lookalike" eval --dataset fashion --queries "$work/fmnist/queries" --server "http://127.0.0.1:$port" \
    --k 10 --concurrency 1 --limit 2000 --json "$out/latency-$input_size.json"
