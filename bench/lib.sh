# bench/lib.sh: what the newer cluster benchmark scripts share (sourced,
# not run): the node processes they started (pids) and how to stop them,
# waiting for an endpoint file, and a free loopback port.
pids=()
stop_all() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
             for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done; pids=(); }
wait_ep() { for _ in $(seq 400); do [ -s "$1" ] && break; sleep 0.025; done; cat "$1"; }
free_port() { for p in $(seq 17401 17999); do
  (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null || { echo $p; return; }; done; }
