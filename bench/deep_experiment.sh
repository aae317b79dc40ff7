#!/usr/bin/env bash
# The deep experiment of docs/EXPERIMENTS.md: the head alone against the last 1, 2, 3 backbone
# blocks trained with it, for each mining mode, on the full Fashion-MNIST at 64 px.
#
#   bash bench/deep_experiment.sh           # the matrix; writes docs/experiments/deep/
#   bash bench/deep_experiment.sh --tiny    # smoke run of seconds; writes bench/out/deep-tiny/
#
# Each run is its own process (`lookalike-experiment --deep-blocks N --mode M`), so its peak
# memory is its own; a run whose JSON exists is not run again (FORCE=1 reruns). BLOCKS, MODES,
# SEEDS and BUDGET (steps per run, default 3000) choose the matrix; MIX (e.g. "0.25,0.5") also
# evaluates each checkpoint blended with that share of the pretrained features. The frozen backbone's
# activations are cached in /var/tmp/lookalike-experiment/ by the first run.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/lookalike-target}"
blocks=${BLOCKS:-0 1 2 3}
modes=${MODES:-offline+online batch-hard}
seeds=${SEEDS:-0}
budget=${BUDGET:-3000}
if [[ "${1:-}" == "--tiny" ]]; then
    # The smoke run (scripts/test.sh runs it) uses the dev build the tests already made.
    cargo build --quiet --locked -p lookalike-bench --bin lookalike-experiment
    binary="$CARGO_TARGET_DIR/debug/lookalike-experiment"
    out=bench/out/deep-tiny
    extra=(--tiny)
    blocks=${BLOCKS:-0 2}
    modes=${MODES:-offline+online}
    budget=${BUDGET:-12}
    MIX=${MIX:-0.25}
    rm -rf "$out"
else
    cargo build --quiet --locked --release -p lookalike-bench --bin lookalike-experiment
    binary="$CARGO_TARGET_DIR/release/lookalike-experiment"
    out=docs/experiments/deep
    extra=()
fi
mkdir -p "$out/runs"
for seed in $seeds; do
    for mode in $modes; do
        for b in $blocks; do
            file="$out/runs/blocks$b-${mode}-seed$seed.json"
            if [[ -s "$file" && -z "${FORCE:-}" ]]; then
                echo "== $file exists, kept"
                continue
            fi
            echo "== $b blocks, $mode, seed $seed"
            "$binary" "${extra[@]}" --deep-blocks "$b" --mode "$mode" --seed "$seed" --budget "$budget" \
                ${MIX:+--mix "$MIX"} --out "$file"
        done
    done
done
python3 bench/deep_table.py "$out/runs" | tee "$out/tables.md"
