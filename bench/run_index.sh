#!/usr/bin/env bash
# Index benchmark: approximate indexes and filters on a real leader + 2
# replicas (loopback, fsync on), side by side with raw FAISS built in the
# bench process from the same vectors (build/bench/bench_index):
#   hnsw    --index HNSW32: ingest rate and time until both replicas are
#           idle; recall@10 of served answers at ef_search 64 vs exact;
#           served single-query latency vs raw HNSW32; replica memory vs the
#           raw index; replace 20% + delete 10% (recall vs a fresh index of
#           the live set, no deleted/old version ever returned), then
#           `kbsync rebuild --to r1` and the same checks
#   ivf     --index IVF1024,Flat and IVF256,Flat (IVF_LIST): background
#           training time, recall@10 and latency at the default nprobe and
#           at NPROBES, again after `kbsync rebuild`; raw FAISS IVF
#   filter  flat, metadata {"bucket": 1% key, "half": 50% key}: filtered vs
#           unfiltered latency (1 client), every answer checked
# Each section starts its own cluster and stops it; every process is stopped
# on exit. The whole output goes to results/index-<time>.txt, ending with a
# Markdown table and the RESULT lines.
#
# usage: bench/run_index.sh hnsw|ivf|filter|all [N=100000]
# env: BUILD_DIR=DIR       build directory (default build)
#      NO_BUILD=1          do not run scripts/build.sh first
#      METRIC=ip|l2|cosine leader metric (default ip)
#      HNSW_INDEX=DESC     (default HNSW32)
#      IVF_LIST="A B"      (default "IVF1024,Flat IVF256,Flat")
#      NPROBES=LIST        (default 1,4,16,32,64,128)
#      EF=E                ef_search of the hnsw section (default 64)
#      EF_SWEEP="32 128"   more ef_search values, recall + latency (default
#                          "32 128 256"; "" = none)
#      NQ=Q                queries per round (default 1000)
#      INGEST=program|cli  hnsw/ivf ingest: upserts from bench_index
#                          (batches of 1000, 4 in flight; default) or
#                          `kbsync ingest` of bench_gen's JSONL (generated
#                          before the clock starts)
#      QUERY_THREADS=T     --query-threads for the replicas
#      BENCH_ARGS=".."     more bench_index options (e.g. "--no-rebuild")
set -euo pipefail
cd "$(dirname "$0")/.."
SECTION=${1:-}
case "$SECTION" in hnsw | ivf | filter | all) ;; *)
  echo "usage: bench/run_index.sh hnsw|ivf|filter|all [N=100000]" >&2
  exit 2
  ;;
esac
N=${2:-100000}
[[ $N =~ ^[0-9]+$ ]] || { echo "N must be a number" >&2; exit 2; }
B=${BUILD_DIR:-build}
METRIC=${METRIC:-ip}
HNSW_INDEX=${HNSW_INDEX:-HNSW32}
IVF_LIST=${IVF_LIST:-IVF1024,Flat IVF256,Flat}
NPROBES=${NPROBES:-1,4,16,32,64,128}
EF=${EF:-64}
NQ=${NQ:-1000}
INGEST=${INGEST:-program}
read -r -a BENCH_ARGS_A <<<"${BENCH_ARGS:-}"

[ -n "${NO_BUILD:-}" ] || bash scripts/build.sh "$B" Release >/dev/null
[ -x "$B/bench/bench_index" ] || { echo "no $B/bench/bench_index: build first" >&2; exit 1; }
W=$(mktemp -d /tmp/kbsync-bindex-XXXXXX)
mkdir -p results
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=results/index-$STAMP.txt
pids=()
stop_all() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}
trap 'stop_all; rm -rf "$W"' EXIT
trap 'exit 130' INT TERM
exec > >(tee "$OUT") 2>&1

wait_ep() { for _ in $(seq 400); do [ -s "$1" ] && break; sleep 0.025; done; cat "$1" 2>/dev/null; }
free_port() { for p in $(seq 17401 17999); do
  (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null || { echo $p; return; }; done; }

REPLICA_EXTRA=()
[ -n "${QUERY_THREADS:-}" ] && REPLICA_EXTRA=(--query-threads "$QUERY_THREADS")

echo "# kbsync index benchmark, $(date -u +%FT%TZ), $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, fsync on, loopback"
echo "# tree: $(git describe --always --dirty 2>/dev/null || echo unknown); section: $SECTION; N = $N; metric $METRIC; ingest: $INGEST"
echo "# data: synthetic clustered 384-d embeddings (bench_common.h, not a model's) + ~300 B text"
echo "# binaries: $B/kbsync built $(stat -c %y "$B/kbsync" | cut -c1-19), $B/bench/bench_index $(stat -c %y "$B/bench/bench_index" | cut -c1-19) (both must come from one tree)"
echo "# load before start: $(cut -d' ' -f1-3 /proc/loadavg)"

LEADER= R1= R2= LPID= R1PID= R2PID=
start_cluster() { # name, index description
  local name=$1 index=$2 d="$W/$1"
  mkdir -p "$d"
  local repl="tcp://127.0.0.1:$(free_port)"
  $B/kbsync leader --data "$d/L" --dim 384 --index "$index" --metric "$METRIC" \
    --listen 'tcp://127.0.0.1:*' --endpoint-file "$d/L.ep" \
    --repl-listen "$repl" --replicas r1,r2 >/dev/null 2>"$d/L.log" &
  LPID=$!; pids+=($LPID)
  LEADER=$(wait_ep "$d/L.ep")
  [ -n "$LEADER" ] || { echo "leader did not start:"; cat "$d/L.log"; return 1; }
  $B/kbsync replica --data "$d/r1" --id r1 --leader "$repl" --listen 'tcp://127.0.0.1:*' \
    --endpoint-file "$d/r1.ep" "${REPLICA_EXTRA[@]}" >/dev/null 2>"$d/r1.log" &
  R1PID=$!; pids+=($R1PID)
  $B/kbsync replica --data "$d/r2" --id r2 --leader "$repl" --listen 'tcp://127.0.0.1:*' \
    --endpoint-file "$d/r2.ep" "${REPLICA_EXTRA[@]}" >/dev/null 2>"$d/r2.log" &
  R2PID=$!; pids+=($R2PID)
  R1=$(wait_ep "$d/r1.ep"); R2=$(wait_ep "$d/r2.ep")
  [ -n "$R1" ] && [ -n "$R2" ] || { echo "replicas did not start:"; cat "$d"/r?.log; return 1; }
  local ok=
  for _ in $(seq 200); do
    if $B/kbsync status --to "$LEADER" --json | grep -q '"connected":true.*"connected":true'; then ok=1; break; fi
    sleep 0.05
  done
  [ -n "$ok" ] || { echo "replicas did not connect"; return 1; }
  echo "# cluster $name: index $index; leader $LEADER (pid $LPID, repl $repl), r1 $R1 (pid $R1PID), r2 $R2 (pid $R2PID)"
}

CLUSTER_ARGS() { # name
  echo --leader "$LEADER" --leader-pid "$LPID" --replica "$R1" --pid "$R1PID" \
    --log "$W/$1/r1.log" --replica "$R2" --pid "$R2PID" --log "$W/$1/r2.log" \
    --kbsync "$B/kbsync"
}

declare -A RES
run_bench() { # name, bench_index args...
  local name=$1; shift
  echo
  echo "== ($name) bench_index $*"
  local t0=$SECONDS
  echo "# load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
  $B/bench/bench_index "$@" --label "$name" "${BENCH_ARGS_A[@]}" | tee "$W/$name.out" ||
    echo "(bench_index exited non-zero)"
  RES[$name]=$(grep '^RESULT ' "$W/$name.out" | tail -1 || true)
  echo "# ($name) took $((SECONDS - t0)) s; load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
}

ingest_args() { # name -> --ingest-cmd ... when INGEST=cli
  if [ "$INGEST" = cli ]; then
    $B/bench/bench_gen "$W/$1/docs.jsonl" "$N" 384 1
    echo "--ingest-cmd"
    echo "$B/kbsync ingest --to $LEADER --mode async --batch 1000 --window 4 $W/$1/docs.jsonl >$W/$1/ingest.out 2>&1"
  fi
}

section_hnsw() {
  start_cluster hnsw "$HNSW_INDEX"
  local ia=()
  mapfile -t ia < <(ingest_args hnsw)
  # shellcheck disable=SC2046
  local sweep=${EF_SWEEP-32 128 256}
  run_bench hnsw hnsw $(CLUSTER_ARGS hnsw) --n "$N" --nq "$NQ" --metric "$METRIC" \
    --index "$HNSW_INDEX" --ef "$EF" --ef-sweep "${sweep// /,}" "${ia[@]}"
  echo "# r1 log (index lines):"; grep -E 'rebuild|trained|merger' "$W/hnsw/r1.log" | tail -8 || true
  stop_all
}

section_ivf() {
  local i=0
  for idx in $IVF_LIST; do
    i=$((i + 1))
    start_cluster "ivf$i" "$idx"
    local ia=()
    mapfile -t ia < <(ingest_args "ivf$i")
    # shellcheck disable=SC2046
    run_bench "ivf$i" ivf $(CLUSTER_ARGS "ivf$i") --n "$N" --nq "$NQ" --metric "$METRIC" \
      --index "$idx" --nprobes "$NPROBES" "${ia[@]}"
    echo "# r1 log (index lines):"; grep -E 'rebuild|trained' "$W/ivf$i/r1.log" | tail -8 || true
    stop_all
  done
}

section_filter() {
  start_cluster filter "IDMap2,Flat"
  # shellcheck disable=SC2046
  run_bench filter filter $(CLUSTER_ARGS filter) --n "$N" --nq "$NQ" --metric "$METRIC"
  stop_all
}

case "$SECTION" in
hnsw) section_hnsw ;;
ivf) section_ivf ;;
filter) section_filter ;;
all) section_hnsw; section_ivf; section_filter ;;
esac

# --- tables ------------------------------------------------------------------
g() { # run key -> value ("-" when absent)
  local v
  v=$(tr ' ' '\n' <<<"${RES[$1]:-}" | sed -n "s/^$2=//p" | head -1)
  echo "${v:--}"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a+0 > 0 && b+0 > 0) printf "%.2f", a / b; else print "-" }'; }
verdict() { # value op bound
  awk -v v="$1" -v op="$2" -v b="$3" 'BEGIN { if (v == "-" || v == "") { print "-"; exit }
    ok = (op == ">=") ? (v + 0 >= b + 0) : (op == "<=") ? (v + 0 <= b + 0) : (op == "abs<=") ? ((v < 0 ? -v : v) <= b + 0) : (v + 0 == b + 0);
    print ok ? "PASS" : "MISS" }'
}
echo
echo "## kbsync index benchmark, N = $N x 384, metric $METRIC ($(date -u +%F), $(nproc) cores)"
if [ -n "${RES[hnsw]:-}" ]; then
  h() { g hnsw "$1"; }
  echo
  echo "### $HNSW_INDEX, ef_search $EF, k 10, ${NQ} queries (other seed unless said)"
  echo
  echo "| target | measured | goal | verdict |"
  echo "|---|---|---|---|"
  echo "| 1a recall@10 served r1 / r2 (raw $HNSW_INDEX in-process) | $(h recall_r1) / $(h recall_r2) ($(h recall_raw)) | >= 0.95 | $(verdict "$(h recall_r1)" ">=" 0.95) |"
  echo "| 1a recall@10, same-cluster queries: served r1 (raw) | $(h recall_r1_same) ($(h recall_raw_same)) | - | - |"
  echo "| 1b single-query latency served p50/p99 ms | $(h served_p50_ms) / $(h served_p99_ms) | - | - |"
  echo "| 1b raw $HNSW_INDEX in-process p50/p99 ms | $(h raw_p50_ms) / $(h raw_p99_ms) | - | - |"
  echo "| 1b served / raw p50 (p99), separate rounds | $(h lat_ratio_p50) ($(h lat_ratio_p99)) | - | - |"
  echo "| 1b interleaved blocks: served p50/p99 vs raw p50/p99 ms | $(h il_served_p50_ms) / $(h il_served_p99_ms) vs $(h il_raw_p50_ms) / $(h il_raw_p99_ms) | - | - |"
  echo "| 1b interleaved served / raw p50 (p99) | $(h il_ratio_p50) ($(h il_ratio_p99)) | <= 1.3 | $(verdict "$(h il_ratio_p50)" "<=" 1.3) |"
  echo "| 1b interleaved, same-cluster queries: served / raw p50 (p99) | $(h il_same_ratio_p50) ($(h il_same_ratio_p99)) | - | - |"
  for e in ${EF_SWEEP-32 128 256}; do
    echo "| ef_search $e: recall served r1 (same-cluster) / raw (same-cluster); p50 served / raw ms | $(h ef${e}_recall_r1) ($(h ef${e}_recall_r1_same)) / $(h ef${e}_recall_raw) ($(h ef${e}_recall_raw_same)); $(h ef${e}_served_p50_ms) / $(h ef${e}_raw_p50_ms) | - | - |"
  done
  echo "| 1c ingest docs/s (first write -> both replicas applied; via $(h ingest_via)) | $(h ingest_docs_per_s) ($(h ingest_s) s) | >= 1500 | $(verdict "$(h ingest_docs_per_s)" ">=" 1500) |"
  echo "| 1c leader acked all (s) | $(h ingest_ack_s) | - | - |"
  echo "| 1c r1 / r2: vectors == N (s) | $(h r1_vectors_s) / $(h r2_vectors_s) | - | - |"
  echo "| 1c r1 / r2 / leader: status idle (unmerged_vectors 0) (s) | $(h r1_merged_s) / $(h r2_merged_s) / $(h leader_merged_s) | - | - |"
  echo "| 1c r1 / r2 / leader: background CPU quiet (s) | $(h r1_idle_s) / $(h r2_idle_s) / $(h leader_idle_s) | - | - |"
  echo "| 1c status round trip while merging, max ms: leader / r1 / r2 | $(h leader_status_max_ms) / $(h r1_status_max_ms) / $(h r2_status_max_ms) | - | - |"
  echo "| 1d after churn: recall served r1 / r2 vs fresh in-process | $(h recall_churn_r1) / $(h recall_churn_r2) vs $(h recall_fresh) | diff within 0.01 | $(verdict "$(h churn_diff_r1)" "abs<=" 0.01) |"
  echo "| 1d after \`kbsync rebuild --to r1\` ($(h rebuild_s) s): recall r1 vs fresh | $(h recall_rebuild_r1) vs $(h recall_fresh) | diff within 0.01 | $(verdict "$(h rebuild_diff_r1)" "abs<=" 0.01) |"
  echo "| 1d deleted/old-version/wrong hits: after churn / after rebuild / checker (answers) | $(h churn_violations) / $(h rebuild_violations) / $(h checker_violations) ($(h checker_answers)) | 0 | $(verdict "$(awk -v a="$(h churn_violations)" -v b="$(h rebuild_violations)" -v c="$(h checker_violations)" -v d="$(h served_violations)" 'BEGIN{if (a == "-" || d == "-") print "-"; else print a+b+c+d}')" "==" 0) |"
  echo "| 1d churn: automatic rebuilds on r1; dead vectors after churn / after rebuild | $(h churn_r1_auto_rebuilds); $(h churn_r1_dead) / $(h rebuild_dead_after) | - | - |"
  echo "| 1d churn: leader acked 30% rewrites in (s); r1 idle after (s) | $(h churn_ack_s); $(h churn_r1_idle_s) | - | - |"
  echo "| 1d recall of checker answers once churn applied (tombstones + delta, auto rebuild running) / during \`kbsync rebuild\` | $(h checker_churn_recall) / $(h checker_rebuild_recall) | - | - |"
  echo "| 1d same-cluster queries: recall after churn / after rebuild vs fresh | $(h recall_churn_r1_same) / $(h recall_rebuild_r1_same) vs $(h recall_fresh_same) | - | - |"
  echo "| 1d checker latency p50/p99/max ms: churn+merge / rebuild | $(h checker_churn_p50_ms)/$(h checker_churn_p99_ms)/$(h checker_churn_max_ms) / $(h checker_rebuild_p50_ms)/$(h checker_rebuild_p99_ms)/$(h checker_rebuild_max_ms) | - | - |"
  echo "| 1e r1 VmRSS MB (anon / file), idle before queries | $(h pq_r1_rss_mb) ($(h pq_r1_anon_mb) / $(h pq_r1_file_mb)) | - | - |"
  echo "| 1e r1 VmRSS MB (anon / file), after the query rounds | $(h r1_rss_mb) ($(h r1_anon_mb) / $(h r1_file_mb)) | - | - |"
  echo "| 1e raw index MB: idx_vec_bytes (RSS growth) | $(h raw_index_mb) ($(h raw_rss_growth_mb)) | - | - |"
  echo "| 1e r1 VmRSS / raw index (anon only) | $(h r1_rss_over_raw) ($(h r1_anon_over_raw)) | <= 1.5 | $(verdict "$(h r1_rss_over_raw)" "<=" 1.5) |"
  echo "| 1e r1 status index_bytes / store_bytes MB | $(h r1_index_mb) / $(h r1_store_mb) | - | - |"
fi
for i in 1 2 3 4; do
  [ -n "${RES[ivf$i]:-}" ] || continue
  v() { g "ivf$i" "$1"; }
  idx=$(v index)
  echo
  echo "### $idx (recall@10 of other-seed queries vs exact; 1 client)"
  echo
  echo "| what | value |"
  echo "|---|---|"
  echo "| ingest docs/s (both replicas applied) | $(v ingest_docs_per_s) |"
  echo "| r1 / r2 index_trained after the first write (s) | $(v r1_trained_s) / $(v r2_trained_s) |"
  echo "| r1 / r2 index_trained after the ingest was applied (s) | $(v r1_trained_after_ingest_s) / $(v r2_trained_after_ingest_s) |"
  echo "| nodes whose automatic training never started (forced by \`kbsync rebuild\` after TRAIN_WAIT s) | $(v auto_train_missing) (leader forced: $(v leader_forced_train_s) s, r1: $(v r1_forced_train_s) s, r2: $(v r2_forced_train_s) s) |"
  echo "| training (log, last before the measured rebuild): r1 s on vectors | $(v r1_log_train_s) on $(v r1_log_train_vectors) |"
  echo "| \`kbsync rebuild\` on r1: total s; training (log) s on vectors | $(v rebuild_s); $(v rebuild_log_train_s) on $(v rebuild_log_train_vectors) |"
  echo "| raw FAISS train / add s (all N) | $(v raw_train_s) / $(v raw_add_s) |"
  echo
  echo "| nprobe | served (bg-trained) recall | p50 ms | served after rebuild recall | p50 ms | raw recall | raw p50 ms |"
  echo "|---|---|---|---|---|---|---|"
  for np in 0 ${NPROBES//,/ }; do
    lab=$np; [ "$np" = 0 ] && lab="0 (default)"
    echo "| $lab | $(v bg_r1_np${np}_recall) | $(v bg_r1_np${np}_p50_ms) | $(v rb_r1_np${np}_recall) | $(v rb_r1_np${np}_p50_ms) | $(v raw_np${np}_recall) | $(v raw_np${np}_p50_ms) |"
  done
  echo
  echo "targets: recall at the default nprobe >= 0.95: bg $(verdict "$(v bg_r1_np0_recall)" ">=" 0.95), after rebuild $(verdict "$(v rb_r1_np0_recall)" ">=" 0.95); training <= 10 s (log, background / rebuild): $(verdict "$(v r1_log_train_s)" "<=" 10) / $(verdict "$(v rebuild_log_train_s)" "<=" 10)"
done
if [ -n "${RES[filter]:-}" ]; then
  f() { g filter "$1"; }
  echo
  echo "### filters, IDMap2,Flat, 1 client, k 10 (bucket=7: $(f bucket7_docs) docs; half=a: $(f half_a_docs) docs)"
  echo
  echo "| query | served p50 / p99 ms | served / unfiltered p50 (p99) | goal | verdict | recall vs exact filtered | violations (short, non-matching, ...) | raw flat p50 / p99 ms |"
  echo "|---|---|---|---|---|---|---|---|"
  echo "| unfiltered | $(f served_none_p50_ms) / $(f served_none_p99_ms) | 1 | - | - | $(f served_none_recall) | $(f served_none_violations) | $(f raw_none_p50_ms) / $(f raw_none_p99_ms) |"
  echo "| bucket=7 (1%) | $(f served_bucket_p50_ms) / $(f served_bucket_p99_ms) | $(f ratio_bucket_p50) ($(f ratio_bucket_p99)) | <= 2 | $(verdict "$(f ratio_bucket_p50)" "<=" 2) | $(f served_bucket_recall) | $(f served_bucket_violations) | $(f raw_bucket_p50_ms) / $(f raw_bucket_p99_ms) (candidates: $(f raw_bucket_cand_p50_ms) / $(f raw_bucket_cand_p99_ms)) |"
  echo "| half=a (50%) | $(f served_half_p50_ms) / $(f served_half_p99_ms) | $(f ratio_half_p50) ($(f ratio_half_p99)) | <= 2 | $(verdict "$(f ratio_half_p50)" "<=" 2) | $(f served_half_recall) | $(f served_half_violations) | $(f raw_half_p50_ms) / $(f raw_half_p99_ms) |"
fi
echo
for r in hnsw ivf1 ivf2 ivf3 ivf4 filter; do [ -n "${RES[$r]:-}" ] && echo "${RES[$r]}"; done
echo
echo "(saved in $OUT)"
