#!/usr/bin/env bash
# API replicas on one PostgreSQL database (docs/SCALING.md): what a replica holds in memory per
# catalogue vector, and POST /search throughput with 1 replica against 2 on this machine.
#
#   bash bench/replicas.sh [CATALOGUE_PER_LABEL] [SECONDS] [CLIENTS]
#
# Defaults: 2,000 per label (20,000 Fashion-MNIST items), 20 s of load, 16 clients. Starts a
# throwaway PostgreSQL 15 cluster (scripts/pg-cluster.sh), one `serve --role worker` and API
# replicas (`serve --role api`), all on one data folder, at 64 px input (the pretrained 1280-d
# vectors a replica holds do not depend on the input size; the model's time does). Replica A's
# resident memory (VmRSS) is read empty and after it synced the catalogue the worker ingested:
# the difference per item is what a vector costs (its 1280 floats, graph links, catalogue entry).
# Throughput: CLIENTS hey clients on A alone, then CLIENTS/2 on each of A and B at once (the
# load a proxy would spread). Needs `hey`. Prints a table; raw output in bench/out/replicas/.
set -euo pipefail
cd "$(dirname "$0")/.."
per_label=${1:-2000}
seconds=${2:-20}
clients=${3:-16}
input_size=64
command -v hey > /dev/null || { echo "bench/replicas.sh needs hey: apt-get install -y hey" >&2; exit 1; }
assets_weights="${LOOKALIKE_ASSETS:-/var/tmp/lookalike-assets}/efficientnet-lite0.safetensors"
if [[ -z "${LOOKALIKE_WEIGHTS:-}" && -f "$assets_weights" ]]; then export LOOKALIKE_WEIGHTS="$assets_weights"; fi
if [[ -z "${BENCH_PROFILE:-}" ]]; then export BENCH_PROFILE=release; fi
source bench/server.sh
source scripts/pg-cluster.sh
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2> /dev/null || true; done
    wait 2> /dev/null || true
    pg_stop
    rm -rf "$work"
}
trap cleanup EXIT
raw="$out/replicas"
rm -rf "$raw"
mkdir -p "$raw"
pg_start
"$bin/lookalike-data" fashion-mnist --out "$work/fmnist" --catalogue-per-label "$per_label" \
    --queries-per-label 10 > /dev/null
mapfile -t queries < <(find "$work/fmnist/queries" -name '*.png' | sort)

export LOOKALIKE__DATA_DIR="$work/data" LOOKALIKE__DATABASE__URL="$pg_url" \
    LOOKALIKE__MODEL__INPUT_SIZE=$input_size
if [[ -n "${LOOKALIKE_WEIGHTS:-}" ]]; then export LOOKALIKE__MODEL__WEIGHTS="$LOOKALIKE_WEIGHTS"; fi

# start NAME ROLE: a `serve` process on a free port; sets ${NAME}_url and ${NAME}_pid.
start() {
    local name=$1 role=$2 port
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    LOOKALIKE__SERVER__ADDR=127.0.0.1:$port LOOKALIKE__SERVER__INSTANCE=$name \
        "$bin/lookalike" serve --role "$role" 2> "$raw/$name.log" &
    pids+=($!)
    printf -v "${name}_pid" '%s' $!
    printf -v "${name}_url" '%s' "http://127.0.0.1:$port"
    for _ in $(seq 600); do
        curl -fs "http://127.0.0.1:$port/readyz" > /dev/null && return 0
        sleep 0.5
    done
    echo "$name did not become ready; its log:" >&2
    tail -n 20 "$raw/$name.log" >&2
    return 1
}
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
# served URL: how many items the replica at URL serves of dataset `fashion` (0 before it has it).
served() { curl -fs "$1/datasets/fashion" | python3 -c 'import json, sys; print(json.load(sys.stdin)["items"])' 2> /dev/null || echo 0; }
# load NAME URL CLIENTS: hey for $seconds; writes $raw/NAME.txt.
load() {
    hey -z "${seconds}s" -c "$3" -t 60 -m POST -T image/png -D "${queries[$(( RANDOM % ${#queries[@]} ))]}" \
        "$2/search?dataset=fashion&k=10" > "$raw/$1.txt"
}

start worker worker
start a api
sleep 2
rss_empty=$(rss_kib "$a_pid")
echo "== $((per_label * 10)) catalogue items at $input_size px; $(nproc) cores; $seconds s of $clients clients"
"$bin/lookalike" ingest "$work/fmnist/catalogue.zip" --dataset fashion --server "$a_url" > /dev/null
items=$(curl -fs "$a_url/datasets/fashion" | python3 -c 'import json, sys; print(json.load(sys.stdin)["items"])')
for _ in $(seq 1200); do [[ $(served "$a_url") == "$items" ]] && break; sleep 0.5; done
sleep 2
rss_full=$(rss_kib "$a_pid")
hey -n 16 -c 4 -m POST -T image/png -D "${queries[0]}" "$a_url/search?dataset=fashion&k=10" > /dev/null
load one "$a_url" "$clients"

start b api
for _ in $(seq 1200); do [[ $(served "$b_url") == "$items" ]] && break; sleep 0.5; done
rss_b=$(rss_kib "$b_pid")
hey -n 16 -c 4 -m POST -T image/png -D "${queries[0]}" "$b_url/search?dataset=fashion&k=10" > /dev/null
load two-a "$a_url" $((clients / 2)) &
loader=$!
load two-b "$b_url" $((clients / 2))
wait "$loader"

python3 - "$raw" "$items" "$rss_empty" "$rss_full" "$rss_b" "$clients" << 'PY'
import re, sys
raw, items, empty, full, rss_b, clients = sys.argv[1], int(sys.argv[2]), *map(int, sys.argv[3:6]), int(sys.argv[6])
def hey(name):
    text = open(f"{raw}/{name}.txt").read()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    p99 = re.search(r"99% in ([\d.]+) secs", text)
    codes = dict((int(c), int(n)) for c, n in re.findall(r"\[(\d+)\]\s+(\d+) responses", text))
    return rps, float(p99.group(1)) * 1000 if p99 else float("nan"), sum(n for c, n in codes.items() if c != 200)
per_item = (full - empty) * 1024 / items
print(f"| replica memory | value |\n|---|--:|")
print(f"| resident, model loaded, no dataset | {empty / 1024:.0f} MiB |")
print(f"| resident, {items:,} items synced | {full / 1024:.0f} MiB (replica B after its own sync: {rss_b / 1024:.0f} MiB) |")
print(f"| per item (1280-d pretrained vector, graph, catalogue) | {per_item:,.0f} bytes |")
print(f"| items per GiB of replica memory, beyond the model | {2**30 / per_item:,.0f} |")
print()
one, a, b = hey("one"), hey("two-a"), hey("two-b")
print("| replicas | clients | searches/s | p99 (ms) | failed | ratio to 1 replica |\n|---|--:|--:|--:|--:|--:|")
print(f"| 1 | {clients} | {one[0]:.1f} | {one[1]:.1f} | {one[2]} | 1.00 |")
both = a[0] + b[0]
print(f"| 2 | {clients // 2} + {clients // 2} | {both:.1f} ({a[0]:.1f} + {b[0]:.1f}) | {max(a[1], b[1]):.1f} | {a[2] + b[2]} | {both / one[0]:.2f} |")
PY
