#!/usr/bin/env bash
# The integration suite (tests/it) again on PostgreSQL: starts a throwaway PostgreSQL 15
# cluster (scripts/pg-cluster.sh: initdb in a temp dir, a free port, pg_ctl start), points the
# suite at it with LOOKALIKE_TEST_PG_URL (each test's data dir gets its own database there:
# tests/it/support.rs), then stops the cluster and deletes it. scripts/test.sh calls this after
# the SQLite run. Extra arguments go to cargo test.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/pg-cluster.sh
trap pg_stop EXIT
pg_start
LOOKALIKE_TEST_PG_URL="$pg_url" cargo test --workspace --locked --test it "$@"
