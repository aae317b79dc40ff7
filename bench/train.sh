#!/usr/bin/env bash
# Triplet training steps/s: lookalike against PyTorch taking the same step on the same data, from
# the same initial weights, printed as one table with the ratio (goal of issue 4: ≥ 1.0) and how
# far the two sides' losses and forward passes agree.
#
#   bash bench/train.sh [--tiny]
#
# Two rows:
#   head-only        the finetune job's step (train_head): P×K = 8×4 batch, Linear 1280→128, L2
#                    normalisation, batch-hard triplet loss (margin 0.2), AdamW (lr 1e-3, weight
#                    decay 0.01), on the Lite0 features (64 px) of the 60,000 Fashion-MNIST training
#                    images that the mining experiment caches
#   last block+head  the same step with Lite0's last MBConv block and head convolution trained too
#                    (train::tail), on the activations entering that block for 1,000 images
# bench/src/bin/train_bench.rs times lookalike and writes the initial weights, inputs and batches to
# $BENCH_DATA/<part>; bench/train/peer.py runs the torch step on them; bench/train/table.py prints
# the table. Raw JSON lines: bench/out/train.jsonl (--tiny: bench/out/train-tiny.jsonl).
# --tiny: 200 / 100 images and a few steps, the dev build, for CI (seconds after the build).
#
# PyTorch is Debian's python3-torch (CPU) under /usr/bin/python3, run at its best: OpenBLAS
# (libopenblas0-pthread, one OpenBLAS thread) instead of the reference BLAS, torch on $THREADS
# threads; both are installed with apt when missing. lookalike runs on $THREADS rayon threads.
# Settings (environment): THREADS (2), BENCH_DATA (/var/tmp/lookalike-bench/train), FEATURES_DIR
# (/var/tmp/lookalike-experiment), HEAD_STEPS (1000), TAIL_STEPS (200), TAIL_PER_LABEL (100),
# CHANNELS_LAST (0: torch's tail in its default memory format; 1: channels_last).
set -euo pipefail
cd "$(dirname "$0")/.."
tiny=false
if [[ "${1:-}" == "--tiny" ]]; then tiny=true; fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/lookalike-target}"
threads=${THREADS:-2}
data=${BENCH_DATA:-/var/tmp/lookalike-bench/train}
python=/usr/bin/python3
openblas=/usr/lib/x86_64-linux-gnu/openblas-pthread
out=bench/out
mkdir -p "$out" "$data"

if ! "$python" -c "import torch, numpy" 2> /dev/null || [[ ! -e "$openblas/libblas.so.3" ]]; then
    echo "== installing the PyTorch peer: apt-get install python3-torch libopenblas0-pthread" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-torch libopenblas0-pthread
fi
bash scripts/test-assets.sh > /dev/null

if $tiny; then
    # The dev profile (optimised too, see Cargo.toml) the test suite has already built.
    cargo build --quiet -p lookalike-bench --bin train_bench
    bench_bin="$CARGO_TARGET_DIR/debug/train_bench"
    results="$out/train-tiny.jsonl"
    head_args=(--per-label 20 --warmup 2 --steps 10)
    tail_args=(--per-label 10 --warmup 2 --steps 5)
else
    cargo build --quiet --release -p lookalike-bench --bin train_bench
    bench_bin="$CARGO_TARGET_DIR/release/train_bench"
    results="$out/train.jsonl"
    head_args=(--per-label 0 --warmup 50 --steps "${HEAD_STEPS:-1000}")
    tail_args=(--per-label "${TAIL_PER_LABEL:-100}" --warmup 10 --steps "${TAIL_STEPS:-200}")
fi

: > "$results"
echo "== $(nproc) cores; lookalike on $threads rayon threads, torch on $threads threads + 1 OpenBLAS thread" >&2
for part in head tail; do
    if [[ $part == head ]]; then args=("${head_args[@]}"); else args=("${tail_args[@]}"); fi
    echo "-- $part: lookalike, from $(date +%T)" >&2
    RAYON_NUM_THREADS=$threads "$bench_bin" "$part" "$data/$part" "${args[@]}" | tee -a "$results" >&2
    echo "-- $part: pytorch, from $(date +%T)" >&2
    LD_LIBRARY_PATH="$openblas${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" OPENBLAS_NUM_THREADS=1 THREADS=$threads \
        "$python" bench/train/peer.py "$data/$part" | tee -a "$results" >&2
done
echo "-- done at $(date +%T)" >&2
"$python" bench/train/table.py "$results"
