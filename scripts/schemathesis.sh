#!/usr/bin/env bash
# Property-based test of the HTTP API against its own OpenAPI document: schemathesis
# (PyPI) generates requests from /openapi.json, valid and invalid, and checks that
# the real server, with API keys set and a small catalogue ingested, never answers
# 5xx and that every answer's status and body are the ones the document lists.
# Bounded in time: a few examples per operation, a wall-clock limit on the run.
# Installs schemathesis when missing. Called by scripts/test.sh after the browser test.
#
#   bash scripts/schemathesis.sh [extra schemathesis run options]
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
python=${PYTHON:-python3}
max_examples=${SCHEMATHESIS_MAX_EXAMPLES:-20}
time_limit=${SCHEMATHESIS_TIME_LIMIT:-300}

# Pinned: a fresh machine gets the versions this script was last checked with.
schemathesis_version=4.32.5
hypothesis_version=6.170.17
if ! "$python" -m schemathesis.cli --version 2> /dev/null | grep -q "$schemathesis_version"; then
    "$python" -m pip install --quiet "schemathesis==$schemathesis_version" "hypothesis==$hypothesis_version"
fi
schemathesis=$(command -v schemathesis || echo "$python -m schemathesis.cli")

cargo build --quiet --locked --bins
bin="$CARGO_TARGET_DIR/debug"
work=$(mktemp -d)
server=
trap '[[ -n "$server" ]] && kill "$server" 2> /dev/null; rm -rf "$work"' EXIT

# A small catalogue of the two test photos, so that routes reading a dataset find one
# (its name is not in the document's examples, so generated deletes do not remove it).
assets="${LOOKALIKE_ASSETS:-/var/tmp/lookalike-assets}"
"$python" - "$assets" "$work/catalogue.zip" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[2], "w") as z:
    for photo in ("flower", "china"):
        z.write(f"{sys.argv[1]}/{photo}.jpg", f"{photo}/{photo}-1.jpg")
PY
weights="$work/lite0.safetensors"
"$bin/lookalike" import-weights "$assets/efficientnet-lite0-57934424.pth" "$weights" > /dev/null

admin_key="schemathesis-admin-$RANDOM$RANDOM"
port=$((20000 + RANDOM % 20000))
url="http://127.0.0.1:$port"
LOOKALIKE__SERVER__ADDR=127.0.0.1:$port LOOKALIKE__DATA_DIR="$work/srv" LOOKALIKE__MODEL__INPUT_SIZE=64 \
    LOOKALIKE__MODEL__WEIGHTS="$weights" LOOKALIKE__AUTH__ADMIN_KEYS="$admin_key" \
    LOOKALIKE__AUTH__READ_KEYS="schemathesis-reader" "$bin/lookalike" serve 2> "$work/server.log" &
server=$!
for _ in $(seq 240); do curl -fs "$url/readyz" > /dev/null && break; sleep 0.25; done
LOOKALIKE_API_KEY="$admin_key" "$bin/lookalike" ingest "$work/catalogue.zip" --dataset catalogue \
    --server "$url" > /dev/null

# run PHASES WORKERS [options]
run() {
    timeout --signal=INT $((time_limit + 60)) $schemathesis run "$url/openapi.json" \
        --header "Authorization: Bearer $admin_key" \
        --max-time "$time_limit" \
        --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
        --max-examples "$max_examples" \
        --seed 1 \
        `# item ids are any 1 to 256 characters; those a URL path cannot carry are filtered out` \
        --suppress-health-check=filter_too_much \
        --phases "$1" \
        --workers "$2" \
        --no-color \
        "${@:3}"
}
# The coverage phase on one worker: with two, schemathesis 4.32.5 (hypothesis 6.170.17) fails
# inside its own generator (a KeyError, reported as a flaky POST /jobs) on a schema one worker
# covers without a fault; the rest on two.
status=0
run coverage 1 "$@" || status=$?
if [[ $status -eq 0 ]]; then run examples,fuzzing,stateful 2 "$@" || status=$?; fi
if [[ $status -ne 0 ]]; then
    echo "schemathesis failed ($status); the server's log:" >&2
    tail -n 40 "$work/server.log" >&2
    exit "$status"
fi
# The server answered every request without a fault, and is still alive.
curl -fs "$url/healthz" > /dev/null
if grep -q '"internal error"\|internal error' "$work/server.log"; then
    echo "the server logged an internal error:" >&2
    grep 'internal error' "$work/server.log" | head -5 >&2
    exit 1
fi
echo "schemathesis: no server error, every answer as documented"
