"""Embeddings and reranking over HTTP: the OpenAI surface through the official `openai`
client and LangChain, TEI's /embed /rerank /tokenize /info /health, the earlier service's
/api/v1 routes, truncation on every route, /metrics after traffic, and dynamic batching
under 32 concurrent clients. Values are checked against `quiver embed` / the numpy
reference (bert_reference.py) and ids against Hugging Face `tokenizers`."""
import base64
import os
import threading

import httpx
import numpy as np
import pytest
from tokenizers import Tokenizer

from conftest import QuiverServer
from test_embed import MODEL, cross_encoder, model_files, quiver_embed  # noqa: F401 (fixtures)

NAME = "all-MiniLM-L6-v2"
LIMIT = 256
LONG = "word " * 600  # 602 tokens with [CLS] and [SEP]


class Server:
    """conftest's QuiverServer (a `quiver serve` subprocess), kept for the whole module so
    the models load once, with an httpx client on it."""

    def __init__(self, base, *args):
        self.proc = QuiverServer(base / "data", base / "server.log", ["--model", MODEL, *args])
        self.url = self.proc.url
        self.http = httpx.Client(base_url=self.url, timeout=120)

    def post(self, path, body):
        return self.http.post(path, json=body)

    def stop(self):
        self.http.close()
        rc = self.proc.stop()
        out = self.proc.output
        assert rc == 0, out[-4000:]
        assert "AddressSanitizer" not in out and "runtime error" not in out, out[-4000:]


@pytest.fixture(scope="module")
def srv(tmp_path_factory, cross_encoder):  # noqa: F811
    d, _ = cross_encoder
    s = Server(tmp_path_factory.mktemp("srv"), "--reranker", d, "--batch-wait-ms", "20")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def hf_tok():
    t = Tokenizer.from_file(os.path.join(MODEL, "tokenizer.json"))
    t.no_padding()
    t.no_truncation()
    return t


TEXTS = ["The cat sat on the mat.", "How do I reset my password?", "naïve café résumé",
         "Quantum entanglement links particles across distances.", "東京は日本の首都です。", "a"]


@pytest.fixture(scope="module")
def ref():
    """`quiver embed`'s vectors for TEXTS and LONG (truncated), the oracle for every route."""
    vecs = quiver_embed(TEXTS + [LONG])
    return {t: v for t, v in zip(TEXTS + [LONG], vecs)}


def close(got, want, tol=1e-5):
    got = np.asarray(got, dtype=np.float64)
    assert got.shape == np.asarray(want).shape
    assert np.max(np.abs(got - want)) <= tol, np.max(np.abs(got - want))


# ---- OpenAI ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def client(srv):
    from openai import OpenAI
    return OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0)


def test_openai_client_string_list_and_formats(client, ref, hf_tok):
    r = client.embeddings.create(model=NAME, input=TEXTS[0])  # the client asks for base64
    assert r.model == NAME and len(r.data) == 1 and r.data[0].index == 0
    close(r.data[0].embedding, ref[TEXTS[0]])
    assert r.usage.prompt_tokens == len(hf_tok.encode(TEXTS[0]).ids) == r.usage.total_tokens

    r = client.embeddings.create(model=NAME, input=TEXTS, encoding_format="float")
    assert [d.index for d in r.data] == list(range(len(TEXTS)))
    for d, t in zip(r.data, TEXTS):
        close(d.embedding, ref[t])
    assert r.usage.prompt_tokens == sum(len(hf_tok.encode(t).ids) for t in TEXTS)


def test_openai_raw_base64_is_little_endian_float32(srv, ref):
    r = srv.post("/v1/embeddings", {"input": TEXTS[1], "encoding_format": "base64"})
    assert r.status_code == 200, r.text
    v = np.frombuffer(base64.b64decode(r.json()["data"][0]["embedding"]), dtype="<f4")
    close(v, ref[TEXTS[1]])


def test_openai_token_ids(client, ref, hf_tok):
    plain = [t for t in TEXTS if t.isascii()]
    ids = [hf_tok.encode(t, add_special_tokens=False).ids for t in plain]
    r = client.embeddings.create(model=NAME, input=ids, encoding_format="float")
    for d, t in zip(r.data, plain):
        close(d.embedding, ref[t])
    r = client.embeddings.create(model=NAME, input=ids[0])  # one token-id array
    assert len(r.data) == 1
    close(r.data[0].embedding, ref[plain[0]])


def test_openai_errors_in_openai_shape(client, srv):
    import openai
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model=NAME, input="x", dimensions=128)
    assert "384" in str(e.value)
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="no-such-model", input="x")
    for body, param in [({"input": []}, "input"), ({"input": [1, "a"]}, "input"), ({}, "input"),
                        ({"input": [[999999999]]}, "input"), ({"input": "x", "encoding_format": "int8"},
                                                              "encoding_format")]:
        r = srv.post("/v1/embeddings", body)
        assert r.status_code == 400, (body, r.text)
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"} and err["param"] == param, err
        assert err["type"] == "invalid_request_error" and err["message"]
    r = srv.http.post("/v1/embeddings", content=b"{not json")
    assert r.status_code == 400


def test_openai_models(client):
    ids = [m.id for m in client.models.list().data]
    assert NAME in ids and "test-cross-encoder" in ids


def test_langchain_openai_embeddings(srv, ref):
    from langchain_openai import OpenAIEmbeddings
    emb = OpenAIEmbeddings(model=NAME, base_url=srv.url + "/v1", api_key="unused",
                           check_embedding_ctx_length=False)
    docs = emb.embed_documents(TEXTS[:3])
    for v, t in zip(docs, TEXTS[:3]):
        close(v, ref[t])
    close(emb.embed_query(TEXTS[3]), ref[TEXTS[3]])


# ---- reranking ------------------------------------------------------------------------------

QUERY = "how do vector databases search quickly?"
DOCS = ["HNSW graphs give logarithmic search time.", "Bananas are yellow.",
        "Exact search compares the query with every stored vector.", "", "東京 🚀"]


@pytest.fixture(scope="module")
def rerank_ref(cross_encoder):  # noqa: F811
    _, bert = cross_encoder
    tok = Tokenizer.from_file(os.path.join(MODEL, "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(max_length=512)
    out = []
    for d in DOCS:
        enc = tok.encode(QUERY, d)
        out.append(float(bert.classify(enc.ids, enc.type_ids)[0]))
    return np.array(out)


def test_v1_rerank_cohere_shape(srv, rerank_ref):
    r = srv.post("/v1/rerank", {"query": QUERY, "documents": [DOCS[0], {"text": DOCS[1]}, *DOCS[2:]],
                                "top_n": 3, "return_documents": True})
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    want = list(np.argsort(-rerank_ref, kind="stable"))[:3]
    assert [x["index"] for x in res] == want
    for x in res:
        assert x["relevance_score"] == pytest.approx(1 / (1 + np.exp(-rerank_ref[x["index"]])), abs=1e-3)
        assert x["document"] == {"text": DOCS[x["index"]]}
    r = srv.post("/v1/rerank", {"query": QUERY, "documents": DOCS})
    assert len(r.json()["results"]) == len(DOCS) and "document" not in r.json()["results"][0]
    r = srv.post("/v1/rerank", {"query": QUERY, "documents": [1]})
    assert r.status_code == 400 and "documents" in r.json()["error"]["message"]


def test_tei_rerank(srv, rerank_ref):
    r = srv.post("/rerank", {"query": QUERY, "texts": DOCS, "raw_scores": True, "return_text": True})
    assert r.status_code == 200, r.text
    res = r.json()
    assert [x["index"] for x in res] == list(np.argsort(-rerank_ref, kind="stable"))
    for x in res:
        assert x["score"] == pytest.approx(rerank_ref[x["index"]], abs=1e-3)
        assert x["text"] == DOCS[x["index"]]
    res = srv.post("/rerank", {"query": QUERY, "texts": DOCS}).json()
    assert all(0 < x["score"] < 1 and "text" not in x for x in res)


# ---- TEI ------------------------------------------------------------------------------------

def test_tei_embed(srv, ref):
    r = srv.post("/embed", {"inputs": TEXTS})
    assert r.status_code == 200, r.text
    for v, t in zip(r.json(), TEXTS):
        close(v, ref[t])
    r = srv.post("/embed", {"inputs": TEXTS[2], "normalize": True})
    close(r.json()[0], ref[TEXTS[2]])
    r = srv.post("/embed", {"inputs": "x", "normalize": False})
    assert r.status_code == 422 and r.json()["error_type"] == "Validation" and "Normalize" in r.json()["error"]
    for body in [{"inputs": []}, {"inputs": 5}, {}, {"inputs": ["a", 3]}]:
        r = srv.post("/embed", body)
        assert r.status_code == 422, (body, r.text)
        assert set(r.json()) == {"error", "error_type"}
    assert srv.http.post("/embed", content=b"[").status_code == 422


def test_tei_tokenize_matches_hf(srv, hf_tok):
    texts = ["Hello, World! This is Quiver.", "naïve café", "unaffable tokenizer"]
    r = srv.post("/tokenize", {"inputs": texts})
    assert r.status_code == 200, r.text
    for toks, t in zip(r.json(), texts):
        enc = hf_tok.encode(t)
        assert [x["id"] for x in toks] == enc.ids
        assert [x["text"] for x in toks] == enc.tokens
        assert [x["special"] for x in toks] == [tk in ("[CLS]", "[SEP]") for tk in enc.tokens]
        if t.isascii():  # offsets are exact where the normalizer only changes case
            inner = [(x["start"], x["stop"]) for x in toks if not x["special"]]
            assert inner == [o for o, tk in zip(enc.offsets, enc.tokens) if tk not in ("[CLS]", "[SEP]")]
    r = srv.post("/tokenize", {"inputs": texts[0], "add_special_tokens": False})
    assert [x["id"] for x in r.json()[0]] == hf_tok.encode(texts[0], add_special_tokens=False).ids


def test_tei_info_and_health(srv):
    info = srv.http.get("/info").json()
    assert info["model_id"] == NAME and info["max_input_length"] == LIMIT
    assert info["model_type"] == {"embedding": {"pooling": "mean"}}
    assert info["max_batch_tokens"] > 0 and info["reranker_id"] == "test-cross-encoder"
    r = srv.http.get("/health")
    assert r.status_code == 200


# ---- truncation, the same on every route -------------------------------------------------------

def test_truncation_both_ways_on_every_route(srv, ref):
    routes = [
        ("/v1/embeddings", {"input": LONG}, lambda j: j["data"][0]["embedding"]),
        ("/embed", {"inputs": LONG}, lambda j: j[0]),
        ("/api/v1/embeddings/generate", {"text": LONG}, lambda j: j["embeddings"][0]),
        ("/api/v1/embeddings/batch", {"texts": [LONG]}, lambda j: j["embeddings"][0]),
    ]
    for path, body, get in routes:
        r = srv.post(path, dict(body, truncate=True))
        assert r.status_code == 200, (path, r.text)
        close(get(r.json()), ref[LONG])
        r = srv.post(path, body)  # the server default (truncate on)
        assert r.status_code == 200, (path, r.text)
        r = srv.post(path, dict(body, truncate=False))
        assert r.status_code == 413, (path, r.text)
        assert "602 tokens" in r.text and str(LIMIT) in r.text, (path, r.text)
    for path, body in [("/v1/rerank", {"query": QUERY, "documents": ["ok", LONG]}),
                       ("/rerank", {"query": QUERY, "texts": ["ok", LONG]})]:
        assert srv.post(path, dict(body, truncate=True)).status_code == 200
        r = srv.post(path, dict(body, truncate=False))
        assert r.status_code == 413 and "input 1" in r.text and "512" in r.text, (path, r.text)
    r = srv.post("/api/v1/similarity/search", {"query": LONG, "collection": "nope", "truncate": False})
    assert r.status_code == 404  # the collection is checked first
    assert srv.post("/v1/embeddings", {"input": LONG, "truncate": False}).json()["error"]["code"] == \
        "context_length_exceeded"
    assert srv.post("/embed", {"inputs": LONG, "truncate": False}).json()["error_type"] == "Validation"


# ---- the earlier service's routes ----------------------------------------------------------

def test_legacy_routes_end_to_end(srv, ref):
    r = srv.post("/api/v1/embeddings/generate", {"text": TEXTS[0]})
    assert r.status_code == 200, r.text
    j = r.json()
    assert j["model"] == NAME and j["dimensions"] == 384 and len(j["embeddings"]) == 1
    close(j["embeddings"][0], ref[TEXTS[0]])
    j = srv.post("/api/v1/embeddings/batch", {"texts": TEXTS[:3]}).json()
    assert j["count"] == 3
    for v, t in zip(j["embeddings"], TEXTS[:3]):
        close(v, ref[t])

    docs = [{"id": 1, "text": "The Eiffel Tower is in Paris.", "metadata": {"lang": "en", "topic": "travel"}},
            {"id": 2, "text": "Pasta is boiled in salted water.", "metadata": {"lang": "en", "topic": "food"}},
            {"text": "La tour Eiffel est à Paris.", "metadata": {"lang": "fr", "topic": "travel"}},
            {"id": "8f14e45f-ceea-467f-a9f1-b5d1f1a1c0de", "text": "Sourdough needs a starter."}]
    r = srv.post("/api/v1/index/add", {"collection": "legacy_docs", "documents": docs})
    assert r.status_code == 200, r.text
    j = r.json()
    assert j["added"] == 4 and j["ids"][:2] == [1, 2] and j["ids"][3] == docs[3]["id"]
    assert len(j["ids"][2]) == 36  # a generated UUID

    r = srv.post("/api/v1/similarity/search", {"query": "Where is the Eiffel Tower?", "collection": "legacy_docs",
                                               "top_k": 2})
    assert r.status_code == 200, r.text
    hits = r.json()["results"]
    assert len(hits) == 2 and hits[0]["id"] == 1
    assert hits[0]["payload"] == {"lang": "en", "topic": "travel", "text": docs[0]["text"]}
    assert hits[0]["score"] >= hits[1]["score"]
    q = quiver_embed(["Where is the Eiffel Tower?", docs[0]["text"]])
    assert hits[0]["score"] == pytest.approx(float(q[0] @ q[1]), abs=1e-4)

    hits = srv.post("/api/v1/similarity/search", {"query": "Eiffel", "collection": "legacy_docs", "top_k": 5,
                                                  "filter": {"lang": "fr"}}).json()["results"]
    assert [h["payload"]["lang"] for h in hits] == ["fr"]
    hits = srv.post("/api/v1/similarity/search", {
        "query": "food", "collection": "legacy_docs",
        "filter": {"must": [{"key": "topic", "match": {"value": "food"}}]}}).json()["results"]
    assert [h["id"] for h in hits] == [2]

    for path, body, code in [
        ("/api/v1/similarity/search", {"query": "x", "collection": "missing"}, 404),
        ("/api/v1/similarity/search", {"query": "x"}, 400),
        ("/api/v1/similarity/search", {"query": "x", "collection": "legacy_docs", "top_k": 0}, 400),
        ("/api/v1/similarity/search", {"query": "x", "collection": "legacy_docs", "filter": {"a": [1]}}, 400),
        ("/api/v1/index/add", {"collection": "legacy_docs", "documents": [{"id": -1, "text": "x"}]}, 400),
        ("/api/v1/index/add", {"collection": "legacy_docs", "documents": [{"id": 5}]}, 400),
        ("/api/v1/index/add", {"collection": "legacy_docs", "documents": []}, 400),
        ("/api/v1/embeddings/generate", {"texts": "not a list"}, 400),
    ]:
        r = srv.post(path, body)
        assert r.status_code == code, (path, body, r.text)
        assert r.json()["error"]


# ---- dynamic batching and metrics ---------------------------------------------------------------

def metric(text, name):
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in /metrics")


def concurrently(url, clients, fn):
    """Runs fn(i, client) for i in range(clients), each on its own thread and connection,
    released together by a barrier; returns (sequences, passes) the batcher ran meanwhile."""
    before = httpx.get(url + "/metrics").text
    s0, c0 = metric(before, "quiver_batch_size_sum"), metric(before, "quiver_batch_size_count")
    errors = []
    barrier = threading.Barrier(clients)

    def run(i):
        try:
            with httpx.Client(base_url=url, timeout=120) as h:
                barrier.wait()
                fn(i, h)
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    after = httpx.get(url + "/metrics").text
    return metric(after, "quiver_batch_size_sum") - s0, metric(after, "quiver_batch_size_count") - c0


def test_concurrent_clients_are_batched(srv):
    texts = [f"client {i} asks about {w} and vectors" for i, w in
             enumerate(("search index query model token layer attention durable " * 4).split())]
    assert len(texts) == 32
    want = quiver_embed(texts)
    results = [None] * 32

    def one(i, h):
        r = h.post("/v1/embeddings", json={"input": texts[i], "encoding_format": "float"})
        assert r.status_code == 200, r.text
        results[i] = r.json()["data"][0]["embedding"]

    seqs, passes = concurrently(srv.url, 32, one)
    for i in range(32):
        close(results[i], want[i])
    assert seqs == 32
    assert seqs / passes > 1, (seqs, passes)


def test_batches_outgrow_the_http_threads(tmp_path):
    """With 2 HTTP threads, a blocked handler would cap the batcher at 2 requests at once
    (and stall the connections its thread owns); model routes run off those threads, so 32
    concurrent clients' requests still meet in the batcher."""
    s = Server(tmp_path, "--threads", "2", "--batch-wait-ms", "20")
    try:
        def three(i, h):
            for k in range(3):
                r = h.post("/v1/embeddings", json={"input": f"client {i} request {k}"})
                assert r.status_code == 200, r.text
                assert len(r.json()["data"]) == 1

        seqs, passes = concurrently(s.url, 32, three)
        assert seqs == 96
        assert seqs / passes > 2, (seqs, passes)
    finally:
        s.stop()


def test_metrics_after_traffic(srv):
    srv.post("/v1/embeddings", {"input": "metrics"})
    srv.post("/v1/embeddings", {"input": LONG, "truncate": False})
    t = srv.http.get("/metrics").text
    assert "# TYPE quiver_requests_total counter" in t
    assert metric(t, 'quiver_requests_total{route="openai_embeddings",status="200"}') >= 1
    assert metric(t, 'quiver_requests_total{route="openai_embeddings",status="413"}') >= 1
    assert metric(t, 'quiver_request_duration_seconds_count{route="openai_embeddings"}') >= 2
    assert 'quiver_request_duration_seconds_bucket{route="openai_embeddings",le="+Inf"}' in t
    for stage in ("tokenize", "queue", "embed", "rerank"):
        assert metric(t, f'quiver_stage_duration_seconds_count{{stage="{stage}"}}') >= 1, stage
    assert metric(t, "quiver_batch_tokens_count") >= 1
    assert metric(t, 'quiver_collection_points{collection="legacy_docs"}') == 4
    assert metric(t, "process_resident_memory_bytes") > 50e6
    assert metric(t, 'quiver_backend_info{backend="cpu"}') == 1


def test_openapi_describes_the_embedding_routes(srv):
    doc = srv.http.get("/openapi.json").json()
    for path, method in [("/v1/embeddings", "post"), ("/v1/rerank", "post"), ("/v1/models", "get"),
                         ("/embed", "post"), ("/rerank", "post"), ("/tokenize", "post"), ("/info", "get"),
                         ("/health", "get"), ("/api/v1/embeddings/generate", "post"),
                         ("/api/v1/embeddings/batch", "post"), ("/api/v1/similarity/search", "post"),
                         ("/api/v1/index/add", "post")]:
        assert method in doc["paths"][path], path
    body = doc["paths"]["/v1/embeddings"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["required"] == ["input"] and "encoding_format" in body["properties"]
    body = doc["paths"]["/api/v1/index/add"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["required"] == ["collection", "documents"]
