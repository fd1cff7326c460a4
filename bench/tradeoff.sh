#!/usr/bin/env bash
# bench/tradeoff.sh: measures the strong-vs-eventual trade-off of kbsync
# (issue #4). Starts a real leader and N real replicas (separate processes,
# fsync on every node), drives them with build/bench/bench_tradeoff, stops
# them, and writes raw.jsonl, summary.csv/json, table.md and PNG plots into
# a results directory. Prints the trade-off table, `async`, `quorum:1` and
# `all` side by side for every N, with rows for the read levels. With delays > 0, every replica lives in its own network
# namespace behind a veth link whose packets are held D ms each way (a
# netem-like delay made with NFQUEUE, since this kernel has no sch_netem);
# without root or namespaces those delays are skipped and it says so.
#
# usage: bash bench/tradeoff.sh [--quick] [--replicas "1 2 4"] [--delays "0 5 50"]
#          [--runs K] [--build-dir DIR] [--out DIR] [--check] [--doc FILE]
#          [--plots-dir DIR] [--no-plots]
#   --quick      small loads (under 2 minutes): delays "0" and 1 run unless given
#   --replicas   replica counts N to measure (default "1 2 4")
#   --delays     added one-way delay per link, ms (default "0 5 50"; 0 =
#                loopback, SIGSTOP partition; > 0 = namespaces, link-down partition)
#   --runs K     repetitions; every figure is the median over them (3; quick 1)
#   --build-dir  where kbsync and bench/bench_tradeoff are (default build/)
#   --out        results directory (default results/tradeoff-<UTC time>/)
#   --check      exit non-zero unless every cell of the table was produced
#   --doc FILE   write the measured tables, machine and plots into FILE
#                (docs/BENCHMARKS.md; between its tradeoff markers if present)
#   --plots-dir  where --doc puts the PNGs (default: plots/ next to FILE)
set -euo pipefail

SRC=$(cd "$(dirname "$0")/.." && pwd)
# benchmarks are not leak tests (and libgomp/OpenBLAS keep pools at exit)
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0}
QUICK=0 CHECK=0 PLOTS=1
REPLICAS="" DELAYS="" RUNS="" BUILD="" OUT="" DOC="" PLOTDIR=""
ARGS=""
for a in "$@"; do case "$a" in *[[:space:]]*|"") ARGS="$ARGS \"$a\"" ;; *) ARGS="$ARGS $a" ;; esac; done
ARGS=${ARGS# }
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --replicas) REPLICAS=$2; shift ;;
    --delays) DELAYS=$2; shift ;;
    --runs) RUNS=$2; shift ;;
    --build-dir) BUILD=$2; shift ;;
    --out) OUT=$2; shift ;;
    --check) CHECK=1 ;;
    --doc) DOC=$2; shift ;;
    --plots-dir) PLOTDIR=$2; shift ;;
    --no-plots) PLOTS=0 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "tradeoff.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

# ---------------------------------------------------------------- profile
# Load sizes. quick: a smoke run; full: the documented figures (budget:
# about 34 minutes (2016 s measured) for N = 1 2 4 x delays 0 5 50 x 3 runs
# on 2 cores).
if [ $QUICK = 1 ]; then
  : "${REPLICAS:=2}" "${DELAYS:=0}" "${RUNS:=1}"
  CLOSED_S=1 RAW_S=1 MAX_WRITES=2000 RATES="1000 5000" OPEN_S=2
  LAG_RATE=1000 INGEST_DOCS=5000 PART_S=2
else
  : "${REPLICAS:=1 2 4}" "${DELAYS:=0 5 50}" "${RUNS:=3}"
  CLOSED_S=1 RAW_S=1 MAX_WRITES=5000 RATES="1000 5000 20000" OPEN_S=2
  LAG_RATE=5000 INGEST_DOCS=100000 PART_S=2
fi
DIM=384
WRITE_TIMEOUT_MS=1000   # leader --write-timeout-ms in the partition cluster
LOAD_WRITE_TIMEOUT_MS=5000  # ... and in the others (kbsync's default)
PART_WRITE_RATE=200     # writes/s during the partition
PART_READ_RATE=20       # reads/s to each replica during the partition
READ_TIMEOUT_MS=500     # a partition read unanswered by then (+ 4 x delay) is lost

BUILD=${BUILD:-$SRC/build}
BUILD=$(cd "$BUILD" 2>/dev/null && pwd) || { echo "tradeoff.sh: no build directory $BUILD (run scripts/build.sh)" >&2; exit 1; }
KB=$BUILD/kbsync
BT=$BUILD/bench/bench_tradeoff
for b in "$KB" "$BT"; do
  [ -x "$b" ] || { echo "tradeoff.sh: $b missing: run bash scripts/build.sh first" >&2; exit 1; }
done
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=${OUT:-$SRC/results/tradeoff-$STAMP}
mkdir -p "$OUT/logs"
OUT=$(cd "$OUT" && pwd)
RAW=$OUT/raw.jsonl
: > "$RAW"
T_START=$(date +%s)

say() { echo "[tradeoff $(( $(date +%s) - T_START ))s] $*" | tee -a "$OUT/notes.txt" >&2; }
note() { echo "$*" >> "$OUT/notes.txt"; }

# ---------------------------------------------------------------- cleanup
WORK=$(mktemp -d "${TMPDIR:-/tmp}/kbsync-tradeoff-XXXXXX")
PIDS=()        # every process this script started
NETNS=()       # every namespace this script created
TAG="kt$$"     # prefix of our namespaces and links
stop_pids() {
  local p
  for p in "${PIDS[@]}"; do kill -CONT "$p" 2>/dev/null || true; kill -TERM "$p" 2>/dev/null || true; done
  for _ in $(seq 50); do
    local alive=0
    for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.1
  done
  for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  PIDS=()
}
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  stop_pids
  local ns
  for ns in "${NETNS[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
  rm -rf "$WORK"
  exit $rc
}
trap cleanup EXIT
trap 'say "interrupted"; exit 130' INT TERM

# ---------------------------------------------------------------- packages
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo -n"
APT_UPDATED=0
apt_install() { # apt_install PKG...: installs missing Debian packages, 0 when all present
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} = 0 ] && return 0
  say "installing ${missing[*]} (Debian packages)"
  if [ $APT_UPDATED = 0 ]; then
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q >"$OUT/logs/apt.log" 2>&1 || return 1
    APT_UPDATED=1
  fi
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    "${missing[@]}" >>"$OUT/logs/apt.log" 2>&1
}

# ---------------------------------------------------------------- network
NETNS_OK=0 NETNS_WHY=""
netns_probe() { # can we make namespaces, veth links, and NFQUEUE rules?
  [ "$(id -u)" = 0 ] || { NETNS_WHY="not root"; return 1; }
  command -v ip >/dev/null || apt_install iproute2 || { NETNS_WHY="no ip (iproute2)"; return 1; }
  command -v iptables >/dev/null || apt_install iptables || { NETNS_WHY="no iptables"; return 1; }
  local t="${TAG}p"
  ip netns add "$t" 2>/dev/null || { NETNS_WHY="ip netns add failed"; return 1; }
  NETNS+=("$t")
  local ok=1
  ip -n "$t" link add "${TAG}pa" type veth peer name "${TAG}pb" 2>/dev/null || { ok=0; NETNS_WHY="no veth links"; }
  if [ $ok = 1 ] && ! ip netns exec "$t" iptables -A INPUT -i "${TAG}pa" -j NFQUEUE --queue-num 0 --queue-bypass 2>"$OUT/logs/probe.log"; then
    ok=0; NETNS_WHY="iptables NFQUEUE rule refused: $(head -1 "$OUT/logs/probe.log")"
  fi
  ip netns del "$t" 2>/dev/null || true
  [ $ok = 1 ]
}

NSL=""    # the leader's (and the driver's) namespace in netns mode
INL=()    # command prefix that runs something in the leader's namespace
setup_netns() { # setup_netns DELAY_MS MAX_N: namespaces, veth links, delays
  local d=$1 n=$2 i
  NSL="${TAG}L$d"
  ip netns add "$NSL"; NETNS+=("$NSL")
  ip -n "$NSL" link set lo up
  for i in $(seq "$n"); do
    local nr="${TAG}r$i-$d"
    ip netns add "$nr"; NETNS+=("$nr")
    ip -n "$nr" link set lo up
    ip link add "${TAG}a$i" netns "$NSL" type veth peer name "${TAG}b$i" netns "$nr"
    ip -n "$NSL" addr add "10.213.$i.1/24" dev "${TAG}a$i"
    ip -n "$nr" addr add "10.213.$i.2/24" dev "${TAG}b$i"
    ip -n "$NSL" link set "${TAG}a$i" up
    ip -n "$nr" link set "${TAG}b$i" up
    if [ "$d" -gt 0 ]; then
      # Delay on ingress at both ends (replica->leader in the leader's
      # namespace, leader->replica in the replica's), so TCP's own queue
      # accounting on the sender is not stretched by held packets.
      ip netns exec "$NSL" iptables -A INPUT -i "${TAG}a$i" -j NFQUEUE --queue-num 0 --queue-bypass
      ip netns exec "$nr" iptables -A INPUT -i "${TAG}b$i" -j NFQUEUE --queue-num 0 --queue-bypass
      ip netns exec "$nr" "$BT" delay --queue 0 --ms "$d" 2>>"$OUT/logs/delay-d$d.log" &
      PIDS+=($!)
    fi
  done
  if [ "$d" -gt 0 ]; then
    ip netns exec "$NSL" "$BT" delay --queue 0 --ms "$d" 2>>"$OUT/logs/delay-d$d.log" &
    PIDS+=($!)
  fi
  INL=(ip netns exec "$NSL")
  sleep 0.3
}

teardown_netns() {
  stop_pids
  local ns keep=()
  for ns in "${NETNS[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
  NETNS=("${keep[@]}")
  INL=()
}

# ---------------------------------------------------------------- cluster
NODE_PIDS=() LEADER="" REP_EPS="" VICTIM_PID="" REGION_ARGS=()
MODEL=loopback
wait_file() { for _ in $(seq 400); do [ -s "$1" ] && return 0; sleep 0.025; done; return 1; }

stop_cluster() {
  local p keep=()
  for p in "${NODE_PIDS[@]}"; do kill -CONT "$p" 2>/dev/null || true; kill -TERM "$p" 2>/dev/null || true; done
  for p in "${NODE_PIDS[@]}"; do
    for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.05; done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  for p in "${PIDS[@]}"; do
    local mine=0 q
    for q in "${NODE_PIDS[@]}"; do [ "$p" = "$q" ] && mine=1; done
    [ $mine = 0 ] && keep+=("$p")
  done
  PIDS=("${keep[@]}")
  NODE_PIDS=()
}

# start_cluster N LOGDIR WRITE_TIMEOUT_MS: a fresh leader + N replicas named r1..rN, all of
# them named in --replicas (so `all` waits for every one). Sets LEADER,
# REP_EPS (comma list), VICTIM_PID (r1), CUT/HEAL (partition commands).
start_cluster() {
  local n=$1 logs=$2 wtmo=$3 i ids=""
  rm -rf "$WORK/c"; mkdir -p "$WORK/c" "$logs"
  for i in $(seq "$n"); do ids="$ids${ids:+,}r$i"; done
  local listen='tcp://127.0.0.1:*' repl='tcp://127.0.0.1:*'
  # netns: the leader listens on its namespace's links too, so that clients
  # in a replica's region reach it across that region's (delayed) link
  # (plain TCP there needs --insecure: the namespaces are this run's own
  # private links; CURVE's cost is measured apart, docs/BENCHMARKS.md)
  local plain=()
  [ $MODEL = netns ] && listen='tcp://0.0.0.0:7400' repl='tcp://0.0.0.0:7500' \
    plain=(--insecure)
  "${INL[@]}" "$KB" leader "${plain[@]}" --data "$WORK/c/L" --dim $DIM --listen "$listen" \
    --endpoint-file "$WORK/c/L.ep" --repl-listen "$repl" --replicas "$ids" \
    --write-timeout-ms "$wtmo" >/dev/null 2>"$logs/leader.log" &
  PIDS+=($!); NODE_PIDS+=($!)
  wait_file "$WORK/c/L.ep" || { say "leader did not start (see $logs/leader.log)"; return 1; }
  LEADER=$(cat "$WORK/c/L.ep")
  [ $MODEL = netns ] && LEADER=tcp://127.0.0.1:7400
  local lrepl=""
  for _ in $(seq 200); do
    lrepl=$(sed -n 's/.*replication on \(tcp:[^;]*\);.*/\1/p' "$logs/leader.log" | head -1)
    [ -n "$lrepl" ] && break; sleep 0.025
  done
  [ -n "$lrepl" ] || { say "leader did not report its replication endpoint"; return 1; }
  REP_EPS="" REGION_ARGS=()
  local rns="" lfrom=""
  for i in $(seq "$n"); do
    local lead=$lrepl rlisten='tcp://127.0.0.1:*' pre=()
    if [ $MODEL = netns ]; then
      lead="tcp://10.213.$i.1:7500"; rlisten="tcp://10.213.$i.2:7410"
      pre=(ip netns exec "${TAG}r$i-$CUR_DELAY")
      rns="$rns${rns:+,}${TAG}r$i-$CUR_DELAY"
      lfrom="$lfrom${lfrom:+,}tcp://10.213.$i.1:7400"
    fi
    "${pre[@]}" "$KB" replica "${plain[@]}" --data "$WORK/c/r$i" --id "r$i" --leader "$lead" \
      --listen "$rlisten" --endpoint-file "$WORK/c/r$i.ep" >/dev/null 2>"$logs/r$i.log" &
    PIDS+=($!); NODE_PIDS+=($!)
    [ "$i" = 1 ] && VICTIM_PID=$!
  done
  [ -n "$rns" ] && REGION_ARGS=(--region-ns "$rns" --leader-from "$lfrom")
  for i in $(seq "$n"); do
    wait_file "$WORK/c/r$i.ep" || { say "replica r$i did not start (see $logs/r$i.log)"; return 1; }
    REP_EPS="$REP_EPS${REP_EPS:+,}$(cat "$WORK/c/r$i.ep")"
  done
  for _ in $(seq 400); do
    local c
    c=$("${INL[@]}" "$KB" status --to "$LEADER" --json 2>/dev/null | grep -o '"connected":true' | wc -l || true)
    if [ "$c" -ge "$n" ]; then
      if [ $MODEL = netns ]; then
        CUT="ip link set dev ${TAG}a1 down"; HEAL="ip link set dev ${TAG}a1 up"
      else
        CUT="kill -STOP $VICTIM_PID"; HEAL="kill -CONT $VICTIM_PID"
      fi
      return 0
    fi
    sleep 0.05
  done
  say "replicas did not connect within 20 s (see $logs)"
  return 1
}

# drive TEST TAGJSON ARGS...: one bench_tradeoff measurement; its JSON line
# goes to raw.jsonl. A failure is noted (the cell stays empty) and the run goes on.
drive() {
  local test=$1 tag=$2; shift 2
  local line t0=$SECONDS rc=0
  line=$(timeout 300 "${INL[@]}" "$BT" "$test" --leader "$LEADER" --replicas "$REP_EPS" \
           --dim $DIM --tag "$tag" "${REGION_ARGS[@]}" "$@" 2>>"$CUR_LOGS/driver.log") || rc=$?
  echo "$CUR_DELAY ms $test $* -> rc $rc in $(( SECONDS - t0 )) s" >> "$OUT/logs/times.txt"
  if [ $rc = 0 ]; then
    echo "$line" >> "$RAW"
    return 0
  fi
  [ -n "$line" ] && echo "$line" >> "$RAW"
  say "  $test $* failed (see $CUR_LOGS/driver.log)"
  return 1
}

# ---------------------------------------------------------------- machine
machine() {
  local cpu mem disk
  cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
  mem=$(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)
  disk=$(df -hT "$WORK" | awk 'NR==2 {print $2 " on " $1 ", " $3 " total"}')
  local rot; rot=$(cat /sys/block/"$(basename "$(df "$WORK" | awk 'NR==2{print $1}')")"/queue/rotational 2>/dev/null || echo "?")
  echo "$(nproc) cores ($cpu), $mem memory, Linux $(uname -r), $(. /etc/os-release; echo "$PRETTY_NAME"); data directories on $disk (virtual disk, rotational=$rot), fsync on every node"
}

# ---------------------------------------------------------------- the runs
say "kbsync trade-off benchmark: N = $REPLICAS, delays = $DELAYS ms, $RUNS run(s)$( [ $QUICK = 1 ] && echo ', quick')"
say "results in $OUT"
note "machine: $(machine)"
note "loads: ${DIM}-d synthetic clustered embeddings (bench_common.h, not a model's) + ~300 B text per doc"

MEASURED_DELAYS=""
need_netns=0
for d in $DELAYS; do [ "$d" -gt 0 ] && need_netns=1; done
if [ $need_netns = 1 ]; then
  if netns_probe; then NETNS_OK=1
  else say "network namespaces unavailable ($NETNS_WHY): delays > 0 skipped, loopback only"; fi
fi

for d in $DELAYS; do
  CUR_DELAY=$d
  if [ "$d" -gt 0 ]; then
    [ $NETNS_OK = 1 ] || { say "skipping $d ms: no network namespaces ($NETNS_WHY)"; continue; }
    MODEL=netns METHOD=linkdown
    maxn=0; for n in $REPLICAS; do [ "$n" -gt $maxn ] && maxn=$n; done
    setup_netns "$d" "$maxn"
    say "delay $d ms: leader + driver in namespace $NSL, each replica in its own, veth links held $d ms each way (RTT $((2*d)) ms)"
  else
    MODEL=loopback METHOD=sigstop INL=()
    say "delay 0 ms: loopback (127.0.0.1), partition = SIGSTOP of replica r1"
  fi
  MEASURED_DELAYS="$MEASURED_DELAYS $d"
  # client waits: generous next to the round trip
  TMO=$(( 5000 + 40 * d ))
  RTMO=$(( READ_TIMEOUT_MS + 4 * d ))
  for n in $REPLICAS; do
    for run in $(seq "$RUNS"); do
      for mode in async quorum:1 all; do
        tag="\"delay\":$d,\"run\":$run,\"net\":\"$MODEL\",\"method\":\"$METHOD\""
        say "delay $d ms, N=$n, run $run/$RUNS, $mode"
        # three fresh clusters per mode: a partition leaves TCP backing off
        # for a while, and the ingest must start from an empty knowledge base
        CUR_LOGS=$OUT/logs/d$d-n$n-run$run-$mode-load
        if start_cluster "$n" "$CUR_LOGS" $LOAD_WRITE_TIMEOUT_MS; then
          drive closed "$tag" --mode $mode --seconds $CLOSED_S --raw-seconds $RAW_S \
            --max-writes $MAX_WRITES --timeout-ms $TMO || true
          for rate in $RATES; do
            drive open "$tag" --mode $mode --rate "$rate" --seconds $OPEN_S --timeout-ms $TMO || true
          done
        fi
        stop_cluster
        CUR_LOGS=$OUT/logs/d$d-n$n-run$run-$mode-partition
        if start_cluster "$n" "$CUR_LOGS" $WRITE_TIMEOUT_MS; then
          drive partition "$tag" --mode $mode --seconds $PART_S --cut "$CUT" --heal "$HEAL" \
            --write-rate $PART_WRITE_RATE --read-rate $PART_READ_RATE \
            --read-timeout-ms $RTMO --timeout-ms $(( TMO > 3000 ? TMO : 3000 )) --converge-s 60 || true
        fi
        stop_cluster
        CUR_LOGS=$OUT/logs/d$d-n$n-run$run-$mode-ingest
        if start_cluster "$n" "$CUR_LOGS" $LOAD_WRITE_TIMEOUT_MS; then
          drive ingest "$tag" --mode $mode --docs $INGEST_DOCS --batch 1000 --window 4 \
            --timeout-ms $(( TMO * 4 )) || true
        fi
        stop_cluster
      done
    done
  done
  [ $MODEL = netns ] && teardown_netns
done
T_RUN=$(( $(date +%s) - T_START ))

# ---------------------------------------------------------------- report
set +e
"$BT" report --raw "$RAW" --out "$OUT" --replicas "$REPLICAS" --delays "${MEASURED_DELAYS# }" \
  --lag-rate $LAG_RATE $( [ $CHECK = 1 ] && echo --check ) 2>"$OUT/logs/report.log"
REPORT_RC=$?
set -e
cat "$OUT/logs/report.log" >&2

HAVE_PLOTS=0
if [ $PLOTS = 1 ] && [ -n "${MEASURED_DELAYS# }" ]; then
  if command -v gnuplot >/dev/null || apt_install gnuplot-nox; then
    if gnuplot -e "dir='$OUT'; out='$OUT'; delays='${MEASURED_DELAYS# }'; ns='$REPLICAS'" \
         "$SRC/bench/tradeoff/plots.gp" 2>"$OUT/logs/gnuplot.log"; then
      HAVE_PLOTS=1
    else
      say "gnuplot failed (see $OUT/logs/gnuplot.log): CSV/JSON only"
    fi
  else
    say "gnuplot unavailable and not installable: CSV/JSON only, no plots"
  fi
fi

{
  echo
  echo "## kbsync trade-off: async, quorum:1 and all ($(date -u +%F), $( [ $QUICK = 1 ] && echo quick || echo full ) run, $T_RUN s)"
  echo
  echo "Machine: $(machine)."
  echo "Loads: ${DIM}-d synthetic clustered embeddings (not a model's) + ~300 B text per document."
  echo "Cells are \`async | quorum:1 | all\` per N; every figure is the median of $RUNS run(s)."
  echo
  cat "$OUT/table.md"
} | tee "$OUT/report.md"

# ---------------------------------------------------------------- the doc
if [ -n "$DOC" ]; then
  DOCDIR=$(cd "$(dirname "$DOC")" && pwd)
  PLOTDIR=${PLOTDIR:-$DOCDIR/plots}
  mkdir -p "$PLOTDIR"
  REL=$(realpath --relative-to="$DOCDIR" "$PLOTDIR")
  GEN=$OUT/BENCHMARKS.section.md
  {
    echo "<!-- tradeoff:begin (generated by bench/tradeoff.sh --doc; do not edit by hand) -->"
    echo "## Strong vs eventual: the trade-off table"
    echo
    echo "Generated by \`bash bench/tradeoff.sh $ARGS\` on $(date -u '+%F %H:%M UTC')"
    echo "in $T_RUN s. Every figure below comes from that run; each is the median of"
    echo "$RUNS run(s) (raw values, min and max: \`summary.csv\` in the results directory)."
    echo
    echo "**Machine:** $(machine)."
    echo
    sed -e "s/@DIM@/$DIM/g; s/@WTMO@/$WRITE_TIMEOUT_MS/g; s/@LWTMO@/$LOAD_WRITE_TIMEOUT_MS/g; s/@LAG_RATE@/$LAG_RATE/g" \
        -e "s/@RAW_S@/$RAW_S/g; s/@CLOSED_S@/$CLOSED_S/g; s/@OPEN_S@/$OPEN_S/g" \
        -e "s/@INGEST_DOCS@/$INGEST_DOCS/g; s/@PART_S@/$PART_S/g; s/@RTMO@/$READ_TIMEOUT_MS/g" \
        -e "s/@PART_WRITE_RATE@/$PART_WRITE_RATE/g; s/@PART_READ_RATE@/$PART_READ_RATE/g" \
        "$SRC/bench/tradeoff/method.md"
    echo
    grep -h -E 'skipped|unavailable|fall' "$OUT/notes.txt" | sed 's/^\[tradeoff [0-9]*s\] /- /' || true
    echo
    cat "$OUT/table.md"
    if [ $HAVE_PLOTS = 1 ]; then
      echo "### Plots"
      echo
      for d in $MEASURED_DELAYS; do
        for k in latency lag scaling; do
          cp "$OUT/tradeoff-d${d}ms-$k.png" "$PLOTDIR/"
          echo "![$k, $d ms added delay]($REL/tradeoff-d${d}ms-$k.png)"
          echo
        done
      done
      if [ -f "$OUT/tradeoff-delays.png" ]; then
        cp "$OUT/tradeoff-delays.png" "$PLOTDIR/"
        echo "![async vs all as delay grows]($REL/tradeoff-delays.png)"
        echo
      fi
    fi
    echo "<!-- tradeoff:end -->"
  } > "$GEN"
  if [ -f "$DOC" ] && grep -q '<!-- tradeoff:begin' "$DOC" && grep -q '<!-- tradeoff:end -->' "$DOC"; then
    awk -v gen="$GEN" '
      /<!-- tradeoff:begin/ { while ((getline l < gen) > 0) print l; skip = 1; next }
      /<!-- tradeoff:end -->/ { skip = 0; next }
      !skip { print }' "$DOC" > "$DOC.tmp" && mv "$DOC.tmp" "$DOC"
  else
    { [ -f "$DOC" ] && cat "$DOC" && echo
      [ -f "$DOC" ] || { echo "# Benchmarks"; echo; }
      cat "$GEN"; } > "$DOC.tmp" && mv "$DOC.tmp" "$DOC"
  fi
  say "wrote $DOC (plots in $PLOTDIR)"
fi

say "done in $(( $(date +%s) - T_START )) s; results in $OUT"
if [ $CHECK = 1 ]; then
  for f in raw.jsonl summary.csv summary.json table.md; do
    [ -s "$OUT/$f" ] || { say "check: $f missing or empty"; exit 1; }
  done
  [ $REPORT_RC = 0 ] || { say "check failed: some cells of the table were not produced"; exit 1; }
  say "check passed: every column of the table was produced"
fi
exit $REPORT_RC
