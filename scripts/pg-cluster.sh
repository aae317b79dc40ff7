# A throwaway PostgreSQL 15 cluster, for the test suite (scripts/test-postgres.sh) and the
# benchmarks that need one (bench/replicas.sh). Source it, then:
#   pg_start    installs Debian's postgresql-15 when its binaries are missing, runs initdb in a
#               temp dir (as the `postgres` user when run as root, which initdb refuses) and
#               pg_ctl start on a free port, durability off; sets $pg_url
#               (postgres://postgres@127.0.0.1:PORT/postgres)
#   pg_stop     stops the cluster and deletes it (call it from your EXIT trap)
pg_bin=/usr/lib/postgresql/15/bin
pg_dir=
pg_as=()

pg_start() {
    if [[ ! -x "$pg_bin/initdb" ]]; then
        echo "== installing Debian's postgresql-15 (its server binaries)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15 > /dev/null
    fi
    pg_dir=$(mktemp -d /tmp/lookalike-pg.XXXXXX)
    if [[ $(id -u) == 0 ]]; then
        chown postgres:postgres "$pg_dir"
        pg_as=(runuser -u postgres --)
    fi
    local port
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    "${pg_as[@]}" "$pg_bin/initdb" -D "$pg_dir/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 \
        --no-sync > /dev/null
    # Durability off: the cluster is thrown away. Room for every test's pools at once.
    "${pg_as[@]}" "$pg_bin/pg_ctl" -D "$pg_dir/data" -l "$pg_dir/log" -w -t 60 -o "-c listen_addresses=127.0.0.1 \
        -p $port -k $pg_dir -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=400" \
        start > /dev/null
    pg_url="postgres://postgres@127.0.0.1:$port/postgres"
    echo "== PostgreSQL $("$pg_bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$port"
}

pg_stop() {
    if [[ -n "$pg_dir" ]]; then
        "${pg_as[@]}" "$pg_bin/pg_ctl" -D "$pg_dir/data" -m fast -w stop > /dev/null 2>&1 || true
        rm -rf "$pg_dir"
        pg_dir=
    fi
}
