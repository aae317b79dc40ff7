# Shared by the bench scripts that measure through a real server; source it
# after setting `input_size`. Builds the dev binaries, makes a scratch folder
# ($work, removed at exit), then `start_server` runs `lookalike serve` on a
# random port with its data in $work and sets $url once /readyz answers.
# LOOKALIKE_WEIGHTS points the server at weights other than the fetched ones.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/lookalike-target}"
cargo build --quiet --bins
bin="$CARGO_TARGET_DIR/debug"
work=$(mktemp -d)
out=bench/out
mkdir -p "$out"
server=
trap 'if [[ -n "$server" ]]; then kill "$server" 2>/dev/null || true; fi; rm -rf "$work"' EXIT

start_server() {
    local port=$((20000 + RANDOM % 20000))
    url="http://127.0.0.1:$port"
    export LOOKALIKE__SERVER__ADDR=127.0.0.1:$port LOOKALIKE__DATA_DIR="$work/data" \
        LOOKALIKE__MODEL__INPUT_SIZE=$input_size
    if [[ -n "${LOOKALIKE_WEIGHTS:-}" ]]; then export LOOKALIKE__MODEL__WEIGHTS="$LOOKALIKE_WEIGHTS"; fi
    "$bin/lookalike" serve 2> "$work/server.log" &
    server=$!
    for _ in $(seq 600); do
        curl -fs "$url/readyz" > /dev/null && return 0
        sleep 0.5
    done
    echo "the server did not become ready; its log:" >&2
    tail -n 20 "$work/server.log" >&2
    return 1
}
