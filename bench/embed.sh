#!/usr/bin/env bash
# Embedding throughput: lookalike's Lite0 forward pass (candle, bench/src/bin/embed_bench.rs)
# against PyTorch CPU running the same weights file (bench/embed/peer_torch.py), same input size,
# batch sizes and thread count, in one run, with the ratio. Also checks that both give the
# same features for the same pixels (max abs difference, fails above 1e-3).
#
#   bash bench/embed.sh [--tiny]
#
# PyTorch is Debian's python3-torch (installed with apt when missing), run at its best as
# ../shared/DATA.md describes: OpenBLAS (libopenblas0-pthread) instead of the reference
# BLAS, one OpenBLAS thread beside torch.set_num_threads(THREADS), batch norm folded, and
# three set-ups timed (eager, channels_last, channels_last + jit freeze); the table takes
# PyTorch's fastest per batch size.
#
# Settings (environment): SIZE (224), BATCHES ("1,32"), THREADS (nproc), MIN_IMAGES (64),
# MIN_ROUNDS (5), LOOKALIKE_ASSETS (/var/tmp/lookalike-assets). --tiny: 64 px, batches 1
# and 2, two rounds: checks that the script runs (seconds), measures nothing.
# Raw JSON lines go to bench/out/embed.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
tiny=false
if [[ "${1:-}" == "--tiny" ]]; then tiny=true; fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/lookalike-target}"
assets=${LOOKALIKE_ASSETS:-/var/tmp/lookalike-assets}
threads=${THREADS:-$(nproc)}
out=bench/out
mkdir -p "$out"
torch_py=/usr/bin/python3
openblas=/usr/lib/x86_64-linux-gnu/openblas-pthread

if ! LD_LIBRARY_PATH=$openblas "$torch_py" -c "import torch, numpy" 2> /dev/null || [[ ! -d $openblas ]]; then
    echo "== installing the PyTorch peer: apt-get install python3-torch libopenblas0-pthread"
    apt-get install -y -qq python3-torch python3-numpy libopenblas0-pthread > /dev/null
fi

bash scripts/test-assets.sh
pth="$assets/efficientnet-lite0-57934424.pth"
weights="$assets/efficientnet-lite0.safetensors"
if $tiny; then
    size=64 batches=1,2 min_images=2 min_rounds=2
    cargo build --quiet -p lookalike -p lookalike-bench --bin lookalike --bin embed_bench
    bin="$CARGO_TARGET_DIR/debug"
else
    size=${SIZE:-224} batches=${BATCHES:-1,32} min_images=${MIN_IMAGES:-64} min_rounds=${MIN_ROUNDS:-5}
    cargo build --quiet --release -p lookalike -p lookalike-bench --bin lookalike --bin embed_bench
    bin="$CARGO_TARGET_DIR/release"
fi
[[ -f "$weights" ]] || "$bin/lookalike" import-weights "$pth" "$weights"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$torch_py" -c "
import numpy as np
np.random.default_rng(0).standard_normal((4, 3, $size, $size), dtype=np.float32).astype('<f4').tofile('$work/pixels.f32')"

echo "== $(nproc) cores, $threads threads each; $size px; batches $batches"
raw="$out/embed.jsonl"
RAYON_NUM_THREADS=$threads "$bin/embed_bench" "$weights" --device cpu --size "$size" --batches "$batches" \
    --min-images "$min_images" --min-rounds "$min_rounds" \
    --check-input "$work/pixels.f32" --check-output "$work/lookalike.f32" | tee "$raw"
LD_LIBRARY_PATH=$openblas OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=$threads \
    "$torch_py" bench/embed/peer_torch.py --weights "$weights" --device cpu --size "$size" --batches "$batches" \
    --threads "$threads" --min-images "$min_images" --min-rounds "$min_rounds" \
    --check-input "$work/pixels.f32" --check-output "$work/pytorch.f32" | tee -a "$raw"

"$torch_py" bench/embed/table.py "$raw" "$work/lookalike.f32" "$work/pytorch.f32"
