#!/usr/bin/env bash
# Before/after: lookalike at an earlier commit against this checkout, counted in instructions
# (valgrind's callgrind), which the other processes on the machine do not change. Two parts:
#   embed  one 224 px forward pass (batch 1, one thread): the instructions of a 12-pass run of
#          embed_bench minus those of a 4-pass run, over the 8 passes between them;
#   index  500 searches at ef 80 on 10,000 synthetic 128-d vectors (one build thread): an
#          index_bench run with ef "80 80 80" minus one with "80", over the 2 extra passes; and
#          the whole 1-pass run (build, load, one pass) for the build side.
# valgrind does not run AVX-512: both sides take their AVX2/FMA kernels, so this compares the code,
# not this machine's fastest path. Wall-clock tables are bench/embed.sh and bench/index.sh.
#
#   bash bench/ab.sh OLD_REV      e.g. bash bench/ab.sh 776ed23
#
# OLD_REV is checked out in a worktree under $AB_DIR (default /var/tmp/lookalike-ab) and built in
# release into the same CARGO_TARGET_DIR (its benches were examples/ before they moved to bench/).
set -euo pipefail
cd "$(dirname "$0")/.."
old_rev=${1:?usage: bash bench/ab.sh OLD_REV}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/lookalike-target}"
ab=${AB_DIR:-/var/tmp/lookalike-ab}
command -v valgrind > /dev/null || apt-get install -y -qq valgrind > /dev/null
bash scripts/test-assets.sh > /dev/null
weights=${LOOKALIKE_ASSETS:-/var/tmp/lookalike-assets}/efficientnet-lite0.safetensors
[[ -f $weights ]] || bash bench/embed.sh --tiny > /dev/null # converts the weights
venv=${BENCH_VENV:-/var/tmp/lookalike-bench-venv}
if ! "$venv/bin/python" -c "import numpy" 2> /dev/null; then
    python3 -m venv "$venv" && "$venv/bin/pip" install --quiet numpy
fi
data=${BENCH_DATA:-/var/tmp/lookalike-bench/index}/synthetic-10000-500q
[[ -f $data/truth.knn ]] || "$venv/bin/python" bench/index/data.py --out "$data" synthetic --n 10000 --clusters 100 --queries 500

old_tree=$ab/$(git rev-parse --short "$old_rev")
[[ -d $old_tree ]] || git worktree add --detach "$old_tree" "$old_rev" > /dev/null
bin=$CARGO_TARGET_DIR/release
if [[ -f $old_tree/bench/src/bin/embed_bench.rs ]]; then
    (cd "$old_tree" && cargo build --quiet --release --locked -p lookalike-bench --bin embed_bench --bin index_bench)
    mkdir -p "$ab/bin" && cp "$bin/embed_bench" "$bin/index_bench" "$ab/bin/"
    old_embed=$ab/bin/embed_bench old_index=$ab/bin/index_bench
else
    (cd "$old_tree" && cargo build --quiet --release --locked --example embed_bench --example index_bench)
    old_embed=$bin/examples/embed_bench old_index=$bin/examples/index_bench
fi
cargo build --quiet --release --locked -p lookalike-bench --bin embed_bench --bin index_bench
new_embed=$bin/embed_bench new_index=$bin/index_bench

instructions() { # command...: total instructions callgrind collected
    RAYON_NUM_THREADS=1 valgrind --tool=callgrind --callgrind-out-file=/dev/null "$@" 2>&1 > /dev/null |
        sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
embed_pass() { # embed_bench: instructions per forward pass
    local few many
    few=$(instructions "$1" "$weights" --size 224 --batches 1 --min-images 4 --min-rounds 4)
    many=$(instructions "$1" "$weights" --size 224 --batches 1 --min-images 12 --min-rounds 12)
    echo $(((many - few) / 8))
}
index_costs() { # index_bench: "instructions of 500 searches, instructions of a whole 1-pass run"
    local one three
    one=$(instructions "$1" "$data" 1 80)
    three=$(instructions "$1" "$data" 1 80 80 80)
    echo "$(((three - one) / 2)) $one"
}
echo "counting instructions under callgrind (several minutes)..." >&2
old_pass=$(embed_pass "$old_embed") new_pass=$(embed_pass "$new_embed")
read -r old_search old_run <<< "$(index_costs "$old_index")"
read -r new_search new_run <<< "$(index_costs "$new_index")"
row() { awk -v n="$1" -v a="$2" -v b="$3" 'BEGIN { printf "| %s | %.1f M | %.1f M | %.4f |\n", n, a / 1e6, b / 1e6, b / a }'; }
echo
echo "| instructions (callgrind, AVX2 paths) | $old_rev | $(git rev-parse --short HEAD) | new / old |"
echo "|---|--:|--:|--:|"
row "embed: one 224 px forward pass" "$old_pass" "$new_pass"
row "index: 500 searches, ef 80, 10k × 128" "$old_search" "$new_search"
row "index: build + load + one pass" "$old_run" "$new_run"
