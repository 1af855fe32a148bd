"""The quiver CLI end to end: real files in, JSON out, checked against numpy."""
import json
import uuid

import numpy as np
import pytest


def write_fvecs(path, x):
    x = np.asarray(x, dtype=np.float32)
    with open(path, "wb") as f:
        for row in x:
            f.write(np.int32(len(row)).tobytes())
            f.write(row.tobytes())


def brute_force(x, q, distance, k):
    """Qdrant's scores and order: similarity descending, or distance ascending."""
    if distance == "Cosine":
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        q = q / np.linalg.norm(q)
    if distance in ("Cosine", "Dot"):
        s = x @ q
        order = np.argsort(-s, kind="stable")
    elif distance == "Euclid":
        s = np.sqrt(((x - q) ** 2).sum(1))
        order = np.argsort(s, kind="stable")
    else:
        s = np.abs(x - q).sum(1)
        order = np.argsort(s, kind="stable")
    return order[:k], s[order[:k]]


@pytest.mark.parametrize("distance", ["Cosine", "Dot", "Euclid", "Manhattan"])
def test_load_npy_and_search_matches_numpy(qv, tmp_path, distance):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3000, 48)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    qv.run("collection", "create", "c", "--size", 48, "--distance", distance)
    assert qv.json("load", "c", tmp_path / "x.npy")["loaded"] == 3000
    assert qv.json("collection", "info", "c")["points_count"] == 3000
    queries = rng.standard_normal((20, 48)).astype(np.float32)
    np.save(tmp_path / "q.npy", queries)
    results = qv.lines("search", "c", "--queries", tmp_path / "q.npy", "--limit", 10)
    assert len(results) == 20
    for q, res in zip(queries, results):
        want_ids, want_scores = brute_force(x.astype(np.float64), q.astype(np.float64), distance, 10)
        assert [r["id"] for r in res] == list(want_ids)
        np.testing.assert_allclose([r["score"] for r in res], want_scores, rtol=1e-4, atol=1e-4)
    # one query through --vector gives the same answer as the batch
    one = qv.lines("search", "c", "--vector", ",".join(repr(float(v)) for v in queries[0]), "--limit", 10)
    assert [r["id"] for r in one[0]] == [r["id"] for r in results[0]]


def test_cosine_vectors_are_normalized_on_insert(qv, tmp_path):
    qv.run("collection", "create", "c", "--size", 2)
    qv.run("points", "upsert", "c", "--id", 1, "--vector", "3,4")
    rec = qv.json("points", "get", "c", 1, "--with-vector")[0]
    np.testing.assert_allclose(rec["vector"], [0.6, 0.8], rtol=1e-6)


def test_fvecs_with_ids_file(qv, tmp_path):
    x = np.eye(4, dtype=np.float32)
    write_fvecs(tmp_path / "x.fvecs", x)
    u = str(uuid.UUID(int=12345))
    (tmp_path / "ids.txt").write_text(f"10\n11\n{u}\n13\n")
    qv.run("collection", "create", "c", "--size", 4, "--distance", "Dot")
    qv.run("load", "c", tmp_path / "x.fvecs", "--ids", tmp_path / "ids.txt")
    res = qv.lines("search", "c", "--vector", "0,0,1,0", "--limit", 1)
    assert res[0][0]["id"] == u
    assert res[0][0]["score"] == pytest.approx(1.0)


def test_jsonl_payloads_filters_scroll_delete(qv, tmp_path):
    rows = []
    for i in range(100):
        rows.append({"id": i, "vector": [float(i), 1.0], "payload": {
            "city": ["Paris", "Berlin", "Rome"][i % 3], "n": i, "tags": ["a", "b"] if i % 2 else [],
            "meta": {"ok": i % 5 == 0}}})
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    qv.run("collection", "create", "c", "--size", 2, "--distance", "Euclid")
    qv.run("load", "c", tmp_path / "p.jsonl", "--batch", 7)
    assert qv.json("points", "count", "c")["count"] == 100
    f = json.dumps({"must": [{"key": "city", "match": {"value": "Rome"}}],
                    "must_not": [{"key": "n", "range": {"lt": 50}}]})
    want = [r["id"] for r in rows if r["payload"]["city"] == "Rome" and r["payload"]["n"] >= 50]
    assert qv.json("points", "count", "c", "--filter", f)["count"] == len(want)
    res = qv.lines("search", "c", "--vector", "0,1", "--limit", 100, "--filter", f)[0]
    assert [r["id"] for r in res] == want  # Euclid from (0,1): ascending id
    assert res[0]["payload"]["city"] == "Rome"
    nested = json.dumps({"must": [{"key": "meta.ok", "match": {"value": True}}]})
    assert qv.json("points", "count", "c", "--filter", nested)["count"] == 20
    empty = json.dumps({"must": [{"is_empty": {"key": "tags"}}]})
    assert qv.json("points", "count", "c", "--filter", empty)["count"] == 50
    # offset and score threshold
    top = qv.lines("search", "c", "--vector", "0,1", "--limit", 5, "--offset", 2)[0]
    assert [r["id"] for r in top] == [2, 3, 4, 5, 6]
    close = qv.lines("search", "c", "--vector", "0,1", "--limit", 50, "--score-threshold", 3.5)[0]
    assert [r["id"] for r in close] == [0, 1, 2, 3]
    # scroll pages through every point in id order
    seen, offset = [], None
    while True:
        args = ["points", "scroll", "c", "--limit", 30] + (["--offset", offset] if offset is not None else [])
        page = qv.json(*args)
        seen += [p["id"] for p in page["points"]]
        offset = page["next_page_offset"]
        if offset is None:
            break
    assert seen == list(range(100))
    # delete by filter, then by ids
    assert qv.json("points", "delete", "c", "--filter", f)["deleted"] == len(want)
    assert qv.json("points", "delete", "c", 0, 1, 1, 999)["deleted"] == 2
    assert qv.json("points", "count", "c")["count"] == 100 - len(want) - 2
    assert qv.json("points", "get", "c", 0, 3) == [{"id": 3, "payload": rows[3]["payload"], "vector": None}]


def test_upsert_replaces_and_survives_restart(qv):
    qv.run("collection", "create", "c", "--size", 3, "--distance", "Dot")
    qv.run("points", "upsert", "c", "--id", 5, "--vector", "1,2,3", "--payload", '{"v":1}')
    qv.run("points", "upsert", "c", "--id", 5, "--vector", "4,5,6", "--payload", '{"v":2}')
    got = qv.json("points", "get", "c", 5, "--with-vector")
    assert got == [{"id": 5, "payload": {"v": 2}, "vector": [4, 5, 6]}]
    assert qv.json("points", "count", "c")["count"] == 1


def test_collection_lifecycle(qv):
    qv.run("collection", "create", "b", "--size", 1)
    qv.run("collection", "create", "a", "--size", 65536, "--distance", "Manhattan")
    assert qv.json("collection", "list")["collections"] == [{"name": "a"}, {"name": "b"}]
    info = qv.json("collection", "info", "a")
    assert info["config"]["params"]["vectors"] == {"size": 65536, "distance": "Manhattan"}
    qv.run("collection", "delete", "a")
    assert qv.json("collection", "list")["collections"] == [{"name": "b"}]
    assert "does not exist" in qv.fail("collection", "info", "a")


@pytest.mark.parametrize("name", ["../x", "", "a/b", "x" * 129, ".hidden", "sp ace"])
def test_invalid_names_are_refused(qv, name):
    assert "collection name" in qv.fail("collection", "create", name, "--size", 4)
    assert qv.json("collection", "list")["collections"] == []


def test_bad_input_leaves_data_intact(qv, tmp_path):
    qv.run("collection", "create", "c", "--size", 3)
    good = [{"id": i, "vector": [1.0, float(i), 0.5], "payload": {"i": i}} for i in range(5)]
    (tmp_path / "good.jsonl").write_text("\n".join(json.dumps(r) for r in good))
    qv.run("load", "c", tmp_path / "good.jsonl")
    before = qv.json("points", "scroll", "c", "--limit", 100, "--with-vector")

    def bad_file(name, content):
        p = tmp_path / name
        p.write_bytes(content if isinstance(content, bytes) else content.encode())
        return p

    cases = {
        "dimension": ("d.jsonl", '{"id": 9, "vector": [1, 2]}', "dimensions"),
        "nan-npy": ("n.npy", None, "NaN"),
        "malformed-json": ("m.jsonl", '{"id": 9, "vector": [1,2,3]}\n{"id": 10, "vector": [1,2', "m.jsonl:2: invalid json"),
        "payload-not-object": ("p.jsonl", '{"id": 9, "vector": [1,2,3], "payload": [1]}', "payload"),
        "bad-utf8": ("u.jsonl", b'{"id": 9, "vector": [1,2,3], "payload": {"s": "\xff\xfe"}}', ""),
        "empty": ("e.jsonl", "", "empty"),
        "truncated-npy": ("t.npy", None, "truncated"),
        "truncated-fvecs": ("t.fvecs", None, "truncated"),
        "negative-id": ("i.jsonl", '{"id": -1, "vector": [1,2,3]}', "id"),
    }
    for label, (name, content, needle) in cases.items():
        if name == "n.npy":
            x = np.ones((4, 3), np.float32)
            x[2, 1] = np.nan
            np.save(tmp_path / name, x)
            path = tmp_path / name
        elif name == "t.npy":
            np.save(tmp_path / name, np.ones((4, 3), np.float32))
            path = tmp_path / name
            path.write_bytes(path.read_bytes()[:-1])
        elif name == "t.fvecs":
            write_fvecs(tmp_path / name, np.ones((4, 3)))
            path = tmp_path / name
            path.write_bytes(path.read_bytes()[:-1])
        else:
            path = bad_file(name, content)
        err = qv.fail("load", "c", path)
        assert needle.lower() in err.lower(), (label, err)
    assert "NaN" in qv.fail("search", "c", "--vector", "1,nan,2")
    assert "components" in qv.fail("search", "c", "--vector", "1,2")
    assert "unknown collection" in qv.fail("search", "nope", "--vector", "1,2,3").replace("does not exist", "unknown collection")
    assert "already exists" in qv.fail("collection", "create", "c", "--size", 3)
    assert "filter" in qv.fail("points", "count", "c", "--filter", '{"must": [{"key": "x", "bogus": 1}]}')
    assert "filter" in qv.fail("points", "count", "c", "--filter", '{"must": ')
    assert "--size" in qv.fail("collection", "create", "z", "--size", 0)
    assert "--size" in qv.fail("collection", "create", "z", "--size", 65537)
    assert qv.json("points", "scroll", "c", "--limit", 100, "--with-vector") == before


def test_data_directory_is_locked(qv, tmp_path):
    import subprocess
    import time
    from conftest import CRASH_WRITER
    qv.run("collection", "create", "c", "--size", 2)
    w = subprocess.Popen([CRASH_WRITER, "write", qv.data_dir, "0", "1"], stdout=subprocess.PIPE, text=True)
    try:
        assert w.stdout.readline().strip() == "ready"
        assert "in use by another process" in qv.fail("collection", "list")
    finally:
        w.kill()
        w.wait()
    assert {"name": "c"} in qv.json("collection", "list")["collections"]


def test_help_and_unknown_commands(qv):
    for cmd in (["--help"], ["collection", "--help"], ["load", "--help"], ["search", "--help"],
                ["points", "--help"], ["bench", "--help"]):
        p = qv.run(*cmd)
        assert "usage" in p.stdout
    assert "unknown command" in qv.fail("frobnicate")
    assert "unknown option" in qv.fail("collection", "list", "--nope")
