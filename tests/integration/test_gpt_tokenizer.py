"""`quiver gpt tokenizer` against Hugging Face `tokenizers`:

- GPT-2's own vocab.json + merges.txt (fetched by scripts/fetch_models.py into
  ~/.cache/quiver/tokenizers/gpt2-tokenizer; without them the test fails, because `make models`
  fetches them first) give the same ids as HF's BPE over the same files, on thousands of
  seeded strings (every script, emoji, contractions, whitespace runs, numbers, code, control
  chars, <|endoftext|> inside text, empty strings);
- a tokenizer trained by quiver on nodejs-doc, saved as tokenizer.json, loads in HF and
  encodes identically; one trained by HF loads in quiver and encodes identically;
- decode(encode(x)) == x for every string.
"""
import glob
import gzip
import json
import os
import random
import subprocess

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from tokenizers.implementations import ByteLevelBPETokenizer

from conftest import QUIVER
from test_tokenizer import generate  # the seeded multilingual corpus of the WordPiece test

MODELS = os.environ.get("QUIVER_MODELS", os.path.expanduser("~/.cache/quiver/models"))
GPT2 = os.path.join(os.path.dirname(os.path.abspath(MODELS)), "tokenizers", "gpt2-tokenizer")
NODE_DOCS = "/usr/share/doc/nodejs/api"
EOT = "<|endoftext|>"

# what GPT-2's pattern cares about: contractions, space runs before words, digits, symbols
GPT_STRINGS = [
    "", " ", "  ", "\n", "\n\n", " \n ", "a", " a", "  a", "   a", "a ", "a  ", "\ta", " \ta", "\t a",
    "it's", "It's", "IT'S", "don't", "we're", "they've", "I'm", "you'll", "he'd", "'s", "''s", "' s",
    "'", "''", "rock'n'roll", "o'clock", "’s", "x'S", "'ll'll", "can't've",
    "hello world", "hello  world", "hello   world", "hello\tworld", "hello\n\nworld", "hello \n world",
    "12345", " 12345", "3.14159", "1,000,000", "2026-11-30", "v1.2.3", "0x1F", "١٢٣ ٤", "Ⅻ½",
    "foo()", "foo( )", "a=b+c;", "if (x) {\n    return y;\n}\n", "    indented", "\t\tdeep",
    "#include <stdio.h>", "x->y", "a::b", "//comment", "/* c */", "$ ls -la | grep .md",
    "!!!", "?!", "...", "--", "—", "«»", "“quoted”", " !", "  !", " ! ", "a!b", "a !b",
    EOT, "a" + EOT, EOT + "a", " " + EOT + " ", EOT + EOT, "x" + EOT + "y" + EOT + "z",
    "<|endoftext", "<|endoftext|", "|endoftext|>", "<|endoftext|>>", "<<|endoftext|>",
    "<|ENDOFTEXT|>", "<| endoftext |>",
    "\x00", "\x00a", "a\x00b", "\x01\x02\x03", "\x1b[31mred\x1b[0m", "\x7f", "\x1c\x1d\x1e\x1f",
    "\u0085", "\u00a0", "a\u00a0b", "\u2028", "\u3000x", "\u200b", "\ufeffBOM", "\ufffd", "\ufffe",
    "café", "naïve", "Ångström", "e\u0301", "中文字符", "日本語 テキスト", "한국어", "مرحبا",
    "😀", " 😀", "👨‍👩‍👧‍👦", "🇺🇸", "\U0010ffff", "\U000e0001",
    "ÿ", "Ā", "Ġ", "Ċ", "ĠĠ", " Ġ",
]


def corpus(seed, count):
    out = list(GPT_STRINGS) + generate(seed, count)
    rng = random.Random(seed + 1)
    # end-of-text inside generated text, at random places
    for s in generate(seed + 2, 300):
        i = rng.randrange(len(s) + 1)
        out.append(s[:i] + EOT + s[i:])
    return out


def node_docs():
    """nodejs-doc's API pages as text (Debian ships them gzipped)."""
    texts = []
    for path in sorted(glob.glob(os.path.join(NODE_DOCS, "*.md.gz"))):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            texts.append(f.read())
    assert len(texts) > 40, f"{NODE_DOCS} is missing: apt-get install nodejs-doc"
    return texts


def run(*args, input=None, check=True):
    p = subprocess.run([QUIVER, "gpt", "tokenizer", *map(str, args)], input=input, capture_output=True,
                       timeout=600)
    if check:
        assert p.returncode == 0, p.stderr.decode(errors="replace")
    return p


def quiver_encode(tokenizer, texts):
    data = "".join(json.dumps(t) + "\n" for t in texts).encode()
    out = run("encode", "--tokenizer", tokenizer, "--jsonl", "-", input=data).stdout.decode().splitlines()
    assert len(out) == len(texts)
    return [json.loads(line) for line in out]


def quiver_decode(tokenizer, id_lists):
    data = "".join(json.dumps(ids) + "\n" for ids in id_lists).encode()
    out = run("decode", "--tokenizer", tokenizer, "--jsonl", "-", input=data).stdout.decode().splitlines()
    assert len(out) == len(id_lists)
    return [json.loads(line) for line in out]


def assert_same_ids(ours, hf, texts):
    bad = [i for i in range(len(texts)) if ours[i] != hf.encode(texts[i]).ids]
    if bad:
        i = bad[0]
        raise AssertionError(f"{len(bad)} of {len(texts)} strings differ; first {texts[i]!r}:\n"
                             f"  quiver {ours[i]}\n  hf     {hf.encode(texts[i]).ids}")


def assert_round_trip(tokenizer, ours, texts):
    back = quiver_decode(tokenizer, ours)
    bad = [i for i in range(len(texts)) if back[i] != texts[i]]
    assert not bad, f"{len(bad)} strings do not decode back; first {texts[bad[0]]!r} -> {back[bad[0]]!r}"


@pytest.fixture(scope="module")
def gpt2_hf():
    vocab, merges = os.path.join(GPT2, "vocab.json"), os.path.join(GPT2, "merges.txt")
    assert os.path.exists(vocab) and os.path.exists(merges), \
        f"{GPT2} lacks GPT-2's vocab.json/merges.txt: run `make models`"
    t = Tokenizer(models.BPE.from_file(vocab, merges))
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    t.add_special_tokens([EOT])
    return t


def test_gpt2_vocabulary_matches_hf(gpt2_hf):
    texts = corpus(8, 2500)
    assert len(texts) >= 2500
    ours = quiver_encode(GPT2, texts)
    assert_same_ids(ours, gpt2_hf, texts)
    assert_round_trip(GPT2, ours, texts)
    # a known answer, independent of HF: GPT-2's ids for a classic sentence
    assert quiver_encode(GPT2, ["Hello world<|endoftext|>"])[0] == [15496, 995, 50256]


def test_gpt2_on_real_documents(gpt2_hf):
    texts = node_docs()[:20]
    ours = quiver_encode(GPT2, texts)
    assert_same_ids(ours, gpt2_hf, texts)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """quiver's tokenizer trained on nodejs-doc (the pages unpacked into .md files)."""
    d = tmp_path_factory.mktemp("bpe")
    docs = d / "docs"
    docs.mkdir()
    for i, t in enumerate(node_docs()):
        (docs / f"{i:03d}.md").write_text(t, encoding="utf-8")
    out = d / "tokenizer.json"
    p = run("train", "--vocab-size", 1000, "--out", out, docs)
    assert b"1000 tokens" in p.stderr
    return str(out)


def test_trained_tokenizer_loads_in_hf_and_encodes_identically(trained):
    hf = Tokenizer.from_file(trained)
    assert hf.get_vocab_size() == 1000
    assert hf.token_to_id(EOT) == 999
    texts = corpus(9, 2000) + [t[:5000] for t in node_docs()[:10]]
    ours = quiver_encode(trained, texts)
    assert_same_ids(ours, hf, texts)
    assert_round_trip(trained, ours, texts)
    # merges learned from the docs compress them: well under one token per byte
    doc = node_docs()[0]
    assert len(quiver_encode(trained, [doc])[0]) < len(doc.encode()) / 2


def test_training_is_deterministic(trained, tmp_path):
    docs = os.path.join(os.path.dirname(trained), "docs")
    out = tmp_path / "again.json"
    run("train", "--vocab-size", 1000, "--out", out, docs)
    with open(trained, "rb") as f:
        assert out.read_bytes() == f.read()


def test_hf_trained_tokenizer_loads_in_quiver(tmp_path):
    hf = ByteLevelBPETokenizer(add_prefix_space=False)
    hf.train_from_iterator(node_docs()[:8], vocab_size=600, min_frequency=2, special_tokens=[EOT],
                           show_progress=False)
    path = str(tmp_path / "hf.json")
    hf.save(path)
    texts = corpus(10, 500)
    ours = quiver_encode(path, texts)
    assert_same_ids(ours, Tokenizer.from_file(path), texts)


def test_cli_text_stdin_and_decode(trained, tmp_path):
    ids = json.loads(run("encode", "--tokenizer", trained, "Streams are<|endoftext|>").stdout)
    assert ids[-1] == 999
    assert json.loads(run("encode", "--tokenizer", trained, input="Streams are<|endoftext|>".encode()).stdout) == ids
    assert run("decode", "--tokenizer", trained, json.dumps(ids)).stdout == b"Streams are<|endoftext|>"
    assert run("decode", "--tokenizer", trained, input=json.dumps(ids).encode()).stdout == b"Streams are<|endoftext|>"
    # a token sequence cut mid-character decodes to its bytes, which --jsonl shows as hex
    e = json.loads(run("encode", "--tokenizer", trained, "\u00e9").stdout)
    assert len(e) == 2
    assert json.loads(run("decode", "--tokenizer", trained, "--jsonl", "-",
                          input=(json.dumps(e[:1]) + "\n").encode()).stdout) == {"hex": "c3"}


def test_bad_input_is_one_clear_line(trained, tmp_path):
    def fail(*args, input=None):
        p = run(*args, input=input, check=False)
        assert p.returncode != 0
        err = p.stderr.decode().strip()
        assert err.startswith("quiver: ") and len(err.splitlines()) == 1, err
        return err

    assert "--tokenizer" in fail("encode", "x")
    assert "nope.json" in fail("encode", "--tokenizer", tmp_path / "nope.json", "x")
    bad = tmp_path / "bad.json"
    bad.write_text("{\"model\": ")
    assert "bad.json" in fail("encode", "--tokenizer", bad, "x")
    bad.write_text(json.dumps({"model": {"type": "WordPiece", "vocab": {}}, "pre_tokenizer": {"type": "ByteLevel"}}))
    assert "BPE" in fail("encode", "--tokenizer", bad, "x")
    assert "element 1 is not a token id" in fail("decode", "--tokenizer", trained, "[1, \"x\"]")
    assert "JSON array" in fail("decode", "--tokenizer", trained, "{}")
    assert "line 2" in fail("encode", "--tokenizer", trained, "--jsonl", "-", input=b"\"ok\"\n42\n")
    assert "--vocab-size" in fail("train", "--out", tmp_path / "t.json", tmp_path)
    assert "vocab-size" in fail("train", "--vocab-size", "10", "--out", tmp_path / "t.json", tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no documents" in fail("train", "--vocab-size", 300, "--out", tmp_path / "t.json", empty)
    assert "unknown action" in fail("bogus")
