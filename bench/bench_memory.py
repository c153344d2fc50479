"""Peak memory per rank of DDP and FSDP (--fsdp) training steps, at world size 1 and 2, on CPU (gloo).

    python bench/bench_memory.py                        # dim 512, 8 layers, vocab 8192 (~29M parameters)
    python bench/bench_memory.py --dim 256 --layers 4 --steps 2

Each rank builds the model, wraps it with the same strategy train.py uses (training/parallelism/strategies.py),
builds the optimizer and takes a few full steps (forward, backward, clip, AdamW) on random tokens.
Printed per rank: the bytes of the state it holds (its parameters, gradients and AdamW moments:
local shards under FSDP), its resident memory before the model is built (Python, torch, gloo), after
the last step, and at its peak during the steps (the kernel's high-water mark, reset after set-up,
so the full model every rank builds before sharding is not counted). glibc keeps freed memory
mapped as its allocation threshold grows, which inflates peaks; MALLOC_MMAP_THRESHOLD_=131072 fixes
the threshold so freed tensors go back to the system at once and the peak follows live memory."""
import argparse
import ctypes
import gc
import os
import socket
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from model import LMConfig, Transformer  # noqa: E402
from training.config import TrainConfig  # noqa: E402
from training.optimization.optimizers import build_optimizer  # noqa: E402
from training.parallelism.strategies import DataParallel, FullyShardedDataParallel  # noqa: E402

MiB = 2 ** 20


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed set-up memory back before measuring
    except OSError:
        pass
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # Linux: reset VmHWM (peak RSS) to the current RSS


def _local_bytes(tensors) -> int:
    total = 0
    for t in tensors:
        t = t.to_local() if hasattr(t, "to_local") else t
        total += t.numel() * t.element_size()
    return total


def rank_main(rank, world, port, strategy, args, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    before = _status_kb("VmRSS") * 1024
    torch.manual_seed(0)
    cfg = LMConfig(vocab_size=args.vocab, dim=args.dim, n_layers=args.layers, n_heads=args.dim // 64,
                   max_seq_len=args.seq)
    model = Transformer(cfg)
    device = torch.device("cpu")
    parallel = DataParallel(model, device) if strategy == "ddp" else FullyShardedDataParallel(model, device)
    optimizer = build_optimizer(model, TrainConfig(), device)
    x = torch.randint(0, args.vocab, (args.batch, args.seq))
    _reset_peak()
    for _ in range(args.steps):
        out = parallel.model(x, labels=x, return_logits=False)
        (out.loss_sum / x.numel()).backward()
        parallel.clip_grad_norm(1.0)
        state = _local_bytes(list(model.parameters()) + [p.grad for p in model.parameters() if p.grad is not None]
                             + [v for s in optimizer.state.values() for v in s.values() if v.dim() > 0])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    results[(strategy, world, rank)] = (state, before, _status_kb("VmRSS") * 1024, _status_kb("VmHWM") * 1024)
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--batch", type=int, default=4, help="per rank")
    p.add_argument("--steps", type=int, default=2)
    args = p.parse_args()
    n = Transformer(LMConfig(vocab_size=args.vocab, dim=args.dim, n_layers=args.layers, n_heads=args.dim // 64,
                             max_seq_len=args.seq)).num_params()
    print(f"{n / 1e6:.1f}M parameters, batch {args.batch} x {args.seq} per rank, fp32 AdamW, {args.steps} steps, "
          f"torch {torch.__version__}, {os.cpu_count()} CPUs")
    print(f"MALLOC_MMAP_THRESHOLD_={os.environ.get('MALLOC_MMAP_THRESHOLD_', 'unset (glibc default)')}")
    print("| strategy | world size | state per rank (params + grads + AdamW) | RSS before the model | "
          "RSS after the steps | peak RSS during the steps |")
    print("|---|---|---|---|---|---|")
    with mp.Manager() as manager:
        results = manager.dict()
        for strategy in ("ddp", "fsdp"):
            for world in (1, 2):
                mp.spawn(rank_main, args=(world, free_port(), strategy, args, results), nprocs=world)
                rows = [results[(strategy, world, r)] for r in range(world)]
                cells = [" / ".join(f"{row[i] / MiB:,.0f}" for row in rows) + " MiB" for i in range(4)]
                print(f"| {strategy} | {world} | {' | '.join(cells)} |", flush=True)


if __name__ == "__main__":
    main()
