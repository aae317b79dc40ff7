#!/usr/bin/env bash
# Ingest speed end to end (`lookalike ingest`: upload of a real Fashion-MNIST
# catalogue zip through POST /datasets, then the ingest job) beside the raw
# model's throughput at the same input size and batch, on the same machine:
#
#   bash bench/ingest.sh [IMAGES] [INPUT_SIZE]
#   bash bench/ingest.sh --tiny            # CI smoke run: 50 images
#
# Defaults: 60,000 (the whole training split; 0 means the same) at 224 px, the
# server's embedded default. The server's embedder batch per forward pass is
# read from /metrics (images / passes) and the raw model is timed at that batch
# with `forward_time` (bench/src/bin/forward_time.rs) (dev profile, like the server the bench runs)
# after the server has stopped. Prints the job's stage seconds and a table;
# writes bench/out/ingest-job.json and bench/out/ingest.md.
# LOOKALIKE_WEIGHTS: the weights (default: the test assets' safetensors when
# present, else the server fetches them).
set -euo pipefail
cd "$(dirname "$0")/.."
images=60000
tiny=false
if [[ "${1:-}" == --tiny ]]; then
    tiny=true
    images=50
    shift
fi
images=${1:-$images}
input_size=${2:-224}
per_label=$(( images / 10 ))
assets_weights="${LOOKALIKE_ASSETS:-/var/tmp/lookalike-assets}/efficientnet-lite0.safetensors"
if [[ -z "${LOOKALIKE_WEIGHTS:-}" && -f "$assets_weights" ]]; then export LOOKALIKE_WEIGHTS="$assets_weights"; fi
# Full runs measure the release build, the one the service ships; --tiny reuses the test build.
if [[ -z "${BENCH_PROFILE:-}" && "$tiny" == false ]]; then export BENCH_PROFILE=release; fi
source bench/server.sh
built -p lookalike-bench --bin forward_time
"$bin/lookalike-data" fashion-mnist --out "$work/fmnist" --catalogue-per-label "$per_label" \
    --queries-per-label 1 > /dev/null
start_server
echo "== $(( per_label > 0 ? per_label * 10 : 60000 )) Fashion-MNIST training images at $input_size px; $(nproc) cores"
curl -fs "$url/metrics" > "$work/before.prom"
start=$(date +%s.%N)
"$bin/lookalike" ingest "$work/fmnist/catalogue.zip" --dataset fashion --server "$url" > /dev/null
end=$(date +%s.%N)
curl -fs "$url/metrics" > "$work/after.prom"
curl -fs "$url/jobs?dataset=fashion&kind=ingest" > "$out/ingest-job.json"
kill "$server"
wait "$server" 2> /dev/null || true
server=
read -r batch < <(python3 - "$work/before.prom" "$work/after.prom" <<'PY'
import sys
def load(path):
    return {k: float(v) for k, v in (l.rsplit(" ", 1) for l in open(path) if l.strip() and not l.startswith("#"))}
b, a = load(sys.argv[1]), load(sys.argv[2])
d = lambda k: a.get(k, 0) - b.get(k, 0)
print(max(1, round(d("lookalike_embedder_images_total") / max(1, d("lookalike_embedder_forward_passes_total")))))
PY
)
weights=${LOOKALIKE_WEIGHTS:-$work/data/weights/efficientnet-lite0.safetensors}
"$bin/forward_time" "$weights" --runs "${input_size}x$batch" > "$work/raw.txt"
python3 - "$out/ingest-job.json" "$work/before.prom" "$work/after.prom" "$work/raw.txt" "$start" "$end" \
    "$input_size" "$batch" <<'PY' | tee "$out/ingest.md"
import json, sys
job_file, before, after, raw, start, end, size, batch = sys.argv[1:]
def load(path):
    return {k: float(v) for k, v in (l.rsplit(" ", 1) for l in open(path) if l.strip() and not l.startswith("#"))}
b, a = load(before), load(after)
d = lambda k: a.get(k, 0) - b.get(k, 0)
job = json.load(open(job_file))["jobs"][0]
result = job["result"]
ingested, job_s, wall = result["ingested"], result["seconds"], float(end) - float(start)
forward_s = d("lookalike_embedder_forward_seconds_total")
row = [l.split() for l in open(raw) if l.split() and l.split()[0].isdigit()][0]
best, median = float(row[3]), float(row[4])
raw_best, raw_median = 1000 / best, 1000 / median
stages = result.get("stage_seconds", {})
print("job stage seconds:", ", ".join(f"{k} {v:.2f}" for k, v in stages.items()))
print(f"server forward passes: {d('lookalike_embedder_forward_passes_total'):.0f} for "
      f"{d('lookalike_embedder_images_total'):.0f} images, {forward_s:.2f} s in the model "
      f"({forward_s / job_s:.0%} of the job)")
print()
print("| images | input px | batch | end to end s | ingest images/s (end to end) | job images/s | "
      "raw model images/s (best / median) | ingest / raw (median) |")
print("|--:|--:|--:|--:|--:|--:|--:|--:|")
end_to_end = ingested / wall
print(f"| {ingested} | {size} | {batch} | {wall:.1f} | {end_to_end:.1f} | {ingested / job_s:.1f} | "
      f"{raw_best:.1f} / {raw_median:.1f} | {end_to_end / raw_median:.2f} |")
PY
