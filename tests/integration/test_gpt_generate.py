"""`quiver gpt generate` and `quiver gpt chat` against an independent numpy GPT-2 forward
(float64, written from the published architecture: Radford et al. 2019 and Hugging Face's
GPT2Model), on a tiny random GPT-2 folder the test writes itself: numpy weights in
safetensors, config.json, and a tokenizer.json trained by Hugging Face `tokenizers`.
The chat REPL is driven in tmux."""
import json
import os
import shutil
import subprocess
import time
import uuid

import numpy as np
import pytest
from tokenizers import ByteLevelBPETokenizer, Tokenizer

from bert_reference import load_safetensors, save_safetensors
from conftest import QUIVER

L, H, C, T = 2, 2, 32, 128

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Node.js is a JavaScript runtime built on the V8 engine.",
    "Streams are an abstract interface for working with streaming data in Node.js.",
    "The fs module enables interacting with the file system in a way modeled on POSIX functions.",
    "Buffer objects are used to represent a fixed-length sequence of bytes.",
    "café naïve résumé — 你好 😀",
] * 4


class Gpt2:
    """GPT-2 forward in float64: pre-LN blocks, causal attention, tanh GELU, tied head."""

    def __init__(self, weights, config):
        p = "transformer." if "transformer.wte.weight" in weights else ""
        self.w = {k[len(p):]: v.astype(np.float64) for k, v in weights.items() if k.startswith(p)}
        self.c = config

    def _ln(self, x, name):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        eps = self.c.get("layer_norm_epsilon", 1e-5)
        return (x - mu) / np.sqrt(var + eps) * self.w[name + ".weight"] + self.w[name + ".bias"]

    def _conv1d(self, x, name):
        return x @ self.w[name + ".weight"] + self.w[name + ".bias"]

    def logits(self, ids):
        """Logits (len(ids), V) at every position."""
        w, n, nh = self.w, len(ids), self.c["n_head"]
        x = w["wte.weight"][ids] + w["wpe.weight"][:n]
        c = x.shape[1]
        hd = c // nh
        mask = np.triu(np.ones((n, n), bool), 1)
        for i in range(self.c["n_layer"]):
            p = f"h.{i}."
            q, k, v = np.split(self._conv1d(self._ln(x, p + "ln_1"), p + "attn.c_attn"), 3, axis=-1)
            heads = []
            for h in range(nh):
                s = slice(h * hd, (h + 1) * hd)
                a = q[:, s] @ k[:, s].T / np.sqrt(hd)
                a[mask] = -np.inf
                a = np.exp(a - a.max(-1, keepdims=True))
                heads.append((a / a.sum(-1, keepdims=True)) @ v[:, s])
            x = x + self._conv1d(np.concatenate(heads, -1), p + "attn.c_proj")
            f = self._conv1d(self._ln(x, p + "ln_2"), p + "mlp.c_fc")
            f = 0.5 * f * (1 + np.tanh(np.sqrt(2 / np.pi) * (f + 0.044715 * f ** 3)))
            x = x + self._conv1d(f, p + "mlp.c_proj")
        return self._ln(x, "ln_f") @ w["wte.weight"].T


def write_model(folder, seed=0, prefix="", extras=False):
    """A random GPT-2 folder; returns (Gpt2 reference, HF tokenizer)."""
    os.makedirs(folder, exist_ok=True)
    bpe = ByteLevelBPETokenizer(add_prefix_space=False)
    bpe.train_from_iterator(TEXTS, vocab_size=320, min_frequency=1, special_tokens=["<|endoftext|>"],
                            show_progress=False)
    bpe.save(os.path.join(folder, "tokenizer.json"))
    V = bpe.get_vocab_size()
    rng = np.random.default_rng(seed)
    t = {"wte.weight": rng.normal(0, 0.3, (V, C)), "wpe.weight": rng.normal(0, 0.1, (T, C))}
    for i in range(L):
        p = f"h.{i}."
        for ln in ("ln_1", "ln_2"):
            t[p + ln + ".weight"] = 1 + rng.normal(0, 0.1, C)
            t[p + ln + ".bias"] = rng.normal(0, 0.1, C)
        for name, shape in (("attn.c_attn", (C, 3 * C)), ("attn.c_proj", (C, C)),
                            ("mlp.c_fc", (C, 4 * C)), ("mlp.c_proj", (4 * C, C))):
            t[p + name + ".weight"] = rng.normal(0, 0.2, shape)
            t[p + name + ".bias"] = rng.normal(0, 0.05, shape[1])
        if extras:  # HF files carry the causal mask buffer; loaders skip it
            t[p + "attn.bias"] = np.tril(np.ones((T, T)))[None, None]
    t["ln_f.weight"] = 1 + rng.normal(0, 0.1, C)
    t["ln_f.bias"] = rng.normal(0, 0.1, C)
    t = {prefix + k: v.astype(np.float32) for k, v in t.items()}
    if extras:
        t["lm_head.weight"] = t[prefix + "wte.weight"]
    save_safetensors(os.path.join(folder, "model.safetensors"), t)
    config = {"model_type": "gpt2", "n_layer": L, "n_head": H, "n_embd": C, "n_positions": T, "n_ctx": T,
              "vocab_size": V, "layer_norm_epsilon": 1e-5, "activation_function": "gelu_new"}
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f)
    return Gpt2(load_safetensors(os.path.join(folder, "model.safetensors")), config), \
        Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    d = tmp_path_factory.mktemp("gpt") / "tiny"
    ref, tok = write_model(str(d))
    return str(d), ref, tok


def gen(model_dir, prompt, *args, check=True):
    """Runs generate; stdout stays bytes (a random model's tokens need not be whole UTF-8)."""
    p = subprocess.run([QUIVER, "gpt", "generate", "--model", model_dir, "--prompt", prompt,
                        *[a if isinstance(a, bytes) else str(a) for a in args]],
                       capture_output=True, timeout=120)
    if check:
        assert p.returncode == 0, p.stderr.decode("utf-8", "replace")
    return p


def _byte_decoder():
    """GPT-2's printable-character alphabet back to bytes (the inverse of bytes_to_unicode)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) + \
        list(range(ord("\xae"), ord("\xff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


BYTE_DECODER = _byte_decoder()


def token_bytes(tok, ids):
    """The bytes of ids as the vocabulary spells them (end-of-text contributes none)."""
    out = b""
    for i in ids:
        t = tok.id_to_token(i)
        if t != "<|endoftext|>":
            out += bytes(BYTE_DECODER[ch] for ch in t)
    return out


def traced(model_dir, prompt, tmp_path, *args):
    prefix = str(tmp_path / f"trace-{uuid.uuid4().hex}")
    p = gen(model_dir, prompt, "--trace", prefix, *args)
    with open(prefix + ".json") as f:
        info = json.load(f)
    return p.stdout, info, np.load(prefix + ".npy")


def assert_close(got, want, tol=1e-4):
    err = np.abs(got - want).max()
    assert err < tol, f"max |quiver - reference| = {err}"


PROMPT = "Streams are an abstract interface for"


def test_logits_match_numpy_reference(model, tmp_path):
    d, ref, tok = model
    out, info, logits = traced(d, PROMPT, tmp_path, "--max-tokens", 12, "--seed", 3)
    assert info["prompt_ids"] == tok.encode(PROMPT).ids
    gen_ids = info["generated_ids"]
    assert len(gen_ids) == 12 and info["stop"] == "max_tokens"
    seq = info["prompt_ids"] + gen_ids[:-1]
    assert logits.shape == (len(seq), ref.c["vocab_size"])
    assert_close(logits, ref.logits(seq))
    assert out == token_bytes(tok, gen_ids)


def test_long_prompt_prefills_in_blocks(model, tmp_path):
    """A prompt longer than one prefill block (64 rows) attends across the blocks."""
    d, ref, tok = model
    prompt = " ".join(TEXTS[:3])
    ids = tok.encode(prompt).ids
    assert 64 < len(ids) < T - 8
    _, info, logits = traced(d, prompt, tmp_path, "--max-tokens", 4)
    assert info["prompt_ids"] == ids
    assert_close(logits, ref.logits(ids + info["generated_ids"][:-1]))


def test_kv_cache_equals_full_recompute(model, tmp_path):
    d, _, _ = model
    a_out, a, a_logits = traced(d, PROMPT, tmp_path, "--max-tokens", 20, "--seed", 5)
    b_out, b, b_logits = traced(d, PROMPT, tmp_path, "--max-tokens", 20, "--seed", 5, "--no-cache")
    assert a["generated_ids"] == b["generated_ids"] and a_out == b_out
    assert_close(a_logits, b_logits, 1e-5)


def test_seed_determines_the_text(model):
    d, _, _ = model
    args = ("--max-tokens", 40, "--temperature", 1.0)
    one = gen(d, PROMPT, *args, "--seed", 1).stdout
    assert gen(d, PROMPT, *args, "--seed", 1).stdout == one
    assert gen(d, PROMPT, *args, "--seed", 2).stdout != one
    assert len(one) > 0


def test_top_k_1_is_greedy_argmax_of_reference(model, tmp_path):
    d, ref, tok = model
    ids = tok.encode(PROMPT).ids
    want = []
    for _ in range(15):
        nxt = int(np.argmax(ref.logits(ids + want)[-1]))
        want.append(nxt)
        if nxt == tok.token_to_id("<|endoftext|>"):
            break
    _, info, _ = traced(d, PROMPT, tmp_path, "--max-tokens", 15, "--top-k", 1, "--seed", 9)
    assert info["generated_ids"] == want
    _, info0, _ = traced(d, PROMPT, tmp_path, "--max-tokens", 15, "--temperature", 0)
    assert info0["generated_ids"] == want


def test_top_p_and_repetition_penalty_change_sampling_deterministically(model, tmp_path):
    d, ref, tok = model
    base = ("--max-tokens", 30, "--seed", 4)
    plain = gen(d, PROMPT, *base).stdout
    for extra in (("--top-p", 0.5), ("--top-k", 5), ("--repetition-penalty", 1.5)):
        a = gen(d, PROMPT, *base, *extra).stdout
        assert a == gen(d, PROMPT, *base, *extra).stdout
    # a tiny top-p keeps only the likeliest token: greedy
    _, info, _ = traced(d, PROMPT, tmp_path, *base, "--top-p", 1e-6)
    _, greedy, _ = traced(d, PROMPT, tmp_path, *base, "--temperature", 0)
    assert info["generated_ids"] == greedy["generated_ids"]
    # a huge repetition penalty under greedy decoding never picks a token already seen
    _, rep, _ = traced(d, PROMPT, tmp_path, "--max-tokens", 20, "--temperature", 0, "--repetition-penalty", 1e6)
    seen = list(rep["prompt_ids"])
    for t in rep["generated_ids"]:
        assert t not in seen
        seen.append(t)
    assert plain


def test_stop_strings_stop_and_are_not_printed(model, tmp_path):
    d, _, tok = model
    full, info, _ = traced(d, PROMPT, tmp_path, "--max-tokens", 40, "--temperature", 0)
    # a 3-byte ASCII window past the start, so it can travel in argv
    at = next(i for i in range(4, len(full) - 3) if all(32 < c < 127 for c in full[i:i + 3]))
    stop = full[at:at + 3]
    cut = full.index(stop)
    out, info2, _ = traced(d, PROMPT, tmp_path, "--max-tokens", 40, "--temperature", 0, "--stop", stop)
    assert out == full[:cut]
    assert info2["stop"] == "stop_string"
    # several stop strings: the first to appear wins; one that never appears changes nothing
    out = gen(d, PROMPT, "--max-tokens", 40, "--temperature", 0, "--stop", "\u2603never".encode(), "--stop", stop).stdout
    assert out == full[:cut]
    out = gen(d, PROMPT, "--max-tokens", 40, "--temperature", 0, "--stop", "\u2603never".encode()).stdout
    assert out == full


def test_runs_past_the_context_by_sliding(model, tmp_path):
    d, _, _ = model
    _, info, _ = traced(d, PROMPT, tmp_path, "--max-tokens", T + 40, "--seed", 2)
    assert len(info["generated_ids"]) == T + 40 or info["stop"] == "eot"


def test_hf_layout_with_prefix_and_extra_tensors(tmp_path):
    """Names with "transformer.", the attn.bias mask buffers and lm_head.weight, as
    Hugging Face's GPT2LMHeadModel saves them."""
    d = str(tmp_path / "hf")
    ref, tok = write_model(d, seed=7, prefix="transformer.", extras=True)
    _, info, logits = traced(d, PROMPT, tmp_path, "--max-tokens", 6)
    assert_close(logits, ref.logits(info["prompt_ids"] + info["generated_ids"][:-1]))


def test_bad_input_is_one_clear_line(model, tmp_path):
    d, _, _ = model

    def fail(*args):
        p = subprocess.run([QUIVER, "gpt", "generate", *map(str, args)], capture_output=True, text=True,
                           errors="replace", timeout=60)
        assert p.returncode != 0
        err = p.stderr.strip()
        assert err.startswith("quiver: ") and len(err.splitlines()) == 1, err
        return err

    assert "--model" in fail("--prompt", "x")
    assert "--prompt" in fail("--model", d)
    assert "config.json" in fail("--model", str(tmp_path / "nope"), "--prompt", "x")
    assert "temperature" in fail("--model", d, "--prompt", "x", "--temperature", "-1")
    assert "top-p" in fail("--model", d, "--prompt", "x", "--top-p", "1.5")
    assert "context" in fail("--model", d, "--prompt", "word " * 400)
    assert "empty" in fail("--model", d, "--prompt", "")
    assert "max-tokens" in fail("--model", d, "--prompt", "x", "--max-tokens", "-2")
    assert "--stop" in fail("--model", d, "--prompt", "x", "--stop", "")
    bad = tmp_path / "bad"
    shutil.copytree(d, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["n_embd"] = 48
    (bad / "config.json").write_text(json.dumps(cfg))
    assert "wte.weight" in fail("--model", bad, "--prompt", "x")
    shutil.copy(os.path.join(d, "config.json"), bad / "config.json")
    big = ByteLevelBPETokenizer(add_prefix_space=False)  # more tokens than the model has rows
    big.train_from_iterator(TEXTS * 3 + [" ".join(TEXTS)], vocab_size=600, min_frequency=1, show_progress=False)
    assert big.get_vocab_size() > json.loads((bad / "config.json").read_text())["vocab_size"]
    big.save(str(bad / "tokenizer.json"))
    assert "tokenizer" in fail("--model", bad, "--prompt", "x")
    shutil.copy(os.path.join(d, "tokenizer.json"), bad / "tokenizer.json")
    (bad / "config.json").write_text("{not json")
    assert "config.json" in fail("--model", bad, "--prompt", "x")
    shutil.copy(os.path.join(d, "config.json"), bad / "config.json")
    with open(bad / "model.safetensors", "r+b") as f:
        f.truncate(1000)
    assert "model" in fail("--model", bad, "--prompt", "x")


# ---- chat in tmux ------------------------------------------------------------------------------

class Tmux:
    def __init__(self, cmd):
        self.sock = f"qv-gpt-{uuid.uuid4().hex[:8]}"
        self.run("new-session", "-d", "-s", "chat", "-x", "220", "-y", "60", cmd)

    def run(self, *args):
        return subprocess.run(["tmux", "-L", self.sock, *args], capture_output=True, text=True, timeout=30)

    def text(self):
        return self.run("capture-pane", "-p", "-J", "-S", "-", "-t", "chat").stdout

    def send(self, line):
        self.run("send-keys", "-t", "chat", "-l", line)
        self.run("send-keys", "-t", "chat", "Enter")

    def wait_for(self, pred, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            t = self.text()
            if pred(t):
                return t
            if self.run("has-session", "-t", "chat").returncode != 0:
                return None
            time.sleep(0.1)
        raise AssertionError("tmux pane never matched:\n" + self.text())

    def prompts(self, t):
        return sum(1 for ln in t.splitlines() if ln.startswith("> ") or ln == ">")

    def kill(self):
        self.run("kill-server")


def test_chat_repl_in_tmux(model, tmp_path):
    d, _, tok = model
    log = tmp_path / "chat.out"
    # the pane shows the session; `script`-free: the binary's stdout is the pane itself
    cmd = f"{QUIVER} gpt chat --model {d} --seed 1 --max-tokens 8; echo CHAT-EXIT=$? > {log}; sleep 30"
    tm = Tmux(cmd)
    try:
        tm.wait_for(lambda t: "/help for commands" in t and tm.prompts(t) >= 1)

        def turn(line):
            n = tm.prompts(tm.text())
            tm.send(line)
            return tm.wait_for(lambda t: tm.prompts(t) > n)

        t = turn("Streams are")
        assert "Streams are" in t
        t = turn("/explain")
        assert "(explain on)" in t
        t = turn("The quick")
        n_in = len(tok.encode("\nThe quick").ids)
        assert f"input: {n_in} tokens:" in t
        assert "step 1:" in t and "step 8:" in t and "top 5:" in t and "reply: " in t
        step = [ln for ln in t.splitlines() if ln.strip().startswith("step 1:")][-1]
        probs = [float(x) for x in step.split("top 5:")[1].split()[1::2]]
        assert len(probs) == 5 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001
        t = turn("/explain")
        assert "(explain off)" in t
        t = turn("/temp 0")
        assert "(temperature 0)" in t
        t = turn("/temp -3")
        assert "usage: /temp X" in t
        t = turn("/tokens 3")
        assert "(replies of up to 3 tokens)" in t
        t = turn("/reset")
        assert "(conversation cleared)" in t
        t = turn("/help")
        assert "/explain" in t and "/quit" in t
        t = turn("/bogus")
        assert "unknown command /bogus" in t
        tm.send("/quit")
        deadline = time.monotonic() + 30
        while not log.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert log.read_text().strip() == "CHAT-EXIT=0"
    finally:
        tm.kill()


def test_chat_greedy_reply_matches_generate(model):
    """After /reset and /temp 0 the chat's reply to a line equals generate's greedy text."""
    d, _, _ = model
    p = subprocess.run([QUIVER, "gpt", "chat", "--model", d, "--max-tokens", "10"],
                       input=b"/temp 0\nhello\n/reset\nStreams are\n/quit\n", capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr
    want = gen(d, "Streams are", "--max-tokens", 10, "--temperature", 0).stdout
    assert b"> " + want + b"\n" in p.stdout


def test_chat_reports_a_turn_that_does_not_fit_and_goes_on(model):
    d, _, _ = model
    p = subprocess.run([QUIVER, "gpt", "chat", "--model", d, "--max-tokens", "4"],
                       input=("word " * 400 + "\nStreams are\n").encode(), capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr
    out = p.stdout.decode("utf-8", "replace")
    assert "error: the prompt has" in out and "context" in out
    assert out.count("> ") == 3  # two turns, then end of input
