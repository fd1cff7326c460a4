#!/usr/bin/env bash
# bench/run_consistency.sh: the issue #11 targets on a leader + 2 replicas
# (r1, r2, both named) on loopback, fsync on every node, 384-d synthetic
# embeddings (bench_common.h, not a model's) + ~300 B of text, flat index.
#  1. quorum:1 with r2 SIGSTOPped (and marked disconnected) against `all`
#     with both healthy: single-doc write p50/p99 (bench_write, closed loop,
#     one client), interleaved over ROUNDS rounds; `all` with r2 stopped is
#     refused (KB_ENOREPLICA).
#  2. strong reads on a replica of a knowledge base of N docs against plain
#     reads there and a client round trip to the leader (bench_consistency
#     strong).
#  3. idempotent retries: 10,000 writes with the connection cut at random
#     points, unanswered writes retried (bench_consistency retry).
#  4. anti-entropy: one document of r1 edited in its LMDB behind its back
#     (tests/kb_tamper): seconds until r1 reports the mismatch and until it
#     holds the leader's digest again.
#  5. what each write mode costs with both replicas healthy (async,
#     majority, quorum:1, quorum:2, all; single-doc writes, interleaved).
# usage: bash bench/run_consistency.sh [N=100000] [ROUNDS=2] [BUILD=build]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-100000}
ROUNDS=${2:-2}
B=${3:-build}
[ -x "$B/bench/bench_consistency" ] || bash scripts/build.sh "$B" Release >/dev/null
W=$(mktemp -d /tmp/kbsync-bcons-XXXXXX)
mkdir -p results
OUT=results/consistency-$(date -u +%Y%m%dT%H%M%SZ).txt
. bench/lib.sh
trap 'stop_all; rm -rf "$W"' EXIT
exec > >(tee "$OUT") 2>&1

echo "# kbsync leader + 2 replicas, $(date -u +%FT%TZ), $(nproc) cores, fsync on"
echo "# data: synthetic clustered 384-d embeddings (not a model's) + ~300 B text"

echo "== 1. quorum:1 with r2 stopped vs all with both healthy (single-doc writes)"
start_cluster
for round in $(seq "$ROUNDS"); do
  $B/bench/bench_write "$LEADER" 2000 384 "a$round" all
  kill -STOP "$R2PID"
  wait_replicas 1
  $B/bench/bench_write "$LEADER" 2000 384 "q$round" quorum:1
  $B/kbsync ingest --to "$LEADER" --mode all --timeout-ms 3000 /dev/stdin <<<'{"id":"refused","text":"x"}' \
    2>&1 | grep -o 'KB_ENOREPLICA[^"]*' | head -1 | sed 's/^/all with r2 stopped: /' || true
  kill -CONT "$R2PID"
  wait_replicas 2
done

echo "== 2. strong reads on a replica, $N docs (flat)"
$B/bench/bench_gen "$W/docs.jsonl" "$N" 384 1 >/dev/null
$B/kbsync ingest --to "$LEADER" --mode all --batch 1000 "$W/docs.jsonl" | tail -1
$B/bench/bench_consistency strong "$LEADER" "$R1" 2000 384

echo "== 3. idempotent retries with connection cuts"
$B/bench/bench_consistency retry "$LEADER" 10000 384 16 40

echo "== 4. anti-entropy: one document of r1 edited behind its back"
field() { $B/kbsync status --to "$1" --json | grep -o "\"$2\":[^,}]*" | head -1 | cut -d: -f2 | tr -d '"'; }
for _ in $(seq 200); do
  [ "$(field "$R1" digest)" = "$(field "$LEADER" digest)" ] && break; sleep 0.05
done
resyncs0=$(field "$R1" digest_resyncs)
$B/tests/kb_tamper "$W/c/r1" doc-42 "edited behind its back" >/dev/null
t0=$(date +%s.%N); det=""; rep=""
for _ in $(seq 1200); do
  now=$(date +%s.%N)
  if [ -z "$det" ] && [ "$(field "$R1" digest_resyncs)" != "$resyncs0" ]; then
    det=$(awk "BEGIN{printf \"%.2f\", $now - $t0}")
  fi
  if [ -n "$det" ] && [ "$(field "$R1" version)" = "$(field "$LEADER" version)" ] &&
     [ "$(field "$R1" digest)" = "$(field "$LEADER" digest)" ]; then
    rep=$(awk "BEGIN{printf \"%.2f\", $now - $t0}"); break
  fi
  sleep 0.02
done
echo "edited document detected after ${det:-never} s, r1 holds the leader's digest again after ${rep:-never} s ($N docs; r2 and the leader served throughout)"
echo "r1 background check: $(field "$R1" digest_check_ms) ms per pass over $(field "$R1" docs) docs"

echo "== 5. single-doc write latency per mode, both replicas healthy"
for round in $(seq "$ROUNDS"); do
  for mode in async majority quorum:1 quorum:2 all; do
    $B/bench/bench_write "$LEADER" 2000 384 "m$round-${mode/:/}" $mode
  done
done
stop_all
