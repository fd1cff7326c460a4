#!/usr/bin/env bash
# Benchmarks of a lone node (issue #2 targets), all on this machine:
#  1. batched ingest of N docs x 384 dims through `kbsync ingest` (JSONL with
#     full-precision floats, as Python writes them), fsync on;
#  2. single-doc durable write latency (closed loop, one client);
#  3. single-query latency served vs raw FAISS in-process, same vectors;
#  4. kill -9 of the node with N docs, then time until it answers status.
# usage: bench/run_lone.sh [N=100000]   (results also in results/lone-*.txt)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-100000}
bash scripts/build.sh build Release >/dev/null
B=build
W=$(mktemp -d /tmp/kbsync-bench-XXXXXX)
mkdir -p results
OUT=results/lone-$(date -u +%Y%m%dT%H%M%SZ).txt
pid=
cleanup() { [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null; rm -rf "$W"; }
trap cleanup EXIT

start() { # start [--dim 384]
  rm -f "$W/ep"
  $B/kbsync leader --data "$W/kb" "$@" --listen 'tcp://127.0.0.1:*' \
    --endpoint-file "$W/ep" >/dev/null 2>>"$W/leader.log" &
  pid=$!
  for _ in $(seq 2000); do [ -s "$W/ep" ] && break; sleep 0.005; done
  EP=$(cat "$W/ep")
}

exec > >(tee "$OUT") 2>&1
echo "# kbsync lone-node benchmark, $(date -u +%FT%TZ), $(nproc) cores, $(uname -r)"
echo "# data: $N synthetic clustered 384-d embeddings (not a model's) + ~300 B text"
$B/bench/bench_gen "$W/docs.jsonl" "$N" 384 1
echo "input: $(du -m "$W/docs.jsonl" | cut -f1) MB of JSONL"

start --dim 384
echo "== 1. batched ingest through kbsync ingest (batch 1000, window 4)"
$B/kbsync ingest --to "$EP" --batch 1000 --window 4 "$W/docs.jsonl" 2>&1 | tail -2

echo "== 2. single-doc durable write latency"
$B/bench/bench_write "$EP" 2000 384

echo "== 3. single query, served vs raw FAISS"
# The writes of step 2 added docs: query a node holding exactly N.
kill -TERM $pid; wait $pid || true
rm -rf "$W/kb"; start --dim 384
$B/kbsync ingest --to "$EP" "$W/docs.jsonl" >/dev/null 2>&1
$B/bench/bench_query "$EP" "$N" 200 10 384 1

echo "== 4. kill -9 with $N docs, restart until serving"
kill -9 $pid; wait $pid 2>/dev/null || true
t0=$(date +%s%N)
start
until $B/kbsync status --to "$EP" --timeout-ms 200 >/dev/null 2>&1; do :; done
t1=$(date +%s%N)
echo "restart to serving: $(( (t1 - t0) / 1000000 )) ms (process start -> first status answer)"
grep "FAISS index rebuilt" "$W/leader.log" | tail -1 | sed 's/.*INFO: /log: /'
$B/kbsync status --to "$EP"
echo "(saved in $OUT)"
