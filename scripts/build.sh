#!/usr/bin/env bash
# Builds kbsync into build/ (or $1 with build type $2). Installs missing
# Debian packages first. Prints where the binary is.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-build}
type=${2:-Release}
bash scripts/install-deps.sh
cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE="$type" > "$dir.cmake.log" 2>&1 || { cat "$dir.cmake.log"; exit 1; }
cmake --build "$dir" -j"$(nproc)"
