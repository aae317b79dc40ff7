#!/usr/bin/env bash
# The integration suite (tests/it) again on PostgreSQL: starts a throwaway PostgreSQL 15
# cluster (initdb in a temp dir, a free port, pg_ctl start; as the `postgres` user when run as
# root, which initdb refuses), points the suite at it with LOOKALIKE_TEST_PG_URL (each test's
# data dir gets its own database there: tests/it/support.rs), then stops the cluster and
# deletes it. scripts/test.sh calls this after the SQLite run. Extra arguments go to cargo test.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=/usr/lib/postgresql/15/bin
if [[ ! -x "$bin/initdb" ]]; then
    echo "== installing Debian's postgresql-15 (its server binaries)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15 > /dev/null
fi
dir=$(mktemp -d /tmp/lookalike-pg.XXXXXX)
as=()
if [[ $(id -u) == 0 ]]; then
    chown postgres:postgres "$dir"
    as=(runuser -u postgres --)
fi
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
stop() {
    "${as[@]}" "$bin/pg_ctl" -D "$dir/data" -m fast -w stop > /dev/null 2>&1 || true
    rm -rf "$dir"
}
trap stop EXIT
"${as[@]}" "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 --no-sync > /dev/null
# Durability off: the cluster is thrown away. Room for every test's pools at once.
"${as[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w -t 60 -o "-c listen_addresses=127.0.0.1 -p $port \
    -k $dir -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=400" start > /dev/null
echo "== PostgreSQL $("$bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$port"
LOOKALIKE_TEST_PG_URL="postgres://postgres@127.0.0.1:$port/postgres" cargo test --workspace --locked --test it "$@"
