#!/usr/bin/env bash
# Wall time and held-out gain of a default finetune job through the real
# server, on a label-balanced Fashion-MNIST catalogue:
#
#   bash bench/finetune_time.sh [CATALOGUE_PER_LABEL] [INPUT_SIZE] [KEY=VALUE ...]
#
# Defaults: 1,000 per label (10,000 items) at 64 px. Extra arguments are job
# params (`epochs=20`, `mining=batch-hard`, ...). Ingests, runs
# `lookalike finetune`, then evaluates the official test queries through HTTP
# with the promoted model. Prints the job's per-stage seconds; writes
# bench/out/finetune-*.json. QUERIES_PER_LABEL (default 100) sets the test queries.
set -euo pipefail
cd "$(dirname "$0")/.."
per_label=${1:-1000}
input_size=${2:-64}
shift $(( $# < 2 ? $# : 2 ))
params=()
for pair in "$@"; do params+=(--param "$pair"); done
source bench/server.sh
"$bin/lookalike-data" fashion-mnist --out "$work/fmnist" --catalogue-per-label "$per_label" \
    --queries-per-label "${QUERIES_PER_LABEL:-100}"
start_server
echo "== $((per_label * 10)) catalogue items at $input_size px; $(nproc) cores"
"$bin/lookalike" ingest "$work/fmnist/catalogue.zip" --dataset fashion --server "$url"
queries=$(( ${QUERIES_PER_LABEL:-100} * 10 ))
echo "== pretrained model: $queries test queries"
"$bin/lookalike" eval --dataset fashion --queries "$work/fmnist/queries" --server "$url" --json "$out/finetune-eval-before.json"
echo "== finetune ${params[*]:-(defaults)}"
/usr/bin/time -f "finetune command wall time: %e s" \
    "$bin/lookalike" finetune --dataset fashion --server "$url" "${params[@]}"
curl -fs "$url/jobs?dataset=fashion&kind=finetune" > "$out/finetune-job.json"
python3 - "$out/finetune-job.json" <<'PY'
import json, sys
job = json.load(open(sys.argv[1]))["jobs"][0]
print("stage seconds:", ", ".join(f"{k} {v:.1f}" for k, v in job["result"]["seconds"].items()))
print("training:", json.dumps(job["result"]["training"]))
print("mining thresholds:", json.dumps(job["result"]["mining"]["thresholds"]))
PY
echo "== active model: the same $queries test queries"
"$bin/lookalike" eval --dataset fashion --queries "$work/fmnist/queries" --server "$url" --json "$out/finetune-eval-after.json"
