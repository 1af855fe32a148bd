"""An independent BERT forward pass in numpy (float64), read straight from safetensors,
used as the oracle for Quiver's encoder and cross-encoder. Written from the published
architecture (Devlin et al.; Hugging Face's BertModel), sharing no code with Quiver."""
import json
import math
import struct

import numpy as np

DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64}


def load_safetensors(path):
    with open(path, "rb") as f:
        raw = f.read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    header.pop("__metadata__", None)
    base = 8 + n
    out = {}
    for name, t in header.items():
        b, e = t["data_offsets"]
        out[name] = np.frombuffer(raw[base + b:base + e], dtype=DTYPES[t["dtype"]]).reshape(t["shape"])
    return out


def save_safetensors(path, tensors):
    header, blobs, off = {}, [], 0
    for name, a in tensors.items():
        a = np.ascontiguousarray(a, dtype=np.float32)
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [off, off + a.nbytes]}
        blobs.append(a.tobytes())
        off += a.nbytes
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


class Bert:
    def __init__(self, weights, config):
        p = "bert." if "bert.embeddings.word_embeddings.weight" in weights else ""
        self.w = {k[len(p):] if k.startswith(p) else k: v.astype(np.float64) for k, v in weights.items()
                  if v.dtype != np.int64}
        self.c = config

    def _ln(self, x, name):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + self.c["layer_norm_eps"]) * self.w[name + ".weight"] + self.w[name + ".bias"]

    def _lin(self, x, name):
        return x @ self.w[name + ".weight"].T + self.w[name + ".bias"]

    def hidden(self, ids, type_ids=None):
        """Last hidden state (T, C) for one unpadded sequence."""
        w, T = self.w, len(ids)
        type_ids = np.zeros(T, int) if type_ids is None else np.asarray(type_ids)
        x = (w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:T]
             + w["embeddings.token_type_embeddings.weight"][type_ids])
        x = self._ln(x, "embeddings.LayerNorm")
        nh = self.c["num_attention_heads"]
        hd = x.shape[1] // nh
        from scipy.special import erf
        for i in range(self.c["num_hidden_layers"]):
            L = f"encoder.layer.{i}."
            q, k, v = (self._lin(x, L + f"attention.self.{n}").reshape(T, nh, hd).transpose(1, 0, 2)
                       for n in ("query", "key", "value"))
            s = q @ k.transpose(0, 2, 1) / math.sqrt(hd)
            s = np.exp(s - s.max(-1, keepdims=True))
            s /= s.sum(-1, keepdims=True)
            a = (s @ v).transpose(1, 0, 2).reshape(T, -1)
            x = self._ln(x + self._lin(a, L + "attention.output.dense"), L + "attention.output.LayerNorm")
            h = self._lin(x, L + "intermediate.dense")
            h = 0.5 * h * (1 + erf(h / math.sqrt(2)))
            x = self._ln(x + self._lin(h, L + "output.dense"), L + "output.LayerNorm")
        return x

    def embed(self, ids):
        """sentence-transformers all-MiniLM-L6-v2: mean pooling, then L2 normalization."""
        e = self.hidden(ids).mean(0)
        return e / np.linalg.norm(e)

    def classify(self, ids, type_ids):
        """BertForSequenceClassification: pooler (dense + tanh on [CLS]), then classifier."""
        cls = self.hidden(ids, type_ids)[0]
        pooled = np.tanh(self._lin(cls, "pooler.dense"))
        return self._lin(pooled, "classifier")
