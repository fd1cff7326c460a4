#!/usr/bin/env bash
# Restart after kill -9 of a real node (issue #9 target: 1M x 384 flat
# serving again in <= 3 s, 100k HNSW32 in <= 2 s, with the checkpoint at
# most 10,000 operations old):
#  1. a lone leader (fsync on, defaults) ingests N docs x 384 (bench_gen:
#     synthetic clustered embeddings + ~300 B text) through `kbsync ingest`;
#  2. waits until every vector is merged into the index, restarts the node
#     cleanly (its closing checkpoint covers everything), then replaces
#     TAIL documents (a second ingest): the restart loads the checkpoint
#     and applies the tail from LMDB;
#  3. kill -9, start it again and time from the start until a query is
#     answered (the files are in the page cache, as after a process crash
#     on the same machine). Repeated ROUNDS times, alternating the default
#     (transparent huge pages for the heap, see README) with
#     KBSYNC_HUGE_PAGES=0.
# usage: [HP_MODES="default 0"] bench/run_restart.sh [N=1000000] [INDEX=Flat] [TAIL=9000] [ROUNDS=3]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000000}
INDEX=${2:-Flat}
TAIL=${3:-9000}
ROUNDS=${4:-3}
B=${KB_BUILD:-build}
[ -n "${KB_BUILD:-}" ] || bash scripts/build.sh build Release >/dev/null
W=$(mktemp -d /tmp/kbsync-brestart-XXXXXX)
mkdir -p results
OUT=results/restart-$(date -u +%Y%m%dT%H%M%SZ).txt
pid=
trap '[ -n "$pid" ] && kill -9 "$pid" 2>/dev/null; rm -rf "$W"' EXIT
exec > >(tee "$OUT") 2>&1

calc() { awk "BEGIN { printf \"%.${2:-3}f\", $1 }"; }
jfield() { grep -o "\"$1\":[^,}]*" | head -1 | cut -d: -f2; }
# status, and how long it took when that was over a second
status() {
  local t0 t1; t0=$(date +%s%N)
  $B/kbsync status --to "$EP" --json --timeout-ms 60000
  t1=$(date +%s%N)
  [ $(( (t1 - t0) / 1000000 )) -lt 1000 ] ||
    echo "(a status took $(( (t1 - t0) / 1000000 )) ms)" >&2
}
start() { # start [env assignments...]
  rm -f "$W/ep"
  env "$@" $B/kbsync leader --data "$W/kb" --dim 384 --index "$INDEX" \
    --listen 'tcp://127.0.0.1:*' --endpoint-file "$W/ep" \
    >/dev/null 2>>"$W/leader.log" &
  pid=$!
  for _ in $(seq 4000); do [ -s "$W/ep" ] && break; sleep 0.005; done
  EP=$(cat "$W/ep")
}

echo "# kbsync restart after kill -9, $(date -u +%FT%TZ), $(nproc) cores, $(uname -r)"
echo "# $N docs x 384, index $INDEX, tail $TAIL operations after the checkpoint"
$B/bench/bench_gen "$W/docs.jsonl" "$N" 384 1
head -n "$TAIL" "$W/docs.jsonl" > "$W/tail.jsonl"
start
t0=$(date +%s%N)
$B/kbsync ingest --to "$EP" "$W/docs.jsonl" 2>&1 | tail -1
echo "ingest: $(( ($(date +%s%N) - t0) / 1000000 )) ms"
# Wait until the merger moved every vector into the index (an HNSW graph
# takes minutes for 100k here) and no checkpoint is being written, then
# stop the node cleanly: its closing checkpoint covers the whole, settled
# index. The tail is then applied after it, as after a crash.
for _ in $(seq 12000); do
  st=$(status)
  [ "$(echo "$st" | jfield unmerged_vectors)" = 0 ] &&
    [ "$(echo "$st" | jfield checkpointing)" = false ] && break
  sleep 0.1
done
kill -TERM "$pid"; wait "$pid" || true
start
st=$(status)
echo "restarted cleanly: version $(echo "$st" | jfield version), checkpoint $(echo "$st" | jfield checkpoint_lsn), from checkpoint $(echo "$st" | jfield index_from_checkpoint)"
$B/kbsync ingest --to "$EP" "$W/tail.jsonl" 2>&1 | tail -1
st=$(status)
# The input (9 GB of JSONL for 1M docs) is written back to disk while the
# rounds run otherwise, and each restart's reads and fsyncs queue behind it.
rm -f "$W/docs.jsonl" "$W/tail.jsonl"; sync
echo "before the kill: version $(echo "$st" | jfield version), checkpoint $(echo "$st" | jfield checkpoint_lsn), checkpointing $(echo "$st" | jfield checkpointing)"

for r in $(seq "$ROUNDS"); do
  for hp in ${HP_MODES:-default 0}; do
    kill -9 "$pid"; wait "$pid" 2>/dev/null || true
    lines=$(wc -l < "$W/leader.log")
    t0=$(date +%s%N)
    if [ $hp = default ]; then start; else start KBSYNC_HUGE_PAGES=0; fi
    te=$(date +%s%N)
    until $B/kbsync query --to "$EP" -k 5 "synthetic document text" \
            >/dev/null 2>&1; do sleep 0.005; done
    t1=$(date +%s%N)
    echo "round $r, huge pages $hp: kill -9 -> first query answered in $(calc "($t1 - $t0) / 1e9") s (endpoint up after $(calc "($te - $t0) / 1e9") s)"
    tail -n +$((lines + 1)) "$W/leader.log" |
      grep -o "loaded checkpoint.*\|flat index built.*\|index rebuilt.*" |
      head -1 | sed 's/^/  log: /'
  done
done
cp "$W/leader.log" "${OUT%.txt}.leader.log"
echo "(saved in $OUT, the leader's log beside it)"
