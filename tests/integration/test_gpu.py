"""GPU detection and fallback through the real binary on any machine: `quiver info`
reports the backend and, without a GPU, why; a plugin whose device fails every unit of
work (the test plugin built beside the binary) changes no result, only where it ran."""
import json
import os
import subprocess

from conftest import QUIVER

BIN_DIR = os.path.dirname(os.path.abspath(QUIVER))
FAKE = os.path.join(BIN_DIR, "libqv_fake_plugin.so")
REAL = os.path.join(BIN_DIR, "libquiver-cuda.so")


def run(*args, env=None, check=True):
    e = {k: v for k, v in os.environ.items() if not k.startswith(("QUIVER_GPU", "QUIVER_CUDA", "QV_FAKE"))}
    e.update(env or {})
    p = subprocess.run([QUIVER, *args], capture_output=True, text=True, env=e, timeout=300)
    if check:
        assert p.returncode == 0, p.stderr
    return p


def info(env=None):
    return json.loads(run("info", "--json", env=env).stdout)


def test_info_reports_backend_and_reason():
    j = info()
    assert j["backend"] in ("cpu", "cuda")
    if j["backend"] == "cpu":
        assert j["reason"], j
        assert j["device"] is None
    else:
        assert j["reason"] is None
        d = j["device"]
        assert d["name"] and d["memory_total"] > 0 and "." in d["compute_capability"]
    text = run("info").stdout
    assert "backend:" in text


def test_info_disabled_by_config():
    j = info({"QUIVER_GPU": "off"})
    assert j["backend"] == "cpu"
    assert "disabled by config" in j["reason"]
    assert info({"QUIVER_GPU": "auto"})["gpu_mode"] == "auto"
    assert run("info", "--gpu", "off", "--json").stdout.count("disabled by config") == 1


def test_info_missing_plugin_and_bad_settings():
    j = info({"QUIVER_CUDA_PLUGIN": "/nonexistent/libquiver-cuda.so"})
    assert j["backend"] == "cpu" and "no plugin at QUIVER_CUDA_PLUGIN" in j["reason"]
    p = run("info", env={"QUIVER_GPU": "sometimes"}, check=False)
    assert p.returncode != 0
    assert p.stderr.startswith("quiver: ") and "QUIVER_GPU" in p.stderr and len(p.stderr.splitlines()) == 1
    p = run("info", "--gpu-device", "-1", check=False)
    assert p.returncode != 0 and len(p.stderr.splitlines()) == 1


def test_plugin_reasons_through_dlopen():
    j = info({"QUIVER_CUDA_PLUGIN": FAKE, "QV_FAKE_PLUGIN_MODE": "nodevice"})
    assert j["backend"] == "cpu" and j["reason"] == "fake: no CUDA device" and j["plugin"] == FAKE
    j = info({"QUIVER_CUDA_PLUGIN": FAKE, "QV_FAKE_PLUGIN_MODE": "badversion"})
    assert j["backend"] == "cpu" and "API version 99" in j["reason"]
    j = info({"QUIVER_CUDA_PLUGIN": FAKE, "QV_FAKE_PLUGIN_MODE": "broken"})
    assert j["backend"] == "cuda" and j["device"]["name"] == "Fake GPU"
    assert j["device"]["compute_capability"] == "9.0" and j["device"]["driver_version"] == "13.0"


def test_real_plugin_without_driver_is_reported_not_fatal():
    """Where nvcc built the plugin: loading it on a machine without a driver (or device)
    gives a reason and the CPU; with a GPU it reports the device."""
    if not os.path.exists(REAL):
        j = info()
        assert j["backend"] == "cpu" and "no plugin built" in j["reason"]
        return
    j = info({"QUIVER_CUDA_PLUGIN": REAL})
    if j["backend"] == "cpu":
        assert "driver" in j["reason"] or "device" in j["reason"], j
    else:
        assert j["device"]["name"]
    j = info()
    assert j["plugin"] == REAL
    if j["backend"] == "cpu":
        assert "driver" in j["reason"] or "device" in j["reason"], j


def test_embeddings_unchanged_when_the_gpu_fails_every_unit():
    texts = ["the quick brown fox", "GPUs fail sometimes", "a" * 50, "semantic search with vectors"]
    cpu = run("embed", "--model", "all-MiniLM-L6-v2", *texts, env={"QUIVER_GPU": "off"})
    broken = run("embed", "--model", "all-MiniLM-L6-v2", *texts,
                 env={"QUIVER_CUDA_PLUGIN": FAKE, "QV_FAKE_PLUGIN_MODE": "broken", "QUIVER_LOG": "warn"})
    assert broken.stdout == cpu.stdout
    assert "rerunning on the CPU" in broken.stderr


def test_searches_unchanged_when_the_gpu_fails_every_unit(tmp_path):
    """Exact searches of a collection go to the device when there is one (the broken test
    plugin takes the copy, then fails every search): the answers are the CPU's, the
    fallback is logged, and the process reports the breaker it opened."""
    import numpy as np

    rng = np.random.default_rng(7)
    base = rng.standard_normal((500, 24)).astype(np.float32)
    queries = rng.standard_normal((20, 24)).astype(np.float32)
    np.save(tmp_path / "base.npy", base)
    np.save(tmp_path / "q.npy", queries)
    data = str(tmp_path / "data")
    run("collection", "create", "c", "--size", "24", "--distance", "Euclid", "--data-dir", data)
    run("load", "c", str(tmp_path / "base.npy"), "--data-dir", data)
    args = ("search", "c", "--queries", str(tmp_path / "q.npy"), "--limit", "7", "--data-dir", data)
    cpu = run(*args, env={"QUIVER_GPU": "off"})
    broken_env = {"QUIVER_CUDA_PLUGIN": FAKE, "QV_FAKE_PLUGIN_MODE": "broken", "QUIVER_LOG": "warn"}
    broken = run(*args, env=broken_env)
    assert broken.stdout == cpu.stdout
    assert "rerunning on the CPU" in broken.stderr
    got = [[p["id"] for p in json.loads(line)] for line in cpu.stdout.splitlines()]
    d = ((queries[:, None, :] - base[None, :, :]) ** 2).sum(-1)
    assert got == np.argsort(d, axis=1, kind="stable")[:, :7].tolist()
    # in units of 4 queries: the first unit fails and the rest of the batch goes straight
    # to the CPU (one failure per search, not five)
    small = run(*args, env={**broken_env, "QUIVER_GPU_BATCH_SIZE": "4"})
    assert small.stdout == cpu.stdout
    assert small.stderr.count("rerunning on the CPU") == 1
    j = info({"QUIVER_CUDA_PLUGIN": FAKE, "QV_FAKE_PLUGIN_MODE": "broken"})
    assert j["exact_search"] == "cuda" and j["breaker"] == "closed"
    assert j["gpu_settings"]["batch_size"] == 64 and j["gpu_settings"]["breaker_failures"] == 3
    assert info({"QUIVER_GPU_BREAKER_FAILURES": "5"})["gpu_settings"]["breaker_failures"] == 5
    p = run("info", env={"QUIVER_GPU_MEMORY_FRACTION": "0"}, check=False)
    assert p.returncode != 0 and "QUIVER_GPU_MEMORY_FRACTION" in p.stderr and len(p.stderr.splitlines()) == 1


def test_server_search_falls_back_and_reports_the_breaker(start_quiver_server):
    """The server with a device that fails every search: Qdrant searches answer as the CPU
    does, and after gpu.breaker_failures failures /metrics shows the breaker open and the
    searches running on the CPU."""
    import httpx
    import numpy as np

    srv = start_quiver_server(
        args=["--gpu-breaker-failures", "2", "--gpu-breaker-cooldown", "3600"], model=False,
        env={"QUIVER_CUDA_PLUGIN": FAKE, "QV_FAKE_PLUGIN_MODE": "broken"})
    rng = np.random.default_rng(3)
    base = rng.standard_normal((200, 8)).astype(np.float32)
    with httpx.Client(base_url=srv.url, timeout=60) as c:
        assert c.put("/collections/g", json={"vectors": {"size": 8, "distance": "Dot"}}).status_code == 200
        pts = [{"id": i, "vector": base[i].tolist()} for i in range(len(base))]
        assert c.put("/collections/g/points?wait=true", json={"points": pts}).status_code == 200
        for q in rng.standard_normal((3, 8)).astype(np.float32):
            r = c.post("/collections/g/points/search", json={"vector": q.tolist(), "limit": 4})
            assert r.status_code == 200, r.text
            assert [p["id"] for p in r.json()["result"]] == np.argsort(-(base @ q), kind="stable")[:4].tolist()
        t = c.get("/metrics").text
    vals = {line.split()[0]: float(line.split()[1]) for line in t.splitlines() if line and not line.startswith("#")}
    assert vals["quiver_gpu_failures_total"] == 2
    assert vals["quiver_gpu_breaker_opens_total"] == 1
    assert vals["quiver_gpu_breaker_state"] == 1
    assert vals["quiver_gpu_fallbacks_total"] == 3
    assert vals['quiver_backend_info{backend="cpu"}'] == 1
    assert vals['quiver_gpu_memory_bytes{kind="total"}'] == 1 << 30
