"""The run plan: the settings as the run uses them, worked out without writing to the config."""
import copy

import torch

from tests.helpers.train_harness import write_config
from training.config import build_config
from training.parallelism.distributed import DistInfo
from training.loop import Trainer
from training.plan import build_plan


def test_the_plan_resolves_the_model_and_leaves_the_config_as_given(tiny_corpus, run_root):
    corpus, data_dir = tiny_corpus
    path = write_config(run_root / "plan.yaml", corpus, data_dir, run_root / "out", run_name="plan", max_steps=0,
                        epochs=2)
    cfg = build_config(["--config", path])
    given = copy.deepcopy(cfg.to_dict())
    plan = build_plan(cfg, DistInfo())
    assert cfg.to_dict() == given  # nothing written back
    assert plan.config.model["vocab_size"] % 64 == 0 and plan.config.model["pad_token_id"] == plan.tokenizer.pad_id
    assert plan.model_config.to_dict() == plan.config.model_config(plan.tokenizer.vocab_size).to_dict()
    assert plan.global_batch == 8 and plan.steps_per_epoch == len(plan.train_windows) // 8
    assert plan.total_steps == 2 * plan.steps_per_epoch and plan.seq_len == 32
    trainer = Trainer(plan, DistInfo(), torch.device("cpu"))
    assert trainer.cfg is plan.config and cfg.to_dict() == given
