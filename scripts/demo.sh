#!/usr/bin/env bash
# The main command: installs what is missing, builds, starts a kbsync leader
# on the embedded default (data in data/demo, git-ignored), ingests a small
# real-text knowledge base (this project's own docs and FAQ) with the
# built-in embedder, runs a few text queries, shows version and staleness,
# and stops the node.
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

echo "== starting leader (data in $DATA/leader, log in $DATA/leader.log)"
$KB leader --data "$DATA/leader" --dim 384 --id leader \
  --listen 'tcp://127.0.0.1:*' --endpoint-file "$DATA/leader.ep" \
  2> "$DATA/leader.log" &
pids+=($!)
for _ in $(seq 100); do [ -s "$DATA/leader.ep" ] && break; sleep 0.1; done
EP=$(cat "$DATA/leader.ep")
echo "   leader serves on $EP"

echo "== ingesting the knowledge base"
$KB ingest --to "$EP" examples/faq.jsonl README.md docs/*.md

echo "== status"
$KB status --to "$EP"
$KB status --to "$EP" --json

for q in "what happens to an acknowledged write after kill -9" \
         "how far behind the leader is a replica" \
         "what does a malformed line do during ingest"; do
  echo "== query: $q"
  $KB query --to "$EP" -k 3 --text "$q"
done

echo "== query --json (the API contract)"
$KB query --to "$EP" -k 1 --json --text "which metric gives a squared distance"

echo "== stopping the leader"
kill -TERM "${pids[0]}"; wait "${pids[0]}"; pids=()
tail -n 3 "$DATA/leader.log"
