"""What kbsync.Client returns: plain Python objects built from the node's
protobuf answers (schemas/kbsync.proto), so callers never handle protobuf
messages. Enum values become lower-case names ("all", "searchable",
"strong"); uint64 stay ints.
"""
import json
from types import SimpleNamespace

from ._pb import pb

MODE_NAMES = {pb.WRITE_MODE_DEFAULT: "default", pb.WRITE_MODE_ASYNC: "async",
              pb.WRITE_MODE_ALL: "all", pb.WRITE_MODE_QUORUM: "quorum",
              pb.WRITE_MODE_MAJORITY: "majority"}
STAGE_NAMES = {pb.STAGE_NONE: "none", pb.STAGE_RECEIVED: "received",
               pb.STAGE_DURABLE: "durable",
               pb.STAGE_SEARCHABLE: "searchable"}
LEVEL_NAMES = {pb.READ_DEFAULT: "default", pb.READ_EVENTUAL: "eventual",
               pb.READ_BOUNDED: "bounded", pb.READ_SESSION: "session",
               pb.READ_STRONG: "strong"}


class Record(SimpleNamespace):
    """A message as attributes (every field of the schema, defaults
    included); as_dict() gives nested plain dicts and lists."""

    def as_dict(self):
        def conv(v):
            if isinstance(v, Record):
                return v.as_dict()
            if isinstance(v, list):
                return [conv(x) for x in v]
            return v
        return {k: conv(v) for k, v in vars(self).items()}


def record(msg):
    """Any message without enums (NodeState, ReplicaState, VerifyResult,
    ...) as a Record, field by field from its descriptor."""
    out = {}
    for f in msg.DESCRIPTOR.fields:
        v = getattr(msg, f.name)
        if f.message_type is not None:
            if f.label == f.LABEL_REPEATED:
                v = [record(x) for x in v]
            else:
                v = record(v) if msg.HasField(f.name) else None
        elif f.label == f.LABEL_REPEATED:
            v = list(v)
        out[f.name] = v
    return Record(**out)


class Receipt(Record):
    """How far a write had got on one named replica when the answer was
    sent: stage is "none", "received", "durable" or "searchable"."""


class WriteResult(Record):
    """The answer to an upsert or delete.

    version        LSN of the request's last record (pass it as
                   min_version, or as if_version of the next write)
    first_version  LSN of its first record (0: none, e.g. all ids missing)
    written        documents upserted or deleted
    missing        delete: ids that did not exist
    mode, quorum   the mode applied ("async", "all", "quorum", "majority")
                   and how many named replicas it waited for
    retried        answered from the leader's idempotency table: the write
                   was committed by an earlier attempt, nothing new written
    receipts       one Receipt per named replica
    endpoint       the leader that answered
    """


def write_result(w, endpoint):
    return WriteResult(
        version=w.version, first_version=w.first_version, written=w.written,
        missing=w.missing, mode=MODE_NAMES.get(w.mode, str(w.mode)),
        quorum=w.quorum, retried=w.retried, endpoint=endpoint,
        receipts=[Receipt(replica_id=r.replica_id,
                          stage=STAGE_NAMES.get(r.stage, str(r.stage)),
                          connected=r.connected, received_lsn=r.received_lsn,
                          durable_lsn=r.durable_lsn,
                          applied_lsn=r.applied_lsn) for r in w.receipts])


class Hit:
    """One search hit: id, score, text, version (the LSN that wrote this
    version of the document: what if_version takes), metadata (the
    document's metadata as a dict, parsed on first access) and
    metadata_json (as stored)."""

    __slots__ = ("id", "score", "text", "metadata_json", "version", "_meta")

    def __init__(self, id, score, text, metadata_json, version):
        self.id = id
        self.score = score
        self.text = text
        self.metadata_json = metadata_json
        self.version = version
        self._meta = None

    @property
    def metadata(self):
        if self._meta is None:
            self._meta = json.loads(self.metadata_json) \
                if self.metadata_json else {}
        return self._meta

    def __repr__(self):
        return "Hit(id=%r, score=%.4f, version=%d)" % (self.id, self.score,
                                                      self.version)


class QueryResult:
    """A query answer: the hits, best first, and the one version they
    reflect with its staleness (docs/CONSISTENCY.md, "Staleness").

    hits            list of Hit (also: iterate, len(), result[i])
    version         the node's version the search ran against
    leader_version  the newest leader version that node knew of
    lag_ops, lag_ms how far behind the leader it was
    level           the read level satisfied: "eventual", "bounded",
                    "session" or "strong"
    read_index      strong reads: the leader LSN waited for
    node_id         the node that answered, endpoint its address
    fallback        True when a replica refused (or did not answer) and
                    the leader answered instead
    state           the full NodeState (a Record), built on first access
    """

    __slots__ = ("hits", "version", "leader_version", "lag_ops", "lag_ms",
                 "level", "read_index", "node_id", "endpoint", "fallback",
                 "_state_msg", "_state")

    def __init__(self, q, endpoint, fallback):
        s = q.state
        self.hits = [Hit(h.id, h.score, h.text, h.metadata_json, h.version)
                     for h in q.hits]
        self.version = s.version
        self.leader_version = s.leader_version
        self.lag_ops = s.lag_ops
        self.lag_ms = s.lag_ms
        self.level = LEVEL_NAMES.get(q.level, str(q.level))
        self.read_index = q.read_index
        self.node_id = s.node_id
        self.endpoint = endpoint
        self.fallback = fallback
        self._state_msg = s
        self._state = None

    @property
    def state(self):
        if self._state is None:
            self._state = record(self._state_msg)
        return self._state

    def __iter__(self):
        return iter(self.hits)

    def __len__(self):
        return len(self.hits)

    def __getitem__(self, i):
        return self.hits[i]

    def __repr__(self):
        return ("QueryResult(%d hits, version=%d, lag_ops=%d, lag_ms=%d, "
                "level=%r, node=%r%s)" % (len(self.hits), self.version,
                                           self.lag_ops, self.lag_ms,
                                           self.level, self.node_id,
                                           ", fallback" if self.fallback
                                           else ""))


class ListEntry(Record):
    """id, version (LSN that wrote it) and meta_value (the meta_key's value
    as minified JSON text, "" when absent)."""


class ListResult(Record):
    """entries (list of ListEntry, by id), more (ids with the prefix follow
    the last entry), version (the leader's version the page was read at)."""


def list_result(r):
    return ListResult(entries=[ListEntry(id=e.id, version=e.version,
                                         meta_value=e.meta_value)
                               for e in r.entries],
                      more=r.more, version=r.version)


class BulkResult(Record):
    """upsert_many's answer: written (documents), version (the highest LSN
    written), batches (requests sent), retried (batches answered from the
    idempotency table after a resend) and results (one WriteResult per
    batch written, in order; its `batch` is the batch's index)."""
