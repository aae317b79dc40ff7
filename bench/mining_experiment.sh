#!/usr/bin/env bash
# The mining experiment of docs/EXPERIMENTS.md, one command:
#
#   bash bench/mining_experiment.sh            # full run, writes docs/experiments/
#   bash bench/mining_experiment.sh --tiny     # smoke run of seconds, writes bench/out/experiment-tiny/
#
# Builds the release binary (the experiment is compute-bound) and runs it; further arguments are
# passed on (see `lookalike-experiment --help`). Backbone features are cached in
# /var/tmp/lookalike-experiment/, so a rerun skips embedding the 70,000 images.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/lookalike-target}"
if [[ "${1:-}" == "--tiny" ]]; then
    # The smoke run (scripts/test.sh runs it) uses the dev build the tests already made.
    cargo build --quiet --locked -p lookalike-bench --bin lookalike-experiment
    exec "$CARGO_TARGET_DIR/debug/lookalike-experiment" --out bench/out/experiment-tiny "$@"
fi
cargo build --quiet --release -p lookalike-bench --bin lookalike-experiment
exec "$CARGO_TARGET_DIR/release/lookalike-experiment" "$@"
