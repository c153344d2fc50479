"""Exact resume: a run killed with SIGKILL between checkpoints and resumed is the run that was
never stopped — same losses after the resume point, bit-identical final weights (CPU, fp32)."""
import signal
import subprocess
import sys

import pytest

from tests.helpers.train_harness import (ROOT, losses, max_weight_diff, read_metrics, run, run_ok, start_and_signal,
                                 train_cmd, weights, write_config, write_corpus)

pytestmark = pytest.mark.slow  # every test here starts processes


# muon: its momentum buffers and per-group rates, with clipping that bites and the wsd schedule
MUON = dict(optimizer_type="muon", lr_scheduler="wsd", decay_fraction=0.5, grad_clip=0.5, embedding_lr=0.01)


@pytest.mark.parametrize("objective, extra", [("clm", {}), ("mlm", {}), ("clm", MUON)], ids=["clm", "mlm", "muon"])
def test_sigkill_then_resume_equals_uninterrupted(tiny_corpus, run_root, objective, extra):
    corpus, data_dir = tiny_corpus
    out = run_root / "out"
    common = dict(objective=objective, max_steps=16, save_interval=5, accumulation_steps=2, use_ema="true",
                  ema_decay=0.9, **extra)
    base_cfg = write_config(run_root / "base.yaml", corpus, data_dir, out, run_name="base", **common)
    started = run_ok(train_cmd("--config", base_cfg))
    if extra:
        assert "muon: Newton-Schulz on 14 matrices costs" in started.stdout + started.stderr
    cut_cfg = write_config(run_root / "cut.yaml", corpus, data_dir, out, run_name="cut", **common)
    code, _, err = start_and_signal(train_cmd("--config", cut_cfg), str(out / "cut"), at_step=7, sig=signal.SIGKILL)
    assert code == -signal.SIGKILL, err[-2000:]
    logged_before_kill = max(r["step"] for r in read_metrics(str(out / "cut")))
    assert logged_before_kill not in (5, 10, 15, 16), "the kill must land between checkpoints"
    run_ok(train_cmd("--config", cut_cfg, "--resume"))

    base, cut = losses(str(out / "base")), losses(str(out / "cut"))
    assert sorted(base) == list(range(1, 17)) and base == cut
    final = "checkpoint_step_16.pth"
    assert max_weight_diff(weights(out / "base" / final), weights(out / "cut" / final)) == 0.0
    assert max_weight_diff(weights(out / "base" / final, "ema"), weights(out / "cut" / final, "ema")) == 0.0
    base_eval = [r["val_loss"] for r in read_metrics(str(out / "base"), "eval")]
    cut_eval = [r["val_loss"] for r in read_metrics(str(out / "cut"), "eval")]
    assert base_eval == cut_eval


def test_resume_with_other_batch_split_continues_the_data_position(tiny_corpus, run_root):
    """Resuming with another micro-batch / accumulation split keeps the same global batch order:
    the continued run matches the uninterrupted one to float tolerance."""
    corpus, data_dir = tiny_corpus
    out = run_root / "out"
    cfg = write_config(run_root / "a.yaml", corpus, data_dir, out, run_name="a", max_steps=8, save_interval=4)
    run_ok(train_cmd("--config", cfg))
    p = run_ok(train_cmd("--config", cfg, "--run_name", "b", "--resume_from", str(out / "a" / "checkpoint_step_4.pth"),
                         "--batch_size", "4", "--accumulation_steps", "2"))
    assert "the batch is split otherwise than in the checkpoint (batch_size x accumulation_steps x ranks: " \
           "8 x 1 x 1 -> 4 x 2 x 1); the global batch of 8 and the samples stay the same" in p.stdout + p.stderr
    a, b = losses(str(out / "a")), losses(str(out / "b"))
    assert sorted(b) == [5, 6, 7, 8]
    for step in b:
        assert b[step] == pytest.approx(a[step], rel=1e-5, abs=1e-6)
    diff = max_weight_diff(weights(out / "a" / "checkpoint_step_8.pth"), weights(out / "b" / "checkpoint_step_8.pth"))
    assert diff < 1e-5


def test_wsd_run_resumed_longer_in_its_stable_phase_follows_the_longer_plan(tiny_corpus, run_root):
    """A wsd run stopped in its stable phase and resumed with a larger max_steps says so and takes
    the rates of a run planned that long from the start."""
    corpus, data_dir = tiny_corpus
    out = run_root / "out"
    cfg = write_config(run_root / "a.yaml", corpus, data_dir, out, run_name="a", max_steps=8, save_interval=3,
                       lr_scheduler="wsd", decay_fraction=0.25)
    run_ok(train_cmd("--config", cfg))
    longer = run_ok(train_cmd("--config", cfg, "--run_name", "b", "--max_steps", "12",
                              "--resume_from", str(out / "a" / "checkpoint_step_3.pth")))
    said = longer.stdout + longer.stderr
    assert ("note: wsd run extended from 8 to 12 steps in its stable phase (step 3): it continues at the peak "
            "rate as if planned that long, decaying from step 9") in said
    planned = run_ok(train_cmd("--config", cfg, "--run_name", "c", "--max_steps", "12"))
    assert "extended" not in planned.stdout + planned.stderr
    rates = {r["step"]: r["lr"] for r in read_metrics(str(out / "b"))}
    assert sorted(rates) == list(range(4, 13))
    assert rates == {r["step"]: r["lr"] for r in read_metrics(str(out / "c")) if r["step"] > 3}
    # logged step n took step index n - 1: the 8-step plan decayed from index 6, the 12-step one from 9
    short = {r["step"]: r["lr"] for r in read_metrics(str(out / "a"))}
    assert short[8] < 3e-3 and rates[8] == rates[10] == 3e-3 and rates[11] < 3e-3


def test_a_resume_on_other_data_is_refused_and_another_global_batch_is_said(tiny_corpus, run_root):
    """Before the checkpoint recorded its data, both resumed silently: on other samples, or with
    another batch than the one the schedule and the loss curve were made with."""
    corpus, data_dir = tiny_corpus
    out = run_root / "out"
    cfg = write_config(run_root / "a.yaml", corpus, data_dir, out, run_name="a", max_steps=4, save_interval=4)
    run_ok(train_cmd("--config", cfg))
    ckpt = str(out / "a" / "checkpoint_step_4.pth")
    p = run_ok(train_cmd("--config", cfg, "--run_name", "b", "--resume_from", ckpt, "--max_steps", "5",
                         "--batch_size", "4"))
    said = [line for line in (p.stdout + p.stderr).splitlines() if line.startswith("note:") and "global batch" in line]
    assert len(said) == 1 and "the global batch differs from the checkpoint's: 8 -> 4 samples per step" in said[0]

    other = run_root / "other.jsonl"
    write_corpus(other, seed=3)
    tok = f"{data_dir}/tokenizer.json"
    made = subprocess.run([sys.executable, "-m", "data.processor", str(other), "--out_dir", str(run_root / "od"),
                           "--tokenizer", tok, "--val_ratio", "0.1"], cwd=ROOT, capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    p = run(train_cmd("--config", cfg, "--run_name", "c", "--resume_from", ckpt, "--data.train_bin",
                      str(run_root / "od" / "train.bin"), "--data.val_bin", str(run_root / "od" / "val.bin"),
                      "--data.tokenizer_path", tok), 300)
    errors = [line for line in p.stderr.splitlines() if line.startswith("error")]
    assert p.returncode == 2 and "Traceback" not in p.stderr and len(errors) == 1, p.stderr[-2000:]
    assert "the training data differs from the checkpoint's (train.bin: " in errors[0] and " tokens)" in errors[0]
