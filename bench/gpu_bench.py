"""PyTorch peers for `make gpu-bench` (run only where torch is importable and a GPU is
lent): a plain PyTorch BERT forward of all-MiniLM-L6-v2 (FP16, the same shapes as
qv_gpu_bench's encoder rows) and exact search as torch matmul + topk over 1M x 384.
One JSON object per line, the same keys as qv_gpu_bench, backend "torch"."""
import json
import math
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "integration"))


def timed(fn, min_s=0.5):
    fn()
    torch.cuda.synchronize()
    reps, t0 = 0, time.perf_counter()
    while True:
        fn()
        reps += 1
        torch.cuda.synchronize()
        t = time.perf_counter() - t0
        if t >= min_s or reps >= 1000:
            return reps / t


def encoder(quick):
    from bert_reference import load_safetensors

    d = os.path.join(os.environ.get("QUIVER_MODELS", os.path.expanduser("~/.cache/quiver/models")), "all-MiniLM-L6-v2")
    cfg = json.load(open(os.path.join(d, "config.json")))
    w = {k: torch.tensor(v).cuda().half() for k, v in load_safetensors(os.path.join(d, "model.safetensors")).items()
         if v.dtype.kind == "f"}
    nh, L = cfg["num_attention_heads"], cfg["num_hidden_layers"]
    ln = torch.nn.functional.layer_norm
    eps = cfg["layer_norm_eps"]

    def lin(x, n):
        return x @ w[n + ".weight"].T + w[n + ".bias"]

    def forward(ids):
        B, T = ids.shape
        C = w["embeddings.word_embeddings.weight"].shape[1]
        x = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:T]
        x = x + w["embeddings.token_type_embeddings.weight"][0]
        x = ln(x, (C,), w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps)
        for i in range(L):
            p = f"encoder.layer.{i}."
            q, k, v = (lin(x, p + f"attention.self.{n}").view(B, T, nh, -1).transpose(1, 2)
                       for n in ("query", "key", "value"))
            a = torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, T, C)
            x = ln(x + lin(a, p + "attention.output.dense"), (C,), w[p + "attention.output.LayerNorm.weight"],
                   w[p + "attention.output.LayerNorm.bias"], eps)
            h = torch.nn.functional.gelu(lin(x, p + "intermediate.dense"))
            x = ln(x + lin(h, p + "output.dense"), (C,), w[p + "output.LayerNorm.weight"],
                   w[p + "output.LayerNorm.bias"], eps)
        return x.float().cpu()

    with torch.inference_mode():
        for T in (16, 128, 512):
            B = 1
            while B <= 256:
                ids = (1000 + torch.arange(B * T) * 7919 % 20000).view(B, T).cuda()
                r = timed(lambda: forward(ids))
                print(json.dumps({"bench": "encoder", "backend": "torch", "seq": T, "batch": B,
                                  "sentences_per_s": round(B * r, 1)}), flush=True)
                B *= 4 if quick else 2


def search(quick):
    n, dim, k = (200_000 if quick else 1_000_000), 384, 10
    x = torch.rand(n, dim, device="cuda") - 0.5
    with torch.inference_mode():
        for nq in (1, 100, 1000):
            q = x[:nq].clone()
            r = timed(lambda: torch.topk(q @ x.T, k, dim=1), 1.0)
            print(json.dumps({"bench": "search", "backend": "torch", "n": n, "dim": dim, "k": k, "batch": nq,
                              "queries_per_s": round(nq * r, 1)}), flush=True)


if __name__ == "__main__":
    try:
        import torch
    except ImportError:
        print(json.dumps({"bench": "torch", "skipped": "torch is not importable"}))
        sys.exit(0)
    if not torch.cuda.is_available():
        print(json.dumps({"bench": "torch", "skipped": "torch sees no CUDA device"}))
        sys.exit(0)
    quick = "--quick" in sys.argv
    encoder(quick)
    search(quick)
