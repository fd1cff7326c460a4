"""Argument checks and request encoding for kbsync.Client: every public
call's arguments are checked here, before anything is sent, and turned into
protobuf fields. Wrong types raise TypeError, wrong values ValueError.

What is checked here is what the protocol fixes (docs/PROTOCOL.md,
"Limits"): types, NaN/inf, k 1..1000, ids 1..256 bytes without NUL, mode
and read-level strings, at most 16 filters. What depends on the knowledge
base (dim, metric, quorum vs named replicas, control characters in ids,
JSON validity of a metadata string) is left to the node, which answers with
a typed error (kbsync.errors).

Vectors are packed once into little-endian float32 bytes and merged into
the message as a packed field: about 4x cheaper than extending the repeated
field value by value (clients/python/README.md, "Performance").
"""
import array
import json
import math
import numbers
import sys
from collections.abc import Mapping

from ._pb import pb

WRITE_MODES = {
    "default": pb.WRITE_MODE_DEFAULT,
    "async": pb.WRITE_MODE_ASYNC,
    "all": pb.WRITE_MODE_ALL,
    "majority": pb.WRITE_MODE_MAJORITY,
}
READ_LEVELS = ("eventual", "bounded:MS", "session", "session:VERSION",
               "strong")
MAX_K = 1000
MAX_FILTERS = 16
MAX_ID_BYTES = 256
MAX_WAIT_MS = 60000
U32 = 0xFFFFFFFF
U64 = 0xFFFFFFFFFFFFFFFF

# Packed repeated float fields: (field number << 3) | wire type 2.
TAG_DOC_EMBEDDING = b"\x1a"    # Doc.embedding = 3
TAG_QUERY_VECTOR = b"\x12"     # QueryRequest.vector = 2


def uint(name, v, lo=0, hi=U64):
    """v as an int in lo..hi (bool and float refused)."""
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError("%s must be an int, not %s" % (name,
                                                       type(v).__name__))
    v = int(v)
    if not lo <= v <= hi:
        raise ValueError("%s must be in %d..%d, got %d" % (name, lo, hi, v))
    return v


def opt_uint(name, v, lo=0, hi=U64):
    return None if v is None else uint(name, v, lo, hi)


def string(name, v, *, allow_none=False):
    if v is None and allow_none:
        return None
    if not isinstance(v, str):
        raise TypeError("%s must be a str, not %s" % (name, type(v).__name__))
    return v


def doc_id(name, v):
    """A document id: str, 1..256 bytes of UTF-8, no NUL (the node also
    refuses control characters in upserted ids, KB_EBADID)."""
    string(name, v)
    try:
        n = len(v.encode("utf-8"))
    except UnicodeEncodeError as e:
        raise ValueError("%s is not valid UTF-8: %s" % (name, e)) from None
    if n == 0 or n > MAX_ID_BYTES:
        raise ValueError("%s must be 1..%d bytes of UTF-8, got %d bytes"
                         % (name, MAX_ID_BYTES, n))
    if "\0" in v:
        raise ValueError("%s holds a NUL byte" % name)
    return v


def _varint(n):
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def vector_bytes(name, v):
    """A sequence of finite numbers (list, tuple, array('f'/'d'), any 1-d
    buffer such as a numpy array) as little-endian float32 bytes."""
    if v is None or isinstance(v, (str, bytes, bytearray, Mapping)):
        raise TypeError("%s must be a sequence of numbers, not %s"
                        % (name, type(v).__name__))
    a = None
    if isinstance(v, array.array) and v.typecode == "f":
        a = v
    else:
        try:
            mv = memoryview(v)
        except TypeError:
            mv = None
        if mv is not None:
            if mv.ndim != 1:
                raise ValueError("%s must be 1-dimensional, has %d dimensions"
                                 % (name, mv.ndim))
            if mv.format in ("f", "<f", "=f") and mv.itemsize == 4:
                a = array.array("f")
                a.frombytes(mv.tobytes())
            else:
                v = mv.tolist()
        if a is None:
            try:
                a = array.array("f", v)
            except TypeError as e:
                raise TypeError("%s must be a sequence of numbers: %s"
                                % (name, e)) from None
    if len(a) == 0:
        raise ValueError("%s is empty" % name)
    # One C-level pass: a NaN or infinity anywhere makes the sum non-finite,
    # and float32 values cannot overflow a double sum. Values beyond float32
    # became infinities in the conversion.
    if not math.isfinite(sum(a)):
        for i, x in enumerate(a):
            if not math.isfinite(x):
                raise ValueError("%s[%d] is %r (must be finite and within "
                                 "float32)" % (name, i, x))
    if sys.byteorder != "little":
        a = array.array("f", a)
        a.byteswap()
    return a.tobytes()


def merge_packed(msg, tag, data):
    """Appends a packed float field to msg from its raw bytes."""
    msg.MergeFromString(tag + _varint(len(data)) + data)


def metadata_json(name, v):
    """None -> "", a mapping -> compact JSON, a str -> as given (the node
    checks it is one JSON object: KB_EBADJSON)."""
    if v is None:
        return ""
    if isinstance(v, str):
        return v
    if not isinstance(v, Mapping):
        raise TypeError("%s must be a dict or a JSON string, not %s"
                        % (name, type(v).__name__))
    try:
        return json.dumps(v, ensure_ascii=False, allow_nan=False,
                          separators=(",", ":"))
    except (TypeError, ValueError) as e:
        raise type(e)("%s is not JSON-serializable: %s" % (name, e)) from None


def write_mode(v):
    """"async" | "all" | "majority" | "quorum:K" | "default" ->
    (WriteMode, quorum)."""
    if not isinstance(v, str):
        raise TypeError("mode must be a str such as 'async', 'all', "
                        "'majority' or 'quorum:2', not %s" % type(v).__name__)
    if v in WRITE_MODES:
        return WRITE_MODES[v], 0
    if v.startswith("quorum:"):
        k = v[7:]
        if k.isdigit() and 1 <= int(k) <= U32:
            return pb.WRITE_MODE_QUORUM, int(k)
    raise ValueError("unknown write mode %r: use async, all, majority, "
                     "quorum:K (K >= 1) or default" % (v,))


def read_level(v):
    """"eventual" | "bounded:MS" | "session" | "session:V" | "strong" ->
    (level name, number or None). "session" alone means the client's last
    write version."""
    if not isinstance(v, str):
        raise TypeError("consistency must be a str (%s), not %s"
                        % (", ".join(READ_LEVELS), type(v).__name__))
    if v in ("eventual", "strong", "session"):
        return v, None
    for lvl in ("bounded", "session"):
        if v.startswith(lvl + ":"):
            n = v[len(lvl) + 1:]
            if n.isdigit() and int(n) <= U64 and (lvl == "bounded" or
                                                  int(n) >= 1):
                return lvl, int(n)
    raise ValueError("unknown consistency %r: use %s" %
                     (v, ", ".join(READ_LEVELS)))


def filter_value(name, v):
    """A filter value as the node compares it: strings as they are; true,
    false and numbers as written in the document's JSON."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return v
    if isinstance(v, numbers.Integral):
        return str(int(v))
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError("%s is %r" % (name, v))
        return repr(v)
    raise TypeError("%s must be a str, int, float or bool, not %s"
                    % (name, type(v).__name__))


def filters(v):
    """A dict {key: value} or a sequence of (key, value) pairs -> list of
    (key, value text)."""
    if v is None:
        return []
    if isinstance(v, Mapping):
        items = list(v.items())
    elif isinstance(v, (str, bytes)):
        raise TypeError("filters must be a dict or (key, value) pairs")
    else:
        try:
            items = [tuple(p) for p in v]
        except TypeError:
            raise TypeError("filters must be a dict or (key, value) pairs, "
                            "not %s" % type(v).__name__) from None
    if len(items) > MAX_FILTERS:
        raise ValueError("at most %d filters, got %d" % (MAX_FILTERS,
                                                          len(items)))
    out = []
    for i, p in enumerate(items):
        if len(p) != 2:
            raise ValueError("filters[%d] must be a (key, value) pair" % i)
        key = string("filters[%d] key" % i, p[0])
        nk = len(key.encode("utf-8"))
        if not 1 <= nk <= 256:
            raise ValueError("filters[%d] key must be 1..256 bytes" % i)
        val = filter_value("filters[%r]" % key, p[1])
        if len(val.encode("utf-8")) > 1024:
            raise ValueError("filters[%r] value is over 1024 bytes" % key)
        out.append((key, val))
    return out


def fill_doc(d, doc, i):
    """Fills pb Doc d from a mapping {id, text, embedding, metadata,
    if_version}. Returns the id."""
    where = "docs[%d]" % i
    if not isinstance(doc, Mapping):
        raise TypeError("%s must be a dict with id, text, embedding, "
                        "metadata, not %s" % (where, type(doc).__name__))
    unknown = set(doc) - {"id", "text", "embedding", "metadata",
                          "if_version"}
    if unknown:
        raise ValueError("%s has unknown keys %s (id, text, embedding, "
                         "metadata, if_version)" % (where, sorted(unknown)))
    if "id" not in doc:
        raise ValueError("%s has no id" % where)
    d.id = doc_id(where + ".id", doc["id"])
    text = string(where + ".text", doc.get("text"), allow_none=True)
    emb = doc.get("embedding")
    if not text and emb is None:
        raise ValueError("%s needs a text or an embedding" % where)
    if text:
        d.text = text
    m = metadata_json(where + ".metadata", doc.get("metadata"))
    if m:
        d.metadata_json = m
    ifv = doc.get("if_version")
    if ifv is not None:
        d.if_version.version = uint(where + ".if_version", ifv)
    if emb is not None:
        merge_packed(d, TAG_DOC_EMBEDDING,
                     vector_bytes(where + ".embedding", emb))
    return d.id


def doc_list(docs):
    """One document (a mapping) or an iterable of them -> list."""
    if isinstance(docs, Mapping):
        return [docs]
    if isinstance(docs, (str, bytes)):
        raise TypeError("docs must be a dict or a list of dicts")
    try:
        return list(docs)
    except TypeError:
        raise TypeError("docs must be a dict or a list of dicts, not %s"
                        % type(docs).__name__) from None
