#!/usr/bin/env bash
# Fuzzes the wire decoders (tests/fuzz/fuzz_wire.c) with clang's libFuzzer
# under ASan and UBSan for SECONDS (default 60) on JOBS processes (default 1).
# usage: tests/fuzz/run.sh [SECONDS] [JOBS]
# Needs clang and libclang-rt-14-dev (scripts/install-deps.sh installs them)
# and a configured build directory for the generated protobuf code (build/,
# or KB_BUILD). Exit status 0 when no input crashed.
set -euo pipefail
cd "$(dirname "$0")/../.."
SECS=${1:-60}
JOBS=${2:-1}
B=${KB_BUILD:-build}
[ -f "$B/gen/kbsync.pb-c.c" ] || bash scripts/build.sh "$B" Release >/dev/null
W=$(mktemp -d /tmp/kbsync-fuzz-XXXXXX)
trap 'rm -rf "$W"' EXIT
clang -g -O1 -D_GNU_SOURCE -fsanitize=fuzzer,address,undefined \
  -fno-sanitize-recover=all \
  -Icommon/include -I"$B/gen" $(pkg-config --cflags libzmq) \
  tests/fuzz/fuzz_wire.c common/kb_wire.c common/kb_err.c common/kb_util.c \
  common/kb_metrics.c \
  "$B/gen/kbsync.pb-c.c" -lprotobuf-c $(pkg-config --libs libzmq) \
  -o "$W/fuzz_wire"
mkdir -p "$W/corpus"
# seeds: a few valid messages from the unit tests' shapes
printf '\x08\x01\x10\x05\x6a\x00' > "$W/corpus/status"
printf '\x08\x01\x10\x07\x52\x0c\x0a\x0a\x0a\x02id\x12\x04text' > "$W/corpus/upsert"
printf '\x08\x02\x52\x06\x08\x02\x12\x02r1' > "$W/corpus/hello"
echo "fuzzing the wire decoders for $SECS s on $JOBS job(s)"
cd "$W"
if [ "$JOBS" -gt 1 ]; then
  ./fuzz_wire -max_total_time="$SECS" -jobs="$JOBS" -workers="$JOBS" \
    -max_len=65536 -print_final_stats=1 corpus
  cat fuzz-*.log | grep -E "^#.*(DONE|pulse)|stat::number_of_executed_units" | tail -"$JOBS"
else
  ./fuzz_wire -max_total_time="$SECS" -max_len=65536 -print_final_stats=1 \
    corpus 2>&1 | grep -E "DONE|stat::|ERROR|SUMMARY|crash" | tail -8
fi
