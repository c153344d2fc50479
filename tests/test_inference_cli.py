"""inference.py as a user runs it: generation, streaming, batches, the REPL, fill-mask, and one-line
errors with exit code 2 for every bad request."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from tests.gen_fixtures import save_checkpoint, tiny_model, tiny_tokenizer
from tests.train_harness import ROOT


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    tok = tiny_tokenizer(str(root))
    return {"clm": save_checkpoint(str(root / "clm"), tiny_model("clm"), tok, ema=True),
            "mlm": save_checkpoint(str(root / "mlm"), tiny_model("mlm"), tok), "root": root}


def cli(*args, stdin=None):
    return subprocess.run([sys.executable, os.path.join(ROOT, "inference.py"), *args], cwd=ROOT, input=stdin,
                          capture_output=True, text=True, timeout=120)


def test_prompt_seeded_and_streamed_equal(ckpts):
    args = ["--model_path", ckpts["clm"], "--prompt", "To be", "--max_new_tokens", "20", "--seed", "5"]
    a, b, s = cli(*args), cli(*args), cli(*args, "--stream")
    assert a.returncode == b.returncode == s.returncode == 0, a.stderr
    assert a.stdout == b.stdout == s.stdout and a.stdout.startswith("To be")
    ema = cli(*args, "--ema")
    assert ema.returncode == 0 and ema.stdout != a.stdout


def test_batch_file_to_jsonl(ckpts, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("To be\n\nNow is the winter\n今天\n", encoding="utf-8")
    out = tmp_path / "results.jsonl"
    proc = cli("--model_path", ckpts["clm"], "--batch_file", str(prompts), "--output", str(out), "--greedy",
               "--max_new_tokens", "10")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(l) for l in out.read_text(encoding="utf-8").splitlines()]
    assert [r["prompt"] for r in rows] == ["To be", "Now is the winter", "今天"]
    single = cli("--model_path", ckpts["clm"], "--prompt", "Now is the winter", "--greedy", "--max_new_tokens", "10")
    assert single.stdout.rstrip("\n") == "Now is the winter" + rows[1]["generated"]


def test_interactive_clear_exit_and_eof(ckpts):
    base = ["--model_path", ckpts["clm"], "--interactive", "--greedy", "--max_new_tokens", "8"]
    proc = cli(*base, stdin="hello there\nclear\nhow now\nexit\nnever read\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("model> ") == 2 and "(history cleared)" in proc.stdout and proc.stdout.rstrip().endswith("bye")
    eof = cli(*base, "--stream", stdin="hello there\n")
    assert eof.returncode == 0 and eof.stdout.count("model> ") == 1 and eof.stdout.rstrip().endswith("bye")
    assert "Traceback" not in eof.stderr


def test_fill_mask_prints_sorted_candidates(ckpts):
    proc = cli("--model_path", ckpts["mlm"], "--fill_mask", "The <mask> of Denmark", "--top_k", "3")
    assert proc.returncode == 0, proc.stderr
    probs = [float(line.split()[0]) for line in proc.stdout.splitlines() if line.startswith("  ")]
    assert len(probs) == 3 and probs == sorted(probs, reverse=True) and all(0 < p <= 1 for p in probs)


def test_bad_requests_exit_2_with_one_line(ckpts, tmp_path):
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"\x80\x04garbage")
    state = torch.load(ckpts["clm"], weights_only=True)   # weights of another layout (renamed tensor)
    state["model"]["layers.0.attention.wq.weight"] = state["model"].pop("layers.0.attention.wqkv.weight")
    foreign = tmp_path / "run" / "best.pth"
    foreign.parent.mkdir()
    torch.save(state, foreign)
    shutil.copy(os.path.join(os.path.dirname(ckpts["clm"]), "tokenizer.json"), foreign.parent / "tokenizer.json")
    cases = [
        (["--model_path", ckpts["clm"], "--fill_mask", "The <mask>"], "causal LM"),
        (["--model_path", ckpts["mlm"], "--prompt", "To be"], "masked LM"),
        (["--model_path", ckpts["mlm"], "--fill_mask", "no mask here"], "no <mask> token"),
        (["--model_path", str(tmp_path / "missing.pth"), "--prompt", "x"], "checkpoint not found"),
        (["--model_path", str(corrupt), "--prompt", "x"], "not a readable checkpoint"),
        (["--model_path", str(foreign), "--prompt", "x"], "weights do not fit this model"),
        (["--model_path", ckpts["mlm"], "--fill_mask", "The <mask>", "--ema"], "no EMA weights"),
        (["--model_path", ckpts["clm"], "--prompt", "x", "--top_p", "1.5"], "top_p"),
    ]
    for args, fragment in cases:
        proc = cli(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert proc.stderr.count("\n") == 1 and fragment in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
