# bench/lib.sh: what the newer cluster benchmark scripts share (sourced,
# not run): the node processes they started (pids) and how to stop them,
# waiting for an endpoint file, and a free loopback port.
pids=()
stop_all() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
             for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done; pids=(); }
wait_ep() { for _ in $(seq 400); do [ -s "$1" ] && break; sleep 0.025; done; cat "$1"; }
free_port() { for p in $(seq 17401 17999); do
  (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null || { echo $p; return; }; done; }

# start_cluster: a fresh leader (dim 384) and replicas r1, r2, both named,
# on loopback under $W/c, with the binaries of $B. Sets LEADER, R1, R2,
# REPL and R2PID; returns once the leader reports both connected.
start_cluster() {
  stop_all; rm -rf "$W/c"; mkdir -p "$W/c"
  REPL="tcp://127.0.0.1:$(free_port)"
  $B/kbsync leader --data "$W/c/L" --dim 384 --listen 'tcp://127.0.0.1:*' \
    --endpoint-file "$W/c/L.ep" --repl-listen "$REPL" --replicas r1,r2 \
    >/dev/null 2>"$W/c/L.log" &
  pids+=($!)
  LEADER=$(wait_ep "$W/c/L.ep")
  for r in r1 r2; do
    $B/kbsync replica --data "$W/c/$r" --id $r --leader "$REPL" \
      --listen 'tcp://127.0.0.1:*' --endpoint-file "$W/c/$r.ep" \
      >/dev/null 2>"$W/c/$r.log" &
    pids+=($!)
  done
  R1=$(wait_ep "$W/c/r1.ep"); R2=$(wait_ep "$W/c/r2.ep")
  R2PID=${pids[2]}
  wait_replicas 2
}

# wait_replicas N: until the leader at $LEADER reports exactly N replicas
# connected (exits after 20 s).
wait_replicas() {
  local n
  for _ in $(seq 400); do
    n=$($B/kbsync status --to "$LEADER" --json | grep -o '"connected":true' | wc -l)
    [ "$n" = "$1" ] && return
    sleep 0.05
  done
  echo "leader never had $1 replicas connected"; exit 1
}
