"""How training behaves when things go wrong or stop early: crashes during checkpoint writes,
early stopping, non-finite losses, and inputs that must be refused before any work."""
import os
import signal
import subprocess
import sys

import pytest
import torch

from tests.helpers.train_harness import (ROOT, max_weight_diff, read_metrics, run, run_ok, train_cmd, weights,
                                 write_config)
from checkpoint import FORMAT, CheckpointError, atomic_save, latest_checkpoint, load_checkpoint

KILL_DURING_SAVE = """
import sys, torch
sys.path.insert(0, {root!r})
from checkpoint import atomic_save
print("writing", flush=True)
atomic_save({{"model": {{"w": torch.zeros(64, 1024, 1024)}}, "model_config": {{}}}}, {path!r})
"""


@pytest.mark.slow
def test_kill_during_checkpoint_write_keeps_previous_and_no_partial_file(tmp_path):
    path = str(tmp_path / "checkpoint_step_2.pth")
    atomic_save({"format": FORMAT, "model": {"w": torch.ones(3)}, "model_config": {}, "step": 2}, path)
    # Overwrite the same name from another process and SIGKILL it mid-write (256 MB to write).
    proc = subprocess.Popen([sys.executable, "-c", KILL_DURING_SAVE.format(root=ROOT, path=path)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    tmp_files = []
    for _ in range(2000):  # wait until the temporary file has bytes in it, then kill
        tmp_files = [p for p in os.listdir(tmp_path) if p.endswith(f".tmp-{proc.pid}")]
        if tmp_files and os.path.getsize(tmp_path / tmp_files[0]) > 0:
            break
        __import__("time").sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert tmp_files, "the writer never produced its temporary file"
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(3))   # old one intact
    names = [p for p in os.listdir(tmp_path) if p.startswith("checkpoint_")]
    assert names == ["checkpoint_step_2.pth"]
    assert latest_checkpoint(str(tmp_path)) == path


def test_failed_write_leaves_no_temporary_file(tmp_path):
    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")
    with pytest.raises(RuntimeError):
        atomic_save({"x": Unpicklable()}, str(tmp_path / "checkpoint_step_1.pth"))
    assert os.listdir(tmp_path) == []


def test_corrupt_checkpoint_is_one_line_error(tmp_path):
    bad = tmp_path / "checkpoint_step_1.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(str(bad))
    assert "\n" not in str(e.value)


@pytest.mark.slow
def test_early_stopping_after_patience_evals_and_best_holds_best_weights(tiny_corpus, run_root):
    corpus, data_dir = tiny_corpus
    # min_delta is huge: only the first evaluation counts as an improvement.
    cfg = write_config(run_root / "es.yaml", corpus, data_dir, run_root / "out", run_name="es", max_steps=40,
                       eval_interval=2, save_interval=2, early_stopping="true", patience=3, min_delta=100.0)
    run_ok(train_cmd("--config", cfg))
    run_dir = run_root / "out" / "es"
    evals = read_metrics(str(run_dir), "eval")
    assert [r["step"] for r in evals] == [2, 4, 6, 8]           # 1 improvement + exactly 3 without
    assert max(r["step"] for r in read_metrics(str(run_dir))) == 8
    best = torch.load(run_dir / "best.pth", weights_only=True)
    assert best["step"] == 2
    assert max_weight_diff(best["model"], weights(run_dir / "checkpoint_step_2.pth")) == 0.0


@pytest.mark.slow
@pytest.mark.parametrize("args, fragment", [
    (["--model.dim", "30", "--model.n_heads", "4"], "model.dim (30) must be divisible by model.n_heads (4)"),
    (["--lr_scheduler", "step"], "train.lr_scheduler must be one of"),
    (["--ddp"], "--ddp needs torchrun"),
    (["--batch_size", "x"], "train.batch_size: expected int"),
])
def test_bad_inputs_exit_2_with_one_line(tiny_corpus, run_root, args, fragment):
    corpus, data_dir = tiny_corpus
    cfg = write_config(run_root / "bad.yaml", corpus, data_dir, run_root / "out")
    proc = run(train_cmd("--config", cfg, *args))
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and fragment in proc.stderr, proc.stderr


@pytest.mark.slow
def test_bin_from_another_tokenizer_is_refused(tiny_corpus, run_root):
    corpus, data_dir = tiny_corpus
    cfg = write_config(run_root / "a.yaml", corpus, data_dir, run_root / "out", max_steps=2, warmup=1, run_name="prep")
    run_ok(train_cmd("--config", cfg))
    other = run_root / "other"
    cfg_b = write_config(run_root / "b.yaml", corpus, str(other), run_root / "out", max_steps=2, warmup=1, run_name="prep2")
    run_ok(train_cmd("--config", cfg_b, "--data.vocab_size", "300"))   # a second, different tokenizer
    proc = run(train_cmd("--config", cfg, "--run_name", "mixed", "--data.train_bin", os.path.join(data_dir, "train.bin"),
                         "--data.val_bin", os.path.join(data_dir, "val.bin"),
                         "--data.tokenizer_path", str(other / "tokenizer.json")))
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "tokenizer" in proc.stderr


@pytest.mark.slow
def test_existing_checkpoints_need_resume_or_force_fresh(tiny_corpus, run_root):
    corpus, data_dir = tiny_corpus
    cfg = write_config(run_root / "c.yaml", corpus, data_dir, run_root / "out", max_steps=4)
    run_ok(train_cmd("--config", cfg))
    proc = run(train_cmd("--config", cfg))
    assert proc.returncode == 2 and "--resume" in proc.stderr and "--force-fresh" in proc.stderr
    proc = run(train_cmd("--config", cfg, "--resume", "--model.n_layers", "3"))
    assert proc.returncode == 2 and "model shape differs" in proc.stderr and "n_layers: 2 -> 3" in proc.stderr
    other_tokenizer = ["--data.out_dir", str(run_root / "other_data"), "--data.vocab_size", "300"]
    proc = run(train_cmd("--config", cfg, "--resume", *other_tokenizer))
    assert proc.returncode == 2 and "trained with another tokenizer" in proc.stderr
    run_ok(train_cmd("--config", cfg, "--force-fresh", "--max_steps", "3"))
    assert sorted(os.listdir(run_root / "out" / "run")).count("checkpoint_step_4.pth") == 0
