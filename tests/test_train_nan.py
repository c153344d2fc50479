"""Non-finite losses: each skips its update and is counted; max_nan_steps in a row stop the run with a
checkpoint and a message naming the step."""
import math
import os

import pytest
import torch

from tests.helpers.train_harness import read_metrics, write_config
from training.config import build_config
from training.parallelism.distributed import DistInfo
from training.loop import Trainer, TrainingStopped
from training.plan import build_plan


class PoisonAt(torch.nn.Module):
    """Wraps the model and turns the loss into NaN on chosen calls (1-based micro-step count)."""

    def __init__(self, model, calls):
        super().__init__()
        self.inner, self.calls, self.count = model, set(calls), 0

    def forward(self, *args, **kwargs):
        out = self.inner(*args, **kwargs)
        self.count += 1
        if self.count in self.calls:
            out.loss_sum = out.loss_sum * float("nan")
        return out


def make_trainer(tiny_corpus, run_root, **train):
    corpus, data_dir = tiny_corpus
    path = write_config(run_root / "nan.yaml", corpus, data_dir, run_root / "out", run_name="nan", **train)
    return Trainer(build_plan(build_config(["--config", path]), DistInfo()), DistInfo(), torch.device("cpu"))


def test_nan_steps_are_skipped_and_counted(tiny_corpus, run_root):
    trainer = make_trainer(tiny_corpus, run_root, max_steps=6, max_nan_steps=3)
    trainer.model = PoisonAt(trainer.raw_model, calls={2, 4})
    summary = trainer.train()
    assert summary["outcome"] == "completed" and summary["skipped_steps"] == 2
    records = {r["step"]: r for r in read_metrics(str(run_root / "out" / "nan"))}
    assert math.isnan(records[2]["loss"]) and math.isnan(records[4]["loss"])
    assert all(math.isfinite(records[s]["loss"]) for s in (1, 3, 5, 6))
    assert records[6]["skipped_steps"] == 2


def test_nan_update_leaves_weights_unchanged(tiny_corpus, run_root):
    trainer = make_trainer(tiny_corpus, run_root, max_steps=3, max_nan_steps=3)
    trainer.model = PoisonAt(trainer.raw_model, calls={1})
    initial = {k: v.clone() for k, v in trainer.raw_model.state_dict().items()}
    trainer.scheduler.step()
    loss, _, finite = trainer.train_step()
    assert not finite and math.isnan(loss)
    for k, v in trainer.raw_model.state_dict().items():
        assert torch.equal(v, initial[k]), k


def test_repeated_nans_stop_with_checkpoint_naming_the_step(tiny_corpus, run_root):
    trainer = make_trainer(tiny_corpus, run_root, max_steps=10, max_nan_steps=3)
    trainer.model = PoisonAt(trainer.raw_model, calls={3, 4, 5})
    with pytest.raises(TrainingStopped, match="stopped at step 5: 3 non-finite losses in a row"):
        trainer.train()
    assert os.path.exists(run_root / "out" / "nan" / "checkpoint_step_5.pth")
