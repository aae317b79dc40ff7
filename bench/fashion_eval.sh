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
source bench/server.sh
"$bin/lookalike-data" fashion-mnist --out "$work/fmnist" \
    --catalogue-per-label "$per_label" --queries-per-label "$queries_per_label"
start_server
echo "== input size $input_size px, catalogue per label: ${per_label:-all}, queries per label: ${queries_per_label:-all}"
"$bin/lookalike" ingest "$work/fmnist/catalogue.zip" --dataset fashion --server "$url"
curl -fs "$url/jobs?dataset=fashion" > "$out/ingest-$input_size.json"
"$bin/lookalike" eval --dataset fashion --queries "$work/fmnist/queries" --server "$url" \
    --json "$out/eval-$input_size.json"
echo "== ordinary searches (k = 10), one client at a time: latency"
"$bin/lookalike" eval --dataset fashion --queries "$work/fmnist/queries" --server "$url" \
    --k 10 --concurrency 1 --limit 2000 --json "$out/latency-$input_size.json"
