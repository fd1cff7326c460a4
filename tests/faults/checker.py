"""The history checker: checks a recorded history of concurrent operations,
fault events and the leader's final log against docs/CONSISTENCY.md.

A history is a dict:
  ops     write and read operations (dicts, see workload.py), each with its
          invocation and completion times (`inv`, `cmp`, seconds since the
          epoch), node, result and returned version
  events  fault events and what the nodes logged: kill, start, stop, cont,
          wipe, cut, heal, leader_open (a leader start, with its version),
          diverge (a replica told it diverged and starting over)
  buckets {bucket: [keys]}: a read asks for the documents of one bucket
  log     the leader's final log as {lsn: (op, key, uid)}, op "u" or "d"
  head    the leader's final version
  final   {node: {"version": V, "docs": {key: [uid, text, meta, score]}}}
          taken after every fault was healed and the replicas caught up
  converged  {replica: True/False}

check(history) returns a list of Violation. Every kind of rule has a name
(KINDS); KNOWN names the kinds that are reported but expected until an open
issue fixes them.
"""
import bisect
import collections
import json

KINDS = {
    "lost-ack": "an acknowledged write is not in the leader's log at the "
                "version its acknowledgement named",
    "refused-committed": "a write refused with an error (which promises it "
                         "changed nothing) is in the leader's log",
    "wrong-state": "a read's documents differ from the leader's log at the "
                   "version the read reported (a deleted, stale, missing or "
                   "future document, or one outside the filter)",
    "phantom": "a read returned a write that the leader then lost (or "
               "reflected a log branch the leader lost)",
    "all-not-visible": "a named replica answered, after an `all` write was "
                       "acknowledged, at a version below the write's",
    "leader-stale": "the leader answered below a version it had "
                    "acknowledged before the read began",
    "partial-write": "a read reported a version inside a multi-document "
                     "request (part of a write visible)",
    "min-version": "a read with min_version answered below that version",
    "leader-refused-acked": "the leader refused a min_version read at a "
                            "version it had already acknowledged",
    "max-lag": "a read with max_lag_ms answered staler than the bound "
               "(lag bounded from below by acknowledged later writes)",
    "version-backwards": "a node reported a lower version than an earlier "
                         "answer without a documented start-over between",
    "node-crashed": "a node exited without being killed (an abort, a "
                    "failed assertion, a sanitizer report)",
    "not-converged": "after the faults healed, a replica did not reach the "
                     "leader's version, or its documents differ from the "
                     "leader's",
}

# Kinds reported and counted but not failing the run: none today. Until
# issue #9, "phantom" was one (replicas served records a crashed leader never
# made durable); replicas now stage such records until the leader confirms
# its commit (docs/CONSISTENCY.md), so a phantom read fails the run.
KNOWN = {}

# max_lag_ms: the replica's lag_ms is never below the true lag (with no
# write outstanding it is the age of the leader's last message,
# docs/CONSISTENCY.md); the tolerance covers the millisecond rounding and
# the replica's estimate of the leader's clock (its smallest recent
# delivery delay), in ms.
MAX_LAG_TOLERANCE_MS = 20


class Violation:
    def __init__(self, kind, message, ops=(), nodes=(), t0=None, t1=None):
        self.kind = kind
        self.message = message
        self.ops = list(ops)
        self.nodes = sorted(set(nodes))
        times = [o["inv"] for o in self.ops] + [o["cmp"] for o in self.ops
                                                 if o.get("cmp")]
        self.t0 = t0 if t0 is not None else (min(times) if times else None)
        self.t1 = t1 if t1 is not None else (max(times) if times else None)

    @property
    def known(self):
        return self.kind in KNOWN

    def __repr__(self):
        return "Violation(%s: %s)" % (self.kind, self.message)


class _Log:
    """The leader's final log, indexed per key for folds at a version."""

    def __init__(self, log):
        self.log = {int(k): v for k, v in log.items()}
        self.uid_lsn = {}
        per_key = collections.defaultdict(list)
        for lsn in sorted(self.log):
            op, key, uid = self.log[lsn]
            per_key[key].append((lsn, uid if op == "u" else None))
            if op == "u":
                self.uid_lsn[uid] = lsn
        self.per_key = {k: ([l for l, _ in v], [u for _, u in v])
                        for k, v in per_key.items()}

    def at(self, key, version):
        """(lsn, uid) of key's newest write at or below version; uid None
        when that write is a delete; (0, None) when there is none."""
        if key not in self.per_key:
            return 0, None
        lsns, uids = self.per_key[key]
        i = bisect.bisect_right(lsns, version)
        if i == 0:
            return 0, None
        return lsns[i - 1], uids[i - 1]


def _excuses(events):
    """Per replica, the times at which it legitimately started over (wiped
    data directory, or told it diverged)."""
    ex = collections.defaultdict(list)
    for e in events:
        if e["kind"] in ("wipe", "diverge"):
            ex[e["node"]].append(e["time"])
    return {k: sorted(v) for k, v in ex.items()}


def _excused(excuses, node, t0, t1):
    ts = excuses.get(node, [])
    i = bisect.bisect_left(ts, t0)
    return i < len(ts) and ts[i] <= t1


def _acked_lsns(o):
    """The LSNs an answered write claims, mapped to (op, key, uid)."""
    v, n = o["version"], o["written"]
    if o["kind"] == "upsert":
        return {v - n + 1 + j: ("u", k, u)
                for j, (k, u) in enumerate(zip(o["keys"], o["uids"]))}
    if n == 1:
        return {v: ("d", o["keys"][0], None)}
    return {}


def _check_writes(h, L, out):
    dctx = None
    for o in h["ops"]:
        if o["t"] != "w":
            continue
        if o.get("version") is not None and o.get("written") is not None:
            # ok, or an error that carries a WriteResult (committed).
            for lsn, (op, key, uid) in _acked_lsns(o).items():
                got = L.log.get(lsn)
                if got is None or got[0] != op or got[1] != key or \
                        (op == "u" and got[2] != uid):
                    out.append(Violation(
                        "lost-ack",
                        "%s of %s acknowledged at LSN %d (%s); the leader's "
                        "final log holds %s there" % (
                            o["kind"], key, lsn,
                            "ok" if o["code"] is None else o["code_name"],
                            got if got else "nothing"),
                        [o], ["leader"]))
                    break
        elif o["res"] == "err" and o["kind"] == "delete":
            if dctx is None:
                dctx = _delete_context(h)
            _check_refused_delete(h, L, o, out, dctx)
        elif o["res"] == "err" and o["kind"] == "upsert":
            for uid in o["uids"]:
                if uid in L.uid_lsn:
                    out.append(Violation(
                        "refused-committed",
                        "upsert refused with %s (%s) is in the leader's log "
                        "at LSN %d" % (o["code_name"], o.get("message", ""),
                                       L.uid_lsn[uid]),
                        [o], ["leader"]))
                    break


def _write_bounds(h):
    """Helpers for where a write's LSNs can lie: (a) the highest version
    acknowledged before a time, (b) the lowest first LSN of acknowledged
    writes sent after a time."""
    acked = [o for o in h["ops"] if o["t"] == "w" and o.get("version")
             is not None and o.get("written")]
    by_cmp = sorted((o["cmp"], o["version"]) for o in acked)
    cmps = [c for c, _ in by_cmp]
    pmax, m = [], 0
    for _, v in by_cmp:
        m = max(m, v)
        pmax.append(m)
    by_inv = sorted((o["inv"], o["version"] - o["written"] + 1)
                    for o in acked)
    invs = [t for t, _ in by_inv]
    smin = [float("inf")] * (len(by_inv) + 1)
    for i in range(len(by_inv) - 1, -1, -1):
        smin[i] = min(by_inv[i][1], smin[i + 1])

    def below(t):
        i = bisect.bisect_left(cmps, t)
        return pmax[i - 1] if i else 0

    def above(t):
        return smin[bisect.bisect_right(invs, t)]
    return below, above


def _delete_context(h):
    bounds = _write_bounds(h)
    claimed = collections.defaultdict(set)
    maybe = collections.defaultdict(list)
    for w in h["ops"]:
        if w["t"] == "w" and w["kind"] == "delete":
            if w.get("version") is not None and w.get("written"):
                claimed[w["keys"][0]].add(w["version"])
            elif w["res"] == "none":
                maybe[w["keys"][0]].append(w)
    return {"bounds": bounds, "claimed": claimed, "maybe": maybe}


def _check_refused_delete(h, L, o, out, ctx):
    """A refused delete of k changed nothing: no delete of k lies in the log
    between the LSNs acknowledged before it began and those of writes sent
    after it ended, unless another delete of k explains it (acknowledged at
    that LSN, or unanswered, so possibly committed)."""
    below, above = ctx["bounds"]
    key = o["keys"][0]
    lo, hi = below(o["inv"]), above(o["cmp"])
    if key not in L.per_key:
        return
    lsns, uids = L.per_key[key]
    i = bisect.bisect_right(lsns, lo)
    while i < len(lsns) and lsns[i] < hi:
        if uids[i] is None and lsns[i] not in ctx["claimed"][key] and \
                not any(w["inv"] < o["cmp"] + 30 for w in ctx["maybe"][key]):
            out.append(Violation(
                "refused-committed",
                "delete of %s refused with %s (%s), yet the leader's log "
                "holds a delete of %s at LSN %d, between %d (acknowledged "
                "before it) and %s (sent after it), that no other delete "
                "explains" % (key, o["code_name"], o.get("message", ""), key,
                              lsns[i], lo, hi), [o], ["leader"]))
            return
        i += 1


def _leader_branches(events):
    """Leader starts after the first, as (time, version at start)."""
    opens = sorted((e["time"], e["version"]) for e in events
                   if e["kind"] == "leader_open")
    return opens[1:]


def _branch_points(o, branches, starts):
    """When a replica read may reflect a log branch the leader lost, the
    versions where that branch may have left the leader's log: the replica
    started over (told it diverged, or wiped) at td, after the read began,
    and the leader restarted at version H < the read's version between the
    replica's previous start-over and td. Empty when the read cannot be on
    a lost branch (always so on the leader)."""
    if o["node"] == "leader":
        return []
    ds = starts.get(o["node"], [])
    i = bisect.bisect_left(ds, o["inv"])
    if i == len(ds):
        return []
    td, prev = ds[i], (ds[i - 1] if i else 0.0)
    return sorted({head for t_open, head in branches
                   if prev < t_open <= td and head < o["version"]})


def hits_of(o):
    """A read's hits as (id, write id) pairs, in answer order."""
    hs = o["hits"]
    return list(hs.items()) if isinstance(hs, dict) else \
        [tuple(x) for x in hs]


def _check_reads(h, L, out):
    """Each read against the log's state at its version. A difference is
    filed as a phantom only when a lost write explains it, on a replica that
    was on a lost log branch (the leader restarted at H below the read's
    version and the replica then started over): a write id the final log
    lacks, a document as the log had it at H, or a document absent because
    a delete that never got an answer may have been on the lost branch.
    Everything else (a document outside the filter, returned twice, deleted,
    superseded, missing, or unknown on a node that was on no lost branch)
    is a wrong-state violation."""
    branches = _leader_branches(h["events"])
    starts = _excuses(h["events"])
    unanswered_deletes = collections.defaultdict(list)
    for w in h["ops"]:
        if w["t"] == "w" and w["kind"] == "delete" and w["res"] == "none":
            unanswered_deletes[w["keys"][0]].append(w["inv"])
    bkeys = {b: set(keys) for b, keys in h["buckets"].items()}
    shown = collections.Counter()
    for o in h["ops"]:
        if o["t"] != "r" or o["code"] is not None:
            continue
        V = o["version"]
        wrong, lost = [], []
        hits = {}
        for key, uid in hits_of(o):
            if key not in bkeys[o["bucket"]]:
                wrong.append("%s is outside the filtered bucket %s" %
                             (key, o["bucket"]))
            if key in hits:
                wrong.append("%s returned twice (%s and %s)" %
                             (key, hits[key], uid))
            hits[key] = uid
        bps = None
        unknown = []
        stale = []  # (key, got, message) differing from the log at V
        for key in sorted(bkeys[o["bucket"]] | set(hits)):
            lsn, want = L.at(key, V)
            got = hits.get(key)
            if got == want:
                continue
            if got is not None and got not in L.uid_lsn:
                unknown.append("%s=%s is not in the leader's final log"
                               % (key, got))
                continue
            if got is None:
                msg = "%s missing: written at LSN %d (%s) <= %d" % (
                    key, lsn, want, V)
            elif L.uid_lsn[got] > V:
                msg = "%s=%s is from LSN %d, after the read's version %d" % (
                    key, got, L.uid_lsn[got], V)
            elif want is None:
                msg = "%s=%s (LSN %d) returned although %s at LSN %d <= %d" \
                    % (key, got, L.uid_lsn[got],
                       "deleted" if lsn else "never written", lsn, V)
            else:
                msg = "%s=%s (LSN %d) is stale: %s at LSN %d <= %d" % (
                    key, got, L.uid_lsn[got], want, lsn, V)
            stale.append((key, got, msg))
        if unknown or stale:
            bps = _branch_points(o, branches, starts)
        if unknown:
            if bps:
                lost.extend(unknown)
            else:
                wrong.extend(m + " and this node was on no lost log branch"
                             for m in unknown)
        if stale:
            # Explained only if one branch point explains every difference.
            def explained(key, got, H):
                at_h = L.at(key, H)[1]
                if got == at_h:
                    return True
                return got is None and any(
                    t < o["cmp"] for t in unanswered_deletes.get(key, ()))
            branch = None
            for H in bps:
                if all(explained(key, got, H) for key, got, _ in stale):
                    branch = H
                    break
            if branch is None:
                wrong.extend(m for _, _, m in stale)
            else:
                lost.extend(m + " (as at LSN %d, where the replica's branch "
                            "left the leader's log)" % branch
                            for _, _, m in stale)
        if not wrong and not lost:
            continue
        kind = "wrong-state" if wrong else "phantom"
        problems = wrong + lost
        shown[kind] += 1  # the slice of history only for the first few
        out.append(Violation(kind, "read of bucket %s on %s at version %d: "
                             % (o["bucket"], o["node"], V)
                             + "; ".join(problems[:4]),
                             [o] + (_writers_of(h, L, o, problems)
                                    if shown[kind] <= 5 else []),
                             [o["node"], "leader"]))


def _writers_of(h, L, o, problems):
    """The write operations behind a read's problems (the minimal slice of
    history that shows them): the writes of every uid a problem names, and
    for the keys named, the acknowledged writes closest before the read."""
    text = " ".join(problems)
    words = set(text.replace(";", " ").replace("=", " ").replace(":", " ")
                .replace("(", " ").split())
    res = [w for w in h["ops"] if w["t"] == "w" and
           words.intersection(w["uids"])]
    keys = {p.split("=")[0].split(" ")[0] for p in problems}
    near = [w for w in h["ops"] if w["t"] == "w" and w not in res and
            keys.intersection(w["keys"]) and w["inv"] <= o["cmp"] and
            w["code"] is None]
    near.sort(key=lambda w: w["inv"])
    return res + near[-3:]


def _check_freshness(h, out):
    excuses = _excuses(h["events"])
    acked = [o for o in h["ops"] if o["t"] == "w" and o["code"] is None
             and o.get("version") is not None]
    # For max_lag_ms: earliest acknowledgement among writes above a version.
    by_version = sorted(acked, key=lambda o: o["version"])
    versions = [o["version"] for o in by_version]
    suffix_min = [0.0] * (len(by_version) + 1)
    suffix_min[-1] = float("inf")
    suffix_op = [None] * (len(by_version) + 1)
    for i in range(len(by_version) - 1, -1, -1):
        if by_version[i]["cmp"] < suffix_min[i + 1]:
            suffix_min[i] = by_version[i]["cmp"]
            suffix_op[i] = by_version[i]
        else:
            suffix_min[i] = suffix_min[i + 1]
            suffix_op[i] = suffix_op[i + 1]
    acked_by_cmp = sorted((o["cmp"], o["version"]) for o in acked)
    cmps = [c for c, _ in acked_by_cmp]
    prefix_max = []
    m = 0
    for _, v in acked_by_cmp:
        m = max(m, v)
        prefix_max.append(m)
    branches = _leader_branches(h["events"])
    all_acked = sorted((o["cmp"], o["version"], i) for i, o in
                       enumerate(h["ops"]) if o["t"] == "w" and
                       o["code"] is None and o.get("written") and
                       o["mode"] == "all")
    all_cmps = [c for c, _, _ in all_acked]
    all_pmax, best = [], None
    for c, v, i in all_acked:
        if best is None or v > best[0]:
            best = (v, i)
        all_pmax.append(best)
    inside = set()  # versions strictly inside a multi-document request
    for o in acked:
        if o["kind"] == "upsert" and o.get("written", 0) > 1:
            inside.update(range(o["version"] - o["written"] + 1,
                                o["version"]))
    for o in h["ops"]:
        if o["t"] != "r":
            continue
        if o["code"] is None:
            V = o["version"]
            if V in inside and not _branch_points(o, branches, excuses):
                out.append(Violation(
                    "partial-write", "%s answered at version %d, inside a "
                    "multi-document request" % (o["node"], V), [o],
                    [o["node"]]))
            i = bisect.bisect_left(cmps, o["inv"])
            if o["node"] == "leader" and i and V < prefix_max[i - 1]:
                out.append(Violation(
                    "leader-stale", "leader answered at version %d after "
                    "acknowledging version %d" % (V, prefix_max[i - 1]),
                    [o], ["leader"]))
            i = bisect.bisect_left(all_cmps, o["inv"])
            if o["node"] != "leader" and i and V < all_pmax[i - 1][0]:
                w = h["ops"][all_pmax[i - 1][1]]
                if not _excused(excuses, o["node"], w["inv"], o["cmp"]) \
                        and not o.get("after_all"):
                    out.append(Violation(
                        "all-not-visible", "replica %s answered at version "
                        "%d after an `all` write was acknowledged at %d" % (
                            o["node"], V, w["version"]),
                        [w, o], [o["node"], "leader"]))
            if o.get("min_version") and V < o["min_version"]:
                out.append(Violation(
                    "min-version", "read on %s with min_version %d answered "
                    "at version %d" % (o["node"], o["min_version"], V),
                    [o], [o["node"]]))
            if o.get("after_all") and V < o["after_all"] and \
                    not _excused(excuses, o["node"], o["after_all_inv"],
                                 o["cmp"]):
                out.append(Violation(
                    "all-not-visible", "replica %s answered at version %d "
                    "right after an `all` write was acknowledged at %d" % (
                        o["node"], V, o["after_all"]),
                    [o], [o["node"], "leader"]))
            if o.get("max_lag_ms"):
                i = bisect.bisect_right(versions, V)
                if suffix_op[i] is not None:
                    lb_ms = (o["inv"] - suffix_min[i]) * 1000.0
                    if lb_ms > o["max_lag_ms"] + MAX_LAG_TOLERANCE_MS:
                        w = suffix_op[i]
                        out.append(Violation(
                            "max-lag", "read on %s with max_lag_ms %d "
                            "answered at version %d (reporting lag_ms %d), "
                            "but LSN %d was acknowledged %.0f ms before the "
                            "read began" % (o["node"], o["max_lag_ms"], V,
                                            o["lag_ms"], w["version"], lb_ms),
                            [w, o], [o["node"], "leader"]))
        elif o["node"] == "leader" and o.get("min_version") and \
                o["code_name"] == "KB_ESTALE":
            i = bisect.bisect_left(cmps, o["inv"])
            if i > 0 and prefix_max[i - 1] >= o["min_version"]:
                out.append(Violation(
                    "leader-refused-acked", "leader refused min_version %d "
                    "(%s) after acknowledging version %d" % (
                        o["min_version"], o.get("message", ""),
                        prefix_max[i - 1]), [o], ["leader"]))


def _check_monotonic(h, out):
    excuses = _excuses(h["events"])
    per_node = collections.defaultdict(list)
    for o in h["ops"]:
        if o["t"] == "r" and o["code"] is None:
            per_node[o["node"]].append(o)
    for node, ops in per_node.items():
        ops.sort(key=lambda o: o["inv"])
        by_cmp = sorted(ops, key=lambda o: o["cmp"])
        j = 0
        best = None  # the highest-version op completed before the current
        for o in ops:
            while j < len(by_cmp) and by_cmp[j]["cmp"] < o["inv"]:
                a = by_cmp[j]
                if best is None or a["version"] > best["version"]:
                    best = a
                j += 1
            if best is None or o["version"] >= best["version"]:
                continue
            # A start-over anywhere between the two (log times are cut to
            # the millisecond) excuses it.
            if _excused(excuses, node, best["inv"] - 0.002, o["cmp"] + 0.002):
                best = None
                continue
            out.append(Violation(
                "version-backwards", "%s answered at version %d after "
                "answering at %d" % (node, o["version"], best["version"]),
                [best, o], [node]))
            best = None


def _check_final(h, L, out):
    head = h["head"]
    final = h["final"]
    for node, ok in sorted(h.get("converged", {}).items()):
        if not ok:
            out.append(Violation(
                "not-converged", "%s did not reach the leader's version %d "
                "after the faults were healed (it reports %s)" % (
                    node, head, final.get(node, {}).get("version")),
                nodes=[node, "leader"], t0=h.get("end"), t1=h.get("end")))
    want = {}
    for key in L.per_key:
        lsn, uid = L.at(key, head)
        if uid is not None:
            want[key] = uid
    for node, snap in sorted(final.items()):
        docs = snap["docs"]
        diff = []
        for key in snap.get("dups", []):
            diff.append("%s returned twice" % key)
        if snap.get("version") != head:
            diff.append("version %s, leader's head %d" % (snap.get("version"),
                                                         head))
        for key in sorted(set(want) | set(docs)):
            got = docs.get(key)
            if got is None or want.get(key) != got[0]:
                diff.append("%s: log %s, node %s" % (
                    key, want.get(key), got[0] if got else None))
            elif got[1] != got[0] or json.loads(got[2])["uid"] != got[0]:
                diff.append("%s: text or metadata differ from the write %s"
                            % (key, got[0]))
        lead = final.get("leader", {}).get("docs", {})
        if node != "leader":
            for key, got in docs.items():
                if key in lead and abs(lead[key][3] - got[3]) > 1e-4:
                    diff.append("%s: score %.6f, leader %.6f" % (
                        key, got[3], lead[key][3]))
        if diff:
            out.append(Violation(
                "not-converged", "%s at version %s holds documents other than "
                "the leader's log at %d (%d differ): %s" % (
                    node, snap["version"], head, len(diff),
                    "; ".join(diff[:5])),
                nodes=[node, "leader"], t0=h.get("end"), t1=h.get("end")))


def _check_crashes(h, out):
    for e in h["events"]:
        if e["kind"] == "crash":
            out.append(Violation(
                "node-crashed", "%s exited by itself with status %s" % (
                    e["node"], e.get("code")), nodes=[e["node"]],
                t0=e["time"] - 2, t1=e["time"]))


def check(h):
    L = _Log(h["log"])
    out = []
    _check_crashes(h, out)
    _check_writes(h, L, out)
    _check_reads(h, L, out)
    _check_freshness(h, out)
    _check_monotonic(h, out)
    if "final" in h:
        _check_final(h, L, out)
    return out


def max_lag_excess(h):
    """Over the answered max_lag_ms reads: the largest amount (ms) by which
    the lag proven by acknowledged later writes exceeded the bound, and the
    number of reads checked (negative: always within the bound)."""
    acked = sorted(((o["version"], o["cmp"]) for o in h["ops"]
                    if o["t"] == "w" and o["code"] is None
                    and o.get("version") is not None))
    versions = [v for v, _ in acked]
    suffix = [float("inf")] * (len(acked) + 1)
    for i in range(len(acked) - 1, -1, -1):
        suffix[i] = min(acked[i][1], suffix[i + 1])
    worst, n = None, 0
    for o in h["ops"]:
        if o["t"] == "r" and o["code"] is None and o.get("max_lag_ms"):
            n += 1
            t = suffix[bisect.bisect_right(versions, o["version"])]
            if t != float("inf"):
                ex = (o["inv"] - t) * 1000.0 - o["max_lag_ms"]
                worst = ex if worst is None else max(worst, ex)
    return worst, n


def main(argv):
    """checker.py HISTORY.json[.gz]: checks a saved history again."""
    import gzip
    import sys
    opener = gzip.open if argv[1].endswith(".gz") else open
    with opener(argv[1], "rt") as f:
        h = json.load(f)
    h["log"] = {int(k): tuple(v) for k, v in h["log"].items()}
    vs = check(h)
    counts = collections.Counter(v.kind for v in vs)
    for v in vs[:20]:
        print("%s%s: %s" % (v.kind, " (known)" if v.known else "",
                            v.message))
    print("violations: " + (", ".join("%s %d" % kv for kv in
                                      sorted(counts.items())) or "none"))
    worst, n = max_lag_excess(h)
    if worst is not None:
        print("max_lag_ms reads: %d; largest proven lag over the bound: "
              "%.0f ms" % (n, worst))
    return 1 if any(not v.known for v in vs) else 0


if __name__ == "__main__":
    import sys
    sys.exit(main(sys.argv))
