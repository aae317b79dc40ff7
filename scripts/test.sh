#!/usr/bin/env bash
# The whole test suite: installs the test assets (weights, photos, Fashion-MNIST)
# when missing, then runs every test. README.md and .ci/run both call this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/test-assets.sh
cargo test --all-targets --locked "$@"
