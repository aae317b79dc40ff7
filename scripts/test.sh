#!/usr/bin/env bash
# The whole test suite: installs the test assets (weights, photos, Fashion-MNIST)
# when missing, runs every Rust test of the workspace (the service, bench/, crates/), the
# integration suite again on a throwaway PostgreSQL cluster and SeaweedFS S3 server
# (scripts/test-postgres.sh), then the
# web pages' tests in a real headless Chromium, then schemathesis against the OpenAPI document.
# README.md and .ci/run both call this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/test-assets.sh
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --all-targets --locked "$@" 2>&1 | tee "$log"
echo "== the integration suite on PostgreSQL and S3 (SeaweedFS)"
bash scripts/test-postgres.sh "$@" 2>&1 | tee -a "$log"
bash scripts/browser-test.sh 2>&1 | tee -a "$log"
bash scripts/schemathesis.sh 2>&1 | tee -a "$log"
# Benchmarks are not tests, but they must keep working: each runs once on a tiny input.
echo "== bench smoke runs"
bash bench/mining_experiment.sh --tiny
bash bench/deep_experiment.sh --tiny
bash bench/fashion_eval.sh 5 2 64
QUERIES_PER_LABEL=2 bash bench/finetune_time.sh 10 64 epochs=2
bash bench/index.sh --tiny
bash bench/train.sh --tiny
bash bench/embed.sh --tiny
# The GPU check's dry run on the CPU (scripts/gpu-check.sh): on a GPU machine the same script
# compares the CUDA build with the CPU and with PyTorch CUDA; here it checks every step on the CPU.
echo "== GPU check, dry run on the CPU"
bash scripts/gpu-check.sh --device cpu --out bench/out/gpu-check-dry.json
bash bench/http_load.sh --tiny
bash bench/ingest.sh --tiny
# One closing line over every test binary and the browser test.
awk '/^test result:/ { p += $4; f += $6; i += $8 }
     /^# pass / { p += $3 } /^# fail / { f += $3 } /^# skipped / { i += $3 }
     END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, i }' "$log"
