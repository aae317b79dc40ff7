#!/usr/bin/env bash
# Keeps the CUDA build compiling on a machine without a GPU (run by .ci/run): makes the toolkit
# (scripts/cuda-toolkit.sh), then runs clippy over the service with `--features cuda`, in a
# target folder of its own. That compiles candle's CUDA kernels with nvcc and every
# `cfg(feature = "cuda")` path of lookalike, and fails on any warning; it does not link (linking
# needs only the driver stand-in, and a CUDA binary runs only where an NVIDIA driver is).
# Cold: about 13 minutes for candle's kernels on 2 cores, plus the checks of the dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
eval "$(bash scripts/cuda-toolkit.sh)"
echo "cuda toolkit: $(nvcc --version | tail -1) ($((SECONDS - start)) s)"
export CARGO_TARGET_DIR=${CUDA_TARGET_DIR:-/var/tmp/lookalike-cuda-target}
cargo clippy -p lookalike --all-targets --features cuda --locked -- -D warnings
echo "cuda check: passed in $((SECONDS - start)) s"
