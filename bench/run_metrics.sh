#!/usr/bin/env bash
# What a Prometheus scrape costs the node (issue #12 target: scraping every
# second costs <= 1% of ingest throughput). A lone leader with
# --metrics-listen ingests N docs x 384 dims (`kbsync ingest`, JSONL, fsync
# on) ROUNDS times without scrapes and ROUNDS times while a loop fetches
# /metrics every second (and, to show the trend, every 10 ms), interleaved,
# each round on a fresh data directory.
# usage: bench/run_metrics.sh [N=100000] [ROUNDS=3] [BUILD=build]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-100000}
ROUNDS=${2:-3}
B=${3:-build}
bash scripts/build.sh "$B" Release >/dev/null
W=$(mktemp -d /tmp/kbsync-bench-metrics-XXXXXX)
source bench/lib.sh
scraper=
cleanup() { [ -n "$scraper" ] && kill "$scraper" 2>/dev/null; stop_all; rm -rf "$W"; }
trap cleanup EXIT
$B/bench/bench_gen "$W/docs.jsonl" "$N" 384 1 >/dev/null
echo "# metrics scrape cost, $(date -u +%FT%TZ), $(nproc) cores; $N docs, $(du -m "$W/docs.jsonl" | cut -f1) MB JSONL per round"

# round PERIOD_S (0 = no scrapes): prints docs/s
round() {
  stop_all; rm -rf "$W/kb" "$W/ep"
  local port; port=$(free_port)
  $B/kbsync leader --data "$W/kb" --dim 384 --listen 'tcp://127.0.0.1:*' \
    --endpoint-file "$W/ep" --metrics-listen "127.0.0.1:$port" \
    >/dev/null 2>"$W/leader.log" &
  pids+=($!)
  local ep; ep=$(wait_ep "$W/ep")
  local scrapes=0
  if [ "$1" != 0 ]; then
    : > "$W/scrapes"
    ( while :; do curl -s -o /dev/null "http://127.0.0.1:$port/metrics"; echo >> "$W/scrapes"; sleep "$1"; done ) &
    scraper=$!
  fi
  local out; out=$($B/kbsync ingest --to "$ep" --batch 1000 --window 4 "$W/docs.jsonl" 2>/dev/null | tail -1)
  if [ -n "$scraper" ]; then kill "$scraper"; wait "$scraper" 2>/dev/null || true; scraper=; scrapes=$(wc -l < "$W/scrapes"); fi
  local secs; secs=$(echo "$out" | sed 's/.*"seconds":\([0-9.]*\).*/\1/')
  local bytes; bytes=$(curl -s "http://127.0.0.1:$port/metrics" | wc -c)
  stop_all # round runs in a subshell: its leader must go with it
  echo "$(awk -v n="$N" -v s="$secs" 'BEGIN{printf "%.0f", n/s}') $scrapes $bytes"
}

declare -A sum cnt
for r in $(seq "$ROUNDS"); do
  for p in 0 1 0.01; do
    read -r rate scrapes bytes < <(round "$p")
    printf "round %d  scrape every %-5s  %7d docs/s  (%d scrapes, page %d bytes)\n" "$r" "${p}s" "$rate" "$scrapes" "$bytes"
    sum[$p]=$(( ${sum[$p]:-0} + rate )); cnt[$p]=$(( ${cnt[$p]:-0} + 1 ))
  done
done
base=$(( sum[0] / cnt[0] ))
for p in 1 0.01; do
  m=$(( sum[$p] / cnt[$p] ))
  awk -v b="$base" -v m="$m" -v p="$p" 'BEGIN{printf "scrape every %ss: mean %d docs/s vs %d without: %+.2f%%\n", p, m, b, (m-b)*100.0/b}'
done
