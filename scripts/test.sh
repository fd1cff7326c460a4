#!/usr/bin/env bash
# The test command: installs what is missing, builds, and runs the whole
# cmocka/CTest suite twice: a Release build (then a quick run of the
# trade-off benchmark and a minute of fuzzing the wire decoders), then an
# ASan+UBSan build; then
# the tests of the threaded parts (reader pool, delta, merger, rebuild, node
# loop, the embedding client's worker) in a ThreadSanitizer build.
# KB_TEST_SANITIZE=0 skips the sanitizer
# passes.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1
bash scripts/build.sh build Release
(cd build && ctest --output-on-failure -j2 --timeout 600)
# The trade-off benchmark is a program, not a test: its quick run (N = 2
# replicas, under 2 minutes) only has to produce every cell of its table.
bash bench/tradeoff.sh --quick --replicas 2 --build-dir build \
  --out build/bench-smoke --check
# The wire decoders a hostile peer reaches, under libFuzzer + ASan + UBSan
# for a minute (tests/fuzz/run.sh; longer runs: docs/PROTOCOL.md).
bash tests/fuzz/run.sh "${KB_FUZZ_SECONDS:-60}"
if [ "${KB_TEST_SANITIZE:-1}" != 0 ]; then
  bash scripts/build.sh build-san Sanitize
  # detect_leaks=0: libgomp and OpenBLAS keep thread pools alive at exit.
  (cd build-san && ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 \
     UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
     ctest --output-on-failure -j2 --timeout 900)
fi
if [ "${KB_TEST_SANITIZE:-1}" != 0 ]; then
  bash scripts/build.sh build-tsan Tsan
  # libgomp and OpenBLAS are not instrumented: tests/tsan.supp names them.
  (cd build-tsan && TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 suppressions=$PWD/../tests/tsan.supp" \
     ctest --output-on-failure -j2 --timeout 900 -R '^test_(idx|idx_ckpt|idx_vec|idx_delta|qry_pool|node|cli_embed)$')
fi
