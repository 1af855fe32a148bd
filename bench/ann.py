"""Approximate search, side by side: Quiver's HNSW (`quiver bench ann`, the index used
directly), the same through a collection (`--collection`: what a user's search pays, with
LMDB storage, the id map and float32 rescoring) and with int8 codes (`--collection
--quantization int8`), hnswlib, FAISS IndexHNSWFlat and usearch, on the same data with the
same M and ef_construction, in one run.

Datasets (generated here, seeded):
  random-128d-l2     100k x 128 standard normal, 1,000 queries from the same law, squared L2
  clustered-384d-ip  clustered synthetic 384-d (stand-in for sentence embeddings): 100k
                     points around 256 Gaussian centres, unit-normalized, inner product
Exact top-10 comes from numpy (BLAS matmul + argpartition).

Method:
  - M = 16, ef_construction = 200 everywhere; every library builds with --threads threads
    (hnswlib num_threads, FAISS OpenMP, usearch threads, Quiver's pool).
  - Search is single-threaded over an ef sweep (16..256), k = 10. Quiver times each
    hnsw_search call in C, one query at a time. The Python libraries are called through
    their batch API with one thread (hnswlib knn_query(num_threads=1), FAISS with
    omp_set_num_threads(1), usearch search(threads=1)): that loops over the queries one
    at a time inside C++, so no per-query Python call overhead is charged to them either.
  - Recall@10 is |returned ∩ true top-10| / 10, averaged over queries, the same for all.
  - Memory (bytes/point) is what each library can report: Quiver hnsw_memory_bytes (node
    blocks at allocated capacity, upper levels, search scratch); usearch memory_usage;
    hnswlib and FAISS the size of their serialized index (vectors + graph, as held in
    memory, without allocator slack).
    A Quiver collection counts everything its search holds: the float32 rows, the graph
    (which keeps its own copy of the vectors, or int8 codes) and the node map.
  - usearch is given dtype f32 so that no other library quantizes; Quiver's int8 rows
    are labelled as such.

Prints a markdown table, then for each dataset the smallest ef at which each library
reaches recall >= 0.95 and Quiver's ratios against each library there. Draws
recall-vs-QPS curves to docs/ann-<dataset>.png.

    python bench/ann.py [--n 100000] [--queries 1000] [--threads 2] [--ef 16,32,64,128,256]
"""
import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from exact import make_data  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..")
QUIVER = os.environ.get("QUIVER_BIN", os.path.join(ROOT, "build", "quiver"))
M, EF_CONSTRUCTION, K = 16, 200, 10
TARGET = 0.95


def random_l2(n, nq, seed=1):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, 128), dtype=np.float32),
            rng.standard_normal((nq, 128), dtype=np.float32))


def clustered_ip(n, nq, dim=384, seed=0):
    return make_data(n, dim, nq, seed)  # the generator bench/exact.py uses


DATASETS = [
    # (slug, description, metric, generator)
    ("random-128d-l2", "random 128-d uniform-normal (L2)", "l2", random_l2),
    ("clustered-384d-ip", "clustered synthetic 384-d (stand-in for sentence embeddings), inner product",
     "ip", clustered_ip),
]


def exact_topk(x, q, k, metric):
    """Ids of the true k nearest, best first: (nq, k) int64."""
    out = np.empty((len(q), k), dtype=np.int64)
    xn = (x * x).sum(1) if metric == "l2" else None
    for s in range(0, len(q), 256):
        qs = q[s:s + 256]
        sc = qs @ x.T
        # smaller is better: -dot for ip, ||x||^2 - 2 q.x for l2 (||q||^2 is constant per row)
        d = xn[None, :] - 2 * sc if metric == "l2" else -sc
        idx = np.argpartition(d, k, axis=1)[:, :k]
        order = np.argsort(np.take_along_axis(d, idx, 1), axis=1)
        out[s:s + 256] = np.take_along_axis(idx, order, 1)
    return out


def recall(ids, truth, k):
    hit = 0
    for got, want in zip(ids, truth):
        hit += len(set(int(i) for i in got[:k]) & set(int(i) for i in want[:k]))
    return hit / (len(truth) * k)


def sweep(search, q, truth, efs):
    runs = []
    for ef in efs:
        t = time.perf_counter()
        ids = search(ef)
        s = time.perf_counter() - t
        runs.append({"ef": ef, "qps": len(q) / s, "recall": recall(ids, truth, K)})
    return runs


def run_quiver(paths, metric, threads, efs, collection=None):
    """Quiver's HNSW module alone, or (collection = "float" / "int8") the same data through
    a collection: LMDB storage, id map, float32 rescoring, optionally int8 codes. For a
    collection, bytes/point counts what its search holds in memory: the float32 rows, the
    graph and the codes."""
    cmd = [QUIVER, "bench", "ann", "--data", paths["x"], "--queries", paths["q"], "--truth", paths["t"],
           "--distance", "Euclid" if metric == "l2" else "Dot", "--m", str(M),
           "--ef-construct", str(EF_CONSTRUCTION), "--ef", ",".join(map(str, efs)), "--k", str(K),
           "--threads", str(threads)]
    env = None
    if collection:
        cmd.append("--collection")
        if collection == "int8":
            cmd += ["--quantization", "int8"]
        env = dict(os.environ, QUIVER_THREADS=str(threads))
    r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout)
    if collection:
        mem = r["vector_bytes"] + r["graph_bytes"] + r["quantized_bytes"]
        return {"build_s": r["build_s"], "bytes_per_point": mem / r["n"], "runs": r["runs"]}
    return {"build_s": r["build_s"], "bytes_per_point": r["bytes_per_point"], "runs": r["runs"]}


def run_hnswlib(x, q, truth, metric, threads, efs, tmp):
    import hnswlib
    p = hnswlib.Index(space="l2" if metric == "l2" else "ip", dim=x.shape[1])
    p.init_index(max_elements=len(x), M=M, ef_construction=EF_CONSTRUCTION, random_seed=42)
    t = time.perf_counter()
    p.add_items(x, np.arange(len(x)), num_threads=threads)
    build_s = time.perf_counter() - t
    path = os.path.join(tmp, "hnswlib.bin")
    p.save_index(path)
    mem = os.path.getsize(path)
    os.unlink(path)

    def search(ef):
        p.set_ef(ef)
        return p.knn_query(q, k=K, num_threads=1)[0]
    return {"build_s": build_s, "bytes_per_point": mem / len(x), "runs": sweep(search, q, truth, efs)}


def run_faiss(x, q, truth, metric, threads, efs):
    import faiss
    index = faiss.IndexHNSWFlat(x.shape[1], M, faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = EF_CONSTRUCTION
    faiss.omp_set_num_threads(threads)
    t = time.perf_counter()
    index.add(x)
    build_s = time.perf_counter() - t
    mem = faiss.serialize_index(index).nbytes
    faiss.omp_set_num_threads(1)

    def search(ef):
        index.hnsw.efSearch = ef
        return index.search(q, K)[1]
    return {"build_s": build_s, "bytes_per_point": mem / len(x), "runs": sweep(search, q, truth, efs)}


def run_usearch(x, q, truth, metric, threads, efs):
    from usearch.index import Index
    index = Index(ndim=x.shape[1], metric="l2sq" if metric == "l2" else "ip", dtype="f32",
                  connectivity=M, expansion_add=EF_CONSTRUCTION)
    t = time.perf_counter()
    index.add(np.arange(len(x), dtype=np.uint64), x, threads=threads)
    build_s = time.perf_counter() - t
    mem = index.memory_usage

    def search(ef):
        index.expansion_search = ef
        return index.search(q, K, threads=1).keys
    return {"build_s": build_s, "bytes_per_point": mem / len(x), "runs": sweep(search, q, truth, efs)}


LIBS = ["quiver", "quiver-collection", "quiver-collection-int8", "hnswlib", "faiss", "usearch"]


def first_at_target(runs):
    for r in runs:
        if r["recall"] >= TARGET:
            return r
    return None


def fmt_qps(v):
    return f"{v:,.0f}"


def table(results, efs):
    head = ["library", "dataset", "build s", "bytes/point"] + [f"ef={ef} recall / QPS" for ef in efs]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|"]
    for slug, libs in results.items():
        for lib in LIBS:
            r = libs[lib]
            cells = [lib, slug, f"{r['build_s']:.1f}", f"{r['bytes_per_point']:.0f}"]
            by_ef = {run["ef"]: run for run in r["runs"]}
            cells += [f"{by_ef[ef]['recall']:.3f} / {fmt_qps(by_ef[ef]['qps'])}" for ef in efs]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ratios(results):
    out = []
    for slug, libs in results.items():
        out.append(f"\n{slug}: smallest ef reaching recall@{K} >= {TARGET}")
        at = {lib: first_at_target(libs[lib]["runs"]) for lib in LIBS}
        for lib in LIBS:
            a = at[lib]
            out.append(f"  {lib:8s} " + (f"ef={a['ef']:<4d} recall {a['recall']:.3f}  {fmt_qps(a['qps'])} QPS"
                                          if a else "never (within the sweep)"))
        if not all(at.values()):
            # Nobody (or not everybody) reached the target: compare at the largest ef swept,
            # where the recalls are as close to it as this sweep gets.
            at = {lib: libs[lib]["runs"][-1] for lib in LIBS}
            out.append(f"  not every library reaches {TARGET}; QPS compared at the largest ef, "
                       f"ef={at['quiver']['ef']} (recall " +
                       ", ".join(f"{lib} {at[lib]['recall']:.3f}" for lib in LIBS) + ")")
        out.append("| Quiver vs | QPS ratio | build time ratio | memory ratio |")
        out.append("|---|---:|---:|---:|")
        q = libs["quiver"]
        for lib in LIBS[1:]:
            o = libs[lib]
            qps = f"{at['quiver']['qps'] / at[lib]['qps']:.2f}x"
            out.append(f"| {lib} | {qps} | {q['build_s'] / o['build_s']:.2f}x | "
                       f"{q['bytes_per_point'] / o['bytes_per_point']:.2f}x |")
    out.append("\nQPS ratio > 1: Quiver faster; build time and memory ratio < 1: Quiver faster / smaller.")
    return "\n".join(out)


def plot(slug, desc, libs, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for lib in LIBS:
        runs = libs[lib]["runs"]
        ax.plot([r["recall"] for r in runs], [r["qps"] for r in runs], marker="o", label=lib)
        for r in runs:
            ax.annotate(str(r["ef"]), (r["recall"], r["qps"]), fontsize=6, xytext=(3, 3),
                        textcoords="offset points")
    ax.set_yscale("log")
    ax.set_xlabel(f"recall@{K}")
    ax.set_ylabel("queries/s (1 thread, log)")
    ax.set_title(f"{desc}\nM={M}, ef_construction={EF_CONSTRUCTION}, labels = ef", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2, help="build threads, the same for every library")
    ap.add_argument("--ef", default="16,32,64,128,256")
    ap.add_argument("--docs", default=os.path.join(ROOT, "docs"), help="where the PNGs go")
    a = ap.parse_args()
    efs = [int(e) for e in a.ef.split(",")]
    results = {}
    with tempfile.TemporaryDirectory(prefix="quiver-ann-") as tmp:
        for slug, desc, metric, gen in DATASETS:
            x, q = gen(a.n, a.queries)
            truth = exact_topk(x, q, K, metric)
            paths = {"x": os.path.join(tmp, "x.npy"), "q": os.path.join(tmp, "q.npy"), "t": os.path.join(tmp, "t.npy")}
            np.save(paths["x"], x)
            np.save(paths["q"], q)
            np.save(paths["t"], truth)
            libs = {}
            for lib in LIBS:
                print(f"{slug}: {lib} ...", file=sys.stderr, flush=True)
                if lib == "quiver":
                    libs[lib] = run_quiver(paths, metric, a.threads, efs)
                elif lib == "quiver-collection":
                    libs[lib] = run_quiver(paths, metric, a.threads, efs, collection="float")
                elif lib == "quiver-collection-int8":
                    libs[lib] = run_quiver(paths, metric, a.threads, efs, collection="int8")
                elif lib == "hnswlib":
                    libs[lib] = run_hnswlib(x, q, truth, metric, a.threads, efs, tmp)
                elif lib == "faiss":
                    libs[lib] = run_faiss(x, q, truth, metric, a.threads, efs)
                else:
                    libs[lib] = run_usearch(x, q, truth, metric, a.threads, efs)
                gc.collect()
            results[slug] = libs
            os.makedirs(a.docs, exist_ok=True)
            png = os.path.join(a.docs, f"ann-{slug}.png")
            plot(slug, desc, libs, png)
            print(f"{slug}: wrote {png}", file=sys.stderr, flush=True)
    print(f"n={a.n}, queries={a.queries}, k={K}, M={M}, ef_construction={EF_CONSTRUCTION}, "
          f"build threads={a.threads}, search 1 thread\n")
    print(table(results, efs))
    print(ratios(results))


if __name__ == "__main__":
    main()
