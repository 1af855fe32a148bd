"""The HTTP server under load, and the same query workload against in-process peers.

1. 100k x 384 clustered unit vectors (bench/exact.py's generator) go into a collection with
   `quiver load` before `quiver serve` starts on the same data directory.
2. wrk POSTs /collections/bench/points/query ({"query": [384 floats], "limit": 10}, each float
   written as qdrant-client writes it, the repr of the float32 as a double, up to 17 digits; cycling
   through 200 query vectors) at 1, 8 and 64 connections: p50/p95/p99 and requests/s.
3. /v1/embeddings (one short sentence per request, base64 as current openai clients ask)
   from 1 connection, then from 32 concurrent connections, driven by wrk like the queries:
   texts/s, latency percentiles and the ratio (what dynamic batching buys, target >= 3x),
   with the mean batch size from /metrics. wrk rather than Python threads: on 2 cores a
   Python client with 32 threads takes a core from the server it is measuring.
4. milvus-lite and chromadb (from PyPI, if they installed) get the same vectors and the
   same queries in-process, one at a time and from 8 threads; ratios are Quiver's
   requests/s (over HTTP, wrk at 1 and 8 connections) over theirs (in-process, no HTTP),
   which favours the peers.
5. The server's resident memory (VmRSS, VmHWM) after the runs, against the target budget
   1.5 x the raw vector bytes (n x dim x 4) + the loaded model's files.
6. --soak SECONDS: after the above, a steady load (queries at 8 connections and embeddings
   at 4) for SECONDS, with the server's RSS sampled every --soak-interval (10) seconds;
   reports growth as the mean of the last minute's samples over the first minute's (for
   soaks under 3 minutes, the first and last thirds).

    bash bench/server.sh [--n 100000] [--seconds 10] [--soak 600] [--out bench/data/server.json]
    smoke: bash bench/server.sh --n 2000 --seconds 2 --embed-seconds 3 --soak 6 --soak-interval 2 --peers ""
"""
import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

import httpx
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from exact import make_data  # noqa: E402

QUIVER = os.environ.get("QUIVER_BIN", os.path.join(HERE, "..", "build", "quiver"))
MODEL = os.environ.get("QUIVER_BENCH_MODEL", "all-MiniLM-L6-v2")

LUA = r"""
local bodies = {}
local f = io.open("%(bodies)s", "r")
for line in f:lines() do bodies[#bodies + 1] = line end
f:close()
local i = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  i = i %% #bodies + 1
  return wrk.format(nil, "/collections/bench/points/query", nil, bodies[i])
end
local errors = 0
response = function(status, headers, body)
  if status ~= 200 then errors = errors + 1 end
end
done = function(summary, latency, requests)
  io.write(string.format('RESULT {"p50_ms": %%.3f, "p95_ms": %%.3f, "p99_ms": %%.3f, "rps": %%.1f, "requests": %%d, "non_2xx": %%d, "socket_errors": %%d}\n',
    latency:percentile(50) / 1000, latency:percentile(95) / 1000, latency:percentile(99) / 1000,
    summary.requests / (summary.duration / 1e6), summary.requests,
    summary.errors.status, summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
"""


EMBED_LUA = r"""
local words = {"search", "index", "query", "model", "token", "layer", "attention", "durable", "vector",
               "engine", "crash", "recovery"}
local n = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  n = n + 1
  local t = {}
  for k = 1, 12 do t[k] = words[(n * 7 + k * 3) % #words + 1] end
  return wrk.format(nil, "/v1/embeddings", nil,
    '{"input": "' .. table.concat(t, " ") .. ' #' .. n .. '", "encoding_format": "base64"}')
end
""" + LUA[LUA.index("local errors"):].replace("%%", "%")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(*cmd):
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"{cmd} failed: {p.stderr}")
    return p.stdout


def rss(pid):
    out = {}
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(("VmRSS", "VmHWM")):
            k, v = line.split(":")
            out[k] = int(v.split()[0]) * 1024
    return out


def wrk(url, lua, conns, seconds):
    threads = min(conns, 2)
    out = subprocess.run(["wrk", "-t", str(threads), "-c", str(conns), "-d", f"{seconds}s", "-s", lua,
                          "--latency", url], capture_output=True, text=True, check=True).stdout
    m = re.search(r"^RESULT (.*)$", out, re.M)
    return json.loads(m.group(1))


def model_bytes(name):
    """Bytes of the model's files (the directory as given, or its name in the model cache)."""
    d = name if os.path.isdir(name) else os.path.join(
        os.environ.get("QUIVER_MODELS") or os.path.expanduser("~/.cache/quiver/models"), name)
    total = 0
    for root, _, files in os.walk(d):
        for f in files:
            total += os.path.getsize(os.path.join(root, f))
    return total


def soak(url, pid, lua, embed_lua, seconds, interval):
    """Steady load for `seconds` (queries at 8 connections, embeddings at 4) with VmRSS
    sampled every `interval` s; growth is the last window's mean over the first's, and
    half_growth the last sample over the one at half time (the first window includes the
    warm-up: workspaces and allocator arenas filling; a leak keeps growing after it)."""
    procs = [subprocess.Popen(["wrk", "-t", "1", "-c", str(c), "-d", f"{seconds}s", "-s", l, url],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for c, l in ((8, lua), (4, embed_lua))]
    samples = []
    t0 = time.perf_counter()
    while any(p.poll() is None for p in procs):
        samples.append((time.perf_counter() - t0, rss(pid)["VmRSS"]))
        time.sleep(interval)
    outs = [p.communicate()[0] for p in procs]
    results = []
    for out in outs:
        m = re.search(r"^RESULT (.*)$", out, re.M)
        results.append(json.loads(m.group(1)) if m else {"error": out[-500:]})
    window = 60 if seconds >= 180 else seconds / 3
    first = [r for t, r in samples if t <= window] or [samples[0][1]]
    last = [r for t, r in samples if t >= seconds - window] or [samples[-1][1]]
    mid = min(samples, key=lambda s: abs(s[0] - seconds / 2))[1]
    return {"seconds": seconds, "interval": interval, "samples": samples, "window_s": window,
            "half_mib": mid / 2**20, "half_growth": samples[-1][1] / mid,
            "first_mib": sum(first) / len(first) / 2**20, "last_mib": sum(last) / len(last) / 2**20,
            "growth": (sum(last) / len(last)) / (sum(first) / len(first)),
            "query": results[0], "embed": results[1]}


def embed_throughput(url, clients, per_client):
    words = "search index query model token layer attention durable vector engine crash recovery".split()
    errors = []

    def worker(c):
        with httpx.Client(base_url=url, timeout=300) as h:
            for i in range(per_client):
                text = " ".join(words[(c * 7 + i * 3 + k) % len(words)] for k in range(12)) + f" #{c}-{i}"
                r = h.post("/v1/embeddings", json={"input": text, "encoding_format": "float"})
                if r.status_code != 200:
                    errors.append(r.text)

    t = time.perf_counter()
    ths = [threading.Thread(target=worker, args=(c,)) for c in range(clients)]
    for th in ths:
        th.start()
    for th in ths:
        th.join()
    dt = time.perf_counter() - t
    if errors:
        sys.exit(f"embedding errors: {errors[:3]}")
    return clients * per_client / dt


def metric(text, name):
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def peer_qps(search, queries, threads, seconds):
    """Queries/s of search(q) over `seconds`, one at a time per thread."""
    count = [0] * threads
    stop = time.perf_counter() + seconds

    def worker(t):
        i = t
        while time.perf_counter() < stop:
            search(queries[i % len(queries)])
            i += threads
            count[t] += 1

    t0 = time.perf_counter()
    ths = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for th in ths:
        th.start()
    for th in ths:
        th.join()
    return sum(count) / (time.perf_counter() - t0)


def bench_milvus(x, q, tmp, seconds):
    from pymilvus import MilvusClient
    c = MilvusClient(os.path.join(tmp, "milvus.db"))
    c.create_collection("bench", dimension=x.shape[1], metric_type="COSINE")
    t = time.perf_counter()
    for i in range(0, len(x), 5000):
        c.insert("bench", [{"id": int(j), "vector": x[j].tolist()} for j in range(i, min(i + 5000, len(x)))])
    c.flush("bench")  # seals the segments and builds the AUTOINDEX; unsealed ones are scanned
    load_s = time.perf_counter() - t

    def search(v):
        c.search("bench", data=[v.tolist()], limit=10, consistency_level="Bounded")

    search(q[0])
    return {"load_s": load_s, "qps_1": peer_qps(search, q, 1, seconds), "qps_8": peer_qps(search, q, 8, seconds)}


def bench_chroma(x, q, tmp, seconds):
    import chromadb
    c = chromadb.PersistentClient(path=os.path.join(tmp, "chroma"))
    col = c.create_collection("bench", metadata={"hnsw:space": "cosine"})
    t = time.perf_counter()
    for i in range(0, len(x), 5000):
        ids = [str(j) for j in range(i, min(i + 5000, len(x)))]
        col.add(ids=ids, embeddings=x[i:i + len(ids)])
    load_s = time.perf_counter() - t

    def search(v):
        col.query(query_embeddings=[v], n_results=10)

    search(q[0])
    return {"load_s": load_s, "qps_1": peer_qps(search, q, 1, seconds), "qps_8": peer_qps(search, q, 8, seconds)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--embed-seconds", type=int, default=10, help="wrk duration of each /v1/embeddings run")
    ap.add_argument("--soak", type=int, default=0, metavar="SECONDS", help="then hold a steady load this long")
    ap.add_argument("--soak-interval", type=float, default=10, help="seconds between RSS samples in --soak")
    ap.add_argument("--peers", default="milvus,chroma")
    ap.add_argument("--out", default=os.path.join(HERE, "data", "server.json"))
    a = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="qv-bench-server-")
    res = {"n": a.n, "dim": a.dim, "seconds": a.seconds, "nproc": os.cpu_count(),
           "loadavg_before": os.getloadavg()}
    try:
        x, q = make_data(a.n, a.dim, 200)
        data_dir = os.path.join(tmp, "data")
        np.save(os.path.join(tmp, "x.npy"), x)
        run(QUIVER, "collection", "create", "bench", "--size", a.dim, "--distance", "Cosine", "--data-dir", data_dir)
        t = time.perf_counter()
        run(QUIVER, "load", "bench", os.path.join(tmp, "x.npy"), "--data-dir", data_dir, "--batch", 5000)
        res["quiver_load_s"] = time.perf_counter() - t
        bodies = os.path.join(tmp, "bodies.jsonl")
        with open(bodies, "w") as f:  # as qdrant-client sends them: each float32's repr as a double
            for v in q:
                f.write(json.dumps({"query": v.tolist(), "limit": 10}) + "\n")
        lua = os.path.join(tmp, "query.lua")
        open(lua, "w").write(LUA % {"bodies": bodies})
        embed_lua = os.path.join(tmp, "embed.lua")
        open(embed_lua, "w").write(EMBED_LUA)

        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = open(os.path.join(tmp, "serve.log"), "w")
        srv = subprocess.Popen([QUIVER, "serve", "--data-dir", data_dir, "--host", "127.0.0.1", "--port", str(port),
                                "--model", MODEL], stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 600  # the HNSW index may build at start
            while True:
                try:
                    if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if srv.poll() is not None or time.time() > deadline:
                    sys.exit("server did not start: " + open(os.path.join(tmp, "serve.log")).read())
                time.sleep(0.2)
            # the query path must answer correctly before it is timed
            r = httpx.post(url + "/collections/bench/points/query", json={"query": q[0].tolist(), "limit": 10},
                           timeout=60)
            r.raise_for_status()
            wrk(url, lua, 8, 2)  # warm-up
            res["query"] = {}
            for conns in (1, 8, 64):
                res["query"][conns] = wrk(url, lua, conns, a.seconds)
                print(f"query c={conns}: {res['query'][conns]}", flush=True)
            embed_throughput(url, 1, 2)  # the first pass allocates the model's workspace
            m0 = httpx.get(url + "/metrics").text
            res["embed_1"] = wrk(url, embed_lua, 1, a.embed_seconds)
            m1 = httpx.get(url + "/metrics").text
            res["embed_32"] = wrk(url, embed_lua, 32, a.embed_seconds)
            m2 = httpx.get(url + "/metrics").text
            for k in ("embed_1", "embed_32"):
                if res[k]["non_2xx"] or res[k]["socket_errors"]:
                    sys.exit(f"embedding errors in {k}: {res[k]}")
            res["embed_rps_1"], res["embed_rps_32"] = res["embed_1"]["rps"], res["embed_32"]["rps"]

            def mean_batch(ma, mb):
                n = metric(mb, "quiver_batch_size_count") - metric(ma, "quiver_batch_size_count")
                s = metric(mb, "quiver_batch_size_sum") - metric(ma, "quiver_batch_size_sum")
                return s / n if n else 0.0

            res["embed_mean_batch_1"] = mean_batch(m0, m1)
            res["embed_mean_batch_32"] = mean_batch(m1, m2)
            print(f"embed: 1 client {res['embed_rps_1']:.1f} req/s, 32 clients {res['embed_rps_32']:.1f} req/s",
                  flush=True)
            res["server_mem"] = rss(srv.pid)
            res["raw_vector_bytes"] = a.n * a.dim * 4
            res["model_bytes"] = model_bytes(MODEL)
            res["mem_budget_bytes"] = 1.5 * res["raw_vector_bytes"] + res["model_bytes"]
            if a.soak:
                res["soak"] = soak(url, srv.pid, lua, embed_lua, a.soak, a.soak_interval)
                print(f"soak: {res['soak']['first_mib']:.0f} MiB -> {res['soak']['last_mib']:.0f} MiB "
                      f"(x{res['soak']['growth']:.3f})", flush=True)
                res["server_mem_after_soak"] = rss(srv.pid)
        finally:
            srv.terminate()
            srv.wait(timeout=120)

        res["peers"] = {}
        for peer in [p for p in a.peers.split(",") if p]:
            fn = {"milvus": bench_milvus, "chroma": bench_chroma}[peer]
            try:
                res["peers"][peer] = fn(x, q, tmp, a.seconds)
                print(f"{peer}: {res['peers'][peer]}", flush=True)
            except Exception as e:  # noqa: BLE001 (a peer that fails is reported, not fatal)
                res["peers"][peer] = {"skipped": f"{type(e).__name__}: {e}"[:300]}
                print(f"{peer}: skipped ({e})", flush=True)
        res["loadavg_after"] = os.getloadavg()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    json.dump(res, open(a.out, "w"), indent=1)
    print_table(res)


def print_table(res):
    print("\n| connections | p50 ms | p95 ms | p99 ms | requests/s |\n|---|---|---|---|---|")
    for c, r in res["query"].items():
        print(f"| {c} | {r['p50_ms']:.2f} | {r['p95_ms']:.2f} | {r['p99_ms']:.2f} | {r['rps']:,.0f} |")
    print(f"\n/v1/embeddings: 1 client {res['embed_rps_1']:.1f} texts/s (mean batch {res['embed_mean_batch_1']:.2f}, "
          f"p50 {res['embed_1']['p50_ms']:.1f} ms), 32 clients {res['embed_rps_32']:.1f} texts/s "
          f"(mean batch {res['embed_mean_batch_32']:.2f}, p50 {res['embed_32']['p50_ms']:.1f} ms), "
          f"ratio {res['embed_rps_32'] / res['embed_rps_1']:.2f}x (target >= 3x)")
    for peer, r in res["peers"].items():
        if "skipped" in r:
            print(f"{peer}: skipped: {r['skipped']}")
            continue
        q1, q8 = res["query"][1]["rps"], res["query"][8]["rps"]
        print(f"{peer}: {r['qps_1']:,.0f} q/s (1 thread), {r['qps_8']:,.0f} q/s (8 threads); "
              f"quiver/{peer}: {q1 / r['qps_1']:.2f}x at 1, {q8 / r['qps_8']:.2f}x at 8")
    m = res["server_mem"]
    budget = res["mem_budget_bytes"]
    print(f"server VmRSS {m.get('VmRSS', 0) / 2**20:.0f} MiB, VmHWM {m.get('VmHWM', 0) / 2**20:.0f} MiB; budget "
          f"1.5 x {res['raw_vector_bytes'] / 2**20:.0f} MiB vectors + {res['model_bytes'] / 2**20:.0f} MiB model = "
          f"{budget / 2**20:.0f} MiB: VmRSS/budget {m.get('VmRSS', 0) / budget:.2f}, VmHWM/budget "
          f"{m.get('VmHWM', 0) / budget:.2f}; load average before {res['loadavg_before']}, after {res['loadavg_after']}")
    if "soak" in res:
        sk = res["soak"]
        print(f"soak {sk['seconds']} s: RSS {sk['first_mib']:.1f} MiB (first {sk['window_s']:.0f} s) -> "
              f"{sk['last_mib']:.1f} MiB (last {sk['window_s']:.0f} s), growth x{sk['growth']:.3f}; second half "
              f"{sk['half_mib']:.1f} -> {sk['samples'][-1][1] / 2**20:.1f} MiB (x{sk['half_growth']:.4f}); "
              f"queries {sk['query'].get('rps', 0):,.0f}/s, embeddings {sk['embed'].get('rps', 0):,.0f}/s")


if __name__ == "__main__":
    main()
