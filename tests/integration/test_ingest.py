"""quiver ingest and quiver chunk: documents of every format into a collection, payloads
that map back to the files, incremental re-ingest (unchanged files skipped, changed files
replaced, gone files removed with --sync), and clear errors."""
import json
import os
import subprocess

import numpy as np
import pytest

from conftest import QUIVER

MD = """---
title: Streams guide
tags: [io, node]
---
# Streams

A stream is an abstract interface for working with streaming data.

## Readable

Readable streams are an abstraction for a source from which data is consumed.

```js
const r = fs.createReadStream('file.txt');
```

## Writable

Writable streams are an abstraction for a destination to which data is written.
"""

MDX = """import Tabs from '@theme/Tabs';
export const meta = {};

# Install

<Tabs>
Run the installer and follow the prompts.
</Tabs>
"""

TXT = "Plain text notes about caching.\nSecond line of the notes.\n\nAnother paragraph here.\n"
RST = "Title\n=====\n\nSome reStructuredText about indexes.\n"
HTML = "<html><head><style>x{}</style></head><body><h1>Page</h1><p>HTML body about vectors &amp; search.</p></body></html>"


def make_docs(root):
    (root / "sub").mkdir(parents=True)
    (root / "guide.md").write_text(MD)
    (root / "install.mdx").write_text(MDX)
    (root / "notes.txt").write_text(TXT)
    (root / "sub" / "idx.rst").write_text(RST)
    (root / "sub" / "page.html").write_text(HTML)
    (root / "ignored.py").write_text("print('not a document')\n")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "x.md").write_text("# hidden\n")


def scroll_all(qv, coll):
    out = qv.json("points", "scroll", coll, "--limit", "10000")
    return {p["id"]: p["payload"] for p in out["points"]}


def ingest(qv, *args):
    return json.loads(qv.run("ingest", *map(str, args)).stdout.strip().splitlines()[-1])


def test_ingest_formats_and_payloads(qv, tmp_path):
    docs = tmp_path / "docs"
    make_docs(docs)
    s = ingest(qv, docs, "--collection", "kb", "--size", "32")
    assert s["files"] == 5 and s["new"] == 5 and s["unchanged"] == 0
    pts = scroll_all(qv, "kb")
    assert len(pts) == s["chunks"]
    by_src = {}
    for p in pts.values():
        by_src.setdefault(p["source"], []).append(p)
    assert sorted(os.path.relpath(k, docs) for k in by_src) == [
        "guide.md", "install.mdx", "notes.txt", "sub/idx.rst", "sub/page.html"]
    for src, chunks in by_src.items():
        chunks.sort(key=lambda p: p["chunk_index"])
        assert [p["chunk_index"] for p in chunks] == list(range(len(chunks)))
        data = open(src, "rb").read()
        for p in chunks:
            assert p["chunk_count"] == len(chunks)
            a, b = p["span"]["bytes"]
            assert 0 <= a < b <= len(data)
            first_line = data[:a].count(b"\n") + 1
            assert p["span"]["lines"][0] == first_line
            assert p["span"]["lines"][1] == first_line + data[a:b - 1].count(b"\n")
            # the span starts at the chunk's first word
            word = p["text"].split()[0]
            assert data[a:b].decode().find(word.strip("*`_[]")) >= 0 or src.endswith(".html")
            if src.endswith(".txt"):
                assert data[a:b].decode() == p["text"]
            assert len(p["hash"]) == 64 and len(p["file_hash"]) == 64
    guide = sorted(by_src[str(docs / "guide.md")], key=lambda p: p["chunk_index"])
    assert all(p["title"] == "Streams guide" and p["tags"] == ["io", "node"] for p in guide)
    code = [p for p in guide if p.get("is_code")]
    assert code and "createReadStream" in code[0]["text"]
    assert code[0]["headings"] == ["Streams", "Readable"]
    assert any(p["headings"] == ["Streams", "Writable"] for p in guide)
    assert not any("is_code" in p for p in guide if "createReadStream" not in p["text"])
    mdx = " ".join(p["text"] for p in by_src[str(docs / "install.mdx")])
    assert "Run the installer" in mdx and "import" not in mdx and "Tabs" not in mdx
    html = " ".join(p["text"] for p in by_src[str(docs / "sub" / "page.html")])
    assert "vectors & search" in html and "x{}" not in html


def test_reingest_is_incremental(qv, tmp_path):
    docs = tmp_path / "docs"
    make_docs(docs)
    ingest(qv, docs, "--collection", "kb", "--size", "24")
    before = scroll_all(qv, "kb")
    again = ingest(qv, docs, "--collection", "kb", "--size", "24")
    assert again["unchanged"] == 5 and again["new"] == again["changed"] == 0 and again["chunks"] == 0
    assert scroll_all(qv, "kb") == before

    # new chunking settings re-chunk every file instead of keeping the old cuts
    rechunked = ingest(qv, docs, "--collection", "kb", "--size", "48")
    assert rechunked["changed"] == 5 and rechunked["unchanged"] == 0
    assert scroll_all(qv, "kb") != before
    back = ingest(qv, docs, "--collection", "kb", "--size", "24")
    assert back["changed"] == 5 and scroll_all(qv, "kb") == before

    # a changed file: its chunks are replaced, the others untouched
    (docs / "guide.md").write_text("# Streams\n\nShort now.\n")
    ch = ingest(qv, docs, "--collection", "kb", "--size", "24")
    assert ch["changed"] == 1 and ch["unchanged"] == 4 and ch["chunks"] == 1
    old_guide = sum(1 for p in before.values() if p["source"].endswith("guide.md"))
    assert old_guide > 1 and ch["chunks_removed"] == old_guide - 1
    after = scroll_all(qv, "kb")
    guide = [p for p in after.values() if p["source"].endswith("guide.md")]
    assert len(guide) == 1 and guide[0]["text"] == "Streams\n\nShort now."
    others = {k: v for k, v in after.items() if not v["source"].endswith("guide.md")}
    assert others == {k: v for k, v in before.items() if not v["source"].endswith("guide.md")}

    # a gone file stays without --sync and goes with it
    os.remove(docs / "notes.txt")
    kept = ingest(qv, docs, "--collection", "kb", "--size", "24")
    assert kept["removed"] == 0
    assert any(p["source"].endswith("notes.txt") for p in scroll_all(qv, "kb").values())
    synced = ingest(qv, docs, "--collection", "kb", "--size", "24", "--sync")
    assert synced["removed"] == 1 and synced["unchanged"] == 4
    left = scroll_all(qv, "kb")
    assert not any(p["source"].endswith("notes.txt") for p in left.values())
    assert len(left) == len(after) - sum(1 for p in after.values() if p["source"].endswith("notes.txt"))

    # --sync only removes under the paths given
    other = tmp_path / "other"
    other.mkdir()
    (other / "o.md").write_text("# Other\n\nother text\n")
    ingest(qv, other, "--collection", "kb")
    s = ingest(qv, docs, "--collection", "kb", "--size", "24", "--sync")
    assert s["removed"] == 0
    assert any(p["source"].endswith("o.md") for p in scroll_all(qv, "kb").values())


def test_every_chunker_through_the_cli(qv, tmp_path):
    docs = tmp_path / "docs"
    make_docs(docs)
    for chunker in ("fixed", "sentence", "structure", "adaptive"):
        opts = ["--min", "8", "--max", "20"] if chunker == "adaptive" else ["--size", "20", "--overlap", "0.25"]
        lines = qv.lines("chunk", docs / "guide.md", "--chunker", chunker, "--json", *opts)
        stats = lines[-1]["stats"]
        chunks = lines[:-1]
        assert stats["chunks"] == len(chunks) >= 2 and stats["chunker"] == chunker
        assert stats["tokens"]["max"] <= 20
        assert stats["tokens"]["min"] == min(c["tokens"] for c in chunks)
        words = " ".join(c["text"] for c in chunks).split()
        for w in ("abstract", "fs.createReadStream('file.txt');", "destination"):
            assert w in words
        coll = "c_" + chunker
        s = ingest(qv, docs, "--collection", coll, "--chunker", chunker, *opts)
        assert s["new"] == 5


def test_errors(qv, tmp_path):
    docs = tmp_path / "docs"
    make_docs(docs)
    assert "does-not-exist" in qv.fail("ingest", tmp_path / "does-not-exist", "--collection", "kb")
    assert "not a document" in qv.fail("ingest", docs / "ignored.py", "--collection", "kb")
    assert "--collection" in qv.fail("ingest", docs)
    assert "--chunker" in qv.fail("ingest", docs, "--collection", "kb", "--chunker", "words")
    assert "--overlap" in qv.fail("ingest", docs, "--collection", "kb", "--overlap", "0.95")
    assert "--size" in qv.fail("ingest", docs, "--collection", "kb", "--size", "300")
    assert "--min" in qv.fail("chunk", docs / "guide.md", "--chunker", "adaptive", "--min", "50", "--max", "20")
    # a collection whose vectors are not the model's size
    qv.run("collection", "create", "small", "--size", "8", "--distance", "Cosine")
    assert "dimensional" in qv.fail("ingest", docs, "--collection", "small")
    # nothing was written by the failed runs
    assert qv.json("points", "scroll", "small", "--limit", "10")["points"] == []


def test_symlink_loops_are_skipped_not_fatal(qv, tmp_path):
    docs = tmp_path / "docs"
    (docs / "a" / "b").mkdir(parents=True)
    (docs / "a" / "b" / "deep.md").write_text("# Deep\n\nA page about loops in directory trees.\n")
    (docs / "top.txt").write_text("Top level notes about symlinks.\n")
    (docs / "a" / "b" / "up").symlink_to(docs)  # a loop back to the root
    (docs / "a" / "self").symlink_to(docs / "a")  # a loop to its own parent
    (docs / "a" / "linked.md").symlink_to(docs / "top.txt")  # a file link is still read
    out = ingest(qv, docs, "--collection", "kb")
    assert out["files"] == 3
    sources = {p["source"] for p in scroll_all(qv, "kb").values()}
    assert sources == {str(docs / "a" / "b" / "deep.md"), str(docs / "top.txt"), str(docs / "a" / "linked.md")}


def test_missing_model_says_how_to_get_it(qv, tmp_path):
    docs = tmp_path / "docs"
    make_docs(docs)
    env = dict(os.environ, QUIVER_MODELS=str(tmp_path / "empty-cache"))
    p = subprocess.run([QUIVER, "ingest", str(docs), "--collection", "kb", "--data-dir", qv.data_dir],
                       capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode != 0
    err = p.stderr.strip()
    assert len(err.splitlines()) == 1 and "quiver model pull all-MiniLM-L6-v2" in err


def query(qv, *args):
    return json.loads(qv.run("query", *map(str, args), "--json").stdout)


def test_query_dense_hybrid_reranked(qv, tmp_path):
    import synthetic_reranker
    docs = tmp_path / "docs"
    make_docs(docs)
    # a term no embedding knows, for the keyword index to find
    (docs / "codes.md").write_text("# Error codes\n\nThe error ZQX-4471 means the disk quota is exhausted.\n")
    ingest(qv, docs, "--collection", "kb", "--size", "32")
    d = query(qv, "what is a writable stream?", "--collection", "kb", "--k", "3")
    assert d["mode"] == "dense" and len(d["results"]) == 3 and not d["cached"]
    top = d["results"][0]
    assert top["source"].endswith("guide.md") and top["headings"] == ["Streams", "Writable"]
    assert "destination" in top["text"] and top["lines"][0] >= 1 and top["dense_rank"] == 1
    assert [r["rank"] for r in d["results"]] == [1, 2, 3]
    assert all(a["score"] >= b["score"] for a, b in zip(d["results"], d["results"][1:]))

    h = query(qv, "ZQX-4471", "--collection", "kb", "--hybrid", "--k", "3")
    assert h["mode"] == "hybrid"
    assert h["results"][0]["source"].endswith("codes.md") and h["results"][0]["keyword_rank"] == 1
    # reciprocal rank fusion: 1/(60 + dense rank) + 1/(60 + keyword rank)
    for r in h["results"]:
        want = sum(1 / (60 + r[k]) for k in ("dense_rank", "keyword_rank") if k in r)
        assert abs(r["score"] - want) < 1e-6

    # a filter holds on both sides: the keyword match in codes.md is not returned when the
    # filter keeps only guide.md, and every result comes from guide.md
    only_guide = json.dumps({"must": [{"key": "source", "match": {"value": str(docs / "guide.md")}}]})
    hf = query(qv, "ZQX-4471", "--collection", "kb", "--hybrid", "--k", "3", "--filter", only_guide)
    assert hf["results"] and all(r["source"].endswith("guide.md") for r in hf["results"])
    assert not any("keyword_rank" in r for r in hf["results"])  # the term is only in codes.md
    kw = query(qv, "writable stream", "--collection", "kb", "--hybrid", "--k", "5", "--filter", only_guide)
    assert all(r["source"].endswith("guide.md") for r in kw["results"])
    assert any("keyword_rank" in r for r in kw["results"])
    only_codes = json.dumps({"must": [{"key": "source", "match": {"value": str(docs / "codes.md")}}]})
    hc = query(qv, "ZQX-4471", "--collection", "kb", "--hybrid", "--k", "3", "--filter", only_codes)
    assert [r["source"] for r in hc["results"]] == [str(docs / "codes.md")]
    assert hc["results"][0]["keyword_rank"] == 1 and hc["results"][0]["dense_rank"] == 1

    xenc = synthetic_reranker.build(tmp_path / "xenc")
    rr = query(qv, "what is a writable stream?", "--collection", "kb", "--rerank", xenc, "--k", "4")
    assert rr["mode"] == "reranked" and len(rr["results"]) == 4
    logits = [r["logit"] for r in rr["results"]]
    assert logits == sorted(logits, reverse=True)
    assert all(abs(r["score"] - 1 / (1 + np.exp(-r["logit"]))) < 1e-5 for r in rr["results"])
    # the reranker's order is its own: check the top logit against `quiver rerank`
    best = rr["results"][0]
    doc = (" > ".join(best["headings"]) + "\n" if best["headings"] else "") + best["text"]
    out = subprocess.run([QUIVER, "rerank", "what is a writable stream?", doc, "--model", str(xenc)],
                         capture_output=True, text=True, check=True).stdout
    assert abs(json.loads(out.splitlines()[0])["logit"] - logits[0]) < 1e-3

    # human-readable output cites source and lines
    text = qv.run("query", "installer prompts", "--collection", "kb", "--k", "1").stdout
    assert "install.mdx:" in text and "Run the installer" in text

    assert "collection" in qv.fail("query", "x", "--collection", "nope")
    assert "empty" in qv.fail("query", "", "--collection", "kb")
    assert "cross-encoder" in qv.fail("query", "x", "--collection", "kb", "--rerank", "all-MiniLM-L6-v2")
    assert "--k" in qv.fail("query", "x", "--collection", "kb", "--k", "0")


def test_query_sees_reingested_content(qv, tmp_path):
    docs = tmp_path / "docs"
    make_docs(docs)
    ingest(qv, docs, "--collection", "kb")
    qfile = tmp_path / "q.txt"
    qfile.write_text("ZQX-9 flux capacitor\n")
    (docs / "new.md").write_text("# Flux\n\nThe flux capacitor ZQX-9 needs 1.21 gigawatts.\n")
    ingest(qv, docs, "--collection", "kb")
    out = [json.loads(l) for l in qv.run("query", "--queries", qfile, "--collection", "kb", "--hybrid").stdout.splitlines()]
    assert out[0]["results"][0]["source"].endswith("new.md")
