#!/usr/bin/env bash
# What CURVE costs (issue #10): a leader + 2 replicas on loopback, fsync on,
# plain TCP against CURVE on both sockets (client and replication), rounds
# interleaved (plain, curve, plain, curve, ...):
#  1. single-doc `all` write latency (bench_write, closed loop, one client,
#     2,000 writes of 384 floats + ~300 B text);
#  2. batched ingest of N docs x 384 through `kbsync ingest --mode async`,
#     timed until both replicas applied everything.
# usage: bench/run_curve.sh [N=100000] [rounds=2]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-100000}
ROUNDS=${2:-2}
B=${KB_BUILD:-build}
[ -n "${KB_BUILD:-}" ] || bash scripts/build.sh build Release >/dev/null
W=$(mktemp -d /tmp/kbsync-bcurve-XXXXXX)
mkdir -p results
OUT=results/curve-$(date -u +%Y%m%dT%H%M%SZ).txt
. bench/lib.sh
trap 'stop_all; rm -rf "$W"' EXIT
exec > >(tee "$OUT") 2>&1

pub() { sed -n 's/^public-key = //p' "$W/$1.pub"; }

for k in leader r1 r2 admin; do $B/kbsync keygen "$W/$k" >/dev/null; done
printf '%s replica:r1\n%s replica:r2\n%s admin\n' "$(pub r1)" "$(pub r2)" \
  "$(pub admin)" > "$W/trust"
printf '%s admin\n' "$(pub admin)" > "$W/trust-r"

# as_client NODE: the key settings a client of NODE uses (curve runs only)
as_client() {
  if [ "$SEC" = curve ]; then
    export KBSYNC_KEY="$W/admin.key" KBSYNC_SERVER_KEY="$W/$1.pub"
  else
    unset KBSYNC_KEY KBSYNC_SERVER_KEY
  fi
}

start_cluster() {
  stop_all; rm -rf "$W/c"; mkdir -p "$W/c"
  REPL="tcp://127.0.0.1:$(free_port)"
  local lk=() rk=()
  if [ "$SEC" = curve ]; then
    lk=(--key "$W/leader.key" --trust "$W/trust")
  fi
  $B/kbsync leader --data "$W/c/L" --dim 384 --listen 'tcp://127.0.0.1:*' \
    --endpoint-file "$W/c/L.ep" --repl-listen "$REPL" --replicas r1,r2 \
    "${lk[@]}" >/dev/null 2>"$W/c/L.log" &
  pids+=($!)
  LEADER=$(wait_ep "$W/c/L.ep")
  for r in r1 r2; do
    [ "$SEC" = curve ] && rk=(--key "$W/$r.key" --trust "$W/trust-r" \
                              --leader-key "$W/leader.pub")
    $B/kbsync replica --data "$W/c/$r" --id $r --leader "$REPL" \
      --listen 'tcp://127.0.0.1:*' --endpoint-file "$W/c/$r.ep" \
      "${rk[@]}" >/dev/null 2>"$W/c/$r.log" &
    pids+=($!)
  done
  R1=$(wait_ep "$W/c/r1.ep"); R2=$(wait_ep "$W/c/r2.ep")
  as_client leader
  for _ in $(seq 200); do
    $B/kbsync status --to "$LEADER" --json | grep -q '"connected":true.*"connected":true' && return
    sleep 0.05
  done
  echo "replicas did not connect"; exit 1
}

version_of() { as_client "$2"
  $B/kbsync status --to "$1" --json | grep -o '"version":[0-9]*' | head -1 | cut -d: -f2; }

echo "# kbsync CURVE cost, $(date -u +%FT%TZ), $(nproc) cores, fsync on, N=$N x 384"
$B/bench/bench_gen "$W/docs.jsonl" "$N" 384 1
for round in $(seq "$ROUNDS"); do
  for SEC in plain curve; do
    echo "== round $round, $SEC: single-doc all"
    start_cluster
    as_client leader
    $B/bench/bench_write "$LEADER" 2000 384 w all | tail -3
    echo "== round $round, $SEC: batched ingest, async, until both replicas applied"
    start_cluster
    as_client leader
    t0=$(date +%s%N)
    $B/kbsync ingest --to "$LEADER" --mode async "$W/docs.jsonl" 2>/dev/null | tail -1
    v=$(version_of "$LEADER" leader)
    until [ "$(version_of "$R1" r1)" -ge "$v" ] && [ "$(version_of "$R2" r2)" -ge "$v" ]; do
      sleep 0.01
    done
    t1=$(date +%s%N)
    awk -v n="$N" -v ns=$((t1 - t0)) \
      'BEGIN { printf "ingest %s: %d docs on both replicas in %.2f s: %.0f docs/s\n", "'$SEC'", n, ns / 1e9, n / (ns / 1e9) }'
  done
done
stop_all
echo "(saved in $OUT)"
