"""A cross-encoder folder built as test_embed.py builds one (no ms-marco model is
reachable offline): MiniLM's real weights under BertForSequenceClassification with a fixed
random 1-label head. It drives the rerank code path end to end; its scores carry no
relevance signal."""
import json
import os
import shutil

import numpy as np

from bert_reference import load_safetensors, save_safetensors

MODELS = os.environ.get("QUIVER_MODELS") or os.path.expanduser("~/.cache/quiver/models")
MODEL = os.path.join(MODELS, "all-MiniLM-L6-v2")


def build(d):
    weights = load_safetensors(os.path.join(MODEL, "model.safetensors"))
    config = json.load(open(os.path.join(MODEL, "config.json")))
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    t = {"bert." + k: v for k, v in weights.items() if v.dtype == np.float32}
    t["classifier.weight"] = rng.standard_normal((1, 384)).astype(np.float32) * 0.2
    t["classifier.bias"] = np.array([0.1], np.float32)
    save_safetensors(d / "model.safetensors", t)
    cfg = dict(config, architectures=["BertForSequenceClassification"], id2label={"0": "LABEL_0"},
               label2id={"LABEL_0": 0})
    (d / "config.json").write_text(json.dumps(cfg))
    shutil.copy(os.path.join(MODEL, "tokenizer.json"), d / "tokenizer.json")
    return d
