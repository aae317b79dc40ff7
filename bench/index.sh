#!/usr/bin/env bash
# lookalike's index (VectorIndex) with each of its engines (`lookalike`: its own HNSW graph, the
# default; `hnsw_rs`: the hnsw_rs crate's) against hnswlib and faiss-cpu HNSW on the same
# vectors, queries and exact ground truth: recall@10 and queries/s per ef, build time, index
# and peak memory, with ratios against hnswlib from this same run.
#
#   bash bench/index.sh [--tiny]
#
# Datasets (bench/index/data.py writes them once under $BENCH_DATA and reuses them):
#   fashion-<Q>q      the 60,000 Fashion-MNIST train features the experiment cached
#                     (lite0 at 64 px, 1280-d) as the catalogue, the first Q of the 10,000
#                     test features as queries; skipped when the cache is missing
#   synthetic-<N>-<Q>q  N clustered unit vectors, 128-d, 1,000 clusters, Q queries from the
#                     same mixture
# --tiny: only a 5,000-vector synthetic set and three ef values, for CI (seconds).
#
# Settings (environment): SYNTHETIC_N (1000000), SYNTHETIC_QUERIES (10000), FASHION_QUERIES
# (2000), DATASETS ("fashion synthetic": which to run), EFS
# ("10 20 40 80 160 320"), BUILD_THREADS (all cores; every engine builds with this many, and
# answers queries on one thread), BENCH_DATA (/var/tmp/lookalike-bench/index), BENCH_VENV
# (/var/tmp/lookalike-bench-venv, created with faiss-cpu, hnswlib and numpy from pip when
# missing), FEATURES_DIR (/var/tmp/lookalike-experiment), ENGINES ("native hnsw_rs
# hnswlib faiss": which engines to run), BENCH_PROFILE (release; "dev" reuses the test build,
# optimised too, when a release build costs more than the run). Raw lines go to
# bench/out/index.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
tiny=false
if [[ "${1:-}" == "--tiny" ]]; then tiny=true; fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/lookalike-target}"
venv=${BENCH_VENV:-/var/tmp/lookalike-bench-venv}
data=${BENCH_DATA:-/var/tmp/lookalike-bench/index}
features=${FEATURES_DIR:-/var/tmp/lookalike-experiment}
threads=${BUILD_THREADS:-$(nproc)}
out=bench/out
mkdir -p "$out" "$data"

if ! "$venv/bin/python" -c "import faiss, hnswlib, numpy" 2> /dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet faiss-cpu hnswlib numpy
fi
py="$venv/bin/python"
# --tiny only checks that everything still runs: the dev profile (optimised too, see
# Cargo.toml) is what the test suite has already built.
if $tiny || [[ "${BENCH_PROFILE:-release}" == dev ]]; then
    cargo build --quiet -p lookalike-bench --bin index_bench
    bench_bin="$CARGO_TARGET_DIR/debug/index_bench"
else
    cargo build --quiet --release -p lookalike-bench --bin index_bench
    bench_bin="$CARGO_TARGET_DIR/release/index_bench"
fi

datasets=()
if $tiny; then
    efs=${EFS:-10 20 40}
    datasets+=(synthetic-tiny)
    [[ -f "$data/synthetic-tiny/truth.knn" ]] ||
        "$py" bench/index/data.py --out "$data/synthetic-tiny" synthetic --n 5000 --clusters 50 --queries 200
else
    efs=${EFS:-10 20 40 80 160 320}
    queries=${FASHION_QUERIES:-2000}
    wanted=${DATASETS:-fashion synthetic}
    train=$(compgen -G "$features/*-train-60000.f32" | head -n 1 || true)
    test=$(compgen -G "$features/*-t10k-10000.f32" | head -n 1 || true)
    if [[ " $wanted " != *" fashion "* ]]; then
        :
    elif [[ -n "$train" && -n "$test" ]]; then
        datasets+=("fashion-${queries}q")
        [[ -f "$data/fashion-${queries}q/truth.knn" ]] ||
            "$py" bench/index/data.py --out "$data/fashion-${queries}q" fashion \
                --train "$train" --test "$test" --queries "$queries"
    else
        echo "no cached Fashion-MNIST features in $features (run the experiment first): skipping" >&2
    fi
    n=${SYNTHETIC_N:-1000000}
    synthetic_queries=${SYNTHETIC_QUERIES:-10000}
    name="synthetic-$n-${synthetic_queries}q"
    if [[ " $wanted " == *" synthetic "* ]]; then
        datasets+=("$name")
        [[ -f "$data/$name/truth.knn" ]] ||
            "$py" bench/index/data.py --out "$data/$name" synthetic --n "$n" --queries "$synthetic_queries"
    fi
fi

results="$out/index.jsonl"
: > "$results"
echo "== $(nproc) cores; builds on $threads threads, queries on 1; ef: $efs" >&2
for dataset in "${datasets[@]}"; do
    # One process per engine, so that each peak memory figure is that engine's alone.
    # shellcheck disable=SC2086 # $efs is a list of numbers
    {
        for engine in ${ENGINES:-native hnsw_rs hnswlib faiss}; do
            echo "-- $dataset: $engine, from $(date +%T)" >&2
            case "$engine" in
                native | hnsw_rs) "$bench_bin" --engine "$engine" "$data/$dataset" "$threads" $efs ;;
                *) "$py" bench/index/peers.py "$engine" "$data/$dataset" "$threads" $efs ;;
            esac
        done
    } | tee -a "$results" >&2
done
echo "-- done at $(date +%T)" >&2
"$py" bench/index/table.py "$results"
