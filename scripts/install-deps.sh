#!/usr/bin/env bash
# Installs the Debian 12 packages kbsync needs to build, test and run.
# Idempotent: when every package is present it installs nothing and prints one line.
set -euo pipefail

PKGS=(
  build-essential cmake pkg-config
  libfaiss-dev libopenblas-dev
  libzmq3-dev liblmdb-dev lmdb-utils
  libprotobuf-c-dev protobuf-c-compiler
  libsimdjson-dev libcjson-dev
  gnuplot-nox
  libcmocka-dev
  clang libclang-rt-14-dev
  libmicrohttpd-dev libcurl4-openssl-dev curl
  python3 python3-zmq python3-protobuf protobuf-compiler python3-pytest python3-venv python3-wheel iproute2 iptables
)

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#PKGS[@]} packages present"
  exit 0
fi

echo "install-deps: installing ${missing[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
