"""Times a new replica: starts `kbsync replica` on an empty directory and
polls its status from this one process (one DEALER socket, every 5 ms)
until it serves the given version with no snapshot in progress. Prints one
JSON line: seconds from the start to serving, the replica's CPU (in all
and per thread with 10 ms or more, user and system seconds) and its commit
counters (commits, synced_commits, lazy_commits, store_syncs). $RX, if
set, is added to the replica's options (e.g. RX=--no-sync).

A loading replica answers a status request only between the batches it
applies, so its polls come tens of ms apart (about 20 polls in 1.8 s) and
the polled time can be late by up to one such gap (23 and 40 ms after the
log line below in one bench/run_storage.sh run). With LOG_FILE, "logged_seconds" is also printed: from the
start to the time stamp of the replica's own log line "snapshot complete
at LSN N ... serving from now on" (when N >= VERSION), written just before
it starts serving.

The poller is started before the replica and keeps one connection, so the
timing does not pay a process start per poll: on 2 cores a CLI started every
few milliseconds takes a good part of a core from the replica being timed.

usage: python3 new_replica.py KBSYNC_BIN VERSION DATA_DIR ID LEADER_REPL_EP
       [LOG_FILE]   (with BUILD/python on PYTHONPATH)
"""
import datetime
import json
import os
import socket
import subprocess
import sys
import time

import kbsync
from kbsync import KbsyncError


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(stat_path):
    """User and system seconds of a /proc/.../stat file (process or
    thread)."""
    with open(stat_path) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    hz = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / hz, int(fields[12]) / hz


def logged_serving(log, version, t0_wall):
    """Seconds from t0_wall to the replica's "snapshot complete" log line
    for an LSN >= version, or None."""
    try:
        with open(log) as f:
            for line in f:
                if "snapshot complete at LSN" not in line:
                    continue
                lsn = int(line.split("snapshot complete at LSN ")[1]
                          .split(":")[0])
                if lsn < version:
                    continue
                ts = datetime.datetime.strptime(
                    line.split()[0], "%Y-%m-%dT%H:%M:%S.%fZ").replace(
                    tzinfo=datetime.timezone.utc).timestamp()
                return round(ts - t0_wall, 3)
    except (OSError, ValueError, IndexError):
        pass
    return None


def main():
    exe, version, data, rid, leader = sys.argv[1:6]
    log = sys.argv[6] if len(sys.argv) > 6 else os.devnull
    version = int(version)
    ep = "tcp://127.0.0.1:%d" % free_port()
    cl = kbsync.Client([ep], timeout=0.5, retries=0)
    with open(log, "w") as lf:
        t0 = time.monotonic()
        t0_wall = time.time()
        p = subprocess.Popen([exe, "replica", "--data", data, "--id", rid,
                              "--leader", leader, "--listen", ep] +
                             os.environ.get("RX", "").split(),
                             stdout=subprocess.DEVNULL, stderr=lf)
    polls = 0
    try:
        while True:
            polls += 1
            try:
                st = cl.status(ep)
                if st.version >= version and not st.snapshot_lsn:
                    break
            except KbsyncError:
                pass
            if p.poll() is not None:
                sys.exit("the replica exited with %d" % p.returncode)
            time.sleep(0.005)
        t1 = time.monotonic()
        user, system = cpu_seconds("/proc/%d/stat" % p.pid)
        threads = {}
        for tid in os.listdir("/proc/%d/task" % p.pid):
            try:
                with open("/proc/%d/task/%s/comm" % (p.pid, tid)) as f:
                    name = f.read().strip()
                u, s = cpu_seconds("/proc/%d/task/%s/stat" % (p.pid, tid))
            except OSError:
                continue
            if u + s >= 0.01:
                threads[name + "/" + tid] = [u, s]
    finally:
        p.terminate()
        p.wait()
    print(json.dumps({"seconds": round(t1 - t0, 3),
                      "logged_seconds": logged_serving(log, version, t0_wall),
                      "version": st.version,
                      "cpu_user": user, "cpu_sys": system, "polls": polls,
                      "commits": [st.commits, st.synced_commits, st.lazy_commits,
                                  st.store_syncs],
                      "threads_cpu_user_sys": threads}))


if __name__ == "__main__":
    main()
