#!/usr/bin/env bash
# Serving benchmark: a leader + 2 replicas on loopback (fsync on), N docs x
# 384 (synthetic clustered embeddings + ~300 B text, bench_gen), then
# build/bench/bench_serve against replica r1:
#   (a) 1 closed-loop client            (b) 16 closed-loop clients
#   (c) 16 clients + 500 async writes/s to the leader + an `all` probe
#   (d) no read load, 500 async writes/s + the `all` probe (baseline of c)
#   (e) raw FAISS in-process, same N vectors: batch 16 x 2 threads (+ single
#       query, 1 thread) and batch 16 x 1 thread
# and prints a Markdown table of every figure; the whole output is saved in
# results/serve-<time>.txt.
#
# usage: bench/run_serve.sh [N=100000] [bench_serve options...]
#   extra options go to every bench_serve run (e.g. --ef-search 64,
#   --filter source=bench, -k 5, --seconds 5).
# env: INDEX=DESC        create the leader with --index DESC (e.g. HNSW32)
#      QUERY_THREADS=T   --query-threads T for the replicas (only when
#                        `kbsync replica --help` mentions the option)
#      SECS=S            measured seconds per run (default 10)
#      WRITE_RATE=R      async writes/s in (c) and (d) (default 500)
#      CLIENTS=C         clients in (b) and (c) (default 16)
#      BUILD_DIR=DIR     build directory (default build)
#      REPLICA_ARGS=".." more options for both replicas (e.g. "--threads 2")
set -euo pipefail
cd "$(dirname "$0")/.."
N=100000
if [ $# -gt 0 ] && [[ $1 =~ ^[0-9]+$ ]]; then N=$1; shift; fi
EXTRA=("$@")
SECS=${SECS:-10}
WRATE=${WRITE_RATE:-500}
CLIENTS=${CLIENTS:-16}
B=${BUILD_DIR:-build}

bash scripts/build.sh "$B" Release >/dev/null
W=$(mktemp -d /tmp/kbsync-bserve-XXXXXX)
mkdir -p results
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=results/serve-$STAMP.txt
pids=()
stop_all() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}
trap 'stop_all; rm -rf "$W"' EXIT
trap 'exit 130' INT TERM
exec > >(tee "$OUT") 2>&1

wait_ep() { for _ in $(seq 400); do [ -s "$1" ] && break; sleep 0.025; done; cat "$1"; }
free_port() { for p in $(seq 17401 17999); do
  (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null || { echo $p; return; }; done; }
version_of() { $B/kbsync status --to "$1" --json 2>/dev/null |
  grep -o '"version":[0-9]*' | head -1 | cut -d: -f2; }

REPLICA_EXTRA=()
# REPLICA_ARGS="--threads 2": more options for both replicas, word-split.
read -r -a REPLICA_ARGS_A <<<"${REPLICA_ARGS:-}"
if [ -n "${QUERY_THREADS:-}" ]; then
  rhelp=$($B/kbsync replica --help 2>&1 || true) # exits non-zero today
  if grep -q -- '--query-threads' <<<"$rhelp"; then
    REPLICA_EXTRA=(--query-threads "$QUERY_THREADS")
  else
    echo "# note: QUERY_THREADS=$QUERY_THREADS ignored: this kbsync replica has no --query-threads"
    QUERY_THREADS=
  fi
fi
LEADER_EXTRA=()
[ -n "${INDEX:-}" ] && LEADER_EXTRA=(--index "$INDEX")

echo "# kbsync serving benchmark, $(date -u +%FT%TZ), $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, fsync on"
echo "# tree: $(git describe --always --dirty 2>/dev/null || echo unknown); index: ${INDEX:-IDMap2,Flat (default)}; replica query threads: ${QUERY_THREADS:-default}"
echo "# data: $N synthetic clustered 384-d embeddings (not a model's) + ~300 B text; queries: other vectors of the same clusters"
echo "# extra bench_serve options: ${EXTRA[*]:-none}"

# --- cluster -----------------------------------------------------------------
REPL="tcp://127.0.0.1:$(free_port)"
$B/kbsync leader --data "$W/L" --dim 384 --listen 'tcp://127.0.0.1:*' \
  --endpoint-file "$W/L.ep" --repl-listen "$REPL" --replicas r1,r2 \
  "${LEADER_EXTRA[@]}" >/dev/null 2>"$W/L.log" &
pids+=($!)
LEADER=$(wait_ep "$W/L.ep")
[ -n "$LEADER" ] || { echo "leader did not start:"; cat "$W/L.log"; exit 1; }
for r in r1 r2; do
  $B/kbsync replica --data "$W/$r" --id $r --leader "$REPL" \
    --listen 'tcp://127.0.0.1:*' --endpoint-file "$W/$r.ep" \
    "${REPLICA_EXTRA[@]}" "${REPLICA_ARGS_A[@]}" >/dev/null 2>"$W/$r.log" &
  pids+=($!)
done
R1=$(wait_ep "$W/r1.ep"); R2=$(wait_ep "$W/r2.ep")
[ -n "$R1" ] && [ -n "$R2" ] || { echo "replicas did not start:"; cat "$W"/r?.log; exit 1; }
ok=
for _ in $(seq 200); do
  if $B/kbsync status --to "$LEADER" --json | grep -q '"connected":true.*"connected":true'; then ok=1; break; fi
  sleep 0.05
done
[ -n "$ok" ] || { echo "replicas did not connect"; exit 1; }
echo "# leader $LEADER (repl $REPL), r1 $R1, r2 $R2"

# --- data --------------------------------------------------------------------
t0=$(date +%s%N)
$B/bench/bench_gen "$W/docs.jsonl" "$N" 384 1
t1=$(date +%s%N)
$B/kbsync ingest --to "$LEADER" --mode async --batch 1000 --window 4 "$W/docs.jsonl" 2>&1 | tail -1
rm -f "$W/docs.jsonl"
deadline=$(( $(date +%s) + 900 ))
until [ "$(version_of "$R1")" -ge "$N" ] 2>/dev/null && [ "$(version_of "$R2")" -ge "$N" ] 2>/dev/null; do
  [ "$(date +%s)" -lt "$deadline" ] || { echo "replicas did not apply $N docs in time"; exit 1; }
  sleep 0.05
done
t2=$(date +%s%N)
echo "# generated JSONL in $(( (t1-t0)/1000000 )) ms; ingested (async) and applied on both replicas in $(( (t2-t1)/1000000 )) ms"

# --- runs --------------------------------------------------------------------
declare -A RES
run() { # name, bench_serve args...
  local name=$1; shift
  echo
  echo "== ($name) bench_serve $*"
  $B/bench/bench_serve --seconds "$SECS" --n "$N" "${EXTRA[@]}" --label "$name" "$@" | tee "$W/$name.out" ||
    echo "(bench_serve exited non-zero)"
  RES[$name]=$(grep '^RESULT ' "$W/$name.out" | tail -1)
}
run a --query "$R1" --clients 1 --leader "$LEADER"
run b --query "$R1" --clients "$CLIENTS" --leader "$LEADER"
run c --query "$R1" --clients "$CLIENTS" --leader "$LEADER" --write-rate "$WRATE" --all-probe --id-prefix wc
run d --leader "$LEADER" --write-rate "$WRATE" --all-probe --id-prefix wd
stop_all # raw FAISS gets the machine to itself
run e2 --raw "$N" --raw-threads 2 --raw-batch 16
run e1 --raw "$N" --raw-threads 1 --raw-batch 16 --raw-single-seconds 0

# --- table -------------------------------------------------------------------
g() { # run key -> value ("-" when absent)
  local v
  v=$(tr ' ' '\n' <<<"${RES[$1]:-}" | sed -n "s/^$2=//p" | head -1)
  echo "${v:--}"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a+0 > 0 && b+0 > 0) printf "%.3f", a / b; else print "-" }'; }
echo
echo "## kbsync serving, $N x 384 $( [ -n "${INDEX:-}" ] && echo "$INDEX" || echo flat ), replica r1, ${SECS} s per run ($(date -u +%F), $(nproc) cores)"
echo
echo "| run | clients | writes/s | QPS | p50 ms | p90 ms | p99 ms | max ms | errors | r1 lag_ms in answers p50/p99/max | versions seen |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
for r in a b c; do
  w=$(g $r write_rate)
  echo "| ($r) | $(g $r clients) | ${w/-/0} | $(g $r qps) | $(g $r p50_ms) | $(g $r p90_ms) | $(g $r p99_ms) | $(g $r max_ms) | $(g $r errors) ($(g $r error_codes)) | $(g $r node_lag_p50_ms)/$(g $r node_lag_p99_ms)/$(g $r node_lag_max_ms) | $(g $r version_min)..$(g $r version_max) |"
done
echo
echo "| run | read clients | async write p50/p99 ms | \`all\` write p50/p99 ms (n) | write errors | r1 lag (leader's view) p50/p99/max ms | r2 lag p50/p99/max ms | ever disconnected |"
echo "|---|---|---|---|---|---|---|---|"
for r in a b c d; do
  cl=$(g $r clients); [ "$cl" = - ] && cl=0
  echo "| ($r) | $cl | $(g $r write_p50_ms)/$(g $r write_p99_ms) | $(g $r all_p50_ms)/$(g $r all_p99_ms) ($(g $r all_n)) | $(g $r write_errors)+$(g $r all_errors) | $(g $r repl_r1_lag_p50_ms)/$(g $r repl_r1_lag_p99_ms)/$(g $r repl_r1_lag_max_ms) | $(g $r repl_r2_lag_p50_ms)/$(g $r repl_r2_lag_p99_ms)/$(g $r repl_r2_lag_max_ms) | $( [ "$(g $r any_disconnected)" = 1 ] && echo YES || echo no ) |"
done
echo
echo "| raw FAISS in-process (IDMap2,Flat ip, same $N vectors, idx_vec_setup(1)) | QPS | per call p50/p99 ms |"
echo "|---|---|---|"
echo "| batch 16 x 2 threads | $(g e2 raw_qps) | $(g e2 raw_call_p50_ms)/$(g e2 raw_call_p99_ms) |"
echo "| batch 16 x 1 thread | $(g e1 raw_qps) | $(g e1 raw_call_p50_ms)/$(g e1 raw_call_p99_ms) |"
echo "| single query x 1 thread | $(g e2 raw_single_qps) | $(g e2 raw_single_p50_ms)/$(g e2 raw_single_p99_ms) |"
echo
echo "| ratio | value |"
echo "|---|---|"
echo "| served QPS (a) / raw single-query QPS | $(ratio "$(g a qps)" "$(g e2 raw_single_qps)") |"
echo "| served QPS (b) / raw batch-16 x 2 threads QPS | $(ratio "$(g b qps)" "$(g e2 raw_qps)") |"
echo "| served QPS (b) / raw batch-16 x 1 thread QPS | $(ratio "$(g b qps)" "$(g e1 raw_qps)") |"
echo "| \`all\` write p50 with read load (c) / without (d) | $(ratio "$(g c all_p50_ms)" "$(g d all_p50_ms)") |"
echo
for r in a b c d e2 e1; do echo "${RES[$r]:-RESULT label=$r missing}"; done
echo
echo "(saved in $OUT)"
