#!/usr/bin/env bash
# POST /search under load, through a real server with its embedded defaults
# (224 px input, the real pretrained Lite0 weights, dynamic batching on),
# a real Fashion-MNIST catalogue and real Fashion-MNIST test images as queries:
#
#   bash bench/http_load.sh [CATALOGUE_PER_LABEL] [SECONDS_PER_ROW]
#   bash bench/http_load.sh --tiny          # CI smoke run: 50 items, 1 s rows
#
# Defaults: 300 per label (3,000 items), 20 s per row. Needs `hey`
# (`apt-get install -y hey`). Each client is one `hey -c 1` process sending the
# raw PNG (`Content-Type: image/png`), cycling through its own query images.
# Rows, in one run:
#   1, 8, 32 clients    defaults (max_batch 32)
#   32 clients          LOOKALIKE__EMBEDDER__MAX_BATCH=1 (batching off)
#   overload            LOOKALIKE__EMBEDDER__QUEUE_CAPACITY=4, 64 clients,
#   after               then 1 client on the same server
# Prints requests/s, p50/p99 and, from /metrics before and after each row,
# the server's mean time per answered search in each stage (read, decode,
# queue, forward, index). Raw hey CSVs and metrics: bench/out/http_load/.
# LOOKALIKE_WEIGHTS: the weights (default: the test assets' safetensors when
# present, else the server fetches them).
set -euo pipefail
cd "$(dirname "$0")/.."
per_label=300
seconds=20
queries_per_label=10
overload_clients=64
overload_capacity=4
tiny=false
if [[ "${1:-}" == --tiny ]]; then
    tiny=true
    per_label=5 seconds=1 queries_per_label=2 overload_clients=16 overload_capacity=2
    shift
fi
per_label=${1:-$per_label}
seconds=${2:-$seconds}
input_size=224
# Each client switches query image this many times per row.
slices=$(( seconds >= 8 ? 4 : 1 ))
command -v hey > /dev/null || { echo "bench/http_load.sh needs hey: apt-get install -y hey" >&2; exit 1; }
assets_weights="${LOOKALIKE_ASSETS:-/var/tmp/lookalike-assets}/efficientnet-lite0.safetensors"
if [[ -z "${LOOKALIKE_WEIGHTS:-}" && -f "$assets_weights" ]]; then export LOOKALIKE_WEIGHTS="$assets_weights"; fi
# Full runs measure the release build, the one the service ships; --tiny reuses the test build.
if [[ -z "${BENCH_PROFILE:-}" && "$tiny" == false ]]; then export BENCH_PROFILE=release; fi
source bench/server.sh
raw="$out/http_load"
rm -rf "$raw"
mkdir -p "$raw"
"$bin/lookalike-data" fashion-mnist --out "$work/fmnist" \
    --catalogue-per-label "$per_label" --queries-per-label "$queries_per_label" > /dev/null
mapfile -t queries < <(find "$work/fmnist/queries" -name '*.png' | sort)

# load ROW CLIENTS SECONDS: CLIENTS one-connection hey processes for SECONDS;
# writes $raw/ROW.*.csv, the metrics before and after, and a line of rows.tsv.
load() {
    local row=$1 clients=$2 secs=$3 pids=() j s
    local slice
    slice=$(python3 -c "print($secs / $slices)")
    curl -fs "$url/metrics" > "$raw/$row.before.prom"
    local start end
    start=$(date +%s.%N)
    for ((j = 0; j < clients; j++)); do
        (
            for ((s = 0; s < slices; s++)); do
                image=${queries[$(( (j + s * clients) % ${#queries[@]} ))]}
                hey -z "${slice}s" -c 1 -t 60 -m POST -T image/png -D "$image" -o csv \
                    "$url/search?dataset=fashion&k=10" | tail -n +2
            done > "$raw/$row.$j.csv"
        ) &
        pids+=($!)
    done
    wait "${pids[@]}"
    end=$(date +%s.%N)
    curl -fs "$url/metrics" > "$raw/$row.after.prom"
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$row" "$clients" "$max_batch" "$capacity" "$start" "$end" >> "$raw/rows.tsv"
}

# serve MAX_BATCH QUEUE_CAPACITY: (re)starts the server on the same data.
serve() {
    if [[ -n "$server" ]]; then
        kill "$server"
        wait "$server" 2> /dev/null || true
        server=
    fi
    max_batch=$1 capacity=$2
    export LOOKALIKE__EMBEDDER__MAX_BATCH=$max_batch LOOKALIKE__EMBEDDER__QUEUE_CAPACITY=$capacity
    start_server
    # Untimed warm-up: first passes allocate the model's buffers.
    hey -n 8 -c 4 -m POST -T image/png -D "${queries[0]}" "$url/search?dataset=fashion&k=10" > /dev/null
}

serve 32 256
echo "== $((per_label * 10)) catalogue items at $input_size px; $(nproc) cores; $seconds s per row"
"$bin/lookalike" ingest "$work/fmnist/catalogue.zip" --dataset fashion --server "$url" > /dev/null
hey -n 8 -c 4 -m POST -T image/png -D "${queries[0]}" "$url/search?dataset=fashion&k=10" > /dev/null
load c1 1 "$seconds"
load c8 8 "$seconds"
load c32 32 "$seconds"
serve 1 256
load c32-nobatch 32 "$seconds"
serve 32 "$overload_capacity"
load overload "$overload_clients" "$seconds"
load after 1 "$(( seconds < 4 ? 1 : seconds / 4 ))"
python3 bench/http_load_table.py "$raw" | tee "$out/http_load.md"
