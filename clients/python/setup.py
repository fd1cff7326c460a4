"""Build step of the kbsync Python package: generates kbsync/kbsync_pb2.py
from schemas/kbsync.proto with protoc while building (the bindings are
never written by hand nor committed). Metadata is in pyproject.toml.

The schema is $KBSYNC_PROTO, else ../../schemas/kbsync.proto next to this
file (a kbsync checkout); protoc is $PROTOC, else protoc on PATH.
"""
import os
import shutil
import subprocess

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))


class BuildWithBindings(build_py):
    def run(self):
        super().run()
        proto = os.environ.get("KBSYNC_PROTO") or os.path.join(
            HERE, "..", "..", "schemas", "kbsync.proto")
        proto = os.path.abspath(proto)
        if not os.path.exists(proto):
            raise SystemExit("kbsync: schema %s not found (set KBSYNC_PROTO)"
                             % proto)
        protoc = os.environ.get("PROTOC") or shutil.which("protoc")
        if not protoc:
            raise SystemExit("kbsync: protoc not found (Debian: "
                             "apt-get install protobuf-compiler)")
        out = os.path.join(self.build_lib, "kbsync")
        os.makedirs(out, exist_ok=True)
        subprocess.run([protoc, "-I", os.path.dirname(proto),
                        "--python_out=" + out, proto], check=True)


setup(cmdclass={"build_py": BuildWithBindings})
