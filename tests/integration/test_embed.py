"""The embedding runtime end to end: `quiver embed` / `quiver rerank` on the real
all-MiniLM-L6-v2 weights, checked against an independent numpy forward pass
(bert_reference.py) fed by Hugging Face `tokenizers`."""
import json
import os
import random
import shutil
import subprocess

import numpy as np
import pytest
from tokenizers import Tokenizer

from bert_reference import Bert, load_safetensors, save_safetensors
from conftest import QUIVER

MODELS = os.environ.get("QUIVER_MODELS") or os.path.expanduser("~/.cache/quiver/models")
MODEL = os.path.join(MODELS, "all-MiniLM-L6-v2")
MAX_TOKENS = 256  # sentence_bert_config.json's max_seq_length


@pytest.fixture(scope="module")
def model_files():
    assert os.path.exists(os.path.join(MODEL, "model.safetensors")), \
        f"{MODEL} missing: run scripts/fetch_models.py (make test does)"
    config = json.load(open(os.path.join(MODEL, "config.json")))
    tok = Tokenizer.from_file(os.path.join(MODEL, "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(max_length=MAX_TOKENS)
    return load_safetensors(os.path.join(MODEL, "model.safetensors")), config, tok


@pytest.fixture(scope="module")
def reference(model_files):
    weights, config, tok = model_files
    return Bert(weights, config), tok


def varied_texts(n=200, seed=5):
    rng = random.Random(seed)
    base = [
        "The cat sat on the mat.", "A quick brown fox jumps over the lazy dog!",
        "How do I reset my password?", "Quantum entanglement links particles across distances.",
        "Paris is the capital of France.", "¿Dónde está la biblioteca?", "Crème brûlée is a French dessert.",
        "東京は日本の首都です。", "北京是中国的首都", "서울은 한국의 수도입니다", "Привет, как дела?",
        "مرحبا بالعالم", "नमस्ते दुनिया", "I ❤️ pizza 🍕 and 👩‍💻 coding", "naïve café résumé",
        "def f(x): return x ** 2  # square", "https://example.com/path?q=1&r=2", "ÀÉÎÕÜ ß İstanbul ΣΊΣΥΦΟΣ",
        "", " ", "\t\n", "a", "Tabs\tand\nnewlines\r\nmixed", "zero\u200bwidth and soft\u00adhyphen",
        "supercalifragilisticexpialidocious" * 5, "1234567890 3.14159 -42 1e10",
        "!!!???...,,,;;;:::", "The the THE tHe", "control\x07chars\x1bhere",
    ]
    words = ("search engine vector index query document embedding model token layer attention "
             "neural network database durable crash recovery the a of and to in is for on with "
             "über naïve 東京 données café 🚀").split()
    texts = list(base)
    while len(texts) < n:
        k = rng.choice([3, 8, 15, 40, 90, 200, 400])
        texts.append(" ".join(rng.choice(words) for _ in range(k)))
    return texts[:n]


def quiver_embed(texts, *extra, check=True):
    p = subprocess.run([QUIVER, "embed", "--model", MODEL, "--input", "-", *extra],
                       input="\n".join(texts) + "\n", capture_output=True, text=True, timeout=600)
    if check:
        assert p.returncode == 0, p.stderr
        rows = [json.loads(l) for l in p.stdout.splitlines()]
        assert [r["index"] for r in rows] == list(range(len(texts)))
        return np.array([r["embedding"] for r in rows], dtype=np.float64)
    return p


def test_embeddings_match_the_numpy_reference(reference):
    bert, tok = reference
    texts = [t.replace("\n", " ").replace("\r", " ") for t in varied_texts()]
    got = quiver_embed(texts)
    assert got.shape == (200, 384)
    worst_cos, worst_abs = 1.0, 0.0
    for text, g in zip(texts, got):
        want = bert.embed(tok.encode(text).ids)
        cos = float(g @ want / np.linalg.norm(g) / np.linalg.norm(want))
        worst_cos = min(worst_cos, cos)
        worst_abs = max(worst_abs, float(np.abs(g - want).max()))
    print(f"\nembeddings vs numpy reference on {len(texts)} texts: min cosine {worst_cos:.7f}, "
          f"max abs diff {worst_abs:.2e}")
    assert worst_cos >= 0.9999
    assert worst_abs <= 1e-4


def test_batch_and_single_results_agree():
    """A text embedded alone or inside a padded batch gives the same vector up to float32
    rounding (OpenBLAS picks different kernels for different matrix shapes, so the last
    bit can differ; padding itself has no effect: it is masked)."""
    texts = ["short", "a somewhat longer sentence about vector search engines",
             "the third one " * 30, "東京 café 🚀"]
    batch = quiver_embed(texts)
    for i, t in enumerate(texts):
        alone = quiver_embed([t])
        np.testing.assert_allclose(alone[0], batch[i], rtol=0, atol=1e-6)


def test_paraphrases_score_higher_than_unrelated():
    pairs = [
        ("How do I reset my password?", "I forgot my password and need to change it.",
         "The stock market fell sharply today."),
        ("A man is playing a guitar.", "Someone strums a guitar.", "A chef is cooking pasta."),
        ("The weather is lovely today.", "It is a beautiful sunny day.", "Compile the kernel with make."),
        ("Cats are small domesticated felines.", "A house cat is a little pet feline.",
         "Quarterly revenue grew by ten percent."),
    ]
    flat = [t for p in pairs for t in p]
    e = quiver_embed(flat)
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)  # 2_Normalize
    for i in range(len(pairs)):
        a, para, other = e[3 * i], e[3 * i + 1], e[3 * i + 2]
        assert a @ para > a @ other + 0.2, pairs[i]


def test_truncation_and_its_refusal(reference):
    bert, tok = reference
    long_text = "vector search " * 400
    got = quiver_embed([long_text])
    ids = tok.encode(long_text).ids
    assert len(ids) == MAX_TOKENS
    want = bert.embed(ids)
    assert float(got[0] @ want) >= 0.9999
    p = quiver_embed(["fine", long_text], "--no-truncate", check=False)
    assert p.returncode == 1
    assert "input 1 has 802 tokens; the model accepts 256" in p.stderr


def test_npy_output_and_stdin(tmp_path):
    out = tmp_path / "e.npy"
    p = subprocess.run([QUIVER, "embed", "--model", MODEL, "--output", str(out)],
                       input="one\ntwo\nthree\n", capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    x = np.load(out)
    assert x.shape == (3, 384) and x.dtype == np.float32
    np.testing.assert_allclose(x, quiver_embed(["one", "two", "three"]), atol=1e-7)


def test_bad_model_folders_are_clear_errors(tmp_path):
    def embed_with(d):
        return subprocess.run([QUIVER, "embed", "--model", str(d), "x"], capture_output=True, text=True)

    p = embed_with("no-such-model")
    assert p.returncode == 1 and "model no-such-model not found" in p.stderr
    bad = tmp_path / "truncated"
    shutil.copytree(MODEL, bad)
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[:-1])
    p = embed_with(bad)
    assert p.returncode == 1 and "model.safetensors" in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    (bad / "model.safetensors").write_bytes(data[:4096])
    p = embed_with(bad)
    assert p.returncode == 1, p.stderr
    (bad / "model.safetensors").write_bytes(data)
    (bad / "tokenizer.json").write_text("{not json")
    p = embed_with(bad)
    assert p.returncode == 1 and "tokenizer.json" in p.stderr, p.stderr


@pytest.fixture(scope="module")
def cross_encoder(tmp_path_factory, model_files):
    """No ms-marco cross-encoder is on PyPI, so the CI builds one with the same
    architecture (BertForSequenceClassification, "bert."-prefixed weights, pooler and a
    1-label classifier) from MiniLM's real weights and a fixed random head. It checks the
    cross-encoder code path exactly; ranking quality needs the real model (fetch_models.py
    ms-marco-MiniLM-L-6-v2 where the hub is reachable)."""
    weights, config, _ = model_files
    d = tmp_path_factory.mktemp("xenc") / "test-cross-encoder"
    d.mkdir()
    rng = np.random.default_rng(3)
    t = {"bert." + k: v for k, v in weights.items() if v.dtype == np.float32}
    t["classifier.weight"] = rng.standard_normal((1, 384)).astype(np.float32) * 0.2
    t["classifier.bias"] = np.array([0.1], np.float32)
    save_safetensors(d / "model.safetensors", t)
    cfg = dict(config, architectures=["BertForSequenceClassification"], id2label={"0": "LABEL_0"},
               label2id={"LABEL_0": 0})
    (d / "config.json").write_text(json.dumps(cfg))
    shutil.copy(os.path.join(MODEL, "tokenizer.json"), d / "tokenizer.json")
    (d / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 512}))
    return d, Bert({k: v for k, v in t.items()}, config)


def test_cross_encoder_scores_match_reference(cross_encoder, model_files):
    d, bert = cross_encoder
    _, _, _ = model_files
    tok = Tokenizer.from_file(os.path.join(MODEL, "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(max_length=512)
    query = "how do vector databases search quickly?"
    docs = ["HNSW graphs give logarithmic search time.", "Bananas are yellow.",
            "Exact search compares the query with every stored vector. " * 3, "", "東京 🚀"]
    p = subprocess.run([QUIVER, "rerank", "--model", str(d), query, *docs], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    rows = [json.loads(l) for l in p.stdout.splitlines()]
    assert sorted(r["index"] for r in rows) == list(range(len(docs)))
    assert [r["logit"] for r in rows] == sorted((r["logit"] for r in rows), reverse=True)
    for r in rows:
        enc = tok.encode(query, docs[r["index"]])
        want = float(bert.classify(enc.ids, enc.type_ids)[0])
        assert abs(r["logit"] - want) <= 1e-3, (r, want)
        assert r["score"] == pytest.approx(1 / (1 + np.exp(-want)), abs=1e-3)
        assert r["text"] == docs[r["index"]]


def test_model_list_shows_the_registry(cross_encoder):
    p = subprocess.run([QUIVER, "model", "list", "--json"], capture_output=True, text=True,
                       env=dict(os.environ, QUIVER_MODELS=MODELS))
    assert p.returncode == 0, p.stderr
    rows = {r["name"]: r for r in map(json.loads, p.stdout.splitlines())}
    m = rows["all-MiniLM-L6-v2"]
    assert m["kind"] == "embedding" and m["dims"] == 384 and m["max_tokens"] == 256
    assert m["pooling"] == "mean" and m["normalize"] is True and m["default"] is True
    assert m["checksum"] == "verified"
    assert m["bytes"] > 90_000_000


@pytest.mark.parametrize("mode", ["cls", "max"])
def test_cls_and_max_pooling_follow_the_folder(tmp_path, reference, mode):
    """The pooling recipe comes from the model folder: the same weights with
    1_Pooling/config.json set to CLS or max pooling, and no Normalize module, give exactly
    the reference's [CLS] row or per-dimension maximum, unnormalized."""
    bert, tok = reference
    d = tmp_path / f"minilm-{mode}"
    d.mkdir()
    for f in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
              "sentence_bert_config.json"):
        os.symlink(os.path.join(MODEL, f), d / f)
    (d / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (d / "1_Pooling").mkdir()
    (d / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": 384, "pooling_mode_cls_token": mode == "cls",
        "pooling_mode_mean_tokens": False, "pooling_mode_max_tokens": mode == "max"}))
    texts = ["Pooling picks one row or the maximum.", "東京 café 🚀", "a"]
    p = subprocess.run([QUIVER, "embed", "--model", str(d), *texts], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    got = np.array([json.loads(l)["embedding"] for l in p.stdout.splitlines()])
    for text, g in zip(texts, got):
        h = bert.hidden(tok.encode(text).ids)
        want = h[0] if mode == "cls" else h.max(0)
        assert np.abs(g - want).max() <= 1e-4
        assert abs(np.linalg.norm(g) - 1.0) > 1e-3  # not normalized: no Normalize module
    rows = {r["name"]: r for r in map(json.loads, subprocess.run(
        [QUIVER, "model", "list", "--json", "--no-verify"], capture_output=True, text=True,
        env=dict(os.environ, QUIVER_MODELS=str(tmp_path))).stdout.splitlines())}
    assert rows[f"minilm-{mode}"]["pooling"] == mode and rows[f"minilm-{mode}"]["normalize"] is False


def test_model_pull_runs_the_fetch_script():
    env = dict(os.environ, QUIVER_MODELS=MODELS)
    p = subprocess.run([QUIVER, "model", "pull", "all-MiniLM-L6-v2"], capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr
    assert "all-MiniLM-L6-v2: present and verified" in p.stdout
    p = subprocess.run([QUIVER, "model", "pull", "no-such-model"], capture_output=True, text=True, env=env)
    assert p.returncode != 0 and "unknown model 'no-such-model'" in p.stderr
