#!/usr/bin/env bash
# The whole test suite: installs the test assets (weights, photos, Fashion-MNIST)
# when missing, then runs every test. README.md and .ci/run both call this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/test-assets.sh
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --all-targets --locked "$@" 2>&1 | tee "$log"
# One closing line over every test binary.
awk '/^test result:/ { p += $4; f += $6; i += $8 } END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, i }' "$log"
