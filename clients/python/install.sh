#!/usr/bin/env bash
# Installs the kbsync Python client into a virtual environment, offline:
#   bash clients/python/install.sh [VENV_DIR]      (default: ./kbsync-venv)
# then: VENV_DIR/bin/python -c 'import kbsync'
# The environment is made by Debian's python3 with --system-site-packages,
# so it sees python3-zmq and python3-protobuf; the package is built from a
# copy of clients/python with its bindings generated from
# schemas/kbsync.proto by protoc (setup.py), and installed with pip
# --no-index --no-build-isolation: no network. Needs the Debian packages
# python3-venv python3-zmq python3-protobuf python3-wheel protobuf-compiler
# (scripts/install-deps.sh installs them with the rest of kbsync's).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
VENV=${1:-kbsync-venv}
PY=/usr/bin/python3   # Debian's: the one that sees python3-zmq/-protobuf

missing=()
[ -x "$PY" ] || missing+=(python3)
command -v protoc >/dev/null || missing+=(protobuf-compiler)
"$PY" -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
"$PY" -c 'import zmq' 2>/dev/null || missing+=(python3-zmq)
"$PY" -c 'import google.protobuf' 2>/dev/null || missing+=(python3-protobuf)
"$PY" -c 'import wheel' 2>/dev/null || missing+=(python3-wheel)
if [ ${#missing[@]} -gt 0 ]; then
  echo "install.sh: missing Debian packages: ${missing[*]}" >&2
  echo "  sudo apt-get install ${missing[*]}   (or: bash scripts/install-deps.sh)" >&2
  exit 1
fi

"$PY" -m venv --system-site-packages "$VENV"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
cp -r "$HERE/pyproject.toml" "$HERE/setup.py" "$HERE/README.md" \
      "$HERE/kbsync" "$stage/"
rm -f "$stage/kbsync/kbsync_pb2.py"
rm -rf "$stage/kbsync/__pycache__"
KBSYNC_PROTO="$ROOT/schemas/kbsync.proto" \
  "$VENV/bin/python" -m pip install --quiet --no-index --no-build-isolation \
  --disable-pip-version-check "$stage"
"$VENV/bin/python" -c 'import kbsync, sys
from google.protobuf.internal import api_implementation as a
print("kbsync %s installed in %s (protobuf %s implementation)"
      % (kbsync.__version__, sys.prefix, a.Type()))'
