"""Flags do what they say, and mistakes are refused before any work, through the real command."""
import os
import signal
import subprocess
import sys

import pytest

from tests.helpers.train_harness import ROOT, env, read_metrics, run, run_ok, train_cmd, write_config

pytestmark = pytest.mark.slow  # every test here starts processes


def one_line_error(proc, fragment):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert fragment in proc.stderr, proc.stderr


@pytest.mark.parametrize("args, fragment", [
    (["--device", "banana"], "not a device name"),
    (["--learning_rate", "nan"], "train.learning_rate must be a finite number"),
    (["--learning_rate", "inf"], "train.learning_rate must be a finite number"),
    (["--grad_clip", "-1"], "train.grad_clip must be >= 0"),
    (["--optimizer_type", "adam"], "coupled L2"),
    (["--model.pad_token_id", "3"], "the pad id comes from the tokenizer"),
    (["--data.val_ratio", "0", "--early_stopping"], "train.early_stopping needs validation data"),
    (["--data.seq_len", "64"], "data.seq_len 64 is longer than the model's context (model.max_seq_len 32)"),
])
def test_refused_in_one_line(tiny_corpus, run_root, args, fragment):
    corpus, data_dir = tiny_corpus
    cfg = write_config(run_root / "bad.yaml", corpus, data_dir, run_root / "out")
    one_line_error(run(train_cmd("--config", cfg, *args)), fragment)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_one_line(tiny_corpus, run_root):
    corpus, data_dir = tiny_corpus
    cfg = write_config(run_root / "bad.yaml", corpus, data_dir, run_root / "out")
    one_line_error(run(train_cmd("--config", cfg, "--device", "cuda")), "sees no CUDA GPU")


def test_ddp_with_a_device_it_cannot_honour_is_refused(tiny_corpus, run_root):
    """--device cuda:1 --ddp used to train silently on CPU with gloo. The environment stands in for
    torchrun (the refusal comes before any process group is made)."""
    corpus, data_dir = tiny_corpus
    cfg = write_config(run_root / "bad.yaml", corpus, data_dir, run_root / "out")
    e = dict(env(), RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
    proc = subprocess.run(train_cmd("--config", cfg, "--ddp", "--device", "cuda:1"), cwd=ROOT, env=e,
                          capture_output=True, text=True, timeout=120)
    one_line_error(proc, "each rank uses cuda:<LOCAL_RANK>")


def test_unwritable_output_directories_are_one_line(tiny_corpus, run_root):
    corpus, data_dir = tiny_corpus
    blocker = run_root / "a_file"
    blocker.write_text("not a directory")
    cfg = write_config(run_root / "c.yaml", corpus, data_dir, run_root / "out")
    one_line_error(run(train_cmd("--config", cfg, "--out_dir", str(blocker / "out"))), "--out_dir")
    one_line_error(run(train_cmd("--config", cfg, "--data.out_dir", str(blocker / "data"))), "--data.out_dir")
    assert blocker.read_text() == "not a directory"


def test_cli_epochs_beats_yaml_max_steps(tiny_corpus, run_root):
    corpus, data_dir = tiny_corpus
    cfg = write_config(run_root / "c.yaml", corpus, data_dir, run_root / "out", max_steps=300, batch_size=64,
                       eval_interval=100, save_interval=100)
    proc = run_ok(train_cmd("--config", cfg, "--epochs", "2"))
    assert "--epochs 2 given: ignoring max_steps 300" in proc.stdout + proc.stderr
    steps = [r["step"] for r in read_metrics(str(run_root / "out" / "run"))]
    assert 0 < max(steps) < 300  # two epochs of this corpus, not the YAML's 300 steps


def test_fresh_start_after_a_kill_before_the_first_checkpoint_owns_a_fresh_log(tiny_corpus, run_root):
    """Also: OMP_NUM_THREADS is honoured, and temporaries of killed checkpoint writes are removed."""
    corpus, data_dir = tiny_corpus
    cfg = write_config(run_root / "c.yaml", corpus, data_dir, run_root / "out", max_steps=400, save_interval=1000,
                       eval_interval=1000)
    run_dir = run_root / "out" / "run"
    proc = subprocess.Popen(train_cmd("--config", cfg), cwd=ROOT, env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    while proc.poll() is None and len(read_metrics(str(run_dir))) < 5:
        pass
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert len(read_metrics(str(run_dir))) >= 5 and not any(n.startswith("checkpoint_") for n in os.listdir(run_dir))
    stale = run_dir / ".checkpoint_step_4.pth.tmp-999999999"  # no process has this pid
    stale.write_bytes(b"half a checkpoint")
    proc = run_ok(train_cmd("--config", cfg, "--max_steps", "6", "--eval_interval", "3", "--save_interval", "3"))
    steps = [r["step"] for r in read_metrics(str(run_dir))]
    assert steps == [1, 2, 3, 4, 5, 6]  # each step once: the killed run's records are gone
    assert not stale.exists()
    assert "(1 threads)" in proc.stdout + proc.stderr  # the harness sets OMP_NUM_THREADS=1


def test_resume_with_a_changed_schedule_says_what_changed(tiny_corpus, run_root):
    corpus, data_dir = tiny_corpus
    cfg = write_config(run_root / "c.yaml", corpus, data_dir, run_root / "out", max_steps=4)
    run_ok(train_cmd("--config", cfg))
    proc = run_ok(train_cmd("--config", cfg, "--resume", "--max_steps", "6", "--learning_rate", "1e-3"))
    out = proc.stdout + proc.stderr
    assert "schedule differs" in out and "base_lr 0.003 -> 0.001" in out and "total_steps 4 -> 6" in out


def test_legacy_launcher_passes_local_rank(tiny_corpus, run_root):
    corpus, data_dir = tiny_corpus
    cfg = write_config(run_root / "c.yaml", corpus, data_dir, run_root / "out", max_steps=2, warmup=1)
    cmd = [sys.executable, "-m", "torch.distributed.launch", "--nproc_per_node=1", "--master_port",
           str(__import__("tests.helpers.train_harness", fromlist=["free_port"]).free_port()),
           os.path.join(ROOT, "train.py"), "--config", cfg, "--ddp"]
    run_ok(cmd)
    assert [r["step"] for r in read_metrics(str(run_root / "out" / "run"))] == [1, 2]


def test_a_run_without_validation_data_trains_and_checkpoints(tiny_corpus, run_root):
    corpus, _ = tiny_corpus
    cfg = write_config(run_root / "c.yaml", corpus, str(run_root / "noval"), run_root / "out", max_steps=4)
    proc = run_ok(train_cmd("--config", cfg, "--data.val_ratio", "0"))
    out = proc.stdout + proc.stderr
    assert "no validation data" in out and "nothing evaluated, no best.pth" in out
    run_dir = run_root / "out" / "run"
    assert (run_dir / "checkpoint_step_4.pth").exists() and not (run_dir / "best.pth").exists()
    assert read_metrics(str(run_dir), "eval") == [] and len(read_metrics(str(run_dir))) == 4


def test_early_stopping_says_where_it_stands(tiny_corpus, run_root):
    corpus, data_dir = tiny_corpus
    cfg = write_config(run_root / "c.yaml", corpus, data_dir, run_root / "out", max_steps=40, eval_interval=2,
                       save_interval=2, early_stopping="true", patience=2, min_delta=100.0)
    out = run_ok(train_cmd("--config", cfg)).stdout
    assert "step 2: new best validation loss" in out and "saved best.pth" in out
    assert "step 4: no improvement 1/2" in out and "step 6: no improvement 2/2" in out


def test_data_seq_len_trains_shorter_windows_than_the_context(tiny_corpus, run_root):
    corpus, data_dir = tiny_corpus
    cfg = write_config(run_root / "c.yaml", corpus, data_dir, run_root / "out", max_steps=2, warmup=1)
    proc = run_ok(train_cmd("--config", cfg, "--data.seq_len", "16"))
    assert "global batch 8 x 16 tokens" in proc.stdout + proc.stderr
    import torch
    state = torch.load(run_root / "out" / "run" / "checkpoint_step_2.pth", weights_only=True)
    assert state["model_config"]["max_seq_len"] == 32  # the model keeps its context; only the windows shrink
    run_ok(train_cmd("--config", cfg, "--run_name", "full"))
    epoch = {name: [m for m in read_metrics(str(run_root / "out" / name)) if m.get("split") == "train"][-1]["epoch"]
             for name in ("run", "full")}
    assert abs(2 * epoch["run"] - epoch["full"]) < 0.1 * epoch["full"]  # twice the windows of half the length


def test_the_processors_max_length_is_the_window_length_when_data_seq_len_is_not_given(tiny_corpus, run_root):
    """DataProcessor / --max_length (the reference's: tokens per sample) sets the training windows."""
    corpus, data_dir = tiny_corpus
    out = run_root / "out"
    cfg = write_config(run_root / "a.yaml", corpus, data_dir, out, run_name="a", max_steps=3, save_interval=3)
    run_ok(train_cmd("--config", cfg))  # builds the tokenizer
    tok = os.path.join(data_dir, "tokenizer.json")
    made = subprocess.run([sys.executable, "-m", "data.processor", corpus, "--out_dir", str(run_root / "d16"),
                           "--tokenizer", tok, "--max_length", "16"], cwd=ROOT, capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    bins = ["--data.train_bin", str(run_root / "d16" / "train.bin"), "--data.val_bin", str(run_root / "d16" / "val.bin"),
            "--data.tokenizer_path", tok]
    p = run_ok(train_cmd("--config", cfg, "--run_name", "b", *bins))
    assert "x 16 tokens" in p.stdout + p.stderr
    p = run_ok(train_cmd("--config", cfg, "--run_name", "c", *bins, "--data.seq_len", "24"))
    assert "x 24 tokens" in p.stdout + p.stderr
