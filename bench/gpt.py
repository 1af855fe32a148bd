"""Training speed: `quiver gpt train` against PyTorch on the CPU, the same GPT-2 configuration,
batch, context and thread count, in one run. Reports training tokens/s of both, the ratio
(quiver / torch, the issue's target is >= 1.5), and model FLOP utilisation: 6 x parameters x
tokens/s against the sgemm peak that `quiver bench sgemm --threads T` measures on this machine.

Both sides do the same work per step: forward, backward, global-norm clipping and an AdamW
step (decoupled weight decay on 2-D weights), on batches of random windows of context length.
Quiver trains on Node.js documentation (Debian's nodejs-doc) through its own chunkers and BPE;
PyTorch on random token ids of the same vocabulary (speed does not depend on the ids). The
first steps of each side are warm-up and are not timed; the timed window is the same number
of steps on both sides (Quiver runs one more, untimed: its last step also validates and writes a
checkpoint). Speed does not depend on the seed. The two sides alternate over --rounds rounds; the
ratio reported is the median of the rounds' ratios, and every round is printed.

With --gpu both sides train on the GPU (quiver --gpu on, PyTorch on cuda in FP32 with TF32
off, as quiver's cuBLAS GEMMs), and MFU is against the FP32 matmul peak PyTorch measures on
that GPU; without it quiver runs with --gpu off, so a CPU figure stays a CPU figure on a
machine that has a GPU.

  bench/gpt.sh                                            # 4 layers x 4 heads x 128 wide, ctx 128
  bench/gpt.sh --layers 2 --heads 2 --width 64 --ctx 64 --vocab 512 --steps 6   # smoke
  bench/gpt.sh --gpu --layers 12 --heads 12 --width 768 --ctx 1024 --vocab 50257 --batch 8   # GPT-2 124M on a GPU
"""
import argparse
import glob
import gzip
import json
import math
import os
import statistics
import subprocess
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def corpus(d, limit=600_000):
    """Unpacks Node.js API pages (Debian ships them gzipped) into d until limit bytes."""
    n = 0
    for p in sorted(glob.glob("/usr/share/doc/nodejs/api/*.md.gz")) + sorted(glob.glob("/usr/share/doc/nodejs/api/*.md")):
        opener = gzip.open if p.endswith(".gz") else open
        with opener(p, "rb") as f:
            data = f.read()
        name = os.path.basename(p).removesuffix(".gz")
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)
        n += len(data)
        if n >= limit:
            return
    if n == 0:
        raise SystemExit("nodejs-doc is not installed (/usr/share/doc/nodejs/api): run make deps")


def model_args(a):
    return ["--gpu", "on" if a.gpu else "off", "--layers", a.layers, "--heads", a.heads, "--width", a.width, "--context", a.ctx,
            "--batch", a.batch, "--lr", "6e-4", "--warmup", "2", "--weight-decay", "0.1", "--clip", "1.0",
            "--eval-every", "0", "--seed", a.seed]


def train_tokenizer(a, d, env):
    """A BPE of --vocab tokens trained by quiver on the corpus (a one-step run), shared by all rounds."""
    subprocess.run([a.quiver, "gpt", "train", "--data", os.path.join(d, "data"), "--out", os.path.join(d, "tok"),
                    "--vocab-size", str(a.vocab), *map(str, model_args(a)), "--steps", "1"], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    return os.path.join(d, "tok", "step-000001", "tokenizer.json")


def run_quiver(a, d, env, tok, r):
    out, log = os.path.join(d, f"run{r}"), os.path.join(d, f"log{r}.jsonl")
    # one step past the timed window: the last step of a run also validates and writes the final
    # checkpoint (train.c), work the PyTorch side does not do, so the window ends before it
    steps = a.warmup_steps + a.steps + 1
    p = subprocess.run([a.quiver, "gpt", "train", "--data", os.path.join(d, "data"), "--out", out, "--tokenizer",
                        tok, *map(str, model_args(a)), "--steps", str(steps), "--log", log], check=True, env=env,
                       capture_output=True, text=True)
    want = "training on cuda" if a.gpu else "training on cpu"
    if want not in p.stdout or "continuing on the CPU" in p.stderr:
        raise SystemExit(f"quiver did not train where asked ({want}): {p.stdout[-300:]} {p.stderr[-300:]}")
    with open(log) as f:
        rows = [json.loads(l) for l in f if l.strip()]
    t0 = rows[a.warmup_steps - 1]["elapsed_s"]
    t1 = rows[a.warmup_steps + a.steps - 1]["elapsed_s"]
    with open(os.path.join(out, f"step-{steps:06d}", "config.json")) as f:
        cfg = json.load(f)
    return a.steps * a.batch * a.ctx / (t1 - t0), rows[a.warmup_steps + a.steps - 1]["loss"], cfg["vocab_size"]


def run_torch(a, vocab, threads):
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    dev = torch.device("cuda" if a.gpu else "cpu")
    if a.gpu:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(a.seed)
    C, H, T, L = a.width, a.heads, a.ctx, a.layers

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1 = nn.LayerNorm(C, eps=1e-5)
            self.c_attn = nn.Linear(C, 3 * C)
            self.c_proj = nn.Linear(C, C)
            self.ln_2 = nn.LayerNorm(C, eps=1e-5)
            self.c_fc = nn.Linear(C, 4 * C)
            self.mlp_proj = nn.Linear(4 * C, C)

        def forward(self, x):
            B_, T_, _ = x.shape
            q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
            q, k, v = (t.view(B_, T_, H, C // H).transpose(1, 2) for t in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.c_proj(y.transpose(1, 2).contiguous().view(B_, T_, C))
            return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = nn.Embedding(vocab, C)
            self.wpe = nn.Embedding(T, C)
            self.h = nn.ModuleList(Block() for _ in range(L))
            self.ln_f = nn.LayerNorm(C, eps=1e-5)

        def forward(self, idx, targets):
            x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))
            for b in self.h:
                x = b(x)
            logits = self.ln_f(x) @ self.wte.weight.T  # tied LM head
            return F.cross_entropy(logits.view(-1, vocab), targets.view(-1))

    m = GPT().to(dev)
    for mod in m.modules():  # GPT-2's initialisation, as quiver's gpt_init
        if isinstance(mod, (nn.Linear, nn.Embedding)):
            nn.init.normal_(mod.weight, 0.0, 0.02)
        if isinstance(mod, nn.Linear):
            nn.init.zeros_(mod.bias)
    nparams = sum(p.numel() for p in m.parameters())
    decay = [p for p in m.parameters() if p.dim() >= 2]
    other = [p for p in m.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
                            lr=6e-4, betas=(0.9, 0.95), eps=1e-8, foreach=True)
    data = torch.randint(0, vocab, (200_000,), device=dev)

    def step():
        ix = torch.randint(0, len(data) - T - 1, (a.batch,)).tolist()
        x = torch.stack([data[i:i + T] for i in ix])
        y = torch.stack([data[i + 1:i + 1 + T] for i in ix])
        loss = m(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()
        return loss.item()

    for _ in range(a.warmup_steps):
        step()
    if a.gpu:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        loss = step()  # .item() waits for the step on a GPU
    dt = time.perf_counter() - t0
    return a.steps * a.batch * T / dt, loss, nparams, torch.__version__


def gpu_fp32_peak():
    """FP32 (no TF32) matmul FLOP/s PyTorch reaches on this GPU: the best of 5 8192^3 products."""
    import torch
    torch.backends.cuda.matmul.allow_tf32 = False
    x = torch.randn(8192, 8192, device="cuda")
    y = torch.randn(8192, 8192, device="cuda")
    best = 0.0
    for _ in range(5):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        x @ y
        torch.cuda.synchronize()
        best = max(best, 2 * 8192 ** 3 / (time.perf_counter() - t0))
    return best


def sgemm_peak(a, threads):
    if a.gpu:
        return gpu_fp32_peak()
    p = subprocess.run([a.quiver, "bench", "sgemm", "--threads", str(threads)], capture_output=True, text=True)
    if p.returncode != 0:
        return None
    try:
        return json.loads(p.stdout.strip().splitlines()[-1])["gflops"] * 1e9
    except (ValueError, KeyError, IndexError):
        return None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quiver", default=os.path.join(ROOT, "build", "quiver"))
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--ctx", type=int, default=128)
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=30, help="timed steps on each side")
    ap.add_argument("--warmup-steps", type=int, default=3, help="untimed steps first")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3, help="alternating quiver / PyTorch rounds")
    ap.add_argument("--gpu", action="store_true", help="both sides on the GPU (quiver --gpu on, torch cuda)")
    a = ap.parse_args()
    env = dict(os.environ, QUIVER_THREADS=str(a.threads), OPENBLAS_NUM_THREADS="1")
    # Rounds alternate the two sides, and the ratio is the median of the rounds' ratios: this VM's
    # speed drifts (by a third, over tens of seconds), so one side measured after the other can
    # land in a different phase.
    q_runs, t_runs = [], []
    with tempfile.TemporaryDirectory() as d:
        os.mkdir(os.path.join(d, "data"))
        corpus(os.path.join(d, "data"))
        tok = train_tokenizer(a, d, env)
        for r in range(a.rounds):
            q_runs.append(run_quiver(a, d, env, tok, r))
            t_runs.append(run_torch(a, q_runs[-1][2], a.threads))
    ratios = sorted(q[0] / t[0] for q, t in zip(q_runs, t_runs))
    q_tps = statistics.median(q[0] for q in q_runs)
    t_tps = statistics.median(t[0] for t in t_runs)
    q_loss, vocab = q_runs[-1][1], q_runs[-1][2]
    t_loss, nparams, tv = t_runs[-1][1], t_runs[-1][2], t_runs[-1][3]
    peak = sgemm_peak(a, a.threads)
    flops = 6 * nparams
    out = {
        "bench": "gpt_train",
        "config": {"layers": a.layers, "heads": a.heads, "width": a.width, "ctx": a.ctx, "vocab": vocab,
                   "batch": a.batch, "params": nparams, "steps_timed": a.steps, "threads": a.threads,
                   "device": "gpu" if a.gpu else "cpu"},
        "torch": tv,
        "quiver_tokens_per_s": round(q_tps, 1),
        "torch_tokens_per_s": round(t_tps, 1),
        "ratio": round(statistics.median(ratios), 3),
        "rounds": [{"quiver": round(q[0], 1), "torch": round(t[0], 1), "ratio": round(q[0] / t[0], 3)}
                   for q, t in zip(q_runs, t_runs)],
        "quiver_last_loss": q_loss,
        "torch_last_loss": t_loss,
        ("gpu_fp32_peak_gflops" if a.gpu else "sgemm_peak_gflops"): round(peak / 1e9, 1) if peak else None,
        "quiver_mfu": round(flops * q_tps / peak, 4) if peak else None,
        "torch_mfu": round(flops * t_tps / peak, 4) if peak else None,
    }
    print(json.dumps(out))
    if not math.isfinite(q_loss):
        raise SystemExit("quiver's loss is not finite")


if __name__ == "__main__":
    main()
