"""kbsync.Retriever, the call shape RAG frameworks use, against a real
leader and replicas: invoke(query) -> Documents (a list of Document with
page_content and metadata) carrying the answer's version and staleness."""
import asyncio

import pytest

import kbsync
from conftest import DIM, vec


@pytest.fixture(scope="module")
def kb(cluster):
    c = cluster.client()
    c.upsert([{"id": "faq-%d" % i, "text": "answer number %d" % i,
               "embedding": vec(100 + i),
               "metadata": {"source": "faq" if i % 2 else "manual", "n": i}}
              for i in range(12)], mode="all")
    c.upsert({"id": "lex", "text": "replicas follow the leader stream",
              "metadata": {"source": "lexical"}})
    yield c
    c.close()


def test_retriever_invoke_returns_documents(kb, cluster):
    ret = kbsync.Retriever(kb, k=3, embed=lambda q: vec(100 + int(q[-1])))
    docs = ret.invoke("question 5")
    assert isinstance(docs, list) and len(docs) == 3
    d = docs[0]
    assert isinstance(d, kbsync.Document)
    assert d.page_content == "answer number 5"
    m = d.metadata
    assert (m["id"], m["source"], m["n"]) == ("faq-5", "faq", 5)
    assert m["score"] >= docs[1].metadata["score"]
    assert m["version"] >= 1
    # the answer's version and staleness: on the list and in each document
    assert docs.version >= kb.last_version and docs.level == "session"
    assert docs.lag_ops == docs.leader_version - docs.version
    assert m["kbsync"]["version"] == docs.version
    assert m["kbsync"]["lag_ms"] == docs.lag_ms
    assert m["kbsync"]["node_id"] == docs.node_id
    assert docs.endpoint in cluster.endpoints


def test_retriever_filters_consistency_and_shapes(kb):
    emb = lambda q: vec(100 + int(q[-1]))  # noqa: E731
    ret = kbsync.Retriever(kb, k=4, filters={"source": "manual"},
                           consistency="strong", embed=emb)
    docs = ret.invoke("question 3")
    assert docs and all(d.metadata["source"] == "manual" for d in docs)
    assert docs.level == "strong"
    docs = ret.invoke("question 3", k=1, filters={"n": 4})
    assert [d.metadata["id"] for d in docs] == ["faq-4"]
    assert ret("question 2")[0].metadata["source"] == "manual"
    ids = lambda docs: [d.metadata["id"] for d in docs]  # noqa: E731
    assert ids(ret.get_relevant_documents("question 2")) == \
        ids(ret.invoke("question 2"))
    both = ret.batch(["question 2", "question 6"])
    assert [b[0].metadata["id"] for b in both] == ["faq-2", "faq-6"]
    docs = asyncio.run(ret.ainvoke("question 8"))
    assert docs[0].metadata["id"] == "faq-8"
    # without embed the node embeds the query text (lexical embedder)
    lex = kbsync.Retriever(kb, k=1, filters={"source": "lexical"},
                           consistency="eventual")
    docs = lex.invoke("leader stream")
    assert docs[0].page_content == "replicas follow the leader stream"
    assert docs.level == "eventual"
    assert "Document(page_content=" in repr(docs[0])


def test_retriever_errors_are_typed(kb):
    ret = kbsync.Retriever(kb, k=2, embed=lambda q: [0.5] * (DIM + 2))
    with pytest.raises(kbsync.DimensionError):
        ret.invoke("wrong model")
    with pytest.raises(TypeError):
        kbsync.Retriever(kb, embed=lambda q: "not a vector").invoke("q")
    with pytest.raises(ValueError):
        kbsync.Retriever(kb, k=1001)
    with pytest.raises(ValueError):
        kbsync.Retriever(kb, consistency="sometimes")
