"""How the model is spread over processes, by name: `parallelize(model, cfg, info, device)` wraps
the model and gives the loop what differs between strategies (skipping gradient sync on
intermediate micro-steps, clipping the gradient norm). A new strategy is one new entry."""
import contextlib

import torch
from torch.nn.parallel import DistributedDataParallel

from utils import ConfigError, resolve_dtype


class SingleProcess:
    """One process, the model as it is."""

    name = "single"
    sharded = False  # True: each rank holds only a shard of the state (checkpoints are sharded too)

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


class FullyShardedDataParallel(SingleProcess):
    """FSDP2 (fully_shard): each block, then the whole model (embeddings, final norm, head), is
    sharded over the ranks; parameters, gradients, optimizer state and EMA live as DTensor shards.
    A block's parameters are gathered for its forward and backward and freed after; gradients are
    reduce-scattered (averaged, in float32) on the last micro-step only. Under --dtype bfloat16 the
    gathered parameters are cast to it (the shards stay float32); float16 is refused."""

    name = "fsdp"
    sharded = True  # checkpoints go through torch.distributed.checkpoint, one shard per rank

    def __init__(self, model, device, dtype=torch.float32):
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        if dtype == torch.float16:  # GradScaler's overflow check would see only this rank's shards
            raise ConfigError("--fsdp trains in float32 or bfloat16: float16 needs a loss scaler whose overflow "
                              "check spans every rank's shards; pass --dtype bfloat16 (or --ddp for float16)")
        policy = MixedPrecisionPolicy(param_dtype=None if dtype == torch.float32 else dtype,
                                      reduce_dtype=torch.float32)
        for layer in model.layers:
            fully_shard(layer, mp_policy=policy)
        fully_shard(model, mp_policy=policy)  # in place: the model's class now also is an FSDPModule
        self.model = model

    def no_sync(self, last_micro_step: bool):
        self.model.set_requires_gradient_sync(last_micro_step)
        return contextlib.nullcontext()

    def clip_grad_norm(self, max_norm: float) -> torch.Tensor:
        # Each rank holds a shard of every gradient: the norm of the shards is a partial sum that
        # full_tensor() completes over the ranks before every shard is scaled by the same factor.
        from torch.distributed.tensor import DTensor

        params = [p for p in self.model.parameters() if p.grad is not None]
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        if isinstance(norm, DTensor):
            norm = norm.full_tensor()
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
        return norm


STRATEGIES = {"single": SingleProcess, "ddp": DataParallel, "fsdp": FullyShardedDataParallel}


def strategy_name(cfg, info) -> str:
    # torchrun --nproc_per_node=1 --ddp (or --fsdp) has nothing to synchronise or shard: plain
    # single-process training.
    if not info.enabled:
        return "single"
    return cfg.train.parallel


def parallelize(model, cfg, info, device):
    name = strategy_name(cfg, info)
    if name == "fsdp":
        return FullyShardedDataParallel(model, device, resolve_dtype(cfg.train.dtype, device))
    return STRATEGIES[name](model, device)
