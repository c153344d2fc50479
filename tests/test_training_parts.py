"""Schedules at known steps, EMA against its closed form, the metrics log and the plot."""
import json
import math
import subprocess
import sys

import pytest
import torch

from training.ema import EMA
from training.metrics import MetricsLogger
from training.schedule import LRScheduler, lr_at, resolve_warmup

KW = dict(base_lr=1.0, min_lr=0.1, warmup_steps=10, total_steps=110)


def test_warmup_is_linear_to_base_lr():
    assert lr_at(0, kind="cosine", **KW) == pytest.approx(0.1)
    assert lr_at(4, kind="cosine", **KW) == pytest.approx(0.5)
    assert lr_at(9, kind="cosine", **KW) == pytest.approx(1.0)


@pytest.mark.parametrize("kind, mid, quarter", [
    ("cosine", 0.55, 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4))),
    ("linear", 0.55, 0.1 + 0.9 * 0.75),
    ("constant", 1.0, 1.0),
])
def test_decay_values(kind, mid, quarter):
    assert lr_at(10, kind=kind, **KW) == pytest.approx(1.0)
    assert lr_at(35, kind=kind, **KW) == pytest.approx(quarter)
    assert lr_at(60, kind=kind, **KW) == pytest.approx(mid)
    end = 1.0 if kind == "constant" else 0.1
    assert lr_at(110, kind=kind, **KW) == pytest.approx(end)
    assert lr_at(500, kind=kind, **KW) == pytest.approx(end)


def test_polynomial_power():
    assert lr_at(60, kind="polynomial", power=2.0, **KW) == pytest.approx(0.1 + 0.9 * 0.25)
    assert lr_at(60, kind="polynomial", power=1.0, **KW) == pytest.approx(lr_at(60, kind="linear", **KW))


def test_warmup_resolution():
    assert resolve_warmup(0.1, 200) == 20 and resolve_warmup(30, 200) == 30 and resolve_warmup(0, 5) == 0
    with pytest.raises(ValueError, match="shorter than the run"):
        resolve_warmup(200, 200)
    with pytest.raises(ValueError, match="unknown lr schedule"):
        lr_at(0, kind="step", **KW)


def test_scheduler_sets_groups_and_round_trips():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=5.0)
    sched = LRScheduler(opt, kind="linear", **KW)
    for _ in range(12):
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(lr_at(11, kind="linear", **KW))
    other = LRScheduler(opt, kind="linear", **KW)
    other.load_state_dict(sched.state_dict())
    assert other.step() == pytest.approx(lr_at(12, kind="linear", **KW))


def test_ema_closed_form_and_swap():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    w0 = model.weight.detach().clone()
    ema = EMA(model, decay=0.9)
    with torch.no_grad():
        model.weight.fill_(1.0)
    for _ in range(5):
        ema.update(model)
    expected = 0.9 ** 5 * w0 + (1 - 0.9 ** 5) * torch.ones_like(w0)
    assert torch.allclose(ema.state_dict()["weight"], expected, atol=1e-6)
    with ema.swap_into(model):
        assert torch.allclose(model.weight, expected, atol=1e-6)
    assert torch.equal(model.weight, torch.ones_like(w0))
    fresh = EMA(torch.nn.Linear(3, 2), decay=0.9)
    fresh.load_state_dict(ema.state_dict())
    assert torch.equal(fresh.state_dict()["weight"], ema.state_dict()["weight"])


def test_metrics_log_and_disabled_rank(tmp_path):
    log = MetricsLogger(str(tmp_path / "run"), tensorboard=False)
    log.log({"split": "train", "step": 1, "loss": 2.5, "lr": 1e-3})
    log.log({"split": "eval", "step": 1, "val_loss": float("nan")})
    log.close()
    lines = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert lines[0] == {"split": "train", "step": 1, "loss": 2.5, "lr": 1e-3}
    assert math.isnan(lines[1]["val_loss"])
    MetricsLogger(str(tmp_path / "rank1"), enabled=False).log({"step": 1})
    assert not (tmp_path / "rank1").exists()


def test_missing_optional_sinks_do_not_stop_a_run(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)                     # import wandb fails
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)   # and tensorboard too
    log = MetricsLogger(str(tmp_path), tensorboard=True, wandb=True)
    log.log({"split": "train", "step": 1, "loss": 1.0})
    log.close()
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 1


def test_plot_writes_png_and_cli_errors(tmp_path):
    pytest.importorskip("matplotlib")
    from training.plot import plot_run
    with open(tmp_path / "metrics.jsonl", "w") as f:
        for s in range(1, 21):
            f.write(json.dumps({"split": "train", "step": s, "loss": 5 - s / 10, "lr": 1e-3}) + "\n")
        f.write(json.dumps({"split": "eval", "step": 20, "val_loss": 3.0}) + "\n")
    path = plot_run(str(tmp_path))
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    proc = subprocess.run([sys.executable, "-m", "training.plot", str(tmp_path / "nope")], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
