#!/usr/bin/env bash
# The CPU Docker image end to end, as a deployment uses it (README.md, "Deploy with Docker"):
#   1. a Docker engine (scripts/docker-engine.sh) and the image, built by `docker compose build`;
#   2. `docker compose up` with API keys and a free host port; the container becomes healthy
#      (its HEALTHCHECK is `lookalike healthcheck`) and runs as a user other than root;
#   3. from this machine over HTTP: no key -> 401; a small catalogue of real images
#      (tests/fixtures/container, made by scripts/container-fixtures.py) ingested; each query's
#      label comes back first and a catalogue image finds itself;
#   4. `docker compose restart`: the dataset, its item count and the same answers are still there
#      (the named volume);
#   5. the image alone with `--network none` and a fresh volume: ready, then a catalogue ingested
#      and searched with the CLI inside the container, so the weights are in the image and no
#      network is needed;
#   6. docker-compose.scale.yml: PostgreSQL, SeaweedFS, two API replicas behind nginx and a
#      worker; the catalogue ingested through the proxy is taken in by the worker, its originals
#      are in the object store, and both replicas give the answers of step 3 (nginx's log shows
#      each replica answering);
# then `docker compose down -v`, also on failure (after printing the containers' logs).
# Prints the time of each phase. Needs root (the engine), curl, jq and tar.
set -euo pipefail
cd "$(dirname "$0")/.."

fixtures=tests/fixtures/container
project=lookalike-ctest-$$
offline=$project-offline
admin_key=ctest-admin-$RANDOM$RANDOM
read_key=ctest-read-$RANDOM$RANDOM
work=$(mktemp -d /tmp/lookalike-ctest.XXXXXX)
compose=(docker compose --project-name "$project")
scale=(docker compose --project-name "$project-scale" --file docker-compose.scale.yml)
started=$SECONDS
phase_name=""
phase_start=$SECONDS
timings=()

phase() {
    end_phase
    phase_name=$1
    phase_start=$SECONDS
    echo "== $phase_name"
}

end_phase() {
    [[ -n $phase_name ]] && timings+=("$(printf '%5d s  %s' $((SECONDS - phase_start)) "$phase_name")")
    phase_name=""
}

fail() {
    echo "FAIL: $*" >&2
    exit 1
}

cleanup() {
    local status=$?
    if ((status != 0)); then
        echo "---- container test failed (exit $status) in: ${phase_name:-?}; logs follow" >&2
        "${compose[@]}" ps >&2 || true
        "${compose[@]}" logs --no-color --tail 80 >&2 || true
        "${scale[@]}" ps >&2 2> /dev/null || true
        "${scale[@]}" logs --no-color --tail 40 >&2 2> /dev/null || true
        docker logs --tail 80 "$offline" >&2 2> /dev/null || true
    fi
    "${compose[@]}" down --volumes --remove-orphans > /dev/null 2>&1 || true
    "${scale[@]}" down --volumes --remove-orphans > /dev/null 2>&1 || true
    docker rm --force "$offline" > /dev/null 2>&1 || true
    docker volume rm "$offline" > /dev/null 2>&1 || true
    rm -rf "$work"
    if ((status == 0)); then
        end_phase
        printf '%s\n' "${timings[@]}"
        echo "container test passed in $((SECONDS - started)) s"
    fi
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits until the container's health status is `healthy` (at most $2 s).
wait_healthy() {
    local container=$1 limit=$2 status=""
    for ((waited = 0; waited < limit; waited++)); do
        status=$(docker inspect --format '{{.State.Health.Status}}' "$container")
        [[ $status == healthy ]] && return
        [[ $(docker inspect --format '{{.State.Running}} {{.RestartCount}}' "$container") == "true 0" ]] ||
            fail "container $container stopped or restarted"
        sleep 1
    done
    fail "container $container not healthy after $limit s (status: $status)"
}

# `curl` against the compose service with a key; the body on stdout, failing on 4xx/5xx.
api() {
    local key=$1
    shift
    curl --silent --show-error --fail-with-body --max-time 60 -H "authorization: Bearer $key" "$@"
}

# Polls a job until it ends (at most 300 s); fails unless it succeeded.
wait_job() {
    local id=$1 job status
    for ((waited = 0; waited < 600; waited++)); do
        job=$(api "$read_key" "$base/jobs/$id")
        status=$(jq -r .status <<< "$job")
        case $status in
            succeeded) return ;;
            failed | canceled) fail "job $id ended $status: $job" ;;
        esac
        sleep 0.5
    done
    fail "job $id did not end in 300 s: $job"
}

# One search for $1 (a PNG): the nearest item's label, then the five nearest item ids.
search() {
    api "$read_key" -H 'content-type: image/png' --data-binary "@$1" "$base/search?dataset=fixtures&k=5" |
        jq -r '.results[0].label + " " + ([.results[].item_id] | join(" "))'
}

# What must come back the same before and after a restart: the dataset's item count, and for
# every query its five nearest items, the nearest of its own label; and a catalogue image must
# find itself first.
answers() {
    local query label found
    echo "items $(api "$read_key" "$base/datasets/fixtures" | jq -r .items)"
    for query in "$fixtures"/queries/*/*.png; do
        label=$(basename "$(dirname "$query")")
        found=$(search "$query")
        [[ ${found%% *} == "$label" ]] || fail "query $query: the nearest item is a ${found%% *}, not a $label"
        echo "$label: ${found#* }"
    done
    found=$(search "$fixtures/catalogue/bag/train-00023.png")
    [[ $found == "bag bag/train-00023 "* ]] || fail "catalogue image bag/train-00023 does not find itself first: $found"
}

phase "engine"
bash scripts/docker-engine.sh
command -v jq > /dev/null || { apt-get update -qq && apt-get install -y -qq jq > /dev/null; }

phase "build (docker compose build)"
"${compose[@]}" build lookalike > "$work/build.log" 2>&1 || { tail -n 60 "$work/build.log" >&2; fail "image build"; }
image=$(docker image inspect --format '{{.Id}}' lookalike:latest)
echo "image lookalike:latest $(docker image inspect --format '{{.Size}}' lookalike:latest | numfmt --to=si) ($image)"

phase "up and healthy"
port=$(free_port)
base=http://127.0.0.1:$port
LOOKALIKE_PORT=$port LOOKALIKE_ADMIN_KEYS=$admin_key LOOKALIKE_READ_KEYS=$read_key \
    "${compose[@]}" up --detach --no-build lookalike
container=$("${compose[@]}" ps --quiet lookalike)
wait_healthy "$container" 180
uid=$(docker exec "$container" id -u)
((uid != 0)) || fail "the server runs as root"
echo "serving on $base as uid $uid"

phase "ingest over HTTP"
code=$(curl --silent --output /dev/null --write-out '%{http_code}' "$base/datasets")
[[ $code == 401 ]] || fail "GET /datasets without a key answered $code, not 401"
(cd "$fixtures/catalogue" && tar -czf "$work/catalogue.tar.gz" -- *)
job=$(api "$admin_key" -F name=fixtures -F "archive=@$work/catalogue.tar.gz" "$base/datasets" | jq -r .job.id)
wait_job "$job"
items=$(api "$read_key" "$base/datasets/fixtures" | jq -r .items)
expected=$(find "$fixtures/catalogue" -name '*.png' | wc -l)
((items == expected)) || fail "the dataset holds $items items, not $expected"

phase "search over HTTP"
answers > "$work/before.txt"
cat "$work/before.txt"

phase "restart (docker compose restart)"
"${compose[@]}" restart lookalike
wait_healthy "$container" 180
answers > "$work/after.txt"
diff "$work/before.txt" "$work/after.txt" || fail "the answers changed across the restart"
echo "dataset, item count and answers unchanged"

phase "offline (docker run --network none)"
docker volume create "$offline" > /dev/null
docker run --detach --name "$offline" --network none --volume "$offline:/data" lookalike:latest > /dev/null
for ((waited = 0; ; waited++)); do
    docker exec "$offline" lookalike healthcheck > /dev/null 2>&1 && break
    ((waited < 120)) || fail "the offline container was not ready in 120 s"
    sleep 1
done
docker cp "$fixtures" "$offline:/tmp/fixtures"
docker exec "$offline" lookalike ingest /tmp/fixtures/catalogue --dataset offline | tail -n 1
result=$(docker exec "$offline" lookalike search /tmp/fixtures/queries/sneaker/t10k-00009.png --dataset offline --k 3)
echo "$result"
top=$(awk '$1 == "1" { print $3 }' <<< "$result")
[[ $top == sneaker ]] || fail "offline search: the nearest item is a ${top:-?}, not a sneaker"

phase "scaled (docker-compose.scale.yml: PostgreSQL, SeaweedFS, 2 API replicas behind nginx, a worker)"
"${scale[@]}" build postgres s3 proxy > "$work/scale-build.log" 2>&1 ||
    { tail -n 60 "$work/scale-build.log" >&2; fail "scaled images build"; }
port=$(free_port)
base=http://127.0.0.1:$port
LOOKALIKE_PORT=$port LOOKALIKE_ADMIN_KEYS=$admin_key LOOKALIKE_READ_KEYS=$read_key LOOKALIKE_PG_PASSWORD=pw-$RANDOM \
    "${scale[@]}" up --detach --no-build
for service in s3 worker api-1 api-2; do
    wait_healthy "$("${scale[@]}" ps --quiet "$service")" 180
done
for ((waited = 0; ; waited++)); do
    [[ $(curl --silent --output /dev/null --write-out '%{http_code}' "$base/healthz") == 200 ]] && break
    ((waited < 60)) || fail "the proxy did not answer in 60 s"
    sleep 1
done
job=$(api "$admin_key" -F name=fixtures -F "archive=@$work/catalogue.tar.gz" "$base/datasets" | jq -r .job.id)
wait_job "$job"
worker=$(api "$read_key" "$base/jobs/$job" | jq -r .worker)
[[ $worker == worker-1 ]] || fail "the ingest ran on ${worker:-?}, not on the worker"
# The replicas learn of the items within server.sync_interval_ms (1 s) of their commit.
sleep 3
for round in 1 2; do
    answers > "$work/scaled-$round.txt"
    diff "$work/before.txt" "$work/scaled-$round.txt" || fail "the scaled stack answers otherwise (round $round)"
done
replicas=$("${scale[@]}" logs --no-color proxy | awk '/POST \/search/ { print $(NF - 1) }' | sort -u | wc -l)
((replicas == 2)) || fail "searches were answered by $replicas replica(s), not 2"
# The originals went to the object store, not to the worker's disk alone.
stored=$("${scale[@]}" exec -T s3 curl -sf "http://127.0.0.1:8333/lookalike?list-type=2&prefix=blobs/fixtures/" |
    grep -o "<Key>" | wc -l)
((stored > 0)) || fail "no original image of the catalogue is in the object store"
echo "ingested by $worker ($stored originals in the object store); both replicas answered as the single server did"
"${scale[@]}" down --volumes --remove-orphans > /dev/null 2>&1

phase "down"
"${compose[@]}" down --volumes --remove-orphans > /dev/null 2>&1
