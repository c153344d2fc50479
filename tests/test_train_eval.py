"""Validation during training: counted in samples (the same windows whatever the batch size), and
with --use_ema the raw weights scored beside the average, said when the average is worse."""
import pytest
import torch

from model.config import ConfigError
from tests.helpers.train_harness import write_config
from training.config import build_config, eval_samples_on_resume
from training.parallelism.distributed import DistInfo
from training.loop import Trainer
from training.plan import build_plan


def make_trainer(tiny_corpus, run_root, name, *argv, **train):
    corpus, data_dir = tiny_corpus
    path = write_config(run_root / f"{name}.yaml", corpus, data_dir, run_root / "out", run_name=name, **train)
    return Trainer(build_plan(build_config(["--config", path, *argv]), DistInfo()), DistInfo(), torch.device("cpu"))


def test_two_batch_sizes_score_the_same_samples(tiny_corpus, run_root):
    small = make_trainer(tiny_corpus, run_root, "b3", "--eval_samples", "10", batch_size=3)
    large = make_trainer(tiny_corpus, run_root, "b8", "--eval_samples", "10", batch_size=8)
    assert len(small.val_windows) > 16  # a real subset: the whole set would agree anyway
    a, b = small.run_evaluation(), large.run_evaluation()  # the same seed: the same initial weights
    assert a["val_tokens"] == b["val_tokens"] == 10 * small.seq_len
    assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-6)


def test_eval_batches_converts_with_the_first_runs_batch_size(tiny_corpus, run_root):
    first = make_trainer(tiny_corpus, run_root, "alias", batch_size=8, eval_batches=2)  # harness: eval_batches 2
    assert first.cfg.train.eval_samples == 16
    # The resumed run halves the batch: 2 batches would now be 8 windows, the first run scored 16.
    resumed = build_config(["--config", str(run_root / "alias.yaml"), "--batch_size", "4"])
    assert resumed.train.eval_samples == 8
    assert eval_samples_on_resume(resumed.train, first.cfg.to_dict()["train"]) == 16
    # and a real resume at that batch size keeps them, and says so
    first.save("checkpoint_step_0.pth")
    again = make_trainer(tiny_corpus, run_root, "alias", "--resume", "--batch_size", "4", batch_size=8, eval_batches=2)
    assert again.cfg.train.eval_samples == 16
    changed = build_config(["--config", str(run_root / "alias.yaml"), "--batch_size", "4", "--eval_batches", "3"])
    assert eval_samples_on_resume(changed.train, first.cfg.to_dict()["train"]) is None  # asked for another count


def test_eval_size_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  batch_size: 4\n  eval_batches: 5\n")
    assert build_config(["--config", str(path)]).train.eval_samples == 20
    assert build_config(["--config", str(path), "--eval_samples", "7"]).train.eval_samples == 7  # CLI beats YAML
    assert build_config([]).train.eval_samples == 640
    path.write_text("train:\n  batch_size: 4\n  eval_batches: 5\n  eval_samples: 30\n")  # a run dir's config.yaml
    cfg = build_config(["--config", str(path)])
    assert cfg.train.eval_samples == 30 and cfg.notes == ["eval_samples 30 rules over eval_batches 5"]
    with pytest.raises(ConfigError, match="train.eval_samples must be an integer >= 0"):
        build_config(["--eval_samples", "-1"])


def test_ema_worse_than_raw_is_said_in_the_evaluation_line(tiny_corpus, run_root):
    trainer = make_trainer(tiny_corpus, run_root, "ema", "--use_ema", "--eval_samples", "8")
    lines = []
    trainer.say = lines.append
    ema, trainer.ema = trainer.ema, None  # train the raw weights while the average stays at the start
    for _ in range(6):
        trainer.scheduler.step()
        trainer.train_step()
        trainer.progress.step += 1
    trainer.ema = ema
    metrics = trainer._evaluate_and_log()
    assert metrics["raw_val_loss"] < metrics["val_loss"] - 0.1
    line = next(x for x in lines if x.startswith("step 6: val_loss"))
    assert "raw_val_loss" in line and "the EMA weights score worse than the raw weights" in line
    # once the average has caught up the line carries no warning
    with torch.no_grad():
        for k in ema._unique:
            ema.shadow[k].copy_(trainer.raw_model.state_dict()[k].float())
    lines.clear()
    metrics = trainer._evaluate_and_log()
    assert metrics["raw_val_loss"] == pytest.approx(metrics["val_loss"])
    assert "worse" not in next(x for x in lines if x.startswith("step 6: val_loss"))
