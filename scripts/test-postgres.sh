#!/usr/bin/env bash
# The integration suite (tests/it) again on PostgreSQL and an S3-compatible object store: starts
# a throwaway PostgreSQL 15 cluster (scripts/pg-cluster.sh: initdb in a temp dir, a free port,
# pg_ctl start) and a throwaway SeaweedFS S3 server (scripts/s3-server.sh), points the suite at
# them with LOOKALIKE_TEST_PG_URL and LOOKALIKE_TEST_S3_ENDPOINT (each test's data dir gets its
# own database and bucket prefix: tests/it/support.rs), then stops both and deletes them.
# scripts/test.sh calls this after the SQLite run (on the data dir). Extra arguments go to cargo
# test.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/pg-cluster.sh
source scripts/s3-server.sh
trap 'pg_stop; s3_stop' EXIT
pg_start
s3_start
LOOKALIKE_TEST_PG_URL="$pg_url" LOOKALIKE_TEST_S3_ENDPOINT="$s3_endpoint" \
    cargo test --workspace --locked --test it "$@"
