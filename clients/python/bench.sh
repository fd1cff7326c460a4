#!/usr/bin/env bash
# Benchmarks of the Python client against a lone leader on this machine:
#  1. packing cost of an UpsertRequest of 1,000 x 384 floats, four ways;
#  2. pipelined 1,000-doc batch upserts of 384-d vectors (target >= 20k
#     docs/s), next to `kbsync ingest` of the same number of docs;
#  3. single-query latency: bench/bench_query (C client library) and the
#     Python client, alternately, on the same node and data (target:
#     Python p50 within 0.3 ms of C).
# usage: bash clients/python/bench.sh [BUILD_DIR=build] [DOCS=30000] [QDOCS=20000]
set -euo pipefail
cd "$(dirname "$0")/../.."
B=${1:-build}
DOCS=${2:-30000}
QDOCS=${3:-20000}
PY=/usr/bin/python3
CORES=$(getconf _NPROCESSORS_ONLN)
export PYTHONPATH="$PWD/$B/python" PYTHONDONTWRITEBYTECODE=1 OMP_NUM_THREADS=1
cmake --build "$B" --target kbsync kbsync_python bench_gen bench_query >/dev/null
W=$(mktemp -d /tmp/kbsync-pybench-XXXXXX)
pid=
cleanup() { [ -n "$pid" ] && { kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true; }; rm -rf "$W"; }
trap cleanup EXIT
start() {
  [ -n "$pid" ] && { kill "$pid"; wait "$pid" || true; }
  rm -rf "$W/kb" "$W/ep"
  "$B/kbsync" leader --data "$W/kb" --dim 384 --listen 'tcp://127.0.0.1:*' \
    --endpoint-file "$W/ep" >/dev/null 2>>"$W/leader.log" &
  pid=$!
  for _ in $(seq 2000); do [ -s "$W/ep" ] && break; sleep 0.005; done
  EP=$(cat "$W/ep")
}
echo "# kbsync Python client benchmark, $(date -u +%FT%TZ), $CORES cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== 1. packing"
$PY clients/python/bench.py pack
echo "== 2. batch upserts, lone leader (fsync on), 384-d"
start
"$B/bench/bench_gen" "$W/docs.jsonl" "$DOCS" 384 1 >/dev/null
for r in 1 2 3; do
  $PY clients/python/bench.py upsert "$EP" --docs "$DOCS" --run "$r"
done
$PY clients/python/bench.py upsert "$EP" --docs "$DOCS" --run 4 --array
echo "kbsync ingest (C), same leader, $DOCS docs from JSONL: $("$B/kbsync" ingest --to "$EP" --batch 1000 --window 4 "$W/docs.jsonl" 2>&1 | tail -1)"
echo "== 3. single query latency, C client vs Python client, $QDOCS docs"
start
"$B/bench/bench_gen" "$W/q.jsonl" "$QDOCS" 384 1 >/dev/null
"$B/kbsync" ingest --to "$EP" "$W/q.jsonl" >/dev/null 2>&1
for r in 1 2 3; do
  echo "-- round $r"
  "$B/bench/bench_query" "$EP" "$QDOCS" 1000 10 384 1 | grep -E "served|single"
  $PY clients/python/bench.py query "$EP" --queries 1000
done
