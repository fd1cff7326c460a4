#!/usr/bin/env bash
# Peer benchmark (issue #13, part 1): kbsync leader + 2 replicas against
# PostgreSQL 15 primary + 2 streaming standbys, on loopback, fsync on every
# node, the same rows on both sides, rounds interleaved (kbsync, PG, kbsync,
# PG, ...). Optional: never run by the tests. Prints, per pair, the PG
# figure, the kbsync figure and kbsync / PG from this run, and writes the
# table to results/peer-pg-<time>.md.
#
# usage: bash bench/peer_pg.sh [N=100000] [ROUNDS=2] [BUILD=build]
#   env: SINGLE=2000 (single-row writes per run), PG_EMB=real|bytea
#
# Rows: synthetic clustered 384-d float32 embeddings + ~300 B of text
# (bench/bench_common.h, the same generator and seeds on both sides). On
# PG the table is kb_docs (id text primary key, emb real[], body text).
# real[] is what a PostgreSQL user without pgvector would pick: typed,
# checked, queryable per element; its stored size equals bytea's (1.5 KB
# + 24 B header, no TOAST: a row is ~1.9 KB) and only the binary wire
# format is larger (4 B of length per element). PG_EMB=bytea stores the
# raw float32s instead. PG keeps no vector index (no pgvector); kbsync's
# nodes add each vector to their flat FAISS index.
#
# Clients: both are C with one connection in a closed loop. kbsync:
# build/bench/bench_write (single writes) and `bench_tradeoff ingest`
# (batches; bench_write has no batched mode), both on the project's client
# library. PG: bench/bench_pg.c on libpq (prepared statement, binary
# parameters; COPY ... FROM STDIN (FORMAT binary)), built here with cc.
# Batches: 1,000 rows, one batch in flight on both sides (a COPY holds its
# connection until it commits). kbsync's default ingest pipelining (4
# batches in flight, as `kbsync ingest` and bench/tradeoff.sh use) is
# measured too, as a kbsync-only row.
#
# Pairs (PG | kbsync):
#  1. single-row write, async: synchronous_commit=on with no synchronous
#     standbys (durable local commit) | mode async (the leader's durable
#     commit); p50 / p99 over SINGLE writes after SINGLE/20+5 warm-up.
#  2. single-row write visible on both standbys/replicas at the ack:
#     synchronous_standby_names='FIRST 2 (s1,s2)' + synchronous_commit=
#     remote_apply | mode all with both replicas named.
#  3. batched ingest of N rows, async and sync-to-both (the same settings
#     as 1 and 2 per COPY / per batch), rows/s from the first send until
#     both standbys replayed (pg_last_wal_replay_lsn() >= the primary's
#     flushed LSN after the last commit) | both replicas report a version
#     >= the last LSN. Both sides poll every 2 ms.
# Each PG run starts from a freshly created table after a CHECKPOINT; each
# kbsync run from a fresh cluster (bench/lib.sh start_cluster). Only one
# system runs at a time: PG is stopped during kbsync rounds. PostgreSQL's
# settings are initdb's defaults (fsync on, full_page_writes on,
# shared_buffers 128 MB) plus ports, loopback and the sync settings above.
#
# Runs PG as the OS user postgres when started as root (initdb refuses
# root); installs postgresql-15 and libpq-dev from Debian if missing. Every
# process it starts is stopped on exit, also on failure or Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-100000}
ROUNDS=${2:-2}
BUILD=${3:-build}
SINGLE=${SINGLE:-2000}
PG_EMB=${PG_EMB:-real}
PGBIN=/usr/lib/postgresql/15/bin
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=results/peer-pg-$STAMP.md
T_START=$(date +%s)

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

# ------------------------------------------------------------ install, build
if [ ! -x $PGBIN/initdb ] || ! pkg-config --exists libpq; then
  echo "# installing postgresql-15 and libpq-dev from Debian"
  was_up=$(pg_lsclusters -h 2>/dev/null | awk '$1==15 && $2=="main" {print $4}')
  as_root apt-get install -y postgresql-15 libpq-dev >/dev/null
  # Debian creates and starts a "main" cluster; this script does not use it.
  if [ "$was_up" != online ] && command -v pg_ctlcluster >/dev/null; then
    as_root pg_ctlcluster 15 main stop 2>/dev/null || true
  fi
fi
bash scripts/build.sh "$BUILD" Release >/dev/null
B=$BUILD
cc -O2 -Wall -Wextra -Ibench -o "$B/bench/bench_pg" bench/bench_pg.c \
  $(pkg-config --cflags --libs libpq) -lm

W=$(mktemp -d /tmp/kbsync-peerpg-XXXXXX)
chmod 755 "$W"
mkdir -p results
. bench/lib.sh

# -------------------------------------------------- cleanup on every exit
CHILD=
PGDIRS=()
pg_stop() { # DIR [fast|immediate]
  [ -f "$1/postmaster.pid" ] || return 0
  as_pg $PGBIN/pg_ctl -D "$1" -m "${2:-fast}" -w -t 60 stop >/dev/null 2>&1 || true
}
pg_stop_all() { local d; for d in "${PGDIRS[@]}"; do pg_stop "$d" "${1:-fast}"; done; }
cleanup() {
  set +e
  [ -n "$CHILD" ] && kill "$CHILD" 2>/dev/null && wait "$CHILD" 2>/dev/null
  stop_all
  pg_stop_all immediate
  rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Runs a command in the background and waits for it, so that a signal
# reaches the traps at once; output goes to $W/out and is echoed.
run() {
  local rc=0
  "$@" >"$W/out" 2>&1 &
  CHILD=$!
  wait "$CHILD" || rc=$?
  CHILD=
  tee -a "$W/log" <"$W/out"
  [ $rc = 0 ] || { echo "failed ($rc): $*"; exit 1; }
}
say() { echo "$*" | tee -a "$W/log"; }

# -------------------------------------------------------------- PostgreSQL
pg_ports() { # three free loopback ports
  local p got=()
  for p in $(seq 25432 25999); do
    (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null && continue
    got+=($p); [ ${#got[@]} = 3 ] && break
  done
  echo "${got[@]}"
}
psql_p() { psql -X -q -At -h 127.0.0.1 -p "$P0" -U postgres -d postgres "$@"; }
conn() { echo "host=127.0.0.1 port=$1 user=postgres dbname=postgres"; }
pg_start() { as_pg $PGBIN/pg_ctl -D "$1" -l "$1.log" -w -t 60 start >/dev/null; }

# pg_wait_standbys STATE: until the primary lists s1 and s2 streaming with
# sync_state STATE (sync or async).
pg_wait_standbys() {
  local got
  for _ in $(seq 400); do
    got=$(psql_p -c "SELECT string_agg(application_name || ':' || sync_state, ' '
                     ORDER BY application_name) FROM pg_stat_replication
                     WHERE state = 'streaming'" 2>/dev/null || true)
    [ "$got" = "s1:$1 s2:$1" ] && return
    sleep 0.05
  done
  echo "PG standbys never reached s1:$1 s2:$1 (have: $got)"; exit 1
}

pg_init() {
  read -r P0 P1 P2 <<<"$(pg_ports)"
  mkdir -p "$W/pg"; chown postgres "$W/pg" 2>/dev/null || true
  PGDIRS=("$W/pg/p" "$W/pg/s1" "$W/pg/s2")
  as_pg $PGBIN/initdb -D "$W/pg/p" -U postgres --auth=trust >"$W/pg/initdb.log"
  printf "port = %s\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '%s'\n" \
    "$P0" "$W/pg" >>"$W/pg/p/postgresql.conf"
  pg_start "$W/pg/p"
  local s port
  for s in s1 s2; do
    port=$P1; [ $s = s2 ] && port=$P2
    as_pg $PGBIN/pg_basebackup -h 127.0.0.1 -p "$P0" -U postgres -D "$W/pg/$s" \
      -R -X stream -c fast
    printf "port = %s\ncluster_name = '%s'\nprimary_conninfo = '%s application_name=%s'\n" \
      "$port" $s "$(conn "$P0")" $s >>"$W/pg/$s/postgresql.auto.conf"
    pg_start "$W/pg/$s"
  done
  pg_wait_standbys async
  pg_stop_all
}

# pg_sync_standbys 'FIRST 2 (s1,s2)' | '': set and wait until in force.
pg_sync_standbys() {
  psql_p -c "ALTER SYSTEM SET synchronous_standby_names = '$1'" \
         -c "SELECT pg_reload_conf()" >/dev/null
  if [ -n "$1" ]; then pg_wait_standbys sync; else pg_wait_standbys async; fi
}

# ---------------------------------------------------------------- figures
# $W/res: lines "side pair round a [b]".
record() { echo "$*" >>"$W/res"; }
lat_of() { sed -n 's/.*p50 \([0-9.]*\) ms.*p99 \([0-9.]*\) ms.*/\1 \2/p' "$W/out" | tail -1; }

kbsync_round() {
  local rnd=$1 mode w r # r: lib.sh's start_cluster loops over r, unscoped
  say "== kbsync round $rnd"
  for mode in async all; do
    start_cluster
    run $B/bench/bench_write "$LEADER" "$SINGLE" 384 w $mode
    record kb single-$mode "$rnd" $(lat_of)
  done
  for w in 1 4; do
    for mode in async all; do
      start_cluster
      run $B/bench/bench_tradeoff ingest --leader "$LEADER" --replicas "$R1,$R2" \
        --mode $mode --docs "$N" --batch 1000 --window $w
      record kb ingest-$mode-w$w "$rnd" \
        "$(grep -o '"docs_per_s":[0-9.e+-]*' "$W/out" | cut -d: -f2)"
    done
  done
  stop_all
}

pg_round() {
  local rnd=$1 args
  say "== PostgreSQL round $rnd"
  pg_start "$W/pg/p"; pg_start "$W/pg/s1"; pg_start "$W/pg/s2"
  args=("$(conn "$P0")" --standby "$(conn "$P1")" --standby "$(conn "$P2")" --emb "$PG_EMB")
  pg_sync_standbys ''
  run $B/bench/bench_pg single "${args[@]}" --n "$SINGLE" --sync-commit on
  record pg single-async "$rnd" $(lat_of)
  pg_sync_standbys 'FIRST 2 (s1,s2)'
  run $B/bench/bench_pg single "${args[@]}" --n "$SINGLE" --sync-commit remote_apply
  record pg single-all "$rnd" $(lat_of)
  pg_sync_standbys ''
  run $B/bench/bench_pg copy "${args[@]}" --docs "$N" --batch 1000 --sync-commit on
  record pg ingest-async-w1 "$rnd" "$(sed -n 's/.* = \([0-9]*\) rows\/s$/\1/p' "$W/out")"
  pg_sync_standbys 'FIRST 2 (s1,s2)'
  run $B/bench/bench_pg copy "${args[@]}" --docs "$N" --batch 1000 --sync-commit remote_apply
  record pg ingest-all-w1 "$rnd" "$(sed -n 's/.* = \([0-9]*\) rows\/s$/\1/p' "$W/out")"
  pg_stop_all
}

# The table: per pair, every round's figure on each side, and kbsync / PG
# of the medians over rounds (and of each round).
report() {
  awk -v rounds="$ROUNDS" '
    function med(s,   a, n, i, j, t) {
      n = split(s, a, " ")
      for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++)
        if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
      return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    function lat(side, p,   r, s) {
      s = ""
      for (r = 1; r <= rounds; r++)
        s = s (r > 1 ? "; " : "") sprintf("%.3f / %.3f", v[side, p, r, 1], v[side, p, r, 2])
      return s " ms"
    }
    function thr(side, p,   r, s) {
      s = ""
      for (r = 1; r <= rounds; r++)
        s = s (r > 1 ? "; " : "") sprintf("%.1fk", v[side, p, r, 1] / 1000)
      return s " rows/s"
    }
    function col(side, p, k,   r, s) {
      s = ""; for (r = 1; r <= rounds; r++) s = s " " v[side, p, r, k]; return s
    }
    function ratio(p, k,   r, s) {
      s = ""
      for (r = 1; r <= rounds; r++)
        s = s (r > 1 ? ", " : "") sprintf("%.2f", v["kb", p, r, k] / v["pg", p, r, k])
      return s
    }
    { v[$1, $2, $3, 1] = $4; v[$1, $2, $3, 2] = $5 }
    END {
      print "| pair | PostgreSQL (round 1; 2; ...) | kbsync (round 1; 2; ...) | kbsync ÷ PG, medians (per round) |"
      print "|---|---|---|---|"
      printf "| single-row durable write, async (PG `synchronous_commit=on`, no sync standbys, vs `async`), p50 / p99 | %s | %s | %.2f / %.2f (p50 %s; p99 %s) |\n",
        lat("pg", "single-async"), lat("kb", "single-async"),
        med(col("kb", "single-async", 1)) / med(col("pg", "single-async", 1)),
        med(col("kb", "single-async", 2)) / med(col("pg", "single-async", 2)),
        ratio("single-async", 1), ratio("single-async", 2)
      printf "| single-row write visible on both replicas (`remote_apply`, `FIRST 2 (s1,s2)` vs `all`), p50 / p99 | %s | %s | %.2f / %.2f (p50 %s; p99 %s) |\n",
        lat("pg", "single-all"), lat("kb", "single-all"),
        med(col("kb", "single-all", 1)) / med(col("pg", "single-all", 1)),
        med(col("kb", "single-all", 2)) / med(col("pg", "single-all", 2)),
        ratio("single-all", 1), ratio("single-all", 2)
      printf "| batched ingest (1,000 per batch, 1 in flight) until both replicas applied, async | %s | %s | %.2f (%s) |\n",
        thr("pg", "ingest-async-w1"), thr("kb", "ingest-async-w1"),
        med(col("kb", "ingest-async-w1", 1)) / med(col("pg", "ingest-async-w1", 1)),
        ratio("ingest-async-w1", 1)
      printf "| batched ingest, sync to both (`remote_apply` vs `all`) | %s | %s | %.2f (%s) |\n",
        thr("pg", "ingest-all-w1"), thr("kb", "ingest-all-w1"),
        med(col("kb", "ingest-all-w1", 1)) / med(col("pg", "ingest-all-w1", 1)),
        ratio("ingest-all-w1", 1)
      printf "| kbsync only: batched ingest, 4 batches in flight, async / all | (no equivalent on one PG connection) | %s / %s | — |\n",
        thr("kb", "ingest-async-w4"), thr("kb", "ingest-all-w4")
    }' "$W/res"
}

machine() {
  local cpu mem
  cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
  mem=$(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)
  echo "$(nproc) cores ($cpu), $mem, Linux $(uname -r), $(. /etc/os-release; echo "$PRETTY_NAME"); data under $(df --output=source,fstype /tmp | tail -1 | tr -s ' ' | sed 's/ / (/;s/$/)/'); PostgreSQL $($PGBIN/postgres --version | awk '{print $3}'); load average at start $(cut -d' ' -f1-3 /proc/loadavg)"
}

# -------------------------------------------------------------------- main
{
  echo "# kbsync vs PostgreSQL 15, $(date -u +%FT%TZ)"
  echo "# $(machine)"
  echo "# N=$N rows per ingest, $SINGLE single writes per run, $ROUNDS rounds, PG emb $PG_EMB, fsync on every node"
} | tee "$W/head"
pg_init
for round in $(seq "$ROUNDS"); do
  kbsync_round "$round"
  pg_round "$round"
done
report >"$W/table"
{
  cat "$W/head"
  echo
  echo "Command: \`bash bench/peer_pg.sh $N $ROUNDS $BUILD\` (SINGLE=$SINGLE), $(( $(date +%s) - T_START )) s."
  echo "Latency: kbsync ÷ PG < 1 means kbsync is faster; throughput: > 1 means kbsync is faster."
  echo
  cat "$W/table"
  echo
  echo "Raw output:"
  echo
  echo '```'
  cat "$W/log"
  echo '```'
} >"$OUT"
echo
cat "$W/table"
echo "(saved in $OUT)"
