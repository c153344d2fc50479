"""How the model is spread over processes, by name: `parallelize(model, cfg, info, device)` wraps
the model and gives the loop what differs between strategies (skipping gradient sync on
intermediate micro-steps, clipping the gradient norm). A new strategy (FSDP) is one new entry."""
import contextlib

import torch
from torch.nn.parallel import DistributedDataParallel


class SingleProcess:
    """One process, the model as it is."""

    name = "single"

    def __init__(self, model, device):
        self.model = model

    def no_sync(self, last_micro_step: bool):
        return contextlib.nullcontext()

    def clip_grad_norm(self, max_norm: float) -> torch.Tensor:
        """Clip to max_norm (inf: only measure); the total norm as a device tensor (no host sync)."""
        return torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)


class DataParallel(SingleProcess):
    """DDP: every rank holds the whole model; gradients are averaged in backward. Intermediate
    micro-steps of an accumulation skip the all-reduce (the last one carries the sum)."""

    name = "ddp"

    def __init__(self, model, device):
        self.raw = model
        self.model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def no_sync(self, last_micro_step: bool):
        return contextlib.nullcontext() if last_micro_step else self.model.no_sync()

    def clip_grad_norm(self, max_norm: float) -> torch.Tensor:
        return torch.nn.utils.clip_grad_norm_(self.raw.parameters(), max_norm)  # grads are already averaged


STRATEGIES = {"single": SingleProcess, "ddp": DataParallel}


def strategy_name(cfg, info) -> str:
    # torchrun --nproc_per_node=1 --ddp has nothing to synchronise: plain single-process training.
    return "ddp" if cfg.train.ddp and info.enabled else "single"


def parallelize(model, cfg, info, device):
    return STRATEGIES[strategy_name(cfg, info)](model, device)
