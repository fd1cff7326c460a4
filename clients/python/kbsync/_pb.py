"""The protobuf bindings of schemas/kbsync.proto (module kbsync_pb2).

They are generated, never written by hand and never committed: the
package's install step (setup.py, run by install.sh) and the CMake build
(target kbsync_python, into BUILD/python/kbsync/) run `protoc --python_out`
on the schema and put kbsync_pb2.py next to this file. When this copy of
the package has none (the source tree, e.g. because a script's directory
came first on sys.path), they are taken from $KBSYNC_PB2_DIR, else from the
first kbsync/kbsync_pb2.py on sys.path (a build tree on PYTHONPATH).
"""
import importlib.util
import os
import sys


def _find():
    d = os.environ.get("KBSYNC_PB2_DIR")
    if d:
        return os.path.join(d, "kbsync_pb2.py")
    for entry in sys.path:
        p = os.path.join(entry or ".", "kbsync", "kbsync_pb2.py")
        if os.path.isfile(p):
            return p
    return None


try:
    from . import kbsync_pb2 as pb  # noqa: F401  (installed or build tree)
except ImportError:
    _path = _find()
    if not _path or not os.path.isfile(_path):
        raise ImportError(
            "kbsync: the generated bindings kbsync_pb2.py are missing. "
            "Install the package (bash clients/python/install.sh VENV), or "
            "build it (cmake --build BUILD --target kbsync_python) and put "
            "BUILD/python on PYTHONPATH, or set KBSYNC_PB2_DIR to a "
            "directory holding `protoc --python_out` output of "
            "schemas/kbsync.proto") from None
    _spec = importlib.util.spec_from_file_location("kbsync.kbsync_pb2", _path)
    pb = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(pb)
    sys.modules["kbsync.kbsync_pb2"] = pb

PROTOCOL_VERSION = 1
