#!/bin/sh
# Starts SeaweedFS (master, volume server, filer and S3 gateway on :8333) with its files in /data,
# makes the bucket $BUCKET once the gateway answers, and stops SeaweedFS when stopped.
set -eu
weed server -dir=/data -ip=127.0.0.1 -ip.bind=0.0.0.0 -s3 -s3.port=8333 &
weed=$!
trap 'kill -TERM "$weed"; wait "$weed"; exit 0' TERM INT
# PUT makes the bucket (a restart finds it made: GET answers 200).
until curl -sf "http://127.0.0.1:8333/$BUCKET" > /dev/null || curl -sf -X PUT "http://127.0.0.1:8333/$BUCKET" > /dev/null; do
    kill -0 "$weed" || exit 1
    sleep 1
done
echo "seaweedfs: bucket $BUCKET ready on :8333"
wait "$weed"
