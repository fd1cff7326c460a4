"""Typed exceptions for kbsync error codes: one class per KB_E* code of the
table in docs/PROTOCOL.md ("Errors") and common/include/kb_err.h, all derived from
KbsyncError.

An error answer means the request failed and changed nothing, unless the
exception carries a WriteResult (`exc.write` is not None, `exc.committed`
is True): then the write IS committed on the leader and the error says what
it did not get (KB_ETIMEOUT for an all/quorum/majority write not confirmed
in time, KB_EUNAVAIL for one still waiting when the leader shut down).

Bad arguments caught before anything is sent raise the built-in TypeError or
ValueError instead, never a KbsyncError.
"""


class KbsyncError(Exception):
    """A request refused by a node (or not answered: TimedOutError).

    Attributes:
      code      negative kbsync code, e.g. -1015
      name      its name, e.g. "KB_ESTALE"
      message   the node's reason (or the client's, for a client-side
                timeout)
      endpoint  the node that answered (or did not), None if unknown
      write     the WriteResult that came with the error, or None
      state     the NodeState that came with the error, or None
    """

    code = 0
    name = "KB_E?"

    def __init__(self, message, *, code=None, endpoint=None, write=None,
                 state=None):
        if code is not None:
            self.code = code
            self.name = CODE_NAMES.get(code, "code %d" % code)
        self.message = message
        self.endpoint = endpoint
        self.write = write
        self.state = state
        where = " from %s" % endpoint if endpoint else ""
        super().__init__("%s (%d)%s: %s" % (self.name, self.code, where,
                                             message))

    @property
    def committed(self):
        """True when the write is committed on the leader despite the error
        (the answer carried a WriteResult)."""
        return self.write is not None


class InvalidArgumentError(KbsyncError):
    """Invalid argument judged by the node (k, filters, a quorum the named
    replicas cannot give, a client_seq reused for other content, a text with
    no words, a read level its fields contradict, ...)."""
    code, name = -1000, "KB_EINVAL"


class DimensionError(KbsyncError):
    """Embedding or query vector of the wrong dimension."""
    code, name = -1001, "KB_EDIM"


class NonFiniteError(KbsyncError):
    """NaN or infinite value, or a squared L2 norm above FLT_MAX / 4."""
    code, name = -1002, "KB_ENONFINITE"


class BadIdError(KbsyncError):
    """Empty id, id over 256 bytes, or a control character in an upsert."""
    code, name = -1003, "KB_EBADID"


class BadJsonError(KbsyncError):
    """Metadata that is not one JSON object."""
    code, name = -1004, "KB_EBADJSON"


class BadMessageError(KbsyncError):
    """Undecodable or truncated message, or no/unknown body."""
    code, name = -1005, "KB_EBADMSG"


class TooBigError(KbsyncError):
    """Request above --max-msg-mb, text above 1 MiB, metadata above 64 KiB."""
    code, name = -1006, "KB_ETOOBIG"


class ProtocolError(KbsyncError):
    """protocol_version 0 or newer than the node's."""
    code, name = -1007, "KB_EPROTO"


class MismatchError(KbsyncError):
    """Settings differ from the stored knowledge base."""
    code, name = -1008, "KB_EMISMATCH"


class StoreError(KbsyncError):
    """LMDB error (disk full, map full, I/O), or a leader turned read-only."""
    code, name = -1009, "KB_ESTORE"


class IndexFailureError(KbsyncError):
    """FAISS error."""
    code, name = -1010, "KB_EINDEX"


class NetworkError(KbsyncError, ConnectionError):
    """ZeroMQ error."""
    code, name = -1011, "KB_ENET"


class TimedOutError(KbsyncError, TimeoutError):
    """No answer in time (client side: `write` is None and the outcome of a
    write is unknown, unless it was idempotent and retried), or an all,
    quorum or majority write not confirmed by enough named replicas in time
    (`write` is the committed WriteResult with its receipts)."""
    code, name = -1012, "KB_ETIMEOUT"


class NotLeaderError(KbsyncError):
    """A write or list sent to a node that is not the leader."""
    code, name = -1013, "KB_ENOTLEADER"


class NoReplicaError(KbsyncError):
    """Fewer named replicas connected than the write mode needs; nothing was
    written."""
    code, name = -1014, "KB_ENOREPLICA"


class StaleError(KbsyncError):
    """The node cannot meet the requested freshness (session wait over,
    bounded lag above the bound, strong read without the leader)."""
    code, name = -1015, "KB_ESTALE"


class CorruptError(KbsyncError):
    """Stored data cannot be decoded."""
    code, name = -1016, "KB_ECORRUPT"


class GapError(KbsyncError):
    """Replication log gap, duplicate or reordering."""
    code, name = -1017, "KB_EGAP"


class UnavailableError(KbsyncError):
    """Node unavailable: a replica loading a snapshot or without leader
    contact yet, a node shutting down (with `write` set: an all/quorum write
    committed on the leader that was still waiting)."""
    code, name = -1018, "KB_EUNAVAIL"


class OutOfMemoryError(KbsyncError):
    """Out of memory on the node."""
    code, name = -1019, "KB_ENOMEM"


class AccessDeniedError(KbsyncError):
    """With CURVE keys: the request is not allowed for the key's role."""
    code, name = -1020, "KB_EACCES"


class ConflictError(KbsyncError):
    """A conditional write (if_version) found another version, or a document
    that had to be absent; nothing of the request was written."""
    code, name = -1021, "KB_ECONFLICT"


ERRORS = {cls.code: cls for cls in (
    InvalidArgumentError, DimensionError, NonFiniteError, BadIdError,
    BadJsonError, BadMessageError, TooBigError, ProtocolError, MismatchError,
    StoreError, IndexFailureError, NetworkError, TimedOutError,
    NotLeaderError, NoReplicaError, StaleError, CorruptError, GapError,
    UnavailableError, OutOfMemoryError, AccessDeniedError, ConflictError)}
CODE_NAMES = {code: cls.name for code, cls in ERRORS.items()}


def from_code(code, message, **kw):
    """The exception for an error answer: its class for a known code, else
    a KbsyncError carrying the code."""
    cls = ERRORS.get(code)
    if cls is None:
        return KbsyncError(message, code=code, **kw)
    return cls(message, **kw)


__all__ = ["KbsyncError", "ERRORS", "CODE_NAMES", "from_code"] + [
    cls.__name__ for cls in ERRORS.values()]
