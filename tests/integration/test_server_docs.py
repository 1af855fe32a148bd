"""Documents over HTTP: POST /collections/{name}/documents ingests text with the server's
model, POST .../documents/query answers with citations (dense, hybrid, reranked), and a
Qdrant query with {"text"} + "using": "bm25" ranks by BM25, so the real qdrant-client can
fuse dense and keyword prefetches with RRF. Real Markdown files from Node.js's docs."""
import gzip
import os
import re

import httpx
import pytest
from qdrant_client import QdrantClient, models

SLOW = 300  # seconds: model calls under the sanitizer build are slow
API = "/usr/share/doc/nodejs/api"
FILES = ["punycode.md", "querystring.md", "debugger.md", "tty.md"]


def read_doc(name):
    with gzip.open(os.path.join(API, name + ".gz"), "rb") as f:
        return f.read()


@pytest.fixture(scope="module")
def corpus():
    return {name: read_doc(name) for name in FILES}


def post(url, path, body):
    return httpx.post(url + path, json=body, timeout=SLOW)


def ingest(url, coll, docs, **opts):
    r = post(url, f"/collections/{coll}/documents",
             {"documents": [{"source": s, "text": t.decode()} for s, t in docs.items()], **opts})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "ok" and isinstance(body["time"], float)
    return body["result"]


def query(url, coll, **body):
    r = post(url, f"/collections/{coll}/documents/query", body)
    assert r.status_code == 200, r.text
    return r.json()["result"]


def metric(url, name):
    text = httpx.get(url + "/metrics", timeout=30).text
    m = re.search(r"^quiver_%s(?:_total)?(?:\{[^}]*\})? ([0-9.e+]+)$" % name, text, re.M)
    return float(m.group(1)) if m else 0.0


def count(url, coll):
    r = post(url, f"/collections/{coll}/points/count", {"exact": True})
    assert r.status_code == 200, r.text
    return r.json()["result"]["count"]


def check_citation(hit, corpus):
    """The hit's span maps back to its file's bytes and lines."""
    data = corpus[hit["source"]]
    a, b = hit["span"]["bytes"]
    assert 0 <= a < b <= len(data)
    first = data[:a].count(b"\n") + 1
    assert hit["span"]["lines"] == [first, first + data[a:b - 1].count(b"\n")]
    word = hit["text"].split()[0].strip("*`_[]#>")
    assert word and word in data[a:b].decode()
    assert isinstance(hit["headings"], list) and all(isinstance(h, str) for h in hit["headings"])


def test_ingest_query_and_reingest(quiver_server, corpus):
    url = quiver_server
    res = ingest(url, "kb", corpus, chunker="structure", max_tokens=128)
    assert res["files"] == 4 and res["new"] == 4 and res["skipped"] == 0 and res["deleted"] == 0
    assert res["chunks"] > 4
    assert count(url, "kb") == res["chunks"]
    # the collection was made for the model: 384 dimensions, Cosine, its model named
    info = httpx.get(url + "/collections/kb", timeout=30).json()["result"]["config"]["params"]["vectors"]
    assert info["size"] == 384 and info["distance"] == "Cosine"

    # re-ingesting the same files stores nothing
    again = ingest(url, "kb", corpus, chunker="structure", max_tokens=128)
    assert again["files"] == 4 and again["skipped"] == 4 and again["chunks"] == 0 and again["deleted"] == 0
    assert count(url, "kb") == res["chunks"]

    # a changed file replaces its chunks only
    changed = {"tty.md": b"# TTY\n\nThe tty module is gone; this page is short now.\n"}
    third = ingest(url, "kb", changed, chunker="structure", max_tokens=128)
    assert third["changed"] == 1 and third["chunks"] == 1 and third["deleted"] >= 1
    tty_before = [h for h in query(url, "kb", query="tty.ReadStream isRaw setRawMode", k=20)["hits"]
                  if h["source"] == "tty.md"]
    assert tty_before and all("gone" in h["text"] for h in tty_before)
    ingest(url, "kb", {"tty.md": corpus["tty.md"]}, chunker="structure", max_tokens=128)
    assert count(url, "kb") == res["chunks"]

    # dense retrieval finds the right file, with citations
    out = query(url, "kb", query="How do I encode a Unicode domain name to ASCII with punycode?", k=3)
    assert len(out["hits"]) == 3 and out["hits"][0]["source"] == "punycode.md"
    for h in out["hits"]:
        assert set(h) >= {"id", "score", "source", "headings", "span", "text"}
        check_citation(h, corpus)
    assert out["hits"][0]["headings"][0] == "Punycode"
    scores = [h["score"] for h in out["hits"]]
    assert scores == sorted(scores, reverse=True)

    # hybrid: the fused list cites both rankings
    hy = query(url, "kb", query="querystring.escape percent-encoding", k=5, hybrid=True)
    assert hy["hits"][0]["source"] == "querystring.md"
    assert any("keyword" in h for h in hy["hits"]) and any("dense" in h for h in hy["hits"])
    for h in hy["hits"]:
        check_citation(h, corpus)

    # a filter restricts the dense search
    f = query(url, "kb", query="breakpoints and stepping", k=5,
              filter={"must": [{"key": "source", "match": {"value": "debugger.md"}}]})
    assert f["hits"] and all(h["source"] == "debugger.md" for h in f["hits"])


def test_query_cache_hits_show_in_metrics(quiver_server, corpus):
    url = quiver_server
    ingest(url, "kb", {"punycode.md": corpus["punycode.md"]})
    hits0, misses0 = metric(url, "query_cache_hits"), metric(url, "query_cache_misses")
    first = query(url, "kb", query="punycode decode", k=2)
    second = query(url, "kb", query="punycode decode", k=2)
    assert first["cached"] is False and second["cached"] is True
    assert second["hits"] == first["hits"]
    assert metric(url, "query_cache_misses") == misses0 + 1
    assert metric(url, "query_cache_hits") == hits0 + 1
    # a write to the collection makes the cached answer stale
    ingest(url, "kb", {"extra.md": b"# Extra\n\nPunycode decoding, once more.\n"})
    assert query(url, "kb", query="punycode decode", k=2)["cached"] is False


def test_bm25_through_qdrant_api_and_client(quiver_server, corpus):
    url = quiver_server
    ingest(url, "kb", corpus)
    # a keyword query alone: every hit holds a query term
    r = post(url, "/collections/kb/points/query",
             {"query": {"text": "setRawMode"}, "using": "bm25", "limit": 3, "with_payload": True})
    assert r.status_code == 200, r.text
    pts = r.json()["result"]["points"]
    assert pts and all("setrawmode" in p["payload"]["text"].lower() for p in pts)
    assert all(p["payload"]["source"] == "tty.md" for p in pts)
    kw_scores = [p["score"] for p in pts]
    assert kw_scores == sorted(kw_scores, reverse=True) and kw_scores[0] > 0
    # a filter restricts the keyword ranking to the points it matches
    only = lambda src: {"must": [{"key": "source", "match": {"value": src}}]}
    r = post(url, "/collections/kb/points/query", {"query": {"text": "setRawMode"}, "using": "bm25", "limit": 3,
                                                   "with_payload": True, "filter": only("tty.md")})
    assert r.status_code == 200, r.text
    assert [p["id"] for p in r.json()["result"]["points"]] == [p["id"] for p in pts]
    r = post(url, "/collections/kb/points/query", {"query": {"text": "setRawMode"}, "using": "bm25", "limit": 3,
                                                   "with_payload": True, "filter": only("punycode.md")})
    assert r.status_code == 200, r.text
    assert all(p["payload"]["source"] == "punycode.md" for p in r.json()["result"]["points"])

    # hybrid through the real qdrant-client: a dense and a BM25 prefetch fused by RRF.
    # cloud_inference=True makes the client send Documents to the server as they are.
    client = QdrantClient(url=url, timeout=SLOW, check_compatibility=False, cloud_inference=True)
    try:
        q = "querystring.unescape decodes percent-encoded characters"
        doc = models.Document(text=q, model="all-MiniLM-L6-v2")
        res = client.query_points(
            "kb",
            prefetch=[models.Prefetch(query=doc, limit=20), models.Prefetch(query=doc, using="bm25", limit=20)],
            query=models.FusionQuery(fusion=models.Fusion.RRF), limit=5, with_payload=True).points
        assert res and res[0].payload["source"] == "querystring.md"
        # the fused scores are RRF sums over the two lists (k = 2 in Qdrant's default)
        dense = client.query_points("kb", query=doc, limit=20).points
        kw = client.query_points("kb", query=doc, using="bm25", limit=20).points
        rank = lambda lst: {p.id: i + 1 for i, p in enumerate(lst)}
        rd, rk = rank(dense), rank(kw)
        for p in res:
            want = (1 / (2 + rd[p.id]) if p.id in rd else 0) + (1 / (2 + rk[p.id]) if p.id in rk else 0)
            assert abs(p.score - want) < 1e-5
        assert set(rk) - set(rd), "the keyword list should add candidates the dense one lacks"
    finally:
        client.close()


def test_rerank_needs_a_reranker(quiver_server, corpus):
    url = quiver_server
    ingest(url, "kb", {"punycode.md": corpus["punycode.md"]})
    r = post(url, "/collections/kb/documents/query", {"query": "punycode", "rerank": True})
    assert r.status_code == 503 and "reranker" in r.json()["status"]["error"]


@pytest.mark.parametrize("body, needle", [
    ({"documents": [{"source": "a.md", "text": "x"}], "chunker": "words"}, "chunker"),
    ({"documents": [{"source": "a.md"}]}, "text"),
    ({"documents": [{"source": 7, "text": "x"}]}, "source"),
    ({"documents": [{"source": "a.md", "text": "ok"}, {"source": ["b"], "text": "x"}]}, "documents[1]"),
    ({"documents": [{"source": "a.md", "text": "x"}, {"source": "a.md", "text": "y"}]}, "repeats"),
    ({"documents": [{"source": f"d{i}.md", "text": "x"} for i in range(5000)] + [{"source": "d17.md", "text": "y"}]},
     "documents[5000].source repeats documents[17]'s"),
    ({"documents": []}, "empty"),
    ({"documents": "a.md"}, "documents"),
    ({"documents": [{"source": "a.md", "text": "x"}], "max_tokens": 0}, "max_tokens"),
    ({"documents": [{"source": "a.md", "text": "x"}], "overlap": 2}, "overlap"),
])
def test_bad_ingest_is_400_and_stores_nothing(quiver_server, body, needle):
    url = quiver_server
    r = post(url, "/collections/bad/documents", body)
    assert r.status_code == 400, r.text
    assert needle in r.json()["status"]["error"]
    # no collection was created
    assert httpx.get(url + "/collections/bad/exists", timeout=30).json()["result"]["exists"] is False
    # and into an existing collection, nothing is stored either
    ingest(url, "good", {"keep.md": b"# Keep\n\nkeep me\n"})
    r = post(url, "/collections/good/documents", body)
    assert r.status_code == 400
    assert count(url, "good") == 1


def test_bad_queries_are_400(quiver_server):
    url = quiver_server
    ingest(url, "kb", {"a.md": b"# A\n\nalpha beta\n"})
    for body in [{}, {"query": ""}, {"query": 5}, {"query": "a", "k": 0}, {"query": "a", "k": "3"},
                 {"query": "a", "hybrid": "yes"}, {"query": "a", "filter": []},
                 {"query": "a", "filter": {"must": [{"key": "x", "bogus": 1}]}}]:
        r = post(url, "/collections/kb/documents/query", body)
        assert r.status_code == 400, (body, r.text)
        assert r.json()["status"]["error"]
    r = post(url, "/collections/missing/documents/query", {"query": "a"})
    assert r.status_code == 404
    r = httpx.post(url + "/collections/kb/documents", content=b"{not json", timeout=30)
    assert r.status_code == 400


def test_delete_and_recreate_forgets_the_old_index(quiver_server):
    url = quiver_server
    ingest(url, "kb", {"a.md": b"# A\n\nzebra giraffe\n"})
    assert query(url, "kb", query="zebra", k=1, hybrid=True)["hits"][0]["source"] == "a.md"
    assert httpx.delete(url + "/collections/kb", timeout=30).status_code == 200
    ingest(url, "kb", {"b.md": b"# B\n\nzebra crossing\n"})
    out = query(url, "kb", query="zebra", k=5, hybrid=True)
    assert [h["source"] for h in out["hits"]] == ["b.md"]


def test_rerank_with_a_cross_encoder(start_quiver_server, corpus, tmp_path):
    import math

    import synthetic_reranker
    xenc = synthetic_reranker.build(tmp_path / "xenc")
    url = start_quiver_server(args=["--reranker", xenc]).url
    ingest(url, "kb", corpus)
    dense = query(url, "kb", query="percent-encoding of query strings", k=50)
    rr = query(url, "kb", query="percent-encoding of query strings", k=4, rerank=True)
    assert len(rr["hits"]) == 4
    logits = [h["logit"] for h in rr["hits"]]
    assert logits == sorted(logits, reverse=True)
    for h in rr["hits"]:
        assert abs(h["score"] - 1 / (1 + math.exp(-h["logit"]))) < 1e-5
        check_citation(h, corpus)
    # the reranker reorders the dense candidates; it adds none
    assert {h["id"] for h in rr["hits"]} <= {h["id"] for h in dense["hits"]}


def test_ingest_needs_a_read_write_key(start_quiver_server):
    url = start_quiver_server(args=["--api-key", "rw-key", "--read-only-api-key", "ro-key"]).url
    body = {"documents": [{"source": "a.md", "text": "# A\n\nalpha\n"}]}
    r = httpx.post(url + "/collections/kb/documents", json=body, headers={"api-key": "ro-key"}, timeout=SLOW)
    assert r.status_code == 403
    assert httpx.get(url + "/collections/kb/exists", headers={"api-key": "ro-key"}).json()["result"]["exists"] is False
    r = httpx.post(url + "/collections/kb/documents", json=body, headers={"api-key": "rw-key"}, timeout=SLOW)
    assert r.status_code == 200 and r.json()["result"]["chunks"] == 1
    # queries are reads
    r = httpx.post(url + "/collections/kb/documents/query", json={"query": "alpha"}, headers={"api-key": "ro-key"},
                   timeout=SLOW)
    assert r.status_code == 200 and r.json()["result"]["hits"][0]["source"] == "a.md"
