#!/usr/bin/env bash
# The whole test suite: installs the test assets (weights, photos, Fashion-MNIST)
# when missing, runs every Rust test, then the web page's test in a real
# headless Chromium. README.md and .ci/run both call this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/test-assets.sh
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --all-targets --locked "$@" 2>&1 | tee "$log"
bash scripts/browser-test.sh 2>&1 | tee -a "$log"
# One closing line over every test binary and the browser test.
awk '/^test result:/ { p += $4; f += $6; i += $8 }
     /^# pass / { p += $3 } /^# fail / { f += $3 } /^# skipped / { i += $3 }
     END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, i }' "$log"
