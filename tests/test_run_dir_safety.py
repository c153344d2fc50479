"""A run directory's files survive what users do to them: a resume with nothing left to do, a second
run started on a live one, a launcher killed under its ranks, a kill while the log is trimmed, and a
full disk."""
import builtins
import errno
import json
import os
import signal
import subprocess
import time

import pytest

from tests.helpers.train_harness import (ROOT, descendants, env, read_metrics, run, run_ok, start_and_signal, torchrun_cmd,
                                 train_cmd, write_config)
from training import run_dir as run_dir_mod
from training.reporting.metrics import MetricsLogger
from utils import OutputError


def snapshot(directory, skip=()):
    """Every file under directory (names and bytes), to prove a refused run touched nothing."""
    found = {}
    for root, _, files in os.walk(directory):
        for name in files:
            if name in skip:
                continue
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, directory)] = f.read()
    return found


LOCK = ("train.lock",)  # the lock's own file: a run that takes the lock writes its pid there


@pytest.mark.slow
def test_resume_with_nothing_to_do_keeps_the_only_checkpoint(tiny_corpus, run_root):
    corpus, data_dir = tiny_corpus
    run_dir = str(run_root / "out" / "run")
    cfg = write_config(run_root / "c.yaml", corpus, data_dir, run_root / "out", max_steps=500, save_interval=1000, warmup=1,
                       eval_interval=1000)
    code, _, err = start_and_signal(train_cmd("--config", cfg), run_dir, at_step=3, sig=signal.SIGINT)
    assert code == 0, err[-2000:]
    reached = max(r["step"] for r in read_metrics(run_dir))
    before = snapshot(run_dir, skip=LOCK)
    assert "checkpoint_interrupted.pth" in before and not any(n.startswith("checkpoint_step_") for n in before)

    for max_steps in (2, reached):  # fewer steps than reached, and exactly as many
        proc = run_ok(train_cmd("--config", cfg, "--resume", "--max_steps", str(max_steps)))
        assert "completed" not in proc.stdout and "wrote" not in proc.stdout, proc.stdout
        assert proc.stdout.strip().splitlines()[-1] == (f"nothing to do: {run_dir}/checkpoint_interrupted.pth is at step {reached} "
                                       f"and the run is {max_steps} steps long (--max_steps or --epochs); lengthen it to train on"), proc.stdout
        assert snapshot(run_dir, skip=LOCK) == before, "a run with nothing to do changed its directory"

    # A resume with work left writes its final checkpoint, and only then drops the interrupted one.
    proc = run_ok(train_cmd("--config", cfg, "--resume", "--max_steps", str(reached + 2)))
    names = os.listdir(run_dir)
    assert f"checkpoint_step_{reached + 2}.pth" in names and "checkpoint_interrupted.pth" not in names
    wrote = [line for line in proc.stdout.splitlines() if line.startswith("wrote ")][0]
    assert wrote == (f"wrote {run_dir}/ (best.pth, checkpoint_step_{reached + 2}.pth, metrics.jsonl, tokenizer.json, "
                     "config.yaml)"), wrote


@pytest.mark.slow
def test_a_second_run_on_a_live_directory_is_refused_before_touching_it(tiny_corpus, run_root):
    corpus, data_dir = tiny_corpus
    run_dir = str(run_root / "out" / "run")
    cfg = write_config(run_root / "c.yaml", corpus, data_dir, run_root / "out", max_steps=100000, save_interval=2,
                       eval_interval=1000)
    live = subprocess.Popen(train_cmd("--config", cfg), cwd=ROOT, env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while not os.path.exists(os.path.join(run_dir, "checkpoint_step_2.pth")) or len(read_metrics(run_dir)) < 3:
            assert live.poll() is None and time.time() < deadline, live.stderr.read()[-2000:]
            time.sleep(0.02)
        live.send_signal(signal.SIGSTOP)  # held busy: alive and holding its lock, writing nothing meanwhile
        time.sleep(0.2)
        before = snapshot(run_dir)
        for extra in ([], ["--force-fresh"], ["--resume"]):
            proc = run(train_cmd("--config", cfg, *extra))
            assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
            assert f"in use by another run (pid {live.pid})" in proc.stderr, proc.stderr
            assert snapshot(run_dir) == before, f"{extra}: the refused run changed the live run's files"
        live.send_signal(signal.SIGCONT)
        live.send_signal(signal.SIGINT)
        assert live.wait(timeout=120) == 0, live.stderr.read()[-2000:]
    finally:
        if live.poll() is None:
            live.kill()
            live.wait()
    steps = [r["step"] for r in read_metrics(run_dir)]
    assert steps == list(range(1, len(steps) + 1))  # one run's records, none interleaved
    run_ok(train_cmd("--config", cfg, "--resume", "--max_steps", str(steps[-1] + 1)))  # free once it has gone


@pytest.mark.slow
def test_ranks_exit_when_their_launcher_is_killed(tiny_corpus, run_root):
    corpus, data_dir = tiny_corpus
    run_dir = str(run_root / "out" / "run")
    cfg = write_config(run_root / "c.yaml", corpus, data_dir, run_root / "out", max_steps=100000, save_interval=1000,
                       eval_interval=1000)
    ranks = []
    launcher = subprocess.Popen(torchrun_cmd(2, "--config", cfg, "--ddp", "--device", "cpu"), cwd=ROOT, env=env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 240
        while len(read_metrics(run_dir)) < 3:
            assert launcher.poll() is None and time.time() < deadline, "torchrun ended before training"
            time.sleep(0.05)
        ranks += [p for p in descendants(launcher.pid) if p != launcher.pid]
        assert len(ranks) >= 2
        launcher.kill()  # torchrun alone: its ranks live in sessions of their own
        launcher.wait()
        deadline = time.time() + 120
        while any(_alive(p) for p in ranks) and time.time() < deadline:
            time.sleep(0.1)
        assert not any(_alive(p) for p in ranks), "ranks kept training after their launcher died"
    finally:  # orphans are no longer below the launcher: kill what was found there
        for p in set(descendants(launcher.pid)) | set(ranks):
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert os.path.exists(os.path.join(run_dir, "checkpoint_interrupted.pth"))


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def _metrics_file(path, steps):
    lines = [json.dumps({"split": "train", "step": s, "loss": 1.0 / s}) + "\n" for s in steps]
    lines.insert(3, '{"split": "train", "st\n')  # a line a kill cut short
    with open(path, "w") as f:
        f.writelines(lines)
    return lines


def test_metrics_trim_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    lines = _metrics_file(path, range(1, 11))
    original = path.read_bytes()
    real_replace, calls = os.replace, []

    def failing_replace(src, dst):  # the process dies (here: the disk fails) before the rename
        calls.append((src, dst))
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OutputError):
        run_dir_mod.truncate_metrics(str(path), 5)
    assert calls and calls[0][1] == str(path) and calls[0][0] != str(path), "the trim must go through a temporary"
    assert path.read_bytes() == original and os.listdir(tmp_path) == ["metrics.jsonl"]

    monkeypatch.setattr(os, "replace", real_replace)

    class FailsMidway:  # the disk fills up after two records are written
        def __init__(self, f):
            self.f, self.writes = f, 0

        def write(self, text):
            self.writes += 1
            if self.writes > 2:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(text)

        def writelines(self, lines):
            for line in lines:
                self.write(line)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda file, mode="r", *a, **k: FailsMidway(real_open(file, mode, *a, **k))
                        if "w" in mode else real_open(file, mode, *a, **k))
    with pytest.raises(OutputError):
        run_dir_mod.truncate_metrics(str(path), 5)
    monkeypatch.setattr(builtins, "open", real_open)
    assert path.read_bytes() == original and os.listdir(tmp_path) == ["metrics.jsonl"]

    run_dir_mod.truncate_metrics(str(path), 5)
    assert path.read_text() == "".join(line for line in lines[:6] if line.endswith("}\n"))
    assert os.listdir(tmp_path) == ["metrics.jsonl"]


def test_full_disk_while_appending_metrics_is_one_line(tmp_path):
    os.symlink("/dev/full", tmp_path / "metrics.jsonl")  # every write there fails with ENOSPC
    logger = MetricsLogger(str(tmp_path))
    with pytest.raises(OutputError) as e:
        logger.log({"split": "train", "step": 1, "loss": 2.0})
    assert "no space left" in str(e.value) and "metrics.jsonl" in str(e.value) and "\n" not in str(e.value)
    logger.close()  # nothing more to raise: the error was said once


def test_full_disk_while_writing_config_yaml_is_one_line(tmp_path, monkeypatch):
    from tests.helpers.tiny_models import tiny_tokenizer
    from training.config import build_config
    tokenizer = tiny_tokenizer(str(tmp_path))
    cfg = build_config(["--out_dir", str(tmp_path / "out")])
    real_open = builtins.open

    def full_disk_for_config(file, mode="r", *args, **kwargs):
        if "config.yaml" in os.path.basename(str(file)) and "w" in mode:
            return real_open("/dev/full", mode, *args, **kwargs)
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", full_disk_for_config)
    with pytest.raises(OutputError) as e:
        run_dir_mod.prepare_run_dir(str(tmp_path / "run"), cfg, tokenizer, None, 0, print)
    assert "no space left" in str(e.value) and "config.yaml" in str(e.value) and "\n" not in str(e.value)
