"""`quiver tokenize` against Hugging Face `tokenizers` on the real all-MiniLM-L6-v2 tokenizer:
thousands of seeded strings (every script, emoji, control chars, odd whitespace, long words,
special tokens in the text), single and paired, truncated and not. Ids and type ids must be
identical. The model comes from $QUIVER_MODELS (scripts/fetch_models.py); without it the
test fails, because CI fetches it first."""
import json
import os
import random
import subprocess

import pytest
from tokenizers import Tokenizer

from conftest import QUIVER

MODELS = os.environ.get("QUIVER_MODELS", os.path.expanduser("~/.cache/quiver/models"))
TOKENIZER = os.path.join(MODELS, "all-MiniLM-L6-v2", "tokenizer.json")

WORDS = (
    "the quick brown fox jumps over lazy dog semantic search engine vector index query "
    "embedding transformer attention tokenizer unbelievable internationalization running "
    "Hello World HTTP JSON PyTorch GPU CUDA naïve café résumé jalapeño São Paulo Zürich "
    "don't it's e-mail state-of-the-art U.S.A. Mr. Dr. 3.14 1,000,000 42 2024-01-31 12:30pm"
).split()

SNIPPETS = [
    "café", "naïve", "niño", "Ångström", "Å", "Å", "e\u0301", "a\u0300\u0316", "ﬁ ﬂ ﬀ",
    "你好，世界！", "我爱自然语言处理。", "日本語のテキスト", "ひらがな カタカナ ｶﾀｶﾅ", "한국어 텍스트입니다",
    "한", "مرحبا بالعالم", "\u0600\u0601 عربي", "नमस्ते दुनिया", "हिन्दी", "ภาษาไทย", "עברית",
    "Привет, мир!", "Ελληνικά ΟΔΥΣΣΕΥΣ ς σ Σ", "İstanbul ıi Iİ", "Straße STRASSE ẞ", "ǅ ǆ Ǆ",
    "K Kelvin Ω ohm", "😀", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇺🇸🇩🇪", "1️⃣", "🥰🫨", "❤️",
    "\x00", "\x07", "\x1b[31m", "\u200b", "\ufeff", "\u00ad", "\u2028", "\x85", "\ufffd",
    "\ue000", "\U000f0000", "\u0378", "\u2066x\u2069", "\u00a0", "\u3000", "\u2009", "\t",
    "\n", "\r\n", "\x0b", "\x0c", "\u1680", "\u202f", "!!!", "???", "...", "—", "–", "«»",
    "“quoted”", "…", "¿¡", "$100", "€50", "¥", "@user", "#tag", "100%", "a+b=c", "x^2", "~/", "|",
    "https://example.com/path?q=1&r=2#frag", "user@example.org", "C:\\Windows\\System32",
    "def f(x): return x**2", "{\"key\": [1, 2, 3]}", "<div class=\"a\">hi</div>", "i++;",
    "[CLS]", "[SEP]", "[MASK]", "[UNK]", "[PAD]", "[mask]", "[[MASK]]", "x[SEP]y", "[CLS ]",
    "١٢٣", "①②③", "½", "x²", "Ⅻ", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "\U00020000\U0002a6d6", "\U0002b820\U0002b920",
    "\uf900\ufa0e", "\u2f800", "Z\u0335\u0321a\u0336\u0322l\u0337g\u0338o\u0334", "ä\u0323\u0302",
    "\u0e01\u0e34\u0e4d", "\u1d165\u1d16d", "\U0001d165\U0001d16d\U0001d166", "\u16ff0", "\U00011938",
    "\u0890x", "\U0001bca0", "\u1c89\ua7cb\U00010d50", "\u0130", "\u1e9e", "\u212b",
]


def random_char(rng):
    r = rng.random()
    if r < 0.3:
        return chr(rng.randrange(0x20, 0x7F))
    if r < 0.5:
        lo, hi = rng.choice([(0x80, 0x24F), (0x300, 0x36F), (0x370, 0x3FF), (0x400, 0x4FF),
                             (0x590, 0x6FF), (0x900, 0x97F), (0xE00, 0xE7F), (0x1100, 0x11FF),
                             (0x2000, 0x206F), (0x3000, 0x30FF), (0x4E00, 0x9FFF), (0xAC00, 0xD7A3),
                             (0xF900, 0xFAFF), (0xFE00, 0xFFFF), (0x1F300, 0x1FAFF)])
        return chr(rng.randint(lo, hi))
    while True:  # anything at all, every plane
        c = rng.randrange(0x110000) if rng.random() < 0.5 else rng.randrange(0x30000)
        if not 0xD800 <= c <= 0xDFFF:
            return chr(c)


def random_word(rng):
    r = rng.random()
    if r < 0.5:
        w = rng.choice(WORDS)
    elif r < 0.75:
        w = rng.choice(SNIPPETS)
    else:
        w = "".join(random_char(rng) for _ in range(rng.randint(1, 8)))
    r = rng.random()
    if r < 0.1:
        w = w.upper()
    elif r < 0.2:
        w = w.title()
    return w


def random_sep(rng):
    r = rng.random()
    if r < 0.8:
        return " "
    return rng.choice(["", "  ", "\t", "\n", "\u00a0", "\u3000", ", ", ". ", "-", "/", "\u200b", "\r\n"])


def sentence(rng, n):
    out = []
    for _ in range(n):
        out.append(random_word(rng))
        out.append(random_sep(rng))
    return "".join(out)


def generate(seed, count):
    rng = random.Random(seed)
    fixed = ["", " ", "\t\n", "a", "Hello, world!", "a" * 100, "a" * 101, "é" * 100, "é" * 101,
             "e\u0301" * 100, "ab" * 60, "x" * 5000, "İ" * 60, "İ" * 100, "!" * 300, "[MASK]" * 50,
             "unaffable " * 40, "supercalifragilisticexpialidocious" * 3]
    out = list(fixed) + list(SNIPPETS)
    while len(out) < count:
        r = rng.random()
        if r < 0.55:
            out.append(sentence(rng, rng.randint(1, 25)))
        elif r < 0.7:
            out.append("".join(random_char(rng) for _ in range(rng.randint(1, 60))))
        elif r < 0.8:  # very long words, around the 100-char limit
            c = rng.choice(["a", "é", "e\u0301", "x", "ab", "中", "😀", "İ", "ß", "\u00ad"])
            out.append(c * rng.randint(30, 130))
        elif r < 0.9:  # far past the length limit
            out.append(sentence(rng, rng.randint(150, 600)))
        else:
            out.append(rng.choice(SNIPPETS) * rng.randint(1, 40))
    return out


def run_quiver(lines, max_length, pairs):
    args = [QUIVER, "tokenize", "--tokenizer", TOKENIZER, "--max-length", str(max_length)]
    if pairs:
        args.append("--pairs")
    data = "".join(json.dumps(x) + "\n" for x in lines)
    p = subprocess.run(args, input=data, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    out = [json.loads(l) for l in p.stdout.splitlines()]
    assert len(out) == len(lines)
    return out


def describe(x, got_ids, got_types, ids, types, extra=""):
    """One mismatch, short enough to read: the input and where the ids first part."""
    i = next((k for k, (a, b) in enumerate(zip(got_ids, ids)) if a != b), min(len(got_ids), len(ids)))
    text = repr(x)
    if len(text) > 300:
        text = text[:300] + "..."
    return (f"{text}{extra}\n    first difference at token {i}: quiver {got_ids[i:i + 12]} (len {len(got_ids)}),"
            f" hf {ids[i:i + 12]} (len {len(ids)}); type ids equal: {got_types == types}")


def hf_tokenizer(max_length, path=None):
    tok = Tokenizer.from_file(path or TOKENIZER)
    tok.no_padding()
    if max_length:
        tok.enable_truncation(max_length=max_length)
    else:
        tok.no_truncation()
    return tok


@pytest.fixture(scope="module")
def corpus():
    if not os.path.exists(TOKENIZER):
        pytest.fail(f"{TOKENIZER} is missing: run scripts/fetch_models.py (QUIVER_MODELS={MODELS})")
    singles = generate(1234, 2400)
    rng = random.Random(99)
    pairs = [[rng.choice(singles), rng.choice(singles)] for _ in range(1200)]
    # equal and near-equal lengths past the limit exercise longest-first's tie rule
    for n in range(120, 140):
        pairs.append(["word " * n, "other " * n])
        pairs.append(["word " * n, "other " * (n + 1)])
        pairs.append(["a " * 300, "b " * n])
    return singles, pairs


def hf_encode(lines, max_length, kind):
    """(ids, type_ids) per line. encode_batch gives what encode gives, only in parallel; small
    batches, because a truncated pair carries the cross product of both texts' overflows."""
    tok = hf_tokenizer(max_length)
    out = []
    for i in range(0, len(lines), 64):
        batch = lines[i : i + 64]
        for e in tok.encode_batch([tuple(x) for x in batch] if kind == "pair" else batch):
            out.append((e.ids, e.type_ids))
    return out


@pytest.mark.parametrize("max_length", [0, 256, 16, 5])
@pytest.mark.parametrize("kind", ["single", "pair"])
def test_ids_match_hf_tokenizers(corpus, kind, max_length):
    singles, pairs = corpus
    lines = singles if kind == "single" else pairs
    if kind == "pair" and max_length < 16:
        # HF builds every pairing of the two texts' overflow pieces: keep that product small
        lines = [x for x in lines if len(x[0]) + len(x[1]) < 400]
    got = run_quiver(lines, max_length, kind == "pair")
    want = hf_encode(lines, max_length, kind)
    full = want if max_length == 0 else hf_encode(lines, 0, kind)
    mismatches = []
    for x, g, (ids, types), (full_ids, _) in zip(lines, got, want, full):
        n = len(full_ids)
        if g["ids"] != ids or g["type_ids"] != types or g["untruncated_len"] != n:
            mismatches.append(describe(x, g["ids"], g["type_ids"], ids, types,
                                       f" (untruncated_len {g['untruncated_len']}, hf {n})"))
    assert not mismatches, f"{len(mismatches)} of {len(lines)} differ; first ones:\n" + "\n".join(mismatches[:5])


def test_known_encodings():
    if not os.path.exists(TOKENIZER):
        pytest.fail(f"{TOKENIZER} is missing: run scripts/fetch_models.py")
    got = run_quiver(["Hello, world!", "unaffable"], 0, False)
    assert got[0] == {"ids": [101, 7592, 1010, 2088, 999, 102], "type_ids": [0] * 6, "untruncated_len": 6}
    assert got[1]["ids"] == [101, 14477, 20961, 3468, 102]


def test_bad_input_is_one_line_error(tmp_path):
    if not os.path.exists(TOKENIZER):
        pytest.fail(f"{TOKENIZER} is missing: run scripts/fetch_models.py")
    for data, pairs, want in [
        ('"ok"\n{"not": "a string"}\n', False, "line 2"),
        ('"a"\n', True, "line 1"),
        ('["a", 3]\n', True, "line 1"),
        ('"unterminated\n', False, "malformed JSON"),
    ]:
        args = [QUIVER, "tokenize", "--tokenizer", TOKENIZER] + (["--pairs"] if pairs else [])
        p = subprocess.run(args, input=data, capture_output=True, text=True)
        assert p.returncode == 1
        err = p.stderr.strip()
        assert err.startswith("quiver: ") and len(err.splitlines()) == 1 and want in err, err
    bad = tmp_path / "tokenizer.json"
    bad.write_text('{"model": {"type": "BPE", "vocab": {}, "merges": []}}')
    p = subprocess.run([QUIVER, "tokenize", "--tokenizer", str(bad)], input='"x"\n', capture_output=True, text=True)
    assert p.returncode == 1 and "BPE" in p.stderr and len(p.stderr.strip().splitlines()) == 1


def variant(base, name):
    """The real tokenizer.json with one part of the pipeline changed."""
    d = json.loads(json.dumps(base))
    n = d["normalizer"]
    if name == "cased_accents_kept":
        n.update(lowercase=False, strip_accents=None)
    elif name == "lowercase_accents_kept":
        n.update(lowercase=True, strip_accents=False)
    elif name == "accents_stripped_cased":
        n.update(lowercase=False, strip_accents=True)
    elif name == "no_clean_no_chinese":
        n.update(clean_text=False, handle_chinese_chars=False)
    elif name == "no_normalizer":
        d["normalizer"] = None
    elif name == "no_pre_tokenizer":
        d["pre_tokenizer"] = None
    elif name == "bert_processing":
        d["post_processor"] = {"type": "BertProcessing", "sep": ["[SEP]", 102], "cls": ["[CLS]", 101]}
    elif name == "no_post_processor":
        d["post_processor"] = None
    elif name == "short_words":
        d["model"]["max_input_chars_per_word"] = 5
    elif name == "added_tokens":
        extra = [("hello world", 30522, dict(normalized=True)),
                 ("<x>", 30523, dict(normalized=False, lstrip=True, rstrip=True)),
                 ("fox", 30524, dict(normalized=True, single_word=True)),
                 ("İs", 30525, dict(normalized=True)),
                 ("the", 1996, dict(normalized=False, special=True))]
        for content, i, flags in extra:
            tok = {"id": i, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
                   "normalized": True, "special": False}
            tok.update(flags)
            d["added_tokens"].append(tok)
    return d


VARIANTS = ["cased_accents_kept", "lowercase_accents_kept", "accents_stripped_cased", "no_clean_no_chinese",
            "no_normalizer", "no_pre_tokenizer", "bert_processing", "no_post_processor", "short_words",
            "added_tokens"]


@pytest.mark.parametrize("name", VARIANTS)
def test_pipeline_variants_match_hf(corpus, tmp_path, name):
    singles, pairs = corpus
    with open(TOKENIZER, encoding="utf-8") as f:
        base = json.load(f)
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(variant(base, name)), encoding="utf-8")
    extra = ["hello world <x> fox foxes the other", "x  <x>  y", "a<x><x>b", "İstanbul İs iS", "THE The the",
             "Hello World", "unfoxed fox_ fox. .fox"]
    lines = extra + singles[:800]
    plines = [[a, b] for a, b in zip(lines, reversed(lines))]
    for kind, data in (("single", lines), ("pair", plines)):
        for max_length in (0, 64):
            args = [QUIVER, "tokenize", "--tokenizer", str(path), "--max-length", str(max_length)]
            p = subprocess.run(args + (["--pairs"] if kind == "pair" else []), capture_output=True, text=True,
                               input="".join(json.dumps(x) + "\n" for x in data))
            assert p.returncode == 0, p.stderr
            got = [json.loads(l) for l in p.stdout.splitlines()]
            tok = hf_tokenizer(max_length, str(path))
            want = tok.encode_batch([tuple(x) for x in data] if kind == "pair" else data)
            bad = [describe(x, g["ids"], g["type_ids"], e.ids, e.type_ids)
                   for x, g, e in zip(data, got, want) if g["ids"] != e.ids or g["type_ids"] != e.type_ids]
            assert not bad, f"{name} {kind} max_length={max_length}: {len(bad)} differ:\n" + "\n".join(bad[:5])
