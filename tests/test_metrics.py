"""metrics.jsonl records, disabled ranks, optional sinks (present, missing, failing) and the run plot."""
import json
import math
import os
import subprocess
import sys
import types

import numpy as np
import pytest
import torch

from training.reporting.metrics import MetricsLogger
from training.reporting.plot import main as plot_main
from training.reporting.plot import plot_run, read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _lines(path):
    return [json.loads(l) for l in path.read_text().splitlines()]


def test_records_are_written_flushed_and_readable(tmp_path):
    log = MetricsLogger(str(tmp_path / "run"))
    log.log({"split": "train", "step": 1, "loss": 2.5, "lr": 1e-3})
    # flushed per call: readable before close
    assert _lines(tmp_path / "run" / "metrics.jsonl") == [{"split": "train", "step": 1, "loss": 2.5, "lr": 1e-3}]
    log.log({"split": "eval", "step": 1, "val_loss": torch.tensor(3.25), "n": np.int64(7),
             "acc": np.float32(0.5), "bad": float("inf")})
    log.close()
    log.log({"split": "train", "step": 2, "loss": 1.0})  # after close: ignored, not a crash
    text = (tmp_path / "run" / "metrics.jsonl").read_text()
    assert '"val_loss": 3.25' in text and '"n": 7' in text and '"acc": 0.5' in text  # plain numbers
    records = _lines(tmp_path / "run" / "metrics.jsonl")
    assert len(records) == 2 and records[1]["split"] == "eval" and math.isinf(records[1]["bad"])


def test_a_resumed_run_appends(tmp_path):
    with MetricsLogger(str(tmp_path)) as log:
        log.log({"split": "train", "step": 1, "loss": 2.0})
    with MetricsLogger(str(tmp_path)) as log:
        log.log({"split": "train", "step": 2, "loss": 1.5})
    assert [r["step"] for r in _lines(tmp_path / "metrics.jsonl")] == [1, 2]


def test_disabled_logger_creates_nothing(tmp_path):
    log = MetricsLogger(str(tmp_path / "rank1"), enabled=False, tensorboard=True, wandb=True)
    log.log({"split": "train", "step": 1, "loss": 1.0})
    log.close()
    assert not (tmp_path / "rank1").exists()


def test_missing_optional_sinks_warn_once_and_do_not_stop_a_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)                     # import wandb fails
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)   # and tensorboard too
    log = MetricsLogger(str(tmp_path), tensorboard=True, wandb=True)
    log.log({"split": "train", "step": 1, "loss": 1.0})
    log.close()
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "TensorBoard logging is off" in err[0] and "wandb logging is off" in err[1]
    assert _lines(tmp_path / "metrics.jsonl") == [{"split": "train", "step": 1, "loss": 1.0}]


class _FakeWandb(types.ModuleType):
    def __init__(self, fail_init=False):
        super().__init__("wandb")
        self.fail_init, self.init_kwargs, self.logged, self.finished = fail_init, None, [], False

    def Settings(self, **kwargs):
        return kwargs

    def init(self, **kwargs):
        if self.fail_init:
            raise ConnectionError("no network\nsecond line")
        self.init_kwargs = kwargs
        return self

    def log(self, scalars, step):
        self.logged.append((step, scalars))

    def finish(self):
        self.finished = True


def _fake_tensorboard(calls):
    module = types.ModuleType("torch.utils.tensorboard")

    class SummaryWriter:
        def __init__(self, log_dir, **kwargs):
            calls.append(("dir", log_dir, *kwargs.items()))

        def add_scalar(self, tag, value, step):
            calls.append((tag, value, step))

        def close(self):
            calls.append(("closed",))

    module.SummaryWriter = SummaryWriter
    return module


def test_scalars_reach_tensorboard_and_offline_wandb(tmp_path, monkeypatch):
    calls, wandb = [], _FakeWandb()
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", _fake_tensorboard(calls))
    monkeypatch.setitem(sys.modules, "wandb", wandb)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    log = MetricsLogger(str(tmp_path), tensorboard=True, wandb=True, wandb_project="p", wandb_run_name="r",
                        config={"train": {"lr": 0.1}})
    log.log({"split": "train", "step": 3, "loss": 2.0, "lr": 0.1, "note": "text", "finite": True})
    log.log({"split": "eval", "step": 3, "val_loss": 2.5})
    log.close()
    assert wandb.init_kwargs["mode"] == "offline"  # never waits on a network by default
    assert {k: wandb.init_kwargs[k] for k in ("project", "name", "config", "dir")} == \
        {"project": "p", "name": "r", "config": {"train": {"lr": 0.1}}, "dir": str(tmp_path)}
    assert wandb.logged == [(3, {"train/loss": 2.0, "train/lr": 0.1}), (3, {"eval/val_loss": 2.5})]
    assert wandb.finished
    assert calls == [("dir", os.path.join(str(tmp_path), "tensorboard")), ("train/loss", 2.0, 3),
                     ("train/lr", 0.1, 3), ("eval/val_loss", 2.5, 3), ("closed",)]


def test_a_resume_purges_replayed_steps_and_continues_the_wandb_run(tmp_path, monkeypatch):
    """start_step is where the run continues: TensorBoard purges what an earlier writer logged after
    it, and wandb gets the id the run directory keeps (a fresh start, step 0, draws a new one)."""
    calls = []
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", _fake_tensorboard(calls))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    inits = []
    for start in (0, 5, 0):
        wandb = _FakeWandb()
        monkeypatch.setitem(sys.modules, "wandb", wandb)
        MetricsLogger(str(tmp_path), tensorboard=True, wandb=True, start_step=start).close()
        inits.append(wandb.init_kwargs)
    tb_dir = os.path.join(str(tmp_path), "tensorboard")
    assert [c for c in calls if c[0] == "dir"] == [("dir", tb_dir, ("purge_step", 1)), ("dir", tb_dir, ("purge_step", 6)),
                                                   ("dir", tb_dir, ("purge_step", 1))]
    first, resumed, fresh = inits
    assert first["id"].isalnum() and len(first["id"]) == 8
    assert resumed["id"] == first["id"] and resumed["resume"] == "allow"
    assert fresh["id"] != first["id"] and (tmp_path / "wandb_run_id").read_text().strip() == fresh["id"]


def test_tensorboard_reader_sees_each_step_once_after_a_resume(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    with MetricsLogger(str(tmp_path), tensorboard=True, start_step=0) as log:
        for step in range(1, 11):  # killed after step 10; the last checkpoint was at step 6
            log.log({"split": "train", "step": step, "loss": float(step)})
    with MetricsLogger(str(tmp_path), tensorboard=True, start_step=6) as log:
        for step in range(7, 13):
            log.log({"split": "train", "step": step, "loss": 100.0 + step})
    reader = EventAccumulator(str(tmp_path / "tensorboard"))
    reader.Reload()
    events = [(e.step, e.value) for e in reader.Scalars("train/loss")]
    assert events == [(s, float(s)) for s in range(1, 7)] + [(s, 100.0 + s) for s in range(7, 13)]


def test_wandb_offline_resume_keeps_one_run(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    for start, steps in ((0, range(1, 5)), (2, range(3, 7))):
        with MetricsLogger(str(tmp_path), wandb=True, start_step=start) as log:
            assert log.wandb is not None
            for step in steps:
                log.log({"split": "train", "step": step, "loss": float(step)})
    run_id = (tmp_path / "wandb_run_id").read_text().strip()
    runs = sorted(p.name for p in (tmp_path / "wandb").iterdir() if p.name.startswith("offline-run-"))
    assert len(runs) == 2 and all(name.endswith("-" + run_id) for name in runs)  # one run id, synced as one


def test_wandb_mode_from_the_environment_wins(tmp_path, monkeypatch):
    wandb = _FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", wandb)
    monkeypatch.setenv("WANDB_MODE", "online")
    MetricsLogger(str(tmp_path), wandb=True).close()
    assert "mode" not in wandb.init_kwargs  # wandb reads WANDB_MODE itself


def test_failing_wandb_init_is_one_warning_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", _FakeWandb(fail_init=True))
    log = MetricsLogger(str(tmp_path), wandb=True)
    log.log({"split": "train", "step": 1, "loss": 1.0})
    log.close()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("warning: wandb logging is off (ConnectionError: no network")
    assert len(_lines(tmp_path / "metrics.jsonl")) == 1


def _synthetic_run(run_dir, n=30):
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "metrics.jsonl"), "w") as f:
        for s in range(1, n + 1):
            f.write(json.dumps({"split": "train", "step": s, "loss": 5 - s / 10, "lr": 1e-3 * min(1, s / 5),
                                "grad_norm": 2.0 / s}) + "\n")
            if s % 10 == 0:
                f.write(json.dumps({"split": "eval", "step": s, "val_loss": 5.2 - s / 10, "val_bpb": 2.0}) + "\n")
        f.write('{"split": "train", "step": 31, "lo')  # a line cut short by a kill


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    run = str(tmp_path / "run")
    _synthetic_run(run)
    assert len(read_metrics(run)) == 33  # the cut line is skipped
    path = plot_run(run)
    assert path == os.path.join(run, "training_curves.png")
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (800, 750)  # 8 x 7.5 inches at 100 dpi


def test_plot_draws_the_gradient_norm(tmp_path):
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    from training.reporting.plot import draw_run
    run = str(tmp_path / "run")
    _synthetic_run(run)
    fig = Figure()
    draw_run(fig, read_metrics(run))
    panels = {ax.get_ylabel(): ax for ax in fig.axes}
    assert set(panels) == {"loss (nats/token)", "learning rate", "gradient norm"}
    (line,) = panels["gradient norm"].get_lines()
    assert list(line.get_xdata()) == list(range(1, 31)) and line.get_ydata()[3] == pytest.approx(0.5)


def test_plot_without_matplotlib_returns_none(tmp_path, monkeypatch, capsys):
    _synthetic_run(str(tmp_path))
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    assert plot_run(str(tmp_path)) is None
    assert capsys.readouterr().out == "info: no training_curves.png: matplotlib is not installed (pip install matplotlib)\n"
    assert plot_main([str(tmp_path)]) == 1
    assert not (tmp_path / "training_curves.png").exists()


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "training.reporting.plot", *args], capture_output=True, text=True, cwd=ROOT)


@pytest.mark.slow
def test_plot_cli(tmp_path):
    pytest.importorskip("matplotlib")
    _synthetic_run(str(tmp_path / "run"))
    ok = _cli(str(tmp_path / "run"))
    assert ok.returncode == 0 and ok.stdout == os.path.join(str(tmp_path / "run"), "training_curves.png") + "\n"
    assert os.path.getsize(ok.stdout.strip()) > 0
    missing = _cli(str(tmp_path / "missing"))
    assert missing.returncode == 2 and missing.stdout == "" and missing.stderr.count("\n") == 1
    assert "is not a directory" in missing.stderr


@pytest.mark.parametrize("setup, message", [
    (None, "is not a directory"),
    ("", "has no metrics.jsonl"),
    ('{"split": "eval", "step": 1, "val_bpb": 2.0}\n', "holds no loss records yet"),
])
def test_plot_cli_errors_are_one_line_and_exit_2(tmp_path, capsys, setup, message):
    run = tmp_path / "run"
    if setup is not None:
        run.mkdir()
        if setup:
            (run / "metrics.jsonl").write_text(setup)
    assert plot_main([str(run)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
