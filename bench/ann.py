"""Approximate search, side by side: Quiver's HNSW (`quiver bench ann`, the index used
directly), the same through a collection (`--collection`: what a user's search pays, with
LMDB storage, the id map and float32 rescoring) and with int8 codes (`--collection
--quantization int8`), hnswlib, FAISS IndexHNSWFlat and usearch, on the same data with the
same M and ef_construction, in one run.

Datasets (generated here, seeded):
  random-128d-l2     --n x 128 standard normal, queries from the same law, squared L2
  random-960d-l2     --n-960 x 960 standard normal (GIST's width), squared L2
  clustered-384d-ip  clustered synthetic 384-d (stand-in for sentence embeddings): --n
                     points around 256 Gaussian centres, unit-normalized, inner product
Exact top-10 comes from numpy (BLAS matmul + argpartition).

Method:
  - M = 16, ef_construction = 200 everywhere; every library builds with --threads threads
    (hnswlib num_threads, FAISS OpenMP, usearch threads, Quiver's pool).
  - Search sweeps ef (16..2048: on the random sets recall@10 reaches 0.95 only past
    ef=1024), k = 10, once per search thread count (--search-threads,
    default 1 and 2). Every library is called through a batch entry point that loops over
    the queries in C/C++ (Quiver: `quiver bench ann`, one hnsw_search per query over a
    pool; hnswlib knn_query(num_threads=t); FAISS with omp_set_num_threads(t); usearch
    search(threads=t)), and the whole query set is timed, so no per-query Python call is
    charged to anyone.
  - Recall@10 is |returned ∩ true top-10| / 10, averaged over queries, the same for all.
  - Memory (bytes/point) is measured the same way for everyone: each library builds in a
    process of its own (a fork for the Python libraries, the quiver binary for Quiver),
    and the growth of that process's resident set (VmRSS) across the build is divided by
    the point count. The data itself is loaded before the first reading, so it is not
    counted. For a Quiver collection the reading spans the load and the build, so it also
    holds the collection's float32 rows (the graph keeps its own copy, or int8 codes).
    What each library reports about itself is printed too (Quiver hnsw_memory_bytes,
    usearch memory_usage, hnswlib/FAISS serialized size).
  - usearch is given dtype f32 so that no other library quantizes; Quiver's int8 rows
    are labelled as such.

  - Alternating rounds (--rounds R, default 5): each library's index stays alive in its own
    process after its sweep (quiver: `bench ann --rounds`, reading "EF THREADS" lines), and
    once all are built, each is timed again at the smallest ef where it reaches recall 0.95,
    over the whole query set, in turn, R rounds, the order rotated each round. A ratio is
    taken within each round (the same minute for both sides) and the median of the R
    ratios is reported with its range. These are the figures to quote: this VM's speed
    drifts by up to 2x over an hour, more than the margins measured, and a sweep of one
    library runs minutes after another's.

Prints a markdown table, then for each dataset and search thread count the smallest ef at
which each library reaches recall >= 0.95 and Quiver's ratios against each library there,
then the alternating rounds' medians and per-round ratios.
Draws recall-vs-QPS curves (1 search thread) to docs/ann-<dataset>.png.

    python bench/ann.py [--n 100000] [--n-960 50000] [--queries 1000] [--threads 2]
                        [--search-threads 1,2] [--ef 16,32,...,2048] [--datasets a,b]
                        [--rounds 5] [--round-libs quiver,quiver-collection,hnswlib,faiss]
                        [--libs quiver,hnswlib,...]
"""
import argparse
import gc
import json
import multiprocessing as mp
import os
import statistics
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


def random_l2(n, nq, dim=128, seed=1):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, dim), dtype=np.float32),
            rng.standard_normal((nq, dim), dtype=np.float32))


def random_960_l2(n, nq):
    return random_l2(n, nq, dim=960, seed=2)


def clustered_ip(n, nq, dim=384, seed=0):
    return make_data(n, dim, nq, seed)  # the generator bench/exact.py uses


DATASETS = [
    # (slug, description, metric, generator)
    ("random-128d-l2", "random 128-d standard normal (L2)", "l2", random_l2),
    ("random-960d-l2", "random 960-d standard normal (L2)", "l2", random_960_l2),
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


def rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def timed(search, nq, ef, t):
    """(queries/s, ids) of one search of the whole query set."""
    t0 = time.perf_counter()
    ids = search(ef, t)
    return nq / (time.perf_counter() - t0), ids


def sweep(search, q, truth, efs, sthreads):
    """search(ef, threads) -> ids (nq, K). Per ef: recall, and QPS per thread count."""
    runs = []
    for ef in efs:
        qps = []
        for t in sthreads:
            v, ids = timed(search, len(q), ef, t)
            qps.append(v)
        runs.append({"ef": ef, "qps_by_threads": qps, "qps": qps[0], "recall": recall(ids, truth, K)})
    return runs


class ChildWorker:
    """Runs fn(*args) -> (result, search) in a forked process, so that its memory reading
    starts from the same state for every library and nothing it allocated stays behind for
    the next one; the process then keeps its index and answers qps(ef, threads) requests
    (the alternating rounds) until close()."""

    def __init__(self, fn, *args):
        ctx = mp.get_context("fork")
        self.conn, child = ctx.Pipe()
        nq = len(args[1])  # every run_* takes (x, q, ...)

        def target():
            try:
                result, search = fn(*args)
                child.send(("ok", result))
            except BaseException as e:  # noqa: BLE001 - reported in the parent
                child.send(("error", repr(e)))
                return
            while (req := child.recv()) is not None:
                child.send(timed(search, nq, *req)[0])
        self.p = ctx.Process(target=target)
        self.p.start()
        child.close()  # so that a child that dies without sending ends recv() with EOFError
        try:
            status, value = self.conn.recv()
        except EOFError:
            self.p.join()
            raise RuntimeError(f"{fn.__name__} died with exit code {self.p.exitcode}") from None
        if status != "ok":
            self.p.join()
            raise RuntimeError(value)
        self.result = value

    def qps(self, ef, threads):
        self.conn.send((ef, threads))
        return self.conn.recv()

    def close(self):
        self.conn.send(None)
        self.p.join()


class QuiverWorker:
    """`quiver bench ann ... --rounds`: its first stdout line is the sweep's JSON; then it
    answers "EF THREADS" lines with {"qps": ...} until its stdin closes."""

    def __init__(self, cmd, env):
        self.p = subprocess.Popen(cmd + ["--rounds"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                  env=env)
        line = self.p.stdout.readline()
        if not line:
            raise RuntimeError(f"quiver bench ann exited with {self.p.wait()} before its sweep")
        self.result = json.loads(line)

    def qps(self, ef, threads):
        self.p.stdin.write(f"{ef} {threads}\n")
        self.p.stdin.flush()
        line = self.p.stdout.readline()
        if not line:
            raise RuntimeError(f"quiver bench ann exited with {self.p.wait()} during the rounds")
        return json.loads(line)["qps"]

    def close(self):
        self.p.stdin.close()
        if self.p.wait():
            raise RuntimeError(f"quiver bench ann exited with {self.p.returncode}")


def run_quiver(paths, metric, threads, efs, sthreads, collection=None):
    """Quiver's HNSW module alone, or (collection = "float" / "int8") the same data through
    a collection: LMDB storage, id map, float32 rescoring, optionally int8 codes. Returns
    the live QuiverWorker (its .result is the sweep)."""
    cmd = [QUIVER, "bench", "ann", "--data", paths["x"], "--queries", paths["q"], "--truth", paths["t"],
           "--distance", "Euclid" if metric == "l2" else "Dot", "--m", str(M),
           "--ef-construct", str(EF_CONSTRUCTION), "--ef", ",".join(map(str, efs)), "--k", str(K),
           "--threads", str(threads), "--search-threads", ",".join(map(str, sthreads))]
    env = None
    if collection:
        cmd.append("--collection")
        if collection == "int8":
            cmd += ["--quantization", "int8"]
        env = dict(os.environ, QUIVER_THREADS=str(threads))
    w = QuiverWorker(cmd, env)
    r = w.result
    n = r["n"]
    if collection:
        own = r["vector_bytes"] + r["graph_bytes"] + r["quantized_bytes"]
        w.result = {"build_s": r["build_s"], "bytes_per_point": (r["rss_load_bytes"] + r["rss_build_bytes"]) / n,
                    "own_bytes_per_point": own / n,
                    "index_bytes_per_point": (r["graph_bytes"] + r["quantized_bytes"]) / n, "runs": r["runs"]}
    else:
        w.result = {"build_s": r["build_s"], "bytes_per_point": r["rss_build_bytes"] / n,
                    "own_bytes_per_point": r["memory_bytes"] / n, "index_bytes_per_point": r["memory_bytes"] / n,
                    "runs": r["runs"]}
    return w


def run_hnswlib(x, q, truth, metric, threads, efs, sthreads, tmp):
    import hnswlib
    gc.collect()
    r0 = rss()
    p = hnswlib.Index(space="l2" if metric == "l2" else "ip", dim=x.shape[1])
    p.init_index(max_elements=len(x), M=M, ef_construction=EF_CONSTRUCTION, random_seed=42)
    t = time.perf_counter()
    p.add_items(x, np.arange(len(x)), num_threads=threads)
    build_s = time.perf_counter() - t
    grown = rss() - r0
    path = os.path.join(tmp, "hnswlib.bin")
    p.save_index(path)
    own = os.path.getsize(path)
    os.unlink(path)

    def search(ef, t):
        p.set_ef(ef)
        return p.knn_query(q, k=K, num_threads=t)[0]
    return {"build_s": build_s, "bytes_per_point": grown / len(x), "own_bytes_per_point": own / len(x),
            "runs": sweep(search, q, truth, efs, sthreads)}, search


def run_faiss(x, q, truth, metric, threads, efs, sthreads):
    import faiss
    gc.collect()
    r0 = rss()
    index = faiss.IndexHNSWFlat(x.shape[1], M, faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = EF_CONSTRUCTION
    faiss.omp_set_num_threads(threads)
    t = time.perf_counter()
    index.add(x)
    build_s = time.perf_counter() - t
    grown = rss() - r0
    own = faiss.serialize_index(index).nbytes

    def search(ef, t):
        faiss.omp_set_num_threads(t)
        index.hnsw.efSearch = ef
        return index.search(q, K)[1]
    return {"build_s": build_s, "bytes_per_point": grown / len(x), "own_bytes_per_point": own / len(x),
            "runs": sweep(search, q, truth, efs, sthreads)}, search


def run_usearch(x, q, truth, metric, threads, efs, sthreads):
    from usearch.index import Index
    gc.collect()
    r0 = rss()
    index = Index(ndim=x.shape[1], metric="l2sq" if metric == "l2" else "ip", dtype="f32",
                  connectivity=M, expansion_add=EF_CONSTRUCTION)
    t = time.perf_counter()
    index.add(np.arange(len(x), dtype=np.uint64), x, threads=threads)
    build_s = time.perf_counter() - t
    grown = rss() - r0
    own = index.memory_usage

    def search(ef, t):
        index.expansion_search = ef
        return index.search(q, K, threads=t).keys
    return {"build_s": build_s, "bytes_per_point": grown / len(x), "own_bytes_per_point": own / len(x),
            "runs": sweep(search, q, truth, efs, sthreads)}, search


LIBS = ["quiver", "quiver-collection", "quiver-collection-int8", "hnswlib", "faiss", "usearch"]


def first_at_target(runs):
    """The run with the smallest ef whose recall reaches TARGET (None if none does),
    whatever order --ef listed them in."""
    return min((r for r in runs if r["recall"] >= TARGET), key=lambda r: r["ef"], default=None)


def largest_ef(runs):
    return max(runs, key=lambda r: r["ef"])


def fmt_qps(v):
    return f"{v:,.0f}"


def table(results, efs, sthreads):
    tl = "/".join(f"{t}t" for t in sthreads)
    head = ["library", "dataset", "build s", "RSS bytes/point", "own count bytes/point"] + \
        [f"ef={ef} recall / QPS {tl}" for ef in efs]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|"]
    for slug, libs in results.items():
        for lib in LIBS:
            r = libs[lib]
            cells = [lib, slug, f"{r['build_s']:.1f}", f"{r['bytes_per_point']:.0f}", f"{r['own_bytes_per_point']:.0f}"]
            by_ef = {run["ef"]: run for run in r["runs"]}
            cells += [f"{by_ef[ef]['recall']:.3f} / " + " / ".join(fmt_qps(v) for v in by_ef[ef]["qps_by_threads"])
                      for ef in efs]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ratios(results, sthreads):
    out = []
    peers = [lib for lib in ["hnswlib", "faiss", "usearch"] if lib in LIBS]
    for slug, libs in results.items():
        at = {lib: first_at_target(libs[lib]["runs"]) for lib in LIBS}
        out.append(f"\n{slug}: smallest ef reaching recall@{K} >= {TARGET}")
        for lib in LIBS:
            a = at[lib]
            out.append(f"  {lib:24s} " + (f"ef={a['ef']:<4d} recall {a['recall']:.3f}  QPS " +
                                          " / ".join(f"{fmt_qps(v)} ({t}t)" for t, v in zip(sthreads, a["qps_by_threads"]))
                                          if a else "never (within the sweep)"))
        if not all(at.values()):
            at = {lib: largest_ef(libs[lib]["runs"]) for lib in LIBS}
            out.append(f"  not every library reaches {TARGET}; QPS compared at the largest ef, "
                       f"ef={at['quiver']['ef']} (recall " + ", ".join(f"{lib} {at[lib]['recall']:.3f}" for lib in LIBS) + ")")
        head = ["Quiver vs"] + [f"QPS ratio {t}t" for t in sthreads] + ["build time ratio", "memory ratio (RSS)"]
        out.append("| " + " | ".join(head) + " |")
        out.append("|---|" + "---:|" * (len(head) - 1))
        for mine in [lib for lib in ["quiver", "quiver-collection"] if lib in LIBS]:
            q = libs[mine]
            for lib in peers:
                o = libs[lib]
                cells = [f"{mine} vs {lib}"]
                cells += [f"{qa / qb:.2f}x" for qa, qb in zip(at[mine]["qps_by_threads"], at[lib]["qps_by_threads"])]
                cells += [f"{q['build_s'] / o['build_s']:.2f}x", f"{q['bytes_per_point'] / o['bytes_per_point']:.2f}x"]
                out.append("| " + " | ".join(cells) + " |")
        if "quiver-collection" not in libs or "quiver-collection-int8" not in libs:
            continue
        f32 = libs["quiver-collection"]["index_bytes_per_point"]
        i8 = libs["quiver-collection-int8"]["index_bytes_per_point"]
        out.append(f"\n  {slug}: collection index (graph + codes) bytes/point: float32 {f32:.0f}, int8 {i8:.0f} "
                   f"-> int8 / float32 = {i8 / f32:.2f}x")
    out.append("\nQPS ratio > 1: Quiver faster; build time and memory ratio < 1: Quiver faster / smaller.")
    return "\n".join(out)


def target_ef(runs):
    """The ef each library is timed at in the rounds: the smallest reaching TARGET, else the
    largest of the sweep."""
    return (first_at_target(runs) or largest_ef(runs))["ef"]


def alternate(workers, libs, sthreads, n):
    """n rounds; in each, every worker searches the whole query set at its target ef, once
    per thread count, in an order rotated by one each round. Returns
    {lib: {"ef": ef, "qps": {threads: [per-round QPS]}}}."""
    names = list(workers)
    out = {lib: {"ef": target_ef(libs[lib]["runs"]), "qps": {t: [] for t in sthreads}} for lib in names}
    for r in range(n):
        order = names[r % len(names):] + names[:r % len(names)]
        for t in sthreads:
            for lib in order:
                out[lib]["qps"][t].append(workers[lib].qps(out[lib]["ef"], t))
    return out


def rounds_table(rounds, sthreads):
    med = statistics.median
    lines = ["\nAlternating rounds (each library at the smallest ef reaching recall "
             f"{TARGET}; ratio = Quiver's QPS / the peer's in the same round, median and range):"]
    head = ["dataset", "library", "ef"] + [f"median QPS {t}t" for t in sthreads] + \
        [f"quiver ratio {t}t" for t in sthreads] + [f"quiver-collection ratio {t}t" for t in sthreads]
    lines += ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    for slug, libs in rounds.items():
        for lib, r in libs.items():
            cells = [slug, lib, str(r["ef"])] + [fmt_qps(med(r["qps"][t])) for t in sthreads]
            for mine in ["quiver", "quiver-collection"]:
                for t in sthreads:
                    if mine not in libs or lib == mine:
                        cells.append("")
                        continue
                    per = [a / b for a, b in zip(libs[mine]["qps"][t], r["qps"][t])]
                    cells.append(f"{med(per):.2f}x ({min(per):.2f}-{max(per):.2f})")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


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
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main():
    global LIBS
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100000)
    ap.add_argument("--n-960", type=int, default=50000, help="points of the 960-d set")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2, help="build threads, the same for every library")
    ap.add_argument("--search-threads", default="1,2")
    ap.add_argument("--ef", default="16,32,64,128,256,512,1024,2048")
    ap.add_argument("--datasets", default=",".join(d[0] for d in DATASETS))
    ap.add_argument("--docs", default=os.path.join(ROOT, "docs"), help="where the PNGs go")
    ap.add_argument("--rounds", type=int, default=5, help="alternating timed rounds at recall 0.95 (0: none)")
    ap.add_argument("--round-libs", default="quiver,quiver-collection,hnswlib,faiss",
                    help="the libraries timed in the alternating rounds")
    ap.add_argument("--libs", default=",".join(LIBS), help="the libraries to run (quiver and hnswlib at least)")
    a = ap.parse_args()
    unknown = set(a.libs.split(",")) - set(LIBS)
    if unknown or not {"quiver", "hnswlib"} <= set(a.libs.split(",")):
        ap.error(f"--libs: unknown {sorted(unknown)}" if unknown else "--libs must hold quiver and hnswlib")
    LIBS = [lib for lib in LIBS if lib in a.libs.split(",")]
    round_libs = [lib for lib in a.round_libs.split(",") if lib in LIBS]
    if a.rounds and not {"quiver", "hnswlib"} <= set(round_libs):
        ap.error("--round-libs must hold quiver and hnswlib")
    efs = [int(e) for e in a.ef.split(",")]
    sthreads = [int(t) for t in a.search_threads.split(",")]
    if sthreads[0] != 1:
        ap.error("--search-threads must start with 1: the curves and the first QPS are single-threaded")
    wanted = a.datasets.split(",")
    results, rounds = {}, {}
    with tempfile.TemporaryDirectory(prefix="quiver-ann-") as tmp:
        for slug, desc, metric, gen in DATASETS:
            if slug not in wanted:
                continue
            n = a.n_960 if "960" in slug else a.n
            x, q = gen(n, a.queries)
            truth = exact_topk(x, q, K, metric)
            paths = {"x": os.path.join(tmp, "x.npy"), "q": os.path.join(tmp, "q.npy"), "t": os.path.join(tmp, "t.npy")}
            np.save(paths["x"], x)
            np.save(paths["q"], q)
            np.save(paths["t"], truth)
            libs, workers = {}, {}
            for lib in LIBS:
                print(f"{slug} (n={n}): {lib} ...", file=sys.stderr, flush=True)
                if lib == "quiver":
                    w = run_quiver(paths, metric, a.threads, efs, sthreads)
                elif lib == "quiver-collection":
                    w = run_quiver(paths, metric, a.threads, efs, sthreads, collection="float")
                elif lib == "quiver-collection-int8":
                    w = run_quiver(paths, metric, a.threads, efs, sthreads, collection="int8")
                elif lib == "hnswlib":
                    w = ChildWorker(run_hnswlib, x, q, truth, metric, a.threads, efs, sthreads, tmp)
                elif lib == "faiss":
                    w = ChildWorker(run_faiss, x, q, truth, metric, a.threads, efs, sthreads)
                else:
                    w = ChildWorker(run_usearch, x, q, truth, metric, a.threads, efs, sthreads)
                libs[lib] = w.result
                if lib in round_libs and a.rounds:
                    workers[lib] = w
                else:
                    w.close()
            if workers:
                print(f"{slug} (n={n}): {a.rounds} alternating rounds of {', '.join(workers)} ...", file=sys.stderr,
                      flush=True)
                rounds[f"{slug} (n={n})"] = alternate(workers, libs, sthreads, a.rounds)
            # newest first: a forked peer holds copies of the pipes to the quiver processes
            # started before it, so a quiver sees its stdin close only once those have exited
            for w in reversed(list(workers.values())):
                w.close()
            results[f"{slug} (n={n})"] = libs
            os.makedirs(a.docs, exist_ok=True)
            png = os.path.join(a.docs, f"ann-{slug}.png")
            plot(slug, f"{desc}, n={n}", libs, png)
            print(f"{slug}: wrote {png}", file=sys.stderr, flush=True)
    print(f"queries={a.queries}, k={K}, M={M}, ef_construction={EF_CONSTRUCTION}, "
          f"build threads={a.threads}, search threads={sthreads}\n")
    print(table(results, efs, sthreads))
    print(ratios(results, sthreads))
    if rounds:
        print(rounds_table(rounds, sthreads))


if __name__ == "__main__":
    main()
