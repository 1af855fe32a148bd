"""The Qdrant-compatible API through the real qdrant-client (pinned in requirements-dev.txt),
against `quiver serve`: every collection and point operation, queries checked against numpy."""
import uuid
import warnings

import httpx
import numpy as np
import pytest
from qdrant_client import QdrantClient, models

DIM = 16
SLOW = 300  # seconds: model calls under the sanitizer build are slow


@pytest.fixture
def client(quiver_server):
    # The client checks the server's version in a background thread; that check is made
    # synchronously in test_root_reports_a_compatible_version instead.
    c = QdrantClient(url=quiver_server, timeout=60, check_compatibility=False)
    yield c
    c.close()


def make_points(n, dim=DIM, seed=0):
    rng = np.random.default_rng(seed)
    vecs = rng.standard_normal((n, dim)).astype(np.float32)
    pts = [
        models.PointStruct(id=i, vector=vecs[i].tolist(), payload={"i": i, "even": i % 2 == 0, "tag": f"t{i % 3}"})
        for i in range(n)
    ]
    return vecs, pts


def cosine_top(vecs, q, k, exclude=None):
    v = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
    s = v @ (q / np.linalg.norm(q))
    order = [int(i) for i in np.argsort(-s, kind="stable") if exclude is None or int(i) != exclude]
    return order[:k], s


def test_root_reports_a_compatible_version(quiver_server):
    r = httpx.get(quiver_server + "/")
    assert r.status_code == 200
    body = r.json()
    assert body["title"] == "qdrant - vector search engine"
    from qdrant_client.common.version_check import is_compatible
    import importlib.metadata

    assert is_compatible(importlib.metadata.version("qdrant-client"), body["version"])
    # The client's own check, run here synchronously: any warning fails the test.
    from qdrant_client.qdrant_remote import QdrantRemote

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        QdrantRemote._check_compatibility(quiver_server, {}, None, 10)


def test_collection_lifecycle(client):
    assert client.get_collections().collections == []
    assert client.create_collection("docs", vectors_config=models.VectorParams(size=DIM, distance=models.Distance.COSINE))
    assert client.collection_exists("docs")
    assert not client.collection_exists("nope")
    info = client.get_collection("docs")
    assert info.status == models.CollectionStatus.GREEN
    assert info.points_count == 0
    assert info.config.params.vectors.size == DIM
    assert info.config.params.vectors.distance == models.Distance.COSINE
    assert info.config.hnsw_config.m == 16
    assert [c.name for c in client.get_collections().collections] == ["docs"]

    # Creating it again is a conflict, as in Qdrant.
    with pytest.raises(Exception) as e:
        client.create_collection("docs", vectors_config=models.VectorParams(size=DIM, distance=models.Distance.DOT))
    assert "409" in str(e.value) or "already exists" in str(e.value)

    assert client.update_collection(
        "docs",
        hnsw_config=models.HnswConfigDiff(m=32, ef_construct=200),
        quantization_config=models.ScalarQuantization(scalar=models.ScalarQuantizationConfig(type=models.ScalarType.INT8, quantile=0.95)),
    )
    info = client.get_collection("docs")
    assert info.config.hnsw_config.m == 32
    assert info.config.hnsw_config.ef_construct == 200
    assert info.config.quantization_config.scalar.type == models.ScalarType.INT8
    assert abs(info.config.quantization_config.scalar.quantile - 0.95) < 1e-6

    assert client.delete_collection("docs")
    assert not client.collection_exists("docs")
    with pytest.raises(Exception) as e:
        client.get_collection("docs")
    assert "404" in str(e.value) or "doesn't exist" in str(e.value)


def test_create_with_hnsw_and_quantization(client):
    client.create_collection(
        "q",
        vectors_config=models.VectorParams(size=8, distance=models.Distance.EUCLID),
        hnsw_config=models.HnswConfigDiff(m=8, ef_construct=64),
        quantization_config=models.ScalarQuantization(scalar=models.ScalarQuantizationConfig(type=models.ScalarType.INT8)),
    )
    info = client.get_collection("q")
    assert info.config.params.vectors.distance == models.Distance.EUCLID
    assert info.config.hnsw_config.m == 8
    assert info.config.hnsw_config.ef_construct == 64
    assert info.config.quantization_config is not None


def test_upsert_retrieve_scroll_count(client):
    client.create_collection("c", vectors_config=models.VectorParams(size=DIM, distance=models.Distance.COSINE))
    vecs, pts = make_points(50)
    r = client.upsert("c", points=pts[:30], wait=True)
    assert r.status == models.UpdateStatus.COMPLETED
    # The batch (columnar) form.
    r = client.upsert(
        "c",
        points=models.Batch(ids=list(range(30, 50)), vectors=vecs[30:].tolist(), payloads=[p.payload for p in pts[30:]]),
    )
    assert r.status == models.UpdateStatus.COMPLETED
    assert client.count("c").count == 50
    assert client.get_collection("c").points_count == 50

    got = client.retrieve("c", ids=[3, 7, 999], with_vectors=True)
    assert [p.id for p in got] == [3, 7]
    assert got[0].payload == {"i": 3, "even": False, "tag": "t0"}
    v3 = vecs[3] / np.linalg.norm(vecs[3])  # Cosine vectors are stored normalized
    assert np.allclose(got[0].vector, v3, atol=1e-6)
    got = client.retrieve("c", ids=[4], with_payload=False)
    assert got[0].payload is None and got[0].vector is None

    # Scroll pages through every point exactly once, in id order.
    seen, offset = [], None
    while True:
        page, offset = client.scroll("c", limit=7, offset=offset)
        seen += [p.id for p in page]
        if offset is None:
            break
    assert seen == list(range(50))

    even = models.Filter(must=[models.FieldCondition(key="even", match=models.MatchValue(value=True))])
    assert client.count("c", count_filter=even).count == 25
    page, _ = client.scroll("c", scroll_filter=even, limit=100)
    assert [p.id for p in page] == list(range(0, 50, 2))


def test_uuid_ids_and_get_point(client, quiver_server):
    client.create_collection("u", vectors_config=models.VectorParams(size=4, distance=models.Distance.DOT))
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    client.upsert("u", points=[models.PointStruct(id=a, vector=[1, 2, 3, 4], payload={"k": "a"}),
                               models.PointStruct(id=b, vector=[0, 0, 0, 1]), models.PointStruct(id=5, vector=[1, 0, 0, 0])])
    got = client.retrieve("u", ids=[b, a, 5])
    assert [p.id for p in got] == [b, a, 5]
    r = httpx.get(f"{quiver_server}/collections/u/points/{a}").json()
    assert r["status"] == "ok"
    assert r["result"]["id"] == a and r["result"]["payload"] == {"k": "a"} and r["result"]["vector"] == [1, 2, 3, 4]
    assert httpx.get(f"{quiver_server}/collections/u/points/77").status_code == 404
    res = client.query_points("u", query=[1, 1, 1, 1], limit=3).points
    assert [p.id for p in res] == [a, b, 5] or [p.id for p in res] == [a, 5, b]
    assert res[0].score == pytest.approx(10.0)


def test_delete_by_ids_and_filter(client):
    client.create_collection("d", vectors_config=models.VectorParams(size=DIM, distance=models.Distance.COSINE))
    _, pts = make_points(20)
    client.upsert("d", points=pts)
    client.delete("d", points_selector=models.PointIdsList(points=[0, 1, 2, 999]))
    assert client.count("d").count == 17
    client.delete("d", points_selector=models.FilterSelector(
        filter=models.Filter(must=[models.FieldCondition(key="tag", match=models.MatchValue(value="t1"))])))
    left = sorted(p.id for p in client.scroll("d", limit=100)[0])
    assert left == [i for i in range(3, 20) if i % 3 != 1]


def test_payload_operations(client):
    client.create_collection("p", vectors_config=models.VectorParams(size=4, distance=models.Distance.COSINE))
    client.upsert("p", points=[models.PointStruct(id=i, vector=[1, i, 0, 0], payload={"a": i, "b": "x"}) for i in range(1, 5)])

    client.set_payload("p", payload={"c": True, "a": 100}, points=[1, 2])
    assert client.retrieve("p", ids=[1])[0].payload == {"a": 100, "b": "x", "c": True}
    assert client.retrieve("p", ids=[3])[0].payload == {"a": 3, "b": "x"}

    client.overwrite_payload("p", payload={"only": 1}, points=[2])
    assert client.retrieve("p", ids=[2])[0].payload == {"only": 1}

    client.delete_payload("p", keys=["b"], points=[3, 4])
    assert client.retrieve("p", ids=[3])[0].payload == {"a": 3}

    # By filter: every point with a == 4.
    client.set_payload("p", payload={"hit": 1}, points=models.Filter(
        must=[models.FieldCondition(key="a", match=models.MatchValue(value=4))]))
    assert client.retrieve("p", ids=[4])[0].payload == {"a": 4, "hit": 1}

    client.clear_payload("p", points_selector=models.PointIdsList(points=[1, 4]))
    got = {p.id: p.payload for p in client.retrieve("p", ids=[1, 2, 3, 4])}
    assert got == {1: {}, 2: {"only": 1}, 3: {"a": 3}, 4: {}}


def test_query_points_vector_matches_numpy(client):
    client.create_collection("s", vectors_config=models.VectorParams(size=DIM, distance=models.Distance.COSINE))
    vecs, pts = make_points(200, seed=1)
    client.upsert("s", points=pts)
    rng = np.random.default_rng(5)
    for _ in range(5):
        q = rng.standard_normal(DIM).astype(np.float32)
        want, s = cosine_top(vecs, q, 10)
        res = client.query_points("s", query=q.tolist(), limit=10, with_payload=True).points
        assert [p.id for p in res] == want
        assert np.allclose([p.score for p in res], s[want], atol=1e-5)
        assert all(res[i].score >= res[i + 1].score for i in range(9))
        assert res[0].payload["i"] == want[0]
        # nearest form, exact search, offset
        res2 = client.query_points("s", query=models.NearestQuery(nearest=q.tolist()), limit=5, offset=3,
                                   search_params=models.SearchParams(exact=True, hnsw_ef=128)).points
        assert [p.id for p in res2] == want[3:8]

    # A filter and a score threshold.
    q = rng.standard_normal(DIM).astype(np.float32)
    flt = models.Filter(must=[models.FieldCondition(key="even", match=models.MatchValue(value=True))])
    res = client.query_points("s", query=q.tolist(), query_filter=flt, limit=200).points
    order, s = cosine_top(vecs, q, 200)
    assert [p.id for p in res] == [i for i in order if i % 2 == 0]
    res = client.query_points("s", query=q.tolist(), limit=200, score_threshold=0.2).points
    assert [p.id for p in res] == [i for i in order if s[i] >= 0.2]

    # with_vectors returns the stored (normalized) vector.
    res = client.query_points("s", query=q.tolist(), limit=1, with_vectors=True).points
    assert np.allclose(res[0].vector, vecs[res[0].id] / np.linalg.norm(vecs[res[0].id]), atol=1e-6)


def test_vector_lists_and_payload_lists_round_trip_exactly(quiver_server):
    """Vectors go through the fast decoder (server/vecjson.c); lists with the same key
    names inside payloads and filters stay lists, and stored vectors are bit-exact."""
    u = quiver_server
    assert httpx.put(f"{u}/collections/vj", json={"vectors": {"size": 4, "distance": "Dot"}}).status_code == 200
    vecs = [[0.1, -0.0, 3.3e38, 7], [1e-40, 2.5, -1, 0.30000001192092896]]
    payload = {"vector": [1, 2, 3], "query": [[4, 5]], "nearest": [6.5], "vectors": [[7]]}
    body = {"points": [{"id": 1, "vector": vecs[0], "payload": payload},
                       {"id": 2, "vector": {"": vecs[1]}, "payload": {"tag": "b"}}]}
    r = httpx.put(f"{u}/collections/vj/points?wait=true", json=body)
    assert r.status_code == 200, r.text
    got = httpx.post(f"{u}/collections/vj/points", json={"ids": [1, 2], "with_vector": True,
                                                          "with_payload": True}).json()["result"]
    by_id = {p["id"]: p for p in got}
    assert by_id[1]["payload"] == payload
    for i, v in ((1, vecs[0]), (2, vecs[1])):
        assert np.array_equal(np.array(by_id[i]["vector"], dtype=np.float32), np.array(v, dtype=np.float32))
    flt = {"must": [{"key": "tag", "match": {"any": ["b"]}}]}
    r = httpx.post(f"{u}/collections/vj/points/query", json={"query": [0, 1, 0, 0], "filter": flt, "limit": 5})
    assert [p["id"] for p in r.json()["result"]["points"]] == [2]
    # Malformed bodies and bad vectors answer as before: the client's own position, the count.
    r = httpx.post(f"{u}/collections/vj/points/query", content=b'{"query": [1, 2, 3, 4], }')
    assert r.status_code == 400 and "column" in r.json()["status"]["error"]
    r = httpx.post(f"{u}/collections/vj/points/query", json={"query": [1, 2, 3]})
    assert r.status_code == 400 and "3 dimensions" in r.json()["status"]["error"]
    r = httpx.post(f"{u}/collections/vj/points/query", content=b'{"query": [1, 2, 3, 1e39]}')
    assert r.status_code == 400 and "vector[3]" in r.json()["status"]["error"]
    r = httpx.post(f"{u}/collections/vj/points/query", content=b'{"query": [1, 2, 3, 1e400]}')
    assert r.status_code == 400 and "column" in r.json()["status"]["error"]


def test_query_by_point_id_excludes_the_point(client):
    client.create_collection("i", vectors_config=models.VectorParams(size=DIM, distance=models.Distance.COSINE))
    vecs, pts = make_points(60, seed=2)
    client.upsert("i", points=pts)
    res = client.query_points("i", query=17, limit=5).points
    want, _ = cosine_top(vecs, vecs[17], 5, exclude=17)
    assert [p.id for p in res] == want
    with pytest.raises(Exception):
        client.query_points("i", query=12345, limit=5)


def test_prefetch_with_rrf_fusion(client):
    client.create_collection("f", vectors_config=models.VectorParams(size=DIM, distance=models.Distance.COSINE))
    vecs, pts = make_points(100, seed=3)
    client.upsert("f", points=pts)
    rng = np.random.default_rng(9)
    q1, q2 = rng.standard_normal(DIM), rng.standard_normal(DIM)
    l1, _ = cosine_top(vecs, q1, 20)
    l2, _ = cosine_top(vecs, q2, 20)
    # Reciprocal rank fusion computed here independently (k = 2, ranks from 1).
    score = {}
    for lst in (l1, l2):
        for rank, pid in enumerate(lst, 1):
            score[pid] = score.get(pid, 0) + 1 / (2 + rank)
    want = sorted(score, key=lambda p: (-score[p], p))[:10]
    res = client.query_points(
        "f",
        prefetch=[models.Prefetch(query=q1.tolist(), limit=20), models.Prefetch(query=q2.tolist(), limit=20)],
        query=models.FusionQuery(fusion=models.Fusion.RRF),
        limit=10,
    ).points
    assert [p.id for p in res] == want
    assert [p.score for p in res] == pytest.approx([score[p] for p in want], rel=1e-5)

    # A vector query over a prefetch rescores only the prefetched candidates.
    res = client.query_points("f", prefetch=models.Prefetch(query=q1.tolist(), limit=20), query=q2.tolist(), limit=5).points
    cand = set(l1)
    order, _ = cosine_top(vecs, q2, 100)
    assert [p.id for p in res] == [i for i in order if i in cand][:5]


def test_query_batch(client):
    client.create_collection("b", vectors_config=models.VectorParams(size=DIM, distance=models.Distance.COSINE))
    vecs, pts = make_points(80, seed=4)
    client.upsert("b", points=pts)
    qs = np.random.default_rng(1).standard_normal((3, DIM))
    res = client.query_batch_points("b", requests=[models.QueryRequest(query=q.tolist(), limit=4) for q in qs])
    assert len(res) == 3
    for q, r in zip(qs, res):
        assert [p.id for p in r.points] == cosine_top(vecs, q, 4)[0]


def test_legacy_search_routes(client, quiver_server):
    client.create_collection("l", vectors_config=models.VectorParams(size=DIM, distance=models.Distance.COSINE))
    vecs, pts = make_points(40, seed=6)
    client.upsert("l", points=pts)
    q = np.random.default_rng(2).standard_normal(DIM)
    want = cosine_top(vecs, q, 5)[0]
    r = httpx.post(f"{quiver_server}/collections/l/points/search", json={"vector": q.tolist(), "limit": 5, "with_payload": True})
    assert r.status_code == 200
    body = r.json()
    assert [p["id"] for p in body["result"]] == want
    assert body["result"][0]["payload"]["i"] == want[0]
    r = httpx.post(f"{quiver_server}/collections/l/points/search/batch",
                   json={"searches": [{"vector": q.tolist(), "limit": 5}, {"vector": (-q).tolist(), "limit": 2}]})
    res = r.json()["result"]
    assert [p["id"] for p in res[0]] == want and len(res[1]) == 2


def test_named_vector_collection(client):
    client.create_collection("n", vectors_config={"text": models.VectorParams(size=4, distance=models.Distance.DOT)})
    info = client.get_collection("n")
    assert info.config.params.vectors["text"].size == 4
    client.upsert("n", points=[models.PointStruct(id=1, vector={"text": [1, 0, 0, 0]}),
                               models.PointStruct(id=2, vector={"text": [0, 2, 0, 0]})])
    res = client.query_points("n", query=[0, 1, 0, 0], using="text", with_vectors=True).points
    assert [p.id for p in res] == [2, 1]
    assert res[0].vector == {"text": [0, 2, 0, 0]}
    with pytest.raises(Exception):
        client.upsert("n", points=[models.PointStruct(id=3, vector={"other": [1, 0, 0, 0]})])
    with pytest.raises(Exception):
        client.query_points("n", query=[0, 1, 0, 0], using="other")


def test_text_queries_and_documents_use_the_server_model(client, quiver_server):
    client.create_collection("t", vectors_config=models.VectorParams(size=384, distance=models.Distance.COSINE))
    texts = ["The cat sat on the mat.", "Stock markets fell sharply today.", "A recipe for banana bread."]
    # Points given as Documents are embedded by the server.
    r = httpx.put(f"{quiver_server}/collections/t/points", timeout=SLOW,
                  json={"points": [{"id": i, "vector": {"text": t}, "payload": {"text": t}} for i, t in enumerate(texts)]})
    assert r.status_code == 200, r.text
    r = httpx.post(f"{quiver_server}/collections/t/points/query", timeout=SLOW, json={"query": {"text": "a kitten on a rug"}, "limit": 3})
    assert r.status_code == 200, r.text
    ids = [p["id"] for p in r.json()["result"]["points"]]
    assert ids[0] == 0
    r = httpx.post(f"{quiver_server}/collections/t/points/query", timeout=SLOW,
                   json={"query": {"nearest": {"text": "how to bake bread"}}, "limit": 1, "with_payload": True})
    assert r.json()["result"]["points"][0]["payload"]["text"] == texts[2]
    # The embedding equals quiver embed's, so a text query equals the vector query.
    vec = client.retrieve("t", ids=[1], with_vectors=True)[0].vector
    res = client.query_points("t", query=vec, limit=1).points
    assert res[0].id == 1 and res[0].score == pytest.approx(1.0, abs=1e-5)
    # A collection whose size does not fit the model gets a clear 400.
    client.create_collection("small", vectors_config=models.VectorParams(size=4, distance=models.Distance.COSINE))
    r = httpx.post(f"{quiver_server}/collections/small/points/query", json={"query": {"text": "x"}})
    assert r.status_code == 400 and "384" in r.json()["status"]["error"]


def test_errors_use_qdrant_shape(quiver_server):
    r = httpx.post(f"{quiver_server}/collections/missing/points/query", json={"query": [1, 2]})
    assert r.status_code == 404
    assert "error" in r.json()["status"] and "time" in r.json()
    httpx.put(f"{quiver_server}/collections/e", json={"vectors": {"size": 3, "distance": "Dot"}})
    r = httpx.put(f"{quiver_server}/collections/e/points", json={"points": [{"id": 1, "vector": [1, 2]}]})
    assert r.status_code == 400 and "dimension" in r.json()["status"]["error"]
    r = httpx.put(f"{quiver_server}/collections/e", json={"vectors": {"size": 0, "distance": "Dot"}})
    assert r.status_code == 400
    r = httpx.put(f"{quiver_server}/collections/e2", json={"vectors": {"size": 3, "distance": "Hamming"}})
    assert r.status_code == 400 and "distance" in r.json()["status"]["error"]


def test_native_routes(quiver_server):
    assert httpx.get(quiver_server + "/healthz").status_code == 200
    assert httpx.get(quiver_server + "/livez").status_code == 200
    assert httpx.get(quiver_server + "/readyz").status_code == 200
    t = httpx.get(quiver_server + "/telemetry").json()["result"]
    assert t["version"] and t["uptime_s"] >= 0 and t["models"][0]["name"] == "all-MiniLM-L6-v2"
    m = httpx.get(quiver_server + "/metrics")
    assert m.status_code == 200 and m.headers["content-type"].startswith("text/plain")
    doc = httpx.get(quiver_server + "/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    for path in ["/collections/{name}/points/query", "/collections/{name}", "/healthz", "/openapi.json"]:
        assert path in doc["paths"], path
    assert set(doc["paths"]["/collections/{name}"]) == {"get", "put", "delete", "patch"}
    # Every body-taking route has its own schema (a schema that failed to parse would fall
    # back to a bare object).
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if "requestBody" in op:
                assert "properties" in op["requestBody"]["content"]["application/json"]["schema"], (method, path)
    for path in ["/v1/embeddings", "/embed", "/rerank", "/tokenize", "/v1/models", "/info", "/metrics"]:
        assert path in doc["paths"], path


def test_serve_refuses_bad_settings(tmp_path):
    import subprocess
    from conftest import QUIVER

    bad = tmp_path / "quiver.yaml"
    bad.write_text("port: 6333\nlimits:\n  max_body_bytes: lots\n")
    for args in (["--gpu", "sometimes"], ["--port", "99999"], ["--config", bad], ["--config", tmp_path / "none.yaml"],
                 ["--threads", "0"], ["--bogus"]):
        p = subprocess.run([QUIVER, "serve", "--no-model", "--data-dir", tmp_path / "d", *map(str, args)],
                           capture_output=True, text=True, timeout=60)
        assert p.returncode != 0, args
        err = p.stderr.strip()
        assert err.startswith("quiver: ") and len(err.splitlines()) == 1, (args, err)
    assert "line 3" in subprocess.run([QUIVER, "serve", "--config", bad], capture_output=True, text=True).stderr


def test_concurrent_clients_on_keep_alive_connections(client, quiver_server):
    """Eight clients at once, each on one keep-alive connection, writing their own points
    and querying: every answer is right and nothing is lost."""
    from concurrent.futures import ThreadPoolExecutor

    client.create_collection("cc", vectors_config=models.VectorParams(size=DIM, distance=models.Distance.DOT))
    rng = np.random.default_rng(11)
    vecs = rng.standard_normal((8 * 40, DIM)).astype(np.float32)

    def worker(w):
        with httpx.Client(base_url=quiver_server, timeout=SLOW) as h:
            for j in range(40):
                pid = w * 40 + j
                r = h.put("/collections/cc/points", json={"points": [{"id": pid, "vector": vecs[pid].tolist(), "payload": {"w": w}}]})
                assert r.status_code == 200, r.text
                r = h.post("/collections/cc/points/query",
                           json={"query": vecs[pid].tolist(), "limit": 1000,
                                 "filter": {"must": [{"key": "w", "match": {"value": w}}]}})
                assert r.status_code == 200, r.text
                ids = [p["id"] for p in r.json()["result"]["points"]]
                # This worker's points so far, in exact dot-product order.
                mine = np.arange(w * 40, pid + 1)
                want = mine[np.argsort(-(vecs[mine] @ vecs[pid]), kind="stable")].tolist()
                assert sorted(ids) == sorted(want)
                assert ids[0] == want[0]
        return w

    with ThreadPoolExecutor(8) as ex:
        assert sorted(ex.map(worker, range(8))) == list(range(8))
    assert client.count("cc").count == 8 * 40


def test_serve_without_arguments_uses_cwd_data_and_quiver_yaml(tmp_path):
    """`quiver serve` alone: the default model, ./quiver-data, and ./quiver.yaml when present
    (the port comes from QUIVER_PORT here so tests never collide on 6333)."""
    import os
    import re
    import signal
    import subprocess
    import time
    from conftest import QUIVER

    (tmp_path / "quiver.yaml").write_text("auth:\n  api_keys: [yaml-key]\nhost: 127.0.0.1\n")
    log = open(tmp_path / "log", "wb")
    env = dict(os.environ, QUIVER_PORT="0")
    env.pop("QUIVER_DATA_DIR", None)
    p = subprocess.Popen([QUIVER, "serve"], cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        url = None
        for _ in range(1200):
            m = re.search(r"serving on http://[^:]+:(\d+)", (tmp_path / "log").read_text())
            if m:
                url = f"http://127.0.0.1:{m.group(1)}"
                break
            assert p.poll() is None, (tmp_path / "log").read_text()
            time.sleep(0.1)
        assert url
        assert "model all-MiniLM-L6-v2" in (tmp_path / "log").read_text()
        assert httpx.get(url + "/collections").status_code == 401  # the key from ./quiver.yaml
        r = httpx.put(url + "/collections/here", json={"vectors": {"size": 2, "distance": "Dot"}}, headers={"api-key": "yaml-key"})
        assert r.status_code == 200
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=60) == 0
        log.close()
    # The collection is in ./quiver-data, as the CLI sees it.
    out = subprocess.run([QUIVER, "collection", "list", "--data-dir", tmp_path / "quiver-data"],
                         capture_output=True, text=True, check=True).stdout
    assert "here" in out


def test_deleting_a_collection_while_it_is_in_use(client, quiver_server):
    """One client deletes and recreates a collection over and over while others upsert,
    query and count on it. Every answer is a success or a clean 404 (never a crash or a
    5xx), and afterwards the server still serves. Deleting frees the collection's handle,
    so a request still holding it would read freed memory: the ASan run catches that."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(5)
    vecs = rng.standard_normal((64, DIM)).astype(np.float32)
    body = {"vectors": {"size": DIM, "distance": "Dot"}}
    stop = threading.Event()
    seen = {"ok": 0, "missing": 0}

    def churn():
        with httpx.Client(base_url=quiver_server, timeout=SLOW) as h:
            for _ in range(15):
                assert h.put("/collections/churn", json=body).status_code in (200, 409)
                assert h.delete("/collections/churn").status_code == 200
        stop.set()

    def user(w):
        with httpx.Client(base_url=quiver_server, timeout=SLOW) as h:
            n = 0
            while not stop.is_set():
                i, n = (w * 17 + n) % 64, n + 1
                for r in (
                    h.put("/collections/churn/points", json={"points": [{"id": i, "vector": vecs[i].tolist()}]}),
                    h.post("/collections/churn/points/query", json={"query": vecs[i].tolist(), "limit": 5}),
                    h.post("/collections/churn/points/count", json={}),
                ):
                    assert r.status_code in (200, 404), r.text
                    seen["ok" if r.status_code == 200 else "missing"] += 1
        return w

    with ThreadPoolExecutor(5) as ex:
        futures = [ex.submit(user, w) for w in range(4)] + [ex.submit(churn)]
        for f in futures:
            f.result()
    assert seen["missing"] > 0  # the deletes really raced the users
    assert not client.collection_exists("churn")
    assert client.get_collections() is not None
