"""kbsync: Python client for kbsync, a replica sync service for RAG
knowledge bases (leader + replicas over ZeroMQ, protobuf wire format from
schemas/kbsync.proto).

    import kbsync
    with kbsync.Client(["tcp://127.0.0.1:7400", "tcp://127.0.0.1:7410"]) as kb:
        w = kb.upsert({"id": "faq-1", "text": "kill -9 loses nothing"},
                      mode="all")
        r = kb.query("what survives kill -9", k=3)   # reads its own write
        docs = kbsync.Retriever(kb, k=3).invoke("kill -9")

clients/python/README.md documents every call; docs/PROTOCOL.md and
docs/CONSISTENCY.md say what the answers promise.
"""
from . import errors
from .client import Client
from .errors import *  # noqa: F401,F403  (one class per KB_E* code)
from .errors import KbsyncError
from .results import (BulkResult, Hit, ListEntry, ListResult, QueryResult,
                      Receipt, Record, WriteResult)
from .retriever import Document, Documents, Retriever

__version__ = "0.1.0"

__all__ = ["Client", "Retriever", "Document", "Documents", "KbsyncError",
           "WriteResult", "Receipt", "QueryResult", "Hit", "ListResult",
           "ListEntry", "BulkResult", "Record", "errors"] + errors.__all__
