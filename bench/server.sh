# Shared by the bench scripts that measure through a real server; source it
# after setting `input_size`. Makes a scratch folder ($work, removed at exit),
# builds the binaries into $bin (the service and the `lookalike-data` dataset maker; `built` adds more, e.g. a bench tool; BENCH_PROFILE below), then
# `start_server` runs `lookalike serve` on a random port with its data in
# $work and sets $url once /readyz answers.
# LOOKALIKE_WEIGHTS points the server at weights other than the fetched ones.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/lookalike-target}"
work=$(mktemp -d)
out=bench/out
mkdir -p "$out"
server=
trap 'if [[ -n "$server" ]]; then kill "$server" 2>/dev/null || true; fi; rm -rf "$work"' EXIT

# built TARGET_ARGS...: builds with cargo and copies each executable it made
# into $work/bin (a hard link when it can) right away: target/debug/NAME is
# overwritten by the next build from any other checkout sharing the target folder.
built() {
    mkdir -p "$work/bin"
    local exe
    cargo build --quiet --message-format=json "${profile_args[@]}" "$@" > "$work/build.json"
    while read -r exe; do
        ln -f "$exe" "$work/bin/" 2> /dev/null || cp "$exe" "$work/bin/"
    done < <(python3 -c '
import json, sys
for line in open(sys.argv[1]):
    if line.startswith("{") and json.loads(line).get("executable"):
        print(json.loads(line)["executable"])
' "$work/build.json")
}
# BENCH_PROFILE=release builds what the service ships (`cargo run --release`); the default,
# dev, is what the test suite has already built (dependencies at -O3, lookalike at -O2 with
# debug assertions), so a smoke run needs no second build.
profile_args=()
if [[ "${BENCH_PROFILE:-dev}" == release ]]; then profile_args=(--release); fi
built -p lookalike -p lookalike-bench --bin lookalike --bin lookalike-data
bin="$work/bin"

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
