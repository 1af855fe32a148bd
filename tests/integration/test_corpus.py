"""Retrieval quality on a real corpus: the Markdown API docs of Debian's nodejs-doc
(/usr/share/doc/nodejs/api/*.md[.gz]) ingested with the default chunker, and questions
written from their content, each with the file that answers it. For dense, hybrid and
reranked retrieval, recall@5 and MRR are printed (run with -s) and written to
$QUIVER_CORPUS_REPORT when set; for dense and hybrid every question's expected file must
be in the top 5.

No real cross-encoder is reachable offline, so "reranked" uses the synthetic one of
synthetic_reranker.py (MiniLM's weights under a fixed random classifier head): it exercises
the rerank path end to end, not ranking quality, so for it the test checks the mechanism
(top 5 = hybrid top 10 reordered by logit) and reports recall rather than asserting it."""
import glob
import gzip
import json
import os
import shutil
import subprocess

import pytest

import synthetic_reranker
from conftest import QUIVER

API = "/usr/share/doc/nodejs/api"
QUESTIONS = json.load(open(os.path.join(os.path.dirname(__file__), "data", "nodejs_questions.json")))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    files = glob.glob(os.path.join(API, "*.md")) + glob.glob(os.path.join(API, "*.md.gz"))
    assert len(files) >= 50, f"{API}: nodejs-doc is not installed (apt-get install nodejs-doc; make deps does)"
    root = tmp_path_factory.mktemp("nodejs") / "api"
    root.mkdir()
    for f in files:
        name = os.path.basename(f)
        if name.endswith(".gz"):
            with gzip.open(f, "rb") as src, open(root / name[:-3], "wb") as dst:
                shutil.copyfileobj(src, dst)
        else:
            shutil.copy(f, root / name)
    data = tmp_path_factory.mktemp("data")
    p = subprocess.run([QUIVER, "ingest", str(root), "--collection", "node", "--data-dir", str(data)],
                       capture_output=True, text=True, timeout=1200)
    assert p.returncode == 0, p.stderr
    summary = json.loads(p.stdout.strip().splitlines()[-1])
    assert summary["files"] == len(files) and summary["new"] == len(files) and summary["chunks"] > 1000
    return root, data, summary


@pytest.fixture(scope="module")
def reranker(tmp_path_factory):
    return synthetic_reranker.build(tmp_path_factory.mktemp("xenc") / "test-cross-encoder")


def run_queries(data, qfile, *extra, k=5):
    p = subprocess.run([QUIVER, "query", "--queries", str(qfile), "--collection", "node", "--k", str(k),
                        "--data-dir", str(data), *map(str, extra)], capture_output=True, text=True, timeout=1200)
    assert p.returncode == 0, p.stderr
    return [json.loads(l) for l in p.stdout.splitlines()]


def metrics(answers, top=5):
    """recall@top and MRR (by file) over QUESTIONS, and the misses."""
    hits, rr, misses = 0, 0.0, []
    for (q, want), a in zip(QUESTIONS, answers):
        assert a["query"] == q
        files = [os.path.basename(r["source"]) for r in a["results"][:top]]
        if want in files:
            hits += 1
            rr += 1.0 / (files.index(want) + 1)
        else:
            misses.append((q, want, files))
    return {"recall@5": hits / len(QUESTIONS), "mrr": rr / len(QUESTIONS)}, misses


def test_expected_file_in_top5(corpus, reranker, tmp_path):
    root, data, summary = corpus
    assert len(QUESTIONS) >= 25
    qfile = tmp_path / "questions.txt"
    qfile.write_text("".join(q + "\n" for q, _ in QUESTIONS))
    dense = run_queries(data, qfile)
    hybrid10 = run_queries(data, qfile, "--hybrid", k=10)
    reranked = run_queries(data, qfile, "--hybrid", "--rerank", reranker, "--rerank-top", "10")
    for a in dense + hybrid10 + reranked:  # every result cites its source, lines and text
        for r in a["results"]:
            assert r["source"].startswith(str(root)) and r["text"] and 1 <= r["lines"][0] <= r["lines"][1]
    report = {"chunks": summary["chunks"], "tokens": summary["tokens"], "files": summary["files"],
              "questions": len(QUESTIONS), "modes": {}}
    report["modes"]["dense"], dense_miss = metrics(dense)
    report["modes"]["hybrid"], hybrid_miss = metrics(hybrid10)
    report["modes"]["reranked"], rerank_miss = metrics(reranked)
    report["reranked_misses"] = rerank_miss
    print("\n" + json.dumps(report, indent=1))
    if os.environ.get("QUIVER_CORPUS_REPORT"):
        with open(os.environ["QUIVER_CORPUS_REPORT"], "w") as f:
            json.dump(report, f, indent=1)
    assert not dense_miss, f"dense: expected file not in the top 5: {dense_miss}"
    assert not hybrid_miss, f"hybrid: expected file not in the top 5: {hybrid_miss}"
    # Reranked: the synthetic cross-encoder's scores carry no relevance, so whether the
    # expected file stays in the top 5 is chance (with this seed it drops os.md for one
    # question of 33). What is asserted is the mechanism: the top 5 are the hybrid top 10
    # reordered by the cross-encoder's logits.
    for h, r in zip(hybrid10, reranked):
        assert len(r["results"]) == 5
        assert {x["id"] for x in r["results"]} <= {x["id"] for x in h["results"]}
        logits = [x["logit"] for x in r["results"]]
        assert logits == sorted(logits, reverse=True)


def test_query_cache_serves_repeats(corpus, tmp_path):
    _, data, _ = corpus
    qfile = tmp_path / "q.txt"
    q = QUESTIONS[0][0]
    qfile.write_text(f"{q}\n  {q.upper()}  \n{QUESTIONS[1][0]}\n")
    out = run_queries(data, qfile, "--hybrid")
    assert [o["cached"] for o in out] == [False, True, False]
    assert out[1]["results"] == out[0]["results"]
    assert out[2]["cache"] == {"hits": 1, "misses": 2}
