"""HNSW indexes through the CLI: parameters, build, persistence, deletes, filters, and a
damaged graph file, checked against exact search (numpy and --exact)."""
import json
import os
import subprocess

import numpy as np
import pytest
from conftest import QUIVER


def clustered(n, dim, seed):
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).uniform(-1, 1, (256, dim))
    pick = rng.integers(0, len(centres), n)
    return (centres[pick] + 0.5 * rng.uniform(-1, 1, (n, dim)).astype(np.float64)).astype(np.float32)


def ids_of(line):
    return [p["id"] for p in line]


def write_queries(tmp_path, q):
    path = tmp_path / "q.npy"
    np.save(path, q)
    return path


@pytest.fixture
def indexed(qv, tmp_path):
    """3000 clustered 16-d points, payload-free, with a graph built through the CLI."""
    x = clustered(3000, 16, 1)
    np.save(tmp_path / "x.npy", x)
    qv.run("collection", "create", "c", "--size", 16, "--distance", "Euclid", "--m", 8,
           "--ef-construct", 64, "--full-scan-threshold", 1)
    qv.run("load", "c", tmp_path / "x.npy")
    return x


def test_create_flags_show_in_collection_info(qv):
    qv.run("collection", "create", "a", "--size", 8, "--m", 24, "--ef-construct", 200,
           "--full-scan-threshold", 500, "--quantization", "int8", "--quantile", 0.95)
    info = qv.json("collection", "info", "a")
    assert info["config"]["hnsw_config"] == {"m": 24, "ef_construct": 200, "full_scan_threshold": 500}
    assert info["config"]["quantization_config"]["scalar"]["type"] == "int8"
    assert info["config"]["quantization_config"]["scalar"]["quantile"] == pytest.approx(0.95)
    assert info["points_count"] == 0 and info["indexed_vectors_count"] == 0
    qv.run("collection", "create", "b", "--size", 8)
    info = qv.json("collection", "info", "b")
    assert info["config"]["hnsw_config"] == {"m": 16, "ef_construct": 100, "full_scan_threshold": 10000}
    assert info["config"]["quantization_config"] is None


@pytest.mark.parametrize("args, message", [
    (["--m", 1], "--m"),
    (["--ef-construct", 2], "--ef-construct"),
    (["--quantization", "int4"], "--quantization must be int8"),
    (["--quantization", "int8", "--quantile", 0.3], "--quantile"),
    (["--quantile", 0.9], "--quantile needs"),
])
def test_bad_index_flags_get_one_clear_line(qv, args, message):
    err = qv.fail("collection", "create", "x", "--size", 4, *args)
    assert message in err
    assert "x" not in qv.json("collection", "list")["collections"]


def test_build_then_search_agrees_with_exact_and_the_graph_reloads(qv, tmp_path, indexed):
    x = indexed
    built = qv.json("index", "build", "c")
    assert built["points"] == 3000 and built["indexed"] == 3000 and built["graph"] == "built"
    assert built["graph_bytes"] > 0 and built["m"] == 8
    info = qv.json("index", "info", "c")  # a new process: the graph comes from its file
    assert info["graph"] == "file" and info["indexed"] == 3000 and info["tombstones"] == 0
    q = clustered(100, 16, 2)
    qpath = write_queries(tmp_path, q)
    approx = qv.lines("search", "c", "--queries", qpath, "--limit", 10, "--no-payload")
    exact = qv.lines("search", "c", "--queries", qpath, "--limit", 10, "--no-payload", "--exact")
    d = ((x[None, :, :] - q[:, None, :]) ** 2).sum(-1)
    truth = np.argsort(d, axis=1, kind="stable")[:, :10]
    assert [ids_of(e) for e in exact] == truth.tolist()
    hits = sum(len(set(ids_of(a)) & set(t)) for a, t in zip(approx, truth.tolist()))
    assert hits / 1000 >= 0.95
    wide = qv.lines("search", "c", "--queries", qpath, "--limit", 10, "--no-payload", "--hnsw-ef", 200)
    assert sum(len(set(ids_of(a)) & set(t)) for a, t in zip(wide, truth.tolist())) >= hits
    err = qv.fail("search", "c", "--vector", ",".join(["0"] * 16), "--hnsw-ef", 0)
    assert "--hnsw-ef" in err


def test_deleted_points_never_come_back_across_restarts(qv, tmp_path, indexed):
    x = indexed
    qv.run("index", "build", "c")
    gone = list(range(0, 3000, 3))
    qv.run("points", "delete", "c", *gone)
    info = qv.json("index", "info", "c")
    assert info["points"] == 2000
    q = x[gone[:50]]
    qpath = write_queries(tmp_path, q)
    for extra in ([], ["--exact"]):
        for line in qv.lines("search", "c", "--queries", qpath, "--limit", 20, "--no-payload", *extra):
            assert len(line) == 20
            assert all(i % 3 != 0 for i in ids_of(line))


def test_a_selective_filter_returns_what_the_filtered_exact_scan_returns(qv, tmp_path):
    x = clustered(3000, 16, 3)
    with open(tmp_path / "p.jsonl", "w") as f:
        for i, v in enumerate(x):
            f.write(json.dumps({"id": i, "vector": v.tolist(), "payload": {"g": i % 100}}) + "\n")
    qv.run("collection", "create", "c", "--size", 16, "--distance", "Dot", "--full-scan-threshold", 2)
    qv.run("load", "c", tmp_path / "p.jsonl")
    qv.run("index", "build", "c")
    qpath = write_queries(tmp_path, clustered(20, 16, 4))
    for flt in ({"must": [{"key": "g", "match": {"value": 7}}]},
                {"must": [{"key": "g", "range": {"lt": 40}}]}):
        args = ["search", "c", "--queries", qpath, "--limit", 25, "--filter", json.dumps(flt)]
        approx = qv.lines(*args, "--hnsw-ef", 10)
        exact = qv.lines(*args, "--exact")
        for a, e in zip(approx, exact):
            assert len(a) == len(e) == 25
            if "match" in flt["must"][0]:
                assert a == e
            else:
                assert len(set(ids_of(a)) & set(ids_of(e)[:10])) >= 9
                assert all(p["payload"]["g"] < 40 for p in a)


def test_a_damaged_graph_file_is_detected_and_rebuilt(qv, tmp_path, indexed):
    qv.run("index", "build", "c")
    path = os.path.join(qv.data_dir, "collections", "c", "graph.hnsw")
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.seek(size // 2)
        b = f.read(1)
        f.seek(size // 2)
        f.write(bytes([b[0] ^ 0x01]))
    q = clustered(20, 16, 5)
    qpath = write_queries(tmp_path, q)
    exact = qv.lines("search", "c", "--queries", qpath, "--limit", 10, "--exact", "--no-payload")
    info = qv.run("index", "info", "c")
    assert "not using the saved index" in info.stderr
    assert json.loads(info.stdout)["graph"] != "file"
    rebuilt = qv.json("index", "build", "c")
    assert rebuilt["indexed"] == 3000
    assert qv.json("index", "info", "c")["graph"] == "file"
    approx = qv.lines("search", "c", "--queries", qpath, "--limit", 10, "--no-payload")
    hits = sum(len(set(ids_of(a)) & set(ids_of(e))) for a, e in zip(approx, exact))
    assert hits >= 190


def test_index_commands_refuse_bad_input(qv):
    assert "does not exist" in qv.fail("index", "info", "nope")
    assert "does not exist" in qv.fail("index", "build", "nope")
    err = qv.fail("index", "frob", "c")
    assert "unknown subcommand" in err


def test_int8_quantization_reports_its_memory_and_keeps_recall(qv, tmp_path):
    x = clustered(3000, 32, 6)
    np.save(tmp_path / "x.npy", x)
    qv.run("collection", "create", "q", "--size", 32, "--full-scan-threshold", 1, "--quantization", "int8")
    qv.run("load", "q", tmp_path / "x.npy")
    built = qv.json("index", "build", "q")
    assert built["quantization"] == "int8"
    assert built["quantized_bytes"] == 3000 * (32 + 4)
    info = qv.json("collection", "info", "q")
    assert info["memory"]["quantized_bytes"] * 3 < info["memory"]["vectors_bytes"]
    assert info["indexed_vectors_count"] == 3000
    qpath = write_queries(tmp_path, clustered(50, 32, 7))
    approx = qv.lines("search", "q", "--queries", qpath, "--limit", 10, "--no-payload")
    exact = qv.lines("search", "q", "--queries", qpath, "--limit", 10, "--no-payload", "--exact")
    hits = sum(len(set(ids_of(a)) & set(ids_of(e))) for a, e in zip(approx, exact))
    assert hits >= 475
    # float32 rescoring: a point found on both paths has the same score
    for a, e in zip(approx, exact):
        es = {p["id"]: p["score"] for p in e}
        for p in a:
            if p["id"] in es:
                assert p["score"] == pytest.approx(es[p["id"]], abs=1e-6)


def test_bench_ann_through_a_collection(qv, tmp_path):
    x = clustered(2000, 16, 8)
    q = clustered(30, 16, 9)
    d = ((q[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "q.npy", q)
    np.save(tmp_path / "t.npy", np.argsort(d, axis=1, kind="stable")[:, :10].astype(np.int64))
    def bench(*args):  # bench ann takes no --data-dir: its collection lives in a temporary one
        return subprocess.run([QUIVER, *map(str, args)], capture_output=True, text=True, timeout=300)

    args = ["bench", "ann", "--data", tmp_path / "x.npy", "--queries", tmp_path / "q.npy",
            "--truth", tmp_path / "t.npy", "--distance", "Euclid", "--ef", "32,128", "--m", 8,
            "--ef-construct", 64, "--collection"]
    for extra in ([], ["--quantization", "int8"]):
        p = bench(*args, *extra)
        assert p.returncode == 0, p.stderr
        r = json.loads(p.stdout)
        assert r["collection"] is True and r["n"] == 2000
        assert (r["quantized_bytes"] > 0) == bool(extra)
        assert [run["ef"] for run in r["runs"]] == [32, 128]
        assert r["runs"][-1]["recall"] >= 0.95
    p = bench(*args[:-1], "--quantization", "int8")
    assert p.returncode == 1 and "needs --collection" in p.stderr
