"""End-to-end ingest throughput, side by side in one run on the same corpus and cores:
`quiver ingest` (parse Markdown, chunk with the model's tokenizer, embed, store durably
with payloads) against a Python pipeline with the same model: sentence-transformers
(PyTorch, CPU) and a simple splitter (blank-line paragraphs packed to the same token
budget with the model's tokenizer), vectors kept in memory and saved as one .npy.

Corpus: the Markdown API docs of Debian's nodejs-doc (/usr/share/doc/nodejs/api).
Both sides are timed from start (model load included) to the last vector written. The
two splitters cut differently, so chunks/s is reported with tokens/s (tokens embedded)
next to it; the ratio that matters is on tokens.

    .venv-ingest/bin/python bench/ingest.py [--threads 2] [--size 200] [--files N]   (see bench/ingest.sh)
"""
import argparse
import glob
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
QUIVER = os.environ.get("QUIVER_BIN", os.path.join(HERE, "..", "build", "quiver"))
MODELS = os.environ.get("QUIVER_MODELS") or os.path.expanduser("~/.cache/quiver/models")
MODEL = os.path.join(MODELS, "all-MiniLM-L6-v2")
API = "/usr/share/doc/nodejs/api"


def make_corpus(dst, limit):
    files = sorted(glob.glob(os.path.join(API, "*.md")) + glob.glob(os.path.join(API, "*.md.gz")))
    if len(files) < 50:
        sys.exit(f"{API}: install nodejs-doc (make deps)")
    for f in files[:limit] if limit else files:
        name = os.path.basename(f)
        if name.endswith(".gz"):
            with gzip.open(f, "rb") as s, open(os.path.join(dst, name[:-3]), "wb") as d:
                shutil.copyfileobj(s, d)
        else:
            shutil.copy(f, dst)
    return sorted(glob.glob(os.path.join(dst, "*.md")))


def run_quiver(corpus, size, threads):
    data = tempfile.mkdtemp(prefix="qv-ingest-")
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", QUIVER_THREADS=str(threads))
    t0 = time.perf_counter()
    p = subprocess.run([QUIVER, "ingest", corpus, "--collection", "bench", "--size", str(size), "--data-dir", data],
                       capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if p.returncode:
        sys.exit(p.stderr)
    s = json.loads(p.stdout.strip().splitlines()[-1])
    shutil.rmtree(data)
    return {"seconds": wall, "chunks": s["chunks"], "tokens": s["tokens"]}


def run_python(files, size, threads):
    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    model = SentenceTransformer(MODEL, device="cpu")
    tok = model.tokenizer
    chunks, tokens = [], 0
    for f in files:
        paras = [p.strip() for p in open(f, encoding="utf-8").read().split("\n\n") if p.strip()]
        cur, cur_n = [], 0
        for para in paras:
            n = len(tok(para, add_special_tokens=False)["input_ids"])
            if n > size:  # a long paragraph: its words, packed
                words = para.split()
                for w in words:
                    wn = len(tok(w, add_special_tokens=False)["input_ids"])
                    if cur and cur_n + wn > size:
                        chunks.append(" ".join(cur)); tokens += cur_n; cur, cur_n = [], 0
                    cur.append(w); cur_n += wn
                continue
            if cur and cur_n + n > size:
                chunks.append(" ".join(cur)); tokens += cur_n; cur, cur_n = [], 0
            cur.append(para); cur_n += n
        if cur:
            chunks.append(" ".join(cur)); tokens += cur_n
    vecs = model.encode(chunks, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
    out = tempfile.mktemp(suffix=".npy")
    np.save(out, vecs.astype(np.float32))
    wall = time.perf_counter() - t0
    os.remove(out)
    return {"seconds": wall, "chunks": len(chunks), "tokens": tokens}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--size", type=int, default=200)
    ap.add_argument("--files", type=int, default=0, help="only the first N files by name (0 = all 64)")
    ap.add_argument("--json", help="write the figures here")
    a = ap.parse_args()
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as corpus:
        files = make_corpus(corpus, a.files)
        mb = sum(os.path.getsize(f) for f in files) / 1e6
        q = run_quiver(corpus, a.size, a.threads)
        py = run_python(files, a.size, a.threads)
    for r in (q, py):
        r["chunks_per_s"] = r["chunks"] / r["seconds"]
        r["tokens_per_s"] = r["tokens"] / r["seconds"]
    res = {"files": len(files), "megabytes": round(mb, 2), "threads": a.threads, "size": a.size,
           "load_start": load_start, "load_end": os.getloadavg(), "quiver": q, "python": py,
           "ratio_chunks_per_s": q["chunks_per_s"] / py["chunks_per_s"],
           "ratio_tokens_per_s": q["tokens_per_s"] / py["tokens_per_s"]}
    print(json.dumps(res, indent=1))
    print(f"\n| pipeline | seconds | chunks | chunks/s | tokens/s |\n| --- | --- | --- | --- | --- |")
    for name, r in (("quiver ingest", q), ("sentence-transformers + splitter", py)):
        print(f"| {name} | {r['seconds']:.1f} | {r['chunks']} | {r['chunks_per_s']:.1f} | {r['tokens_per_s']:.0f} |")
    print(f"\nratio: {res['ratio_chunks_per_s']:.2f}x chunks/s, {res['ratio_tokens_per_s']:.2f}x tokens/s")
    if a.json:
        json.dump(res, open(a.json, "w"), indent=1)


if __name__ == "__main__":
    main()
