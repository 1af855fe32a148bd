"""quiver gpt train / list: loss falls on Node.js docs (Debian's nodejs-doc), checkpoints are
Hugging Face GPT-2 folders, same seed gives the same losses and --resume continues exactly."""
import gzip
import json
import math
import os
import shutil
import struct
import subprocess

import numpy as np
import pytest

from conftest import QUIVER

NODE_DOCS = "/usr/share/doc/nodejs/api"
# A tiny model so each run takes seconds, also under ASan.
TINY = ["--layers", "2", "--heads", "2", "--width", "32", "--context", "32", "--batch", "4",
        "--warmup", "5", "--lr", "3e-3", "--eval-every", "10", "--eval-batches", "2"]


def run(*args, check=True):
    p = subprocess.run([QUIVER, *map(str, args)], capture_output=True, text=True, timeout=600)
    if check and p.returncode != 0:
        raise AssertionError(f"{args} failed ({p.returncode}): {p.stderr}")
    return p


def fail(*args):
    p = run(*args, check=False)
    assert p.returncode != 0, p.stdout
    err = p.stderr.strip()
    assert err.startswith("quiver: ") and len(err.splitlines()) == 1, err
    return err


def log_lines(path):
    with open(path) as f:
        return [json.loads(l) for l in f if l.strip()]


def read_safetensors(path):
    """An independent reader: header JSON and {name: float32 array}."""
    with open(path, "rb") as f:
        buf = f.read()
    n = struct.unpack("<Q", buf[:8])[0]
    header = json.loads(buf[8:8 + n])
    meta = header.pop("__metadata__", {})
    tensors = {}
    for name, t in header.items():
        assert t["dtype"] == "F32", name
        b, e = t["data_offsets"]
        tensors[name] = np.frombuffer(buf[8 + n + b:8 + n + e], dtype="<f4").reshape(t["shape"])
    return meta, tensors


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Two Node.js API pages, unpacked (Debian ships them gzipped)."""
    d = tmp_path_factory.mktemp("nodedocs")
    for name in ("path", "url"):
        with gzip.open(os.path.join(NODE_DOCS, name + ".md.gz"), "rb") as src:
            (d / (name + ".md")).write_bytes(src.read())
    return d


@pytest.fixture(scope="module")
def base_run(corpus, tmp_path_factory):
    """One 40-step run that trains its own 300-token BPE, checkpointing at 20 and 40."""
    out = tmp_path_factory.mktemp("base")
    p = run("gpt", "train", "--data", corpus, "--out", out / "ck", "--vocab-size", "300", *TINY,
            "--steps", "40", "--save-every", "20", "--seed", "7", "--log", out / "log.jsonl")
    return {"out": out, "ck": out / "ck", "log": log_lines(out / "log.jsonl"), "stdout": p.stdout}


def test_loss_falls(base_run):
    log = base_run["log"]
    assert [r["step"] for r in log] == list(range(1, 41))
    first = log[0]["loss"]
    assert abs(first - math.log(300)) < 0.5  # GPT-2's init predicts nearly uniformly
    late = sum(r["loss"] for r in log[-5:]) / 5
    assert late < first - 1.0, (first, late)
    vals = [r["val_loss"] for r in log if "val_loss" in r]
    assert len(vals) == 4 and vals[-1] < vals[0] - 0.5, vals
    # the learning rate warms up, peaks at --lr and decays
    lrs = [r["lr"] for r in log]
    assert lrs[0] < lrs[4] and abs(max(lrs) - 3e-3) < 1e-9 and lrs[-1] < lrs[10]
    assert "corpus: 2 documents" in base_run["stdout"]


def test_checkpoint_is_a_hf_gpt2_folder(base_run):
    ck = base_run["ck"] / "step-000040"
    assert sorted(os.listdir(ck)) == ["config.json", "model.safetensors", "optimizer.safetensors",
                                      "tokenizer.json"]
    cfg = json.loads((ck / "config.json").read_text())
    assert cfg["model_type"] == "gpt2" and cfg["activation_function"] == "gelu_new"
    assert (cfg["n_layer"], cfg["n_head"], cfg["n_embd"], cfg["n_positions"], cfg["vocab_size"]) == (2, 2, 32, 32, 300)
    q = cfg["quiver"]
    assert q["step"] == 40 and q["seed"] == 7 and q["tokens_seen"] == 40 * 4 * 32
    assert q["chunking"]["chunker"] == "structure" and q["timestamp"].endswith("Z")
    assert q["train_loss"] == base_run["log"][-1]["loss"]
    assert q["val_loss"] == base_run["log"][-1]["val_loss"]
    meta, t = read_safetensors(ck / "model.safetensors")
    assert meta["format"] == "pt" and meta["step"] == "40" and json.loads(meta["chunking"])["chunker"] == "structure"
    C = 32
    want = {"wte.weight": (300, C), "wpe.weight": (32, C), "ln_f.weight": (C,), "ln_f.bias": (C,)}
    for i in range(2):
        want.update({f"h.{i}.ln_1.weight": (C,), f"h.{i}.ln_1.bias": (C,),
                     f"h.{i}.attn.c_attn.weight": (C, 3 * C), f"h.{i}.attn.c_attn.bias": (3 * C,),
                     f"h.{i}.attn.c_proj.weight": (C, C), f"h.{i}.attn.c_proj.bias": (C,),
                     f"h.{i}.ln_2.weight": (C,), f"h.{i}.ln_2.bias": (C,),
                     f"h.{i}.mlp.c_fc.weight": (C, 4 * C), f"h.{i}.mlp.c_fc.bias": (4 * C,),
                     f"h.{i}.mlp.c_proj.weight": (4 * C, C), f"h.{i}.mlp.c_proj.bias": (C,)})
    assert {k: v.shape for k, v in t.items()} == want
    assert all(np.isfinite(v).all() for v in t.values())
    ometa, o = read_safetensors(ck / "optimizer.safetensors")
    assert ometa["step"] == "40" and set(o) == {p + k for k in want for p in ("m.", "v.")}
    assert (o["v.wte.weight"] >= 0).all()
    # the tokenizer loads in Hugging Face tokenizers and has the end-of-text token
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(ck / "tokenizer.json"))
    assert tok.get_vocab_size() == 300 and tok.token_to_id("<|endoftext|>") is not None


def test_resume_gives_the_uninterrupted_losses_and_weights(base_run, tmp_path):
    out = tmp_path / "resumed"
    run("gpt", "train", "--resume", base_run["ck"] / "step-000020", "--out", out, "--eval-every", "10",
        "--log", tmp_path / "log.jsonl")
    resumed = log_lines(tmp_path / "log.jsonl")
    assert [r["step"] for r in resumed] == list(range(21, 41))
    base = {r["step"]: r for r in base_run["log"]}
    for r in resumed:
        assert r["loss"] == base[r["step"]]["loss"], r["step"]
        assert r["lr"] == base[r["step"]]["lr"]
        assert r.get("val_loss") == base[r["step"]].get("val_loss")
    # the final weights and optimizer moments are the same bits
    for f in ("model.safetensors", "optimizer.safetensors"):
        _, a = read_safetensors(base_run["ck"] / "step-000040" / f)
        _, b = read_safetensors(out / "step-000040" / f)
        assert a.keys() == b.keys()
        for k in a:
            assert a[k].tobytes() == b[k].tobytes(), (f, k)


def test_same_seed_same_losses_other_seed_differs(base_run, corpus, tmp_path):
    tok = base_run["ck"] / "step-000040" / "tokenizer.json"
    logs = []
    for i, seed in enumerate((3, 3, 4)):
        run("gpt", "train", "--data", corpus, "--out", tmp_path / f"o{i}", "--tokenizer", tok, *TINY,
            "--steps", "12", "--seed", seed, "--log", tmp_path / f"l{i}.jsonl")
        logs.append([r["loss"] for r in log_lines(tmp_path / f"l{i}.jsonl")])
    assert logs[0] == logs[1]
    assert logs[0] != logs[2]


def test_gradient_accumulation_runs_and_counts_tokens(base_run, corpus, tmp_path):
    tok = base_run["ck"] / "step-000040" / "tokenizer.json"
    run("gpt", "train", "--data", corpus, "--out", tmp_path / "o", "--tokenizer", tok, *TINY, "--steps", "3",
        "--accum", "2", "--chunker", "fixed", "--size", "64", "--overlap", "0.25")
    cfg = json.loads((tmp_path / "o" / "step-000003" / "config.json").read_text())
    assert cfg["quiver"]["tokens_seen"] == 3 * 2 * 4 * 32
    assert cfg["quiver"]["chunking"] == {"chunker": "fixed", "size": 64, "min": 64, "max": 254, "overlap": 0.25,
                                         "val_fraction": 0.05}


def test_list_marks_the_best(base_run):
    p = run("gpt", "list", base_run["ck"])
    rows = [l for l in p.stdout.splitlines()[1:] if l.strip()]
    assert len(rows) == 2
    best = [l for l in rows if l.startswith("*")]
    assert len(best) == 1 and "step-000040" in best[0]  # validation loss fell
    js = [json.loads(l) for l in run("gpt", "list", base_run["ck"], "--json").stdout.splitlines()]
    assert [j["step"] for j in js] == [20, 40] and [j["best"] for j in js] == [False, True]
    assert js[1]["val_loss"] == base_run["log"][-1]["val_loss"]


def test_list_json_escapes_folder_names(base_run, tmp_path):
    odd = tmp_path / 'runs "a\\b"'
    shutil.copytree(base_run["ck"] / "step-000040", odd / "step-000040")
    js = [json.loads(l) for l in run("gpt", "list", odd, "--json").stdout.splitlines()]
    assert len(js) == 1 and js[0]["dir"].endswith("step-000040") and '"a\\b"' in js[0]["dir"]


def test_bad_input_is_one_clear_line(base_run, corpus, tmp_path):
    assert "--out" in fail("gpt", "train", "--data", corpus)
    assert "no-such" in fail("gpt", "train", "--data", tmp_path / "no-such", "--out", tmp_path / "o")
    assert "--width" in fail("gpt", "train", "--data", corpus, "--out", tmp_path / "o", "--width", "30",
                             "--heads", "4")
    tok = base_run["ck"] / "step-000040" / "tokenizer.json"
    small = tmp_path / "small"
    small.mkdir()
    (small / "a.md").write_text("# Tiny\n\nA short file.\n")
    err = fail("gpt", "train", "--data", small, "--out", tmp_path / "o", "--tokenizer", tok, "--context", "64")
    assert "training tokens" in err
    assert "step 40" in fail("gpt", "train", "--resume", base_run["ck"] / "step-000040", "--out", tmp_path / "r",
                             "--steps", "40")
    assert "checkpoint" in fail("gpt", "train", "--resume", base_run["ck"] / "step-000040", "--out", tmp_path / "r",
                                "--width", "64")
    # the held-out split and validation batches are the checkpoint's: a different one is refused
    for flag, value in (("--val-fraction", "0.2"), ("--eval-batches", "3")):
        assert "checkpoint" in fail("gpt", "train", "--resume", base_run["ck"] / "step-000020", "--out",
                                    tmp_path / "r", flag, value)
    assert "no checkpoints" in fail("gpt", "list", tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text('{"model_type": "gpt2", "n_layer": 1}')
    assert "config.json" in fail("gpt", "train", "--resume", bad, "--out", tmp_path / "r")


def test_gpu_setting_decides_where_training_runs(corpus, tmp_path):
    """--gpu off trains on the CPU; --gpu on trains on the GPU where `quiver info` finds one
    and is refused with the reason where it does not; a bad mode is refused."""
    info = json.loads(run("info", "--json").stdout)
    args = ["gpt", "train", "--data", corpus, "--vocab-size", "300", *TINY, "--steps", "2"]
    assert "training on cpu" in run(*args, "--out", tmp_path / "off", "--gpu", "off").stdout
    if info["backend"] == "cuda":
        assert "training on cuda" in run(*args, "--out", tmp_path / "on", "--gpu", "on").stdout
    else:
        err = fail(*args, "--out", tmp_path / "on", "--gpu", "on")
        assert "gpt train" in err and "GPU" in err, err
        assert not (tmp_path / "on").exists()
    assert "auto, on or off" in fail(*args, "--out", tmp_path / "x", "--gpu", "maybe")
    # generation follows the same setting
    gen = ["gpt", "generate", "--model", tmp_path / "off" / "step-000002", "--prompt", "The path",
           "--max-tokens", "4", "--temperature", "0", "--stats"]
    cpu = run(*gen, "--gpu", "off")
    assert json.loads(cpu.stderr.strip().splitlines()[-1])["device"] == "cpu"
    if info["backend"] == "cuda":
        on = run(*gen, "--gpu", "on")
        assert json.loads(on.stderr.strip().splitlines()[-1])["device"] == "cuda"
    else:
        assert "GPU" in fail(*gen, "--gpu", "on")


def test_generate_loads_a_trained_checkpoint(base_run):
    """gen's `quiver gpt generate` reads train's checkpoint folder as it is; the same seed
    gives the same text."""
    ck = base_run["ck"] / "step-000040"
    args = ("gpt", "generate", "--model", ck, "--prompt", "The path", "--max-tokens", "12", "--seed", "3")
    a, b = run(*args).stdout, run(*args).stdout
    assert a == b and len(a) > 0


def test_ctrl_c_saves_a_checkpoint_to_resume_from(base_run, corpus, tmp_path):
    import signal
    import time
    tok = base_run["ck"] / "step-000040" / "tokenizer.json"
    log = tmp_path / "log.jsonl"
    p = subprocess.Popen([QUIVER, "gpt", "train", "--data", corpus, "--out", tmp_path / "o", "--tokenizer", tok,
                          *TINY, "--steps", "100000", "--log", log], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 2):
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    steps = [r["step"] for r in log_lines(log)]
    ck = tmp_path / "o" / f"step-{steps[-1]:06d}"
    assert f"interrupted at step {steps[-1]}" in out and ck.is_dir()
    assert json.loads((ck / "config.json").read_text())["quiver"]["step"] == steps[-1]
    run("gpt", "train", "--resume", ck, "--out", tmp_path / "o2", "--steps", steps[-1] + 2)
    assert (tmp_path / "o2" / f"step-{steps[-1] + 2:06d}" / "model.safetensors").exists()


def test_a_diverging_run_stops_with_a_clear_error(base_run, corpus, tmp_path):
    tok = base_run["ck"] / "step-000040" / "tokenizer.json"
    err = fail("gpt", "train", "--data", corpus, "--out", tmp_path / "o", "--tokenizer", tok, *TINY,
               "--steps", "50", "--lr", "1e6", "--clip", "0")
    assert "not finite" in err
