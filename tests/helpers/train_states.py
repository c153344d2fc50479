"""A small state in the training-checkpoint layout (model, optimizer, rng, progress), seeded, for the
checkpoint-format tests."""
import torch

import checkpoint as ckpt


def state(seed):
    g = torch.Generator().manual_seed(seed)
    return {"format": ckpt.FORMAT, "kind": "train", "step": seed, "model_config": {"dim": 4},
            "model": {"w": torch.randn(6, 4, generator=g), "b": torch.randn(4, generator=g)},
            "optimizer": {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(6, 4, generator=g)}},
                          "param_groups": [{"lr": 0.1, "params": [0]}]},
            "rng": [torch.arange(5, dtype=torch.uint8)], "progress": {"step": seed, "samples_seen": 8 * seed}}

