"""The parts of a run's state and the registries: each part saves and restores itself; a new
optimizer, schedule or parallel strategy is one entry."""
import types

import pytest
import torch

from training.optimization import optimizers as optim, schedule
from training.parallelism import strategies as parallel
from training.parallelism.distributed import DistInfo
from training.run_state import EarlyStopping, NaNGuard, Progress
from training.objectives import OBJECTIVES
from training.reporting.throughput import mfu


def test_nan_guard_counts_runs_and_totals_on_the_device():
    guard = NaNGuard(max_in_a_row=3, device="cpu")
    for finite in (True, False, False, True, False, False, False):
        guard.observe(torch.tensor(finite))
    assert (guard.in_a_row, guard.total, guard.should_stop) == (3, 5, True)
    copy = NaNGuard(3, "cpu")
    copy.load_state_dict(guard.state_dict())
    assert copy.state_dict() == {"in_a_row": 3, "total": 5}


def test_early_stopping_and_progress_round_trip():
    es = EarlyStopping(enabled=True, patience=2, min_delta=0.1)
    assert es.observe(5.0, 10) and not es.observe(4.95, 20) and not es.should_stop
    assert not es.observe(6.0, 30) and es.should_stop
    again = EarlyStopping(True, 2, 0.1)
    again.load_state_dict(es.state_dict())
    assert (again.best_loss, again.best_step, again.bad_evals) == (5.0, 10, 2)
    p = Progress()
    p.step, p.samples_seen = 7, 56
    q = Progress()
    q.load_state_dict(p.state_dict())
    assert (q.step, q.samples_seen) == (7, 56)


def test_a_new_schedule_is_one_entry(monkeypatch):
    monkeypatch.setitem(schedule.SCHEDULES, "step_half", lambda progress, power: 1.0 if progress < 0.5 else 0.5)
    lrs = [schedule.lr_at(s, base_lr=1.0, min_lr=0.0, warmup_steps=0, total_steps=10, kind="step_half")
           for s in range(10)]
    assert lrs == [1.0] * 5 + [0.5] * 5


def test_optimizer_registry_builds_each_entry_with_its_settings():
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 4))
    t = types.SimpleNamespace(weight_decay=0.0, decay_embeddings=False, learning_rate=1e-3, beta1=0.8, beta2=0.9,
                              adam_eps=1e-6, optimizer_type=None, muon_lr=0.02, muon_momentum=0.95, embedding_lr=None,
                              head_lr=None)
    for name, spec in optim.OPTIMIZERS.items():
        t.optimizer_type = name
        assert optim.check_settings(t) == ""
        opt = optim.build_optimizer(model, t, torch.device("cpu"))
        assert isinstance(opt, spec.cls) and opt.defaults["eps"] == 1e-6 and opt.defaults["betas"] == (0.8, 0.9)
    t.optimizer_type, t.weight_decay = "adam", 0.1
    assert "coupled L2" in optim.check_settings(t)


def test_parallelize_picks_the_strategy_and_clips():
    model = torch.nn.Linear(3, 3)
    cfg = types.SimpleNamespace(train=types.SimpleNamespace(parallel="ddp"))
    single = parallel.parallelize(model, cfg, DistInfo(), torch.device("cpu"))  # --ddp on one process
    assert isinstance(single, parallel.SingleProcess) and single.model is model
    model(torch.ones(2, 3)).sum().mul(100).backward()
    norm = single.clip_grad_norm(1.0)
    assert isinstance(norm, torch.Tensor) and float(norm) > 1.0
    clipped = torch.cat([p.grad.flatten() for p in model.parameters()]).norm()
    assert float(clipped) == pytest.approx(1.0, rel=1e-5)


def test_mfu_counts_only_the_masked_positions_of_a_masked_model():
    from tests.helpers.tiny_models import tiny_model
    m = tiny_model("mlm")
    assert OBJECTIVES["mlm"].head_fraction(0.15) == 0.15 and OBJECTIVES["clm"].head_fraction(0.15) == 1.0
    assert mfu(m, 1000.0, m.flops_per_token(0.15) * 4000.0, fraction=0.15) == pytest.approx(0.25)
    assert mfu(m, 1000.0, 0.0) != mfu(m, 1000.0, 0.0)  # unknown peak: NaN, never a made-up figure
