"""A leader and N replicas as real kbsync processes, and the faults the
harness injects into them: kill -9, SIGSTOP/SIGCONT, restart, a wiped replica
data directory, and a network partition between the leader and a replica.

Partitions need root: each replica then runs in a network namespace of its
own, joined to the harness's namespace by a veth pair on a bridge that this
module creates and removes; a partition is a pair of iptables DROP rules
inside the replica's namespace for the leader's replication port, so the
harness's clients still reach the replica while the leader does not. Without
root (or without ip/iptables) every node runs on 127.0.0.1 and partitions
are skipped, with a message saying so.
"""
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import time

import kbproto

PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent():
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


_handed_out = set()


def free_port(host="127.0.0.1"):
    """A free port below Linux's ephemeral range (32768-60999), so that no
    client connection takes it while a node that listens on it restarts.
    Never the same one twice in this process (a node may not have bound
    the last one yet), and from KB_TEST_PORTS=LO-HI when set (CMakeLists.txt
    gives each ctest entry that starts nodes its own range, since ctest
    runs them side by side), else 24000-31999."""
    import random
    lo, hi = 24000, 31999
    try:
        lo, hi = (int(x) for x in os.environ["KB_TEST_PORTS"].split("-"))
    except (KeyError, ValueError):
        pass
    for _ in range(1000):
        port = random.randrange(lo, hi + 1)
        if port in _handed_out:
            continue
        s = socket.socket()
        try:
            s.bind((host, port))
            _handed_out.add(port)
            return port
        except OSError:
            continue
        finally:
            s.close()
    raise RuntimeError("no free port in %d-%d" % (lo, hi))


def _sh(*args, check=True):
    return subprocess.run(list(args), check=check, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE)


class Net:
    """The namespaces, veth pairs and bridge of one run (names carry a tag
    derived from the harness's pid so that parallel runs do not collide)."""

    def __init__(self, nreplicas):
        Net.sweep()
        self.tag = os.getpid() % 200 + 20
        for _ in range(200):  # a tag no other run on this machine holds
            if not self._taken(self.tag):
                break
            self.tag = (self.tag - 20 + 1) % 200 + 20
        self._names(self.tag, nreplicas)
        self.up = False

    OWNERS = "/run/kbfaults"

    @staticmethod
    def _taken(tag):
        return os.path.exists("/sys/class/net/kbf%db" % tag) or \
            os.path.exists("/run/netns/kbf%dn0" % tag) or \
            os.path.exists(os.path.join(Net.OWNERS, str(tag)))

    @staticmethod
    def sweep():
        """Removes the namespaces, links and bridge of earlier runs whose
        harness process is gone (killed by a test timeout, say)."""
        if not os.path.isdir(Net.OWNERS):
            return
        for name in os.listdir(Net.OWNERS):
            pid, n = 0, 8
            try:
                with open(os.path.join(Net.OWNERS, name)) as f:
                    pid, n = (int(x) for x in f.read().split())
                os.kill(pid, 0)
                continue  # its run is alive
            except (OSError, ValueError):
                pass
            if name.isdigit():
                stale = Net.__new__(Net)
                stale._names(int(name), n)
                stale.destroy()

    def _names(self, tag, nreplicas):
        self.tag = tag
        self.bridge = "kbf%db" % tag
        self.subnet = "10.231.%d" % tag
        self.leader_ip = self.subnet + ".1"
        self.ns = ["kbf%dn%d" % (tag, i) for i in range(nreplicas)]
        self.veth = ["kbf%dv%d" % (tag, i) for i in range(nreplicas)]

    @staticmethod
    def available():
        """None when partitions can be injected, else the reason why not."""
        if os.geteuid() != 0:
            return "not root: network namespaces cannot be created"
        for tool in ("ip", "iptables"):
            if shutil.which(tool) is None:
                return "%s is not installed" % tool
        # Try it: a container may refuse namespaces or netfilter.
        probe = "kbfprobe%d" % os.getpid()
        try:
            for argv in (["ip", "netns", "add", probe],
                         ["ip", "netns", "exec", probe, "iptables", "-A",
                          "OUTPUT", "-p", "tcp", "--dport", "9", "-j",
                          "DROP"]):
                r = subprocess.run(argv, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, timeout=20)
                if r.returncode:
                    return "%s failed: %s" % (" ".join(argv[:4]),
                                              r.stderr.decode().strip())
        finally:
            _sh("ip", "netns", "del", probe, check=False)
        return None

    def replica_ip(self, i):
        return "%s.%d" % (self.subnet, 10 + i)

    def create(self):
        os.makedirs(Net.OWNERS, exist_ok=True)
        with open(os.path.join(Net.OWNERS, str(self.tag)), "w") as f:
            f.write("%d %d\n" % (os.getpid(), len(self.ns)))
        _sh("ip", "link", "add", self.bridge, "type", "bridge")
        _sh("ip", "addr", "add", self.leader_ip + "/24", "dev", self.bridge)
        _sh("ip", "link", "set", self.bridge, "up")
        for i, (ns, veth) in enumerate(zip(self.ns, self.veth)):
            _sh("ip", "netns", "add", ns)
            _sh("ip", "link", "add", veth, "type", "veth", "peer", "name",
                veth + "p")
            _sh("ip", "link", "set", veth + "p", "netns", ns)
            _sh("ip", "link", "set", veth, "master", self.bridge)
            _sh("ip", "link", "set", veth, "up")
            _sh("ip", "netns", "exec", ns, "ip", "addr", "add",
                self.replica_ip(i) + "/24", "dev", veth + "p")
            _sh("ip", "netns", "exec", ns, "ip", "link", "set", veth + "p",
                "up")
            _sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        self.up = True

    def destroy(self):
        for ns, veth in zip(self.ns, self.veth):
            _sh("ip", "netns", "del", ns, check=False)
            _sh("ip", "link", "del", veth, check=False)
        _sh("ip", "link", "del", self.bridge, check=False)
        try:
            os.unlink(os.path.join(Net.OWNERS, str(self.tag)))
        except OSError:
            pass
        self.up = False

    def _rules(self, i, port, op):
        ns = self.ns[i]
        _sh("ip", "netns", "exec", ns, "iptables", op, "INPUT", "-p", "tcp",
            "--sport", str(port), "-j", "DROP")
        _sh("ip", "netns", "exec", ns, "iptables", op, "OUTPUT", "-p", "tcp",
            "--dport", str(port), "-j", "DROP")

    def cut(self, i, port):
        self._rules(i, port, "-I")

    def heal(self, i, port):
        self._rules(i, port, "-D")


class Node:
    def __init__(self, cluster, name, role, data, listen, argv, netns=None):
        self.cluster = cluster
        self.name = name
        self.role = role
        self.data = data
        self.listen = listen
        self.argv = argv
        self.netns = netns
        self.proc = None
        self.stopped = False
        self.log_path = os.path.join(cluster.workdir, name + ".log")
        self.starts = 0
        self.reaped = True
        self.crashes = []  # (time, exit status) of exits nobody caused

    def start(self):
        argv = list(self.argv)
        if self.netns:
            argv = ["ip", "netns", "exec", self.netns] + argv
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(argv, stdout=log, stderr=log,
                                     preexec_fn=_die_with_parent)
        log.close()
        self.stopped = False
        self.reaped = False
        self.starts += 1

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig):
        if self.alive():
            os.kill(self.proc.pid, sig)

    def _died(self):
        """Records a node found dead that nobody killed."""
        self.crashes.append((time.time(), self.proc.returncode))

    def kill9(self):
        if self.proc is None:
            return
        if self.alive():
            os.kill(self.proc.pid, signal.SIGKILL)
        elif not self.reaped:
            self._died()
        self.proc.wait()
        self.reaped = True
        self.stopped = False

    def terminate(self, timeout_s=10):
        """SIGTERM; a node that was already dead, or that exits with a
        status other than 0, counts as a crash (e.g. a sanitizer report at
        exit)."""
        if self.proc is None or self.reaped:
            return
        if not self.alive():
            self._died()
            self.reaped = True
            return
        if self.stopped:
            os.kill(self.proc.pid, signal.SIGCONT)
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
            if self.proc.returncode != 0:
                self._died()
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            self.crashes.append((time.time(), "no exit %d s after SIGTERM"
                                 % timeout_s))
        self.reaped = True

    def stop(self):
        self.signal(signal.SIGSTOP)
        self.stopped = True

    def cont(self):
        self.signal(signal.SIGCONT)
        self.stopped = False


class Cluster:
    """kbsync leader + replicas r1..rN in workdir, all named in --replicas."""

    def __init__(self, kbsync, workdir, nreplicas=2, dim=8, use_netns=True,
                 extra_leader=(), write_timeout_ms=2000):
        self.kbsync = kbsync
        self.workdir = workdir
        self.dim = dim
        os.makedirs(workdir, exist_ok=True)
        self.net = None
        if use_netns and Net.available() is None:
            self.net = Net(nreplicas)
        lhost = self.net.leader_ip if self.net else "127.0.0.1"
        self.client_ep = "tcp://127.0.0.1:%d" % free_port()
        self.repl_port = free_port(lhost if self.net is None else "127.0.0.1")
        self.repl_ep = "tcp://%s:%d" % (lhost, self.repl_port)
        names = ["r%d" % (i + 1) for i in range(nreplicas)]
        self.leader = Node(self, "leader", "leader",
                           os.path.join(workdir, "leader"), self.client_ep,
                           [kbsync, "leader", "--data",
                            os.path.join(workdir, "leader"), "--dim", str(dim),
                            "--metric", "ip", "--listen", self.client_ep,
                            "--repl-listen", self.repl_ep, "--replicas",
                            ",".join(names), "--write-timeout-ms",
                            str(write_timeout_ms), "--query-threads", "2",
                            # the audit reads the whole history back
                            "--log-keep-ops", "1000000000"]
                           # plain TCP beyond loopback: the namespaces are
                           # this run's own private links
                           + (["--insecure"] if self.net else [])
                           + list(extra_leader))
        self.replicas = []
        for i, name in enumerate(names):
            host = self.net.replica_ip(i) if self.net else "127.0.0.1"
            port = free_port()
            ep = "tcp://%s:%d" % (host, port)
            data = os.path.join(workdir, name)
            self.replicas.append(Node(
                self, name, "replica", data, ep,
                [kbsync, "replica", "--data", data, "--id", name, "--leader",
                 self.repl_ep, "--listen", ep, "--query-threads", "2"]
                + (["--insecure"] if self.net else []),
                netns=self.net.ns[i] if self.net else None))

    @property
    def nodes(self):
        return [self.leader] + self.replicas

    def partitions(self):
        return self.net is not None

    def start(self):
        if self.net:
            self.net.create()
        for n in self.nodes:
            n.start()

    def shutdown(self):
        for n in self.nodes:
            try:
                n.terminate(10)
            except Exception:
                n.kill9()
        if self.net:
            self.net.destroy()

    def cut(self, i):
        self.net.cut(i, self.repl_port)

    def heal(self, i):
        self.net.heal(i, self.repl_port)

    def wipe(self, node):
        shutil.rmtree(node.data, ignore_errors=True)
        for p in os.listdir(self.workdir):
            if p.startswith(os.path.basename(node.data) + ".diverged-"):
                shutil.rmtree(os.path.join(self.workdir, p),
                              ignore_errors=True)
