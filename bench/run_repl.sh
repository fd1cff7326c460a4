#!/usr/bin/env bash
# Benchmarks of a leader + 2 replicas on loopback, fsync on every node
# (issue #3 targets):
#  1. single-doc write latency, async and all (closed loop, one client);
#  2. batched ingest of N docs x 384 (flat index) through `kbsync ingest`,
#     counted until BOTH replicas have applied everything, async and all;
#  3. replica lag under a steady open-loop async load of 5,000 docs/s.
# usage: bench/run_repl.sh [N=100000] [lag-seconds=10]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-100000}
LAGS=${2:-10}
bash scripts/build.sh build Release >/dev/null
B=build
W=$(mktemp -d /tmp/kbsync-brepl-XXXXXX)
mkdir -p results
OUT=results/repl-$(date -u +%Y%m%dT%H%M%SZ).txt
. bench/lib.sh
trap 'stop_all; rm -rf "$W"' EXIT
exec > >(tee "$OUT") 2>&1

version_of() { $B/kbsync status --to "$1" --json | sed 's/.*"version":\([0-9]*\),.*/\1/'; }

echo "# kbsync leader + 2 replicas, $(date -u +%FT%TZ), $(nproc) cores, fsync on"
echo "# data: synthetic clustered 384-d embeddings (not a model's) + ~300 B text"
$B/bench/bench_gen "$W/docs.jsonl" "$N" 384 1

echo "== 1. single-doc write latency"
for mode in async all; do
  start_cluster
  $B/bench/bench_write "$LEADER" 2000 384 w $mode
done

echo "== 2. batched ingest of $N docs, until both replicas applied all of it"
for mode in async all; do
  start_cluster
  t0=$(date +%s%N)
  $B/kbsync ingest --to "$LEADER" --mode $mode "$W/docs.jsonl" 2>/dev/null | tail -1
  t1=$(date +%s%N)
  until [ "$(version_of "$R1")" -ge "$N" ] && [ "$(version_of "$R2")" -ge "$N" ]; do sleep 0.005; done
  t2=$(date +%s%N)
  echo "$mode: leader acks done in $(( (t1-t0)/1000000 )) ms; both replicas applied all in $(( (t2-t0)/1000000 )) ms = $(( N * 1000000000 / (t2-t0) )) docs/s"
done

echo "== 3. replica lag under steady async load"
start_cluster
$B/bench/bench_lag "$LEADER" "$R1" 5000 "$LAGS" 384
stop_all
echo "(saved in $OUT)"
