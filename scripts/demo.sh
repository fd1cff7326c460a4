#!/usr/bin/env bash
# The main command: installs what is missing, builds, starts a kbsync leader
# and two replicas on 127.0.0.1 (data in data/demo, git-ignored), ingests a
# small real-text knowledge base (this project's own FAQ and docs) with the
# built-in embedder -- the FAQ in `all` mode, the docs in `async` mode --
# queries a replica, shows versions and staleness, and stops all three.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh build Release >/dev/null
KB=build/kbsync
DATA=data/demo
rm -rf "$DATA"
mkdir -p "$DATA"

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

wait_ep() { for _ in $(seq 200); do [ -s "$1" ] && break; sleep 0.05; done; cat "$1"; }

# A free port for the replication endpoint (clients use ephemeral ports).
REPL_PORT=$(for p in $(seq 7401 7499); do
  (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null || { echo $p; break; }; done)
REPL="tcp://127.0.0.1:$REPL_PORT"

echo "== starting leader (replication on $REPL) and replicas r1, r2"
$KB leader --data "$DATA/leader" --dim 384 --id leader \
  --listen 'tcp://127.0.0.1:*' --endpoint-file "$DATA/leader.ep" \
  --repl-listen "$REPL" --replicas r1,r2 2> "$DATA/leader.log" &
pids+=($!)
LEADER=$(wait_ep "$DATA/leader.ep")
for r in r1 r2; do
  $KB replica --data "$DATA/$r" --id $r --leader "$REPL" \
    --listen 'tcp://127.0.0.1:*' --endpoint-file "$DATA/$r.ep" 2> "$DATA/$r.log" &
  pids+=($!)
done
R1=$(wait_ep "$DATA/r1.ep"); R2=$(wait_ep "$DATA/r2.ep")
echo "   leader $LEADER, r1 $R1, r2 $R2"
for _ in $(seq 100); do
  $KB status --to "$LEADER" --json | grep -q '"connected":true.*"connected":true' && break
  sleep 0.1
done

echo "== ingest the FAQ in all mode: acknowledged once both replicas applied it"
$KB ingest --to "$LEADER" --mode all examples/faq.jsonl
echo "== ingest the docs in async mode: acknowledged at the leader's commit"
$KB ingest --to "$LEADER" --mode async README.md docs/*.md

echo "== status of the leader (with its replicas) and of r1"
$KB status --to "$LEADER"
$KB status --to "$R1" --json

for q in "what happens to an acknowledged write after kill -9" \
         "how far behind the leader is a replica" \
         "what does a malformed line do during ingest"; do
  echo "== query on r2: $q"
  $KB query --to "$R2" -k 3 --text "$q"
done

echo "== read-your-writes: a write's version as the token for a replica read"
V=$($KB ingest --to "$LEADER" --mode async examples/faq.jsonl 2>/dev/null | sed 's/.*"version":\([0-9]*\).*/\1/')
$KB query --to "$R1" -k 1 --json --min-version "$V" --text "which metric gives a squared distance"

echo "== writes sent to a replica are refused"
$KB delete --to "$R1" faq-lsn || true

echo "== stopping"
cleanup; pids=()
tail -n 2 "$DATA/leader.log" "$DATA/r1.log"
