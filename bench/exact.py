"""Exact search, side by side: numpy (BLAS matmul + argpartition), FAISS IndexFlatIP and
Quiver (`quiver bench exact`, through the collection API), on the same data in one run.

Data: 100k x 384 float32 (unit-normalized Gaussian clusters, like sentence embeddings),
1,000 queries, k = 10, inner product. Each engine runs one query at a time and all
queries as one batch; best of --repeat runs. Quiver's batch results are checked against
numpy's so the speed is not bought with wrong answers.

    python bench/exact.py [--n 100000] [--dim 384] [--queries 1000] [--threads 2]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
QUIVER = os.environ.get("QUIVER_BIN", os.path.join(HERE, "..", "build", "quiver"))


def make_data(n, dim, nq, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((256, dim)).astype(np.float32)
    x = centers[rng.integers(0, 256, n)] + 0.6 * rng.standard_normal((n, dim)).astype(np.float32)
    q = centers[rng.integers(0, 256, nq)] + 0.6 * rng.standard_normal((nq, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return x, q


def best_of(repeat, fn):
    best = float("inf")
    out = None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def numpy_topk(x, q, k):
    s = q @ x.T
    idx = np.argpartition(-s, k, axis=1)[:, :k]
    part = np.take_along_axis(s, idx, 1)
    order = np.argsort(-part, axis=1)
    return np.take_along_axis(idx, order, 1)


def run_numpy(x, q, k, repeat):
    single, _ = best_of(repeat, lambda: [numpy_topk(x, q[i:i + 1], k) for i in range(len(q))])
    batch, ids = best_of(repeat, lambda: numpy_topk(x, q, k))
    return single, batch, ids


def run_faiss(x, q, k, repeat, threads):
    import faiss
    faiss.omp_set_num_threads(threads)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    single, _ = best_of(repeat, lambda: [index.search(q[i:i + 1], k) for i in range(len(q))])
    batch, (_, ids) = best_of(repeat, lambda: index.search(q, k))
    return single, batch, ids


def run_quiver(xpath, qpath, k, repeat, threads, outpath):
    env = dict(os.environ, QUIVER_THREADS=str(threads))
    p = subprocess.run([QUIVER, "bench", "exact", "--data", xpath, "--queries", qpath, "--k", str(k),
                        "--repeat", str(repeat), "--out", outpath], capture_output=True, text=True, env=env)
    if p.returncode:
        sys.exit(f"quiver bench failed: {p.stderr}")
    r = json.loads(p.stdout)
    return r["queries"] / r["single_qps"], r["batch_s"], np.load(outpath), r


def recall(ids, truth):
    return np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(ids, truth)])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    a = ap.parse_args()
    x, q = make_data(a.n, a.dim, a.queries)
    with tempfile.TemporaryDirectory() as tmp:
        xp, qp, op = (os.path.join(tmp, f) for f in ("x.npy", "q.npy", "ids.npy"))
        np.save(xp, x)
        np.save(qp, q)
        rows = {}
        rows["numpy"] = run_numpy(x, q, a.k, a.repeat)
        truth = rows["numpy"][2]
        try:
            rows["faiss IndexFlatIP"] = run_faiss(x, q, a.k, a.repeat, a.threads)
        except ImportError:
            print("faiss not installed: pip install -r bench/requirements.txt", file=sys.stderr)
        qs, qb, qids, info = run_quiver(xp, qp, a.k, a.repeat, a.threads, op)
        rows["quiver"] = (qs, qb, qids)
    nq = a.queries
    print(f"exact search: {a.n} x {a.dim} float32, {nq} queries, k={a.k}, {a.threads} threads, "
          f"quiver ISA {info['isa']}")
    print()
    print("| engine | single: ms/query | single: queries/s | batch: queries/s | recall@10 vs numpy |")
    print("|---|---|---|---|---|")
    for name, (s, b, ids) in rows.items():
        print(f"| {name} | {s * 1e3 / nq:.3f} | {nq / s:,.0f} | {nq / b:,.0f} | {recall(ids, truth):.4f} |")
    print()
    qv_s, qv_b = rows["quiver"][0], rows["quiver"][1]
    for name, (s, b, _) in rows.items():
        if name != "quiver":
            print(f"quiver vs {name}: single {s / qv_s:.2f}x, batch {b / qv_b:.2f}x (higher = quiver faster)")


if __name__ == "__main__":
    main()
