#!/usr/bin/env bash
# What a Prometheus scrape costs the node (issue #12 target: scraping every
# second costs <= 1% of ingest throughput). A lone leader with
# --metrics-listen ingests N docs x 384 dims (`kbsync ingest`, JSONL, fsync
# on), each round on a fresh data directory: without scrapes, while one
# scraper fetches /metrics every second, and while it fetches it back to
# back (flood), the three in a shuffled order in each round, after one
# round that is not counted (the first ingest after the corpus is written
# runs slower). The scraper is one Python process on one keep-alive HTTP
# connection, as Prometheus scrapes: a `curl` process per scrape cost the
# 2-core machine more CPU (~15 ms a start) than the node's answer, and that
# was what an earlier version of this script measured.
# A few scrapes in a round of a few seconds change its rate by less than
# this VM's run-to-run noise, so the flood's cost is measured too and
# divided by its scrapes: the ingest time one scrape costs, and from it
# the cost of one scrape a second. Last, the node's own CPU per scrape: a
# leader holding N docs, its CPU time over 5 s without scrapes and over 5 s
# of back-to-back scrapes (its digest check runs in both).
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
    python3 - "$port" "$1" "$W/scrapes" <<'PY' &
import http.client, sys, time
port, period, out = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
with open(out, "a", buffering=1) as f:
    while True:
        c.request("GET", "/metrics")
        r = c.getresponse()
        r.read()
        f.write("\n")
        time.sleep(period)
PY
    scraper=$!
  fi
  local out; out=$($B/kbsync ingest --to "$ep" --batch 1000 --window 4 "$W/docs.jsonl" 2>/dev/null | tail -1)
  if [ -n "$scraper" ]; then kill "$scraper"; wait "$scraper" 2>/dev/null || true; scraper=; scrapes=$(wc -l < "$W/scrapes"); fi
  local secs; secs=$(echo "$out" | sed 's/.*"seconds":\([0-9.]*\).*/\1/')
  local bytes; bytes=$(curl -s "http://127.0.0.1:$port/metrics" | wc -c)
  stop_all # round runs in a subshell: its leader must go with it
  echo "$(awk -v n="$N" -v s="$secs" 'BEGIN{printf "%.0f", n/s}') $scrapes $bytes"
}

# round MODE (none, 1 = every second, flood): prints docs/s, scrapes, secs
declare -A rates secs_of scr_of
for r in $(seq 0 "$ROUNDS"); do
  for p in $(printf '0\n1\n0\n' | sed 's/^0$/none/;3s/none/flood/' | shuf); do
    case $p in none) arg=0;; flood) arg=0.0000001;; *) arg=$p;; esac
    read -r rate scrapes bytes < <(round "$arg")
    [ "$r" = 0 ] && { echo "warm-up round: $p $rate docs/s (not counted)"; continue; }
    printf "round %d  scrapes %-6s %7d docs/s  (%d scrapes, page %d bytes)\n" "$r" "$p" "$rate" "$scrapes" "$bytes"
    rates[$p]="${rates[$p]:-} $rate"
    secs_of[$p]="${secs_of[$p]:-} $(awk -v n="$N" -v r="$rate" 'BEGIN{printf "%.4f", n/r}')"
    scr_of[$p]="${scr_of[$p]:-} $scrapes"
  done
done
med() { tr ' ' '\n' | grep . | sort -g | awk '{v[NR]=$1} END {print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }
base=$(echo "${rates[none]}" | med)
for p in 1 flood; do
  m=$(echo "${rates[$p]}" | med)
  awk -v b="$base" -v m="$m" -v p="$p" 'BEGIN{printf "scrapes %s: median %d docs/s vs %d without: %+.2f%%\n", p, m, b, (m-b)*100.0/b}'
done
# the flood: ingest seconds added per scrape (medians), and what one scrape
# a second then costs (the Python scraper's own CPU, on the same 2 cores,
# included)
tn=$(echo "${secs_of[none]}" | med); tf=$(echo "${secs_of[flood]}" | med)
sf=$(echo "${scr_of[flood]}" | med)
awk -v tn="$tn" -v tf="$tf" -v sf="$sf" 'BEGIN {
  per = (tf - tn) / sf; printf "flood: %d scrapes in %.2f s against %.2f s without: %.2f ms of ingest time per scrape, so one scrape a second costs %.2f%% of the ingest rate\n", sf, tf, tn, per * 1000, per * 100 }'

# the node's CPU per scrape
stop_all; rm -rf "$W/kb" "$W/ep"
port=$(free_port)
$B/kbsync leader --data "$W/kb" --dim 384 --listen 'tcp://127.0.0.1:*' \
  --endpoint-file "$W/ep" --metrics-listen "127.0.0.1:$port" \
  >/dev/null 2>"$W/leader.log" &
pids+=($!)
ep=$(wait_ep "$W/ep")
$B/kbsync ingest --to "$ep" "$W/docs.jsonl" >/dev/null 2>&1
sleep 3
ticks() { awk '{print $14 + $15}' "/proc/${pids[-1]}/stat"; }
hz=$(getconf CLK_TCK)
a=$(ticks); sleep 5; b=$(ticks); idle=$((b - a))
: > "$W/scrapes"
timeout 5 python3 - "$port" "$W/scrapes" <<'PY' &
import http.client, sys
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=30)
with open(sys.argv[2], "a", buffering=1) as f:
    while True:
        c.request("GET", "/metrics")
        c.getresponse().read()
        f.write("\n")
PY
a=$(ticks); wait $! || true; b=$(ticks); n=$(wc -l < "$W/scrapes")
awk -v i="$idle" -v f="$((b - a))" -v n="$n" -v hz="$hz" 'BEGIN {
  per = (f - i) / hz / n; printf "node CPU: %.2f s in 5 s idle, %.2f s in 5 s of %d scrapes: %.3f ms per scrape, so one scrape a second takes %.3f%% of one core\n", i / hz, f / hz, n, per * 1000, per * 100 }'
