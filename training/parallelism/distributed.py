"""Process-group setup for torchrun. One code path: a single process is world size 1.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; multi-node runs use torchrun's own rendezvous."""
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from utils import ConfigError, check_device


@dataclass
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup(ddp_flag: bool, device_name: str, flag: str = "--ddp") -> tuple:
    """Return (DistInfo, device). Refuses the silent mistakes: --ddp (or --fsdp, named by flag)
    without torchrun (one process would think it is a whole cluster), several torchrun processes
    without --ddp (each would train its own copy), and a --device that --ddp cannot honour (it would
    fall back to CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    under_torchrun = "RANK" in os.environ and "LOCAL_RANK" in os.environ
    if ddp_flag and not under_torchrun:
        raise ConfigError(f"{flag} needs torchrun: torchrun --nproc_per_node=N train.py {flag} ...")
    if world > 1 and not ddp_flag:
        raise ConfigError(f"started by torchrun with {world} processes but without --ddp; add --ddp or --fsdp "
                          "(otherwise every process would train its own copy)")
    if not ddp_flag:
        return DistInfo(), check_device(device_name)
    info = DistInfo(int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), world)
    device = _rank_device(device_name, info.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                            timeout=datetime.timedelta(minutes=30))
    return info, device


def _rank_device(name: str, local_rank: int) -> torch.device:
    """Each rank's device under --ddp: cuda:<LOCAL_RANK> (nccl) or the CPU (gloo)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if name != "cuda":
        raise ConfigError(f"--device {name} with --ddp/--fsdp: each rank uses cuda:<LOCAL_RANK>, so pass --device cuda "
                          "(choose GPUs with CUDA_VISIBLE_DEVICES) or --device cpu")
    check_device("cuda")
    if local_rank >= torch.cuda.device_count():
        raise ConfigError(f"rank with LOCAL_RANK {local_rank} has no GPU: this machine has "
                          f"{torch.cuda.device_count()}; start at most that many processes per node")
    return torch.device("cuda", local_rank)


def teardown(info: DistInfo) -> None:
    if dist.is_initialized():  # also a one-process torchrun --ddp run
        dist.destroy_process_group()


def all_reduce_sum(values, info: DistInfo, device) -> list:
    """Sum a few Python numbers over ranks (float64, so counts stay exact)."""
    if not info.enabled:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def all_reduce_(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum a device tensor over ranks in place; the host does not wait for the result."""
    if info.enabled:
        dist.all_reduce(tensor)
    return tensor


def any_rank(flag: bool, info: DistInfo, device) -> bool:
    if not info.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def gather_objects(obj, info: DistInfo) -> list:
    if not info.enabled:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()
