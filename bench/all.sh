#!/usr/bin/env bash
# Every benchmark of docs/BENCHMARKS.md, one after the other, each printing its table with
# lookalike and its peer from the same run:
#
#   bash bench/all.sh            # the runs behind docs/BENCHMARKS.md (about 30 minutes on 2 cores)
#   bash bench/all.sh --tiny     # every script on a tiny input: checks they run (minutes)
#
# Run it on a quiet machine: the timings are only as good as the machine is idle. The whole
# output goes to bench/out/all.log as well; each script's raw results stay in bench/out/.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p bench/out
flag=${1:-}
log=bench/out/all.log
: > "$log"
run() {
    echo "=================== $* ===================" | tee -a "$log"
    "$@" 2>&1 | tee -a "$log"
}
if [[ "$flag" == "--tiny" ]]; then
    run bash bench/embed.sh --tiny
    run bash bench/index.sh --tiny
    run bash bench/http_load.sh --tiny
    run bash bench/train.sh --tiny
    run bash bench/ingest.sh --tiny
else
    run bash bench/embed.sh
    run env SYNTHETIC_QUERIES=2000 bash bench/index.sh
    run bash bench/http_load.sh
    run bash bench/train.sh
    run bash bench/ingest.sh 60000 64
    run bash bench/finetune_time.sh
    run bash bench/replicas.sh
fi
echo "all benchmarks done; the log is $log"
