"""The HTTP server under load, and the same query workload against in-process peers.

1. 100k x 384 clustered unit vectors (bench/exact.py's generator) go into a collection with
   `quiver load` before `quiver serve` starts on the same data directory.
2. wrk POSTs /collections/bench/points/query ({"query": [384 floats], "limit": 10}, cycling
   through 200 query vectors) at 1, 8 and 64 connections: p50/p95/p99 and requests/s.
3. /v1/embeddings (one sentence per request) from 1 client one at a time, then from 32
   concurrent clients: requests/s and the ratio (what dynamic batching buys), with the
   mean batch size from /metrics.
4. milvus-lite and chromadb (from PyPI, if they installed) get the same vectors and the
   same queries in-process, one at a time and from 8 threads; ratios are Quiver's
   requests/s (over HTTP, wrk at 1 and 8 connections) over theirs (in-process, no HTTP),
   which favours the peers.
5. The server's resident memory (VmRSS, VmHWM) after the runs.

    bash bench/server.sh [--n 100000] [--seconds 10] [--out bench/data/server.json]
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
    ap.add_argument("--embed-requests", type=int, default=64, help="per client, at 1 client; 32 clients send 8 each")
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
        with open(bodies, "w") as f:
            for v in q:
                f.write(json.dumps({"query": [round(float(c), 7) for c in v], "limit": 10}) + "\n")
        lua = os.path.join(tmp, "query.lua")
        open(lua, "w").write(LUA % {"bodies": bodies})

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
            m0 = httpx.get(url + "/metrics").text
            res["embed_rps_1"] = embed_throughput(url, 1, a.embed_requests)
            m1 = httpx.get(url + "/metrics").text
            res["embed_rps_32"] = embed_throughput(url, 32, max(1, a.embed_requests // 8))
            m2 = httpx.get(url + "/metrics").text

            def mean_batch(ma, mb):
                n = metric(mb, "quiver_batch_size_count") - metric(ma, "quiver_batch_size_count")
                s = metric(mb, "quiver_batch_size_sum") - metric(ma, "quiver_batch_size_sum")
                return s / n if n else 0.0

            res["embed_mean_batch_1"] = mean_batch(m0, m1)
            res["embed_mean_batch_32"] = mean_batch(m1, m2)
            print(f"embed: 1 client {res['embed_rps_1']:.1f} req/s, 32 clients {res['embed_rps_32']:.1f} req/s",
                  flush=True)
            res["server_mem"] = rss(srv.pid)
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
    print(f"\n/v1/embeddings: 1 client {res['embed_rps_1']:.1f} req/s (mean batch {res['embed_mean_batch_1']:.2f}), "
          f"32 clients {res['embed_rps_32']:.1f} req/s (mean batch {res['embed_mean_batch_32']:.2f}), "
          f"ratio {res['embed_rps_32'] / res['embed_rps_1']:.2f}x")
    for peer, r in res["peers"].items():
        if "skipped" in r:
            print(f"{peer}: skipped: {r['skipped']}")
            continue
        q1, q8 = res["query"][1]["rps"], res["query"][8]["rps"]
        print(f"{peer}: {r['qps_1']:,.0f} q/s (1 thread), {r['qps_8']:,.0f} q/s (8 threads); "
              f"quiver/{peer}: {q1 / r['qps_1']:.2f}x at 1, {q8 / r['qps_8']:.2f}x at 8")
    m = res["server_mem"]
    print(f"server VmRSS {m.get('VmRSS', 0) / 2**20:.0f} MiB, VmHWM {m.get('VmHWM', 0) / 2**20:.0f} MiB; "
          f"load average before {res['loadavg_before']}, after {res['loadavg_after']}")


if __name__ == "__main__":
    main()
