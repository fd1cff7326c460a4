"""kbsync.Retriever: the retriever call shape RAG frameworks use
(`invoke(query) -> list of Document`, Document with page_content and
metadata), over kbsync.Client, without depending on any framework.

Each Document's metadata holds the document's own metadata, then "id",
"score" and "version" (the LSN that wrote that document: pass it as
if_version to update it conditionally), and "kbsync": a dict describing the
answer the document came from (version, leader_version, lag_ops, lag_ms,
level, node_id, fallback). The returned list (Documents) carries the same
answer fields as attributes.
"""
import asyncio

from . import _args as A


class Document:
    """A retrieved chunk: page_content (its text) and metadata (dict). Same
    attribute names as LangChain's Document, so frameworks that duck-type
    accept it."""

    __slots__ = ("page_content", "metadata")

    def __init__(self, page_content, metadata=None):
        self.page_content = page_content
        self.metadata = {} if metadata is None else metadata

    def __eq__(self, other):
        return (isinstance(other, Document) and
                self.page_content == other.page_content and
                self.metadata == other.metadata)

    def __repr__(self):
        text = self.page_content
        if len(text) > 60:
            text = text[:57] + "..."
        return "Document(page_content=%r, metadata=%r)" % (text,
                                                            self.metadata)


class Documents(list):
    """The Documents of one answer, best first, and that answer's version
    and staleness: version, leader_version, lag_ops, lag_ms, level,
    node_id, endpoint, fallback (kbsync.QueryResult)."""

    def __init__(self, docs, result):
        super().__init__(docs)
        self.version = result.version
        self.leader_version = result.leader_version
        self.lag_ops = result.lag_ops
        self.lag_ms = result.lag_ms
        self.level = result.level
        self.node_id = result.node_id
        self.endpoint = result.endpoint
        self.fallback = result.fallback


class Retriever:
    """Retriever(client, *, k=4, consistency=None, filters=None, embed=None,
    ef_search=None, nprobe=None, wait_ms=None)

    client       a kbsync.Client
    k            documents per query (1..1000)
    consistency  read level ("eventual", "bounded:MS", "session",
                 "session:V", "strong"); None = the client's default
    filters      metadata equality filters applied to every query
                 ({key: value}); invoke(..., filters=) adds to them
    embed        optional callable str -> sequence of floats (your
                 embedding model); without it the node embeds the text
                 with its built-in lexical embedder
    """

    def __init__(self, client, *, k=4, consistency=None, filters=None,
                 embed=None, ef_search=None, nprobe=None, wait_ms=None):
        if not hasattr(client, "query"):
            raise TypeError("client must be a kbsync.Client")
        self.client = client
        self.k = A.uint("k", k, 1, A.MAX_K)
        if consistency is not None:
            A.read_level(consistency)
        self.consistency = consistency
        self.filters = dict(A.filters(filters))
        if embed is not None and not callable(embed):
            raise TypeError("embed must be a callable str -> vector")
        self.embed = embed
        self.ef_search = A.opt_uint("ef_search", ef_search, 0, 4096)
        self.nprobe = A.opt_uint("nprobe", nprobe)
        self.wait_ms = A.opt_uint("wait_ms", wait_ms, 0, A.MAX_WAIT_MS)

    def invoke(self, query, config=None, *, k=None, filters=None,
               consistency=None):
        """The documents most relevant to query (a str), best first, as a
        Documents list. config is accepted (and ignored) for frameworks
        that pass one."""
        A.string("query", query)
        f = dict(self.filters)
        f.update(A.filters(filters))
        q = self.embed(query) if self.embed is not None else query
        if self.embed is not None and isinstance(q, str):
            raise TypeError("embed must return a sequence of numbers")
        r = self.client.query(
            q, k=self.k if k is None else k,
            consistency=consistency if consistency is not None
            else self.consistency,
            filters=f or None, ef_search=self.ef_search, nprobe=self.nprobe,
            wait_ms=self.wait_ms)
        answer = {"version": r.version, "leader_version": r.leader_version,
                  "lag_ops": r.lag_ops, "lag_ms": r.lag_ms, "level": r.level,
                  "node_id": r.node_id, "fallback": r.fallback}
        docs = []
        for h in r.hits:
            meta = dict(h.metadata)
            meta["id"] = h.id
            meta["score"] = h.score
            meta["version"] = h.version
            meta["kbsync"] = answer
            docs.append(Document(h.text, meta))
        return Documents(docs, r)

    __call__ = invoke

    def get_relevant_documents(self, query):
        """The older retriever method name (same as invoke)."""
        return self.invoke(query)

    def batch(self, queries, config=None):
        """invoke for each query, in order."""
        return [self.invoke(q) for q in queries]

    async def ainvoke(self, query, config=None, **kw):
        """invoke in a worker thread, for asyncio callers."""
        return await asyncio.to_thread(self.invoke, query, config, **kw)
