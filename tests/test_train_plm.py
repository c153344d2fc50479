"""A prefix LM over packed, document-masked windows trained by train.py as real processes: killed
between checkpoints and resumed, it is the run that was never stopped (prefixes are drawn from the
sample position); two ranks equal one process; its metrics are logged and inference.py generates
from its checkpoint."""
import signal

import pytest
import torch

import inference
from tests.helpers.train_harness import (losses, max_weight_diff, read_metrics, run_ok, run_torchrun_ok, start_and_signal,
                                 train_cmd, weights, write_config)

pytestmark = pytest.mark.slow  # every test here starts processes

PLM = ("--model.objective", "plm", "--model.document_mask", "true")


def test_packed_prefix_lm_sigkill_then_resume_equals_uninterrupted(tiny_corpus, run_root, capsys):
    corpus, data_dir = tiny_corpus
    out = run_root / "out"
    common = dict(max_steps=12, save_interval=5, accumulation_steps=2)
    base_cfg = write_config(run_root / "base.yaml", corpus, data_dir, out, run_name="base", **common)
    run_ok(train_cmd("--config", base_cfg, *PLM))
    cut_cfg = write_config(run_root / "cut.yaml", corpus, data_dir, out, run_name="cut", **common)
    code, _, err = start_and_signal(train_cmd("--config", cut_cfg, *PLM), str(out / "cut"), at_step=7,
                                    sig=signal.SIGKILL)
    assert code == -signal.SIGKILL, err[-2000:]
    assert max(r["step"] for r in read_metrics(str(out / "cut"))) not in (5, 10, 12)
    run_ok(train_cmd("--config", cut_cfg, "--resume", *PLM))

    base, cut = losses(str(out / "base")), losses(str(out / "cut"))
    assert sorted(base) == list(range(1, 13)) and base == cut
    final = "checkpoint_step_12.pth"
    assert max_weight_diff(weights(out / "base" / final), weights(out / "cut" / final)) == 0.0
    evals = read_metrics(str(out / "base"), "eval")
    assert [r["val_loss"] for r in evals] == [r["val_loss"] for r in read_metrics(str(out / "cut"), "eval")]
    assert evals and all(r["val_bpb"] > 0 for r in evals)
    saved = torch.load(out / "base" / final, map_location="cpu", weights_only=True)["model_config"]
    assert saved["objective"] == "plm" and saved["document_mask"] is True

    args = ["--model_path", str(out / "base" / "best.pth"), "--prompt", "The king", "--max_new_tokens", "12",
            "--greedy"]
    assert inference.main(args) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("The king") and len(printed) > len("The king\n")


def test_packed_prefix_lm_on_two_ranks_equals_one_process_with_double_batch(tiny_corpus, run_root):
    """Prefixes and document ids travel with each sample, so two gloo ranks with batch B train exactly
    what one process with batch 2B trains."""
    corpus, data_dir = tiny_corpus
    out = run_root / "out"
    single = write_config(run_root / "single.yaml", corpus, data_dir, out, run_name="single", max_steps=8,
                          batch_size=8, save_interval=8)
    run_ok(train_cmd("--config", single, *PLM))
    ddp = write_config(run_root / "ddp.yaml", corpus, data_dir, out, run_name="ddp", max_steps=8, batch_size=4,
                       save_interval=8)
    run_torchrun_ok(2, "--config", ddp, "--ddp", *PLM)
    a, b = losses(str(out / "single")), losses(str(out / "ddp"))
    assert sorted(a) == sorted(b) == list(range(1, 9))
    assert all(b[s] == pytest.approx(a[s], rel=1e-5, abs=1e-6) for s in a)
    final = "checkpoint_step_8.pth"
    assert max_weight_diff(weights(out / "single" / final), weights(out / "ddp" / final)) < 1e-5
