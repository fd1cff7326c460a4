#!/usr/bin/env bash
# The unread-answer flood of issue #10: a leader + 2 named replicas on
# loopback (fsync on, defaults: --max-client-queue-mb 64) holding 40
# documents of ~52 KB of text; one client sends 20,000 queries whose
# answers are ~1 MiB (k = 20) and never reads them, while another client
# runs single-document `all` writes. Reports the leader's resident memory
# (peak, sampled every 100 ms) and the `all` write p50/p99 without and
# during the flood, and the leader's drop counters.
# usage: bench/run_flood.sh [QUERIES=20000]
set -euo pipefail
cd "$(dirname "$0")/.."
NQ=${1:-20000}
B=${KB_BUILD:-build}
[ -n "${KB_BUILD:-}" ] || bash scripts/build.sh build Release >/dev/null
W=$(mktemp -d /tmp/kbsync-bflood-XXXXXX)
mkdir -p results
OUT=results/flood-$(date -u +%Y%m%dT%H%M%SZ).txt
. bench/lib.sh
trap 'stop_all; rm -rf "$W"' EXIT
exec > >(tee "$OUT") 2>&1

rss_mb() { awk '/VmRSS/ {print int($2 / 1024)}' "/proc/$1/status"; }

REPL="tcp://127.0.0.1:$(free_port)"
$B/kbsync leader --data "$W/L" --dim 384 --listen 'tcp://127.0.0.1:*' \
  --endpoint-file "$W/L.ep" --repl-listen "$REPL" --replicas r1,r2 \
  >/dev/null 2>"$W/L.log" &
LPID=$!
pids+=($LPID)
LEADER=$(wait_ep "$W/L.ep")
for r in r1 r2; do
  $B/kbsync replica --data "$W/$r" --id $r --leader "$REPL" \
    --listen 'tcp://127.0.0.1:*' --endpoint-file "$W/$r.ep" \
    >/dev/null 2>"$W/$r.log" &
  pids+=($!)
done
wait_ep "$W/r1.ep" >/dev/null; wait_ep "$W/r2.ep" >/dev/null
for _ in $(seq 200); do
  $B/kbsync status --to "$LEADER" --json | grep -q '"connected":true.*"connected":true' && break
  sleep 0.05
done

echo "# kbsync unread-answer flood, $(date -u +%FT%TZ), $(nproc) cores, fsync on"
python3 - "$W/big.jsonl" <<'PY'
import json, sys
with open(sys.argv[1], "w") as f:
    for i in range(40):
        emb = [((i * 7 + j) % 13 - 6) / 10.0 for j in range(384)]
        f.write(json.dumps({"id": "big-%d" % i, "text": "word " * 10400,
                            "embedding": emb}) + "\n")
PY
$B/kbsync ingest --to "$LEADER" --mode all "$W/big.jsonl" 2>/dev/null | tail -1
echo "leader resident before: $(rss_mb $LPID) MB"
echo "== all writes, no flood"
$B/bench/bench_write "$LEADER" 2000 384 q all | tail -1

echo "== all writes during the flood ($NQ queries, k 20, never read)"
$B/bench/bench_flood "$LEADER" "$NQ" 20 384 60 &
FPID=$!
pids+=($FPID)
peak=0
( while kill -0 $LPID 2>/dev/null; do
    r=$(rss_mb $LPID); echo "$r"; sleep 0.1; done ) > "$W/rss" &
SPID=$!
sleep 2
$B/bench/bench_write "$LEADER" 2000 384 f all | tail -1
sleep 3
kill $SPID 2>/dev/null || true
peak=$(sort -n "$W/rss" | tail -1)
echo "leader resident peak during the flood: $peak MB"
$B/kbsync status --to "$LEADER" --json | python3 -c "
import json, sys
d = json.load(sys.stdin)
print('leader status: client_queue_bytes %d, clients_over_queue_limit %d, dropped_client_answers %d, dropped_client_requests %d' % (
    d['client_queue_bytes'], d['clients_over_queue_limit'], d['dropped_client_answers'], d['dropped_client_requests']))
print('replicas connected:', [r['connected'] for r in d['replicas']])"
kill $FPID 2>/dev/null || true
stop_all
echo "(saved in $OUT)"
