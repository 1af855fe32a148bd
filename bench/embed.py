"""Embedding throughput, side by side in one run on the same texts and thread count:
Quiver (`quiver bench embed`), sentence-transformers (PyTorch, CPU) and onnxruntime
(the same weights exported to ONNX in this run), for all-MiniLM-L6-v2.

Workloads: short (~12 tokens), medium (~64) and long (~256) texts cut from the GPL text
Debian ships (/usr/share/common-licenses/GPL-3), each at batch 1 and batch 32. Reports
sentences/s, Quiver's GFLOP/s against OpenBLAS sgemm's peak measured in the same run, the
share of that peak each peer reaches on the same encoder FLOPs, and Quiver's peak
resident memory.

    .venv-embed/bin/python bench/embed.py [--threads 2]     (see bench/embed.sh)
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
QUIVER = os.environ.get("QUIVER_BIN", os.path.join(HERE, "..", "build", "quiver"))
MODELS = os.environ.get("QUIVER_MODELS") or os.path.expanduser("~/.cache/quiver/models")
MODEL = os.path.join(MODELS, "all-MiniLM-L6-v2")
CORPUS = "/usr/share/common-licenses/GPL-3"
WORKLOADS = {"short": (12, 512), "medium": (64, 256), "long": (256, 96)}  # tokens, texts


def make_texts(tok, target, count):
    words = open(CORPUS, encoding="utf-8").read().split()
    texts, i = [], 0
    while len(texts) < count:
        n = max(1, int(target * 0.7))
        while True:  # grow a window of words until it reaches the target token count
            t = " ".join(words[i:i + n])
            if len(tok.encode(t).ids) >= target or n > 4 * target:
                break
            n += 1
        texts.append(t)
        i = (i + n) % (len(words) - 5 * target)
    return texts


def flops_per_seq(T, C=384, L=6, F=1536):
    return L * (2 * T * (4 * C * C + 2 * C * F) + 4 * T * T * C)


def best_of(repeat, fn):
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def run_quiver(path, batch, threads, repeat):
    env = dict(os.environ, QUIVER_THREADS=str(threads))
    p = subprocess.run([QUIVER, "bench", "embed", "--model", MODEL, "--input", path, "--batch", str(batch),
                        "--repeat", str(repeat)], capture_output=True, text=True, env=env)
    if p.returncode:
        sys.exit(f"quiver bench embed failed: {p.stderr}")
    return json.loads(p.stdout)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    import torch
    from sentence_transformers import SentenceTransformer
    from tokenizers import Tokenizer
    import onnxruntime as ort
    from transformers import AutoModel

    torch.set_num_threads(a.threads)
    tok = Tokenizer.from_file(os.path.join(MODEL, "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(256)
    st = SentenceTransformer(MODEL, device="cpu")

    tmp = tempfile.mkdtemp()
    onnx_path = os.path.join(tmp, "model.onnx")
    hf = AutoModel.from_pretrained(MODEL).eval()

    class Encoder(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.m(input_ids=input_ids, attention_mask=attention_mask,
                          token_type_ids=token_type_ids).last_hidden_state

    hf.requires_grad_(False)
    dummy = torch.ones(2, 16, dtype=torch.long)
    torch.onnx.export(Encoder(hf).eval(), (dummy, dummy, torch.zeros_like(dummy)), onnx_path,
                      input_names=["input_ids", "attention_mask", "token_type_ids"], output_names=["last_hidden_state"],
                      dynamic_axes={n: {0: "b", 1: "t"} for n in ["input_ids", "attention_mask", "token_type_ids"]},
                      opset_version=17, dynamo=False)
    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])
    otok = Tokenizer.from_file(os.path.join(MODEL, "tokenizer.json"))
    otok.enable_truncation(256)
    otok.enable_padding()

    def ort_encode(texts, batch):
        for i in range(0, len(texts), batch):
            enc = otok.encode_batch(texts[i:i + batch])
            ids = np.array([e.ids for e in enc], np.int64)
            mask = np.array([e.attention_mask for e in enc], np.int64)
            h = sess.run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})[0]
            e = (h * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
            e / np.linalg.norm(e, axis=1, keepdims=True)

    peak = json.loads(subprocess.run([QUIVER, "bench", "sgemm", "--threads", str(a.threads)],
                                     capture_output=True, text=True, check=True).stdout)["gflops"]
    print(f"all-MiniLM-L6-v2 embedding, {a.threads} threads; OpenBLAS sgemm peak (best of 4096x1536x384 and 2048^3) "
          f"{peak:.1f} GFLOP/s; model file {os.path.getsize(os.path.join(MODEL, 'model.safetensors')) / 1e6:.1f} MB")
    print()
    print("| workload | batch | quiver sent/s | sentence-transformers sent/s | onnxruntime sent/s | "
          "quiver vs ST | quiver vs ORT | quiver GFLOP/s (% of sgemm peak) | ST % of peak | ORT % of peak | "
          "quiver peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, (target, count) in WORKLOADS.items():
        texts = make_texts(tok, target, count)
        mean_tokens = np.mean([len(tok.encode(t).ids) for t in texts])
        path = os.path.join(tmp, f"{name}.txt")
        with open(path, "w") as f:
            f.write("\n".join(texts) + "\n")
        for batch in (1, 32):
            q = run_quiver(path, batch, a.threads, a.repeat)
            q_sps = q["sentences_per_s"]
            st_s = best_of(a.repeat, lambda: st.encode(texts, batch_size=batch, normalize_embeddings=True))
            ort_s = best_of(a.repeat, lambda: ort_encode(texts, batch))
            st_sps, ort_sps = len(texts) / st_s, len(texts) / ort_s
            flops = sum(flops_per_seq(len(tok.encode(t).ids)) for t in texts)
            gflops = flops / q["seconds"] / 1e9
            # the peers' share of the same peak: 2x sentence-transformers needs twice its share
            st_pct, ort_pct = 100 * flops / st_s / 1e9 / peak, 100 * flops / ort_s / 1e9 / peak
            print(f"| {name} (~{mean_tokens:.0f} tok) | {batch} | {q_sps:,.0f} | {st_sps:,.0f} | {ort_sps:,.0f} | "
                  f"{q_sps / st_sps:.2f}x | {q_sps / ort_sps:.2f}x | {gflops:.1f} ({100 * gflops / peak:.0f}%) | "
                  f"{st_pct:.0f}% | {ort_pct:.0f}% | {q['maxrss_mb']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
