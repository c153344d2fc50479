"""Training throughput: tokens/s, MFU and peak memory of full optimizer steps.

    python bench/bench_train.py                       # the default model and the 'small' preset, CPU fp32
    python bench/bench_train.py --device cuda --dtype bfloat16 --compile

Uses random token ids (throughput does not depend on the text) and the same pieces as train.py:
the model, the optimizer builder and autocast."""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from model import LMConfig, Transformer  # noqa: E402
from training.config import TrainConfig  # noqa: E402
from training.optimization.optimizers import build_optimizer  # noqa: E402
from training.objectives import OBJECTIVES  # noqa: E402
from training.reporting.throughput import mfu, peak_flops  # noqa: E402
from utils import peak_rss_mb, resolve_device, resolve_dtype  # noqa: E402


def model_config(name: str, objective: str) -> LMConfig:
    """'default' is the model of config.yaml; other names are LMConfig presets."""
    if name == "default":
        import yaml
        with open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "config.yaml")) as f:
            return LMConfig(**{**yaml.safe_load(f)["model"], "vocab_size": 4096, "objective": objective})
    return LMConfig.preset(name, objective=objective)


def bench(name, batch, steps, device, dtype, compile_blocks, objective):
    cfg = model_config(name, objective)
    model = Transformer(cfg).to(device)
    if compile_blocks:
        model.compile_blocks()
    opt = build_optimizer(model, TrainConfig(), device)
    seq = cfg.max_seq_len
    x = torch.randint(5, cfg.vocab_size, (batch, seq), device=device)
    y = torch.randint(5, cfg.vocab_size, (batch, seq), device=device)
    if objective == "mlm":  # 15% of positions carry a label, like a masked-LM batch
        y = torch.where(torch.rand(batch, seq, device=device) < 0.15, y, torch.full_like(y, -100))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            out = model(x, labels=y, return_logits=False)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3):  # warm-up (and compilation)
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    tok_s = batch * seq * steps / elapsed
    utilisation = mfu(model, tok_s, peak_flops(device), fraction=OBJECTIVES[objective].head_fraction(0.15))
    mem = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else peak_rss_mb()
    print(f"{name:8s} {objective} params {model.num_params() / 1e6:7.2f}M  batch {batch:3d} x {seq:4d}  "
          f"{tok_s:10.0f} tok/s  MFU {utilisation * 100:5.1f}%  peak mem {mem:8.0f} MiB  ({elapsed / steps * 1000:.0f} ms/step)")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default="default,small")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--batch", type=int, default=0, help="0: 16 on CPU, 32 on GPU")
    p.add_argument("--steps", type=int, default=0, help="0: 5 on CPU, 30 on GPU")
    p.add_argument("--objective", default="clm", choices=["clm", "mlm"])
    p.add_argument("--compile", action="store_true")
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args()
    device = resolve_device(a.device)
    dtype = resolve_dtype(a.dtype, device)
    if a.threads:
        torch.set_num_threads(a.threads)
    gpu = device.type == "cuda"
    print(f"device {torch.cuda.get_device_name(device) if gpu else 'cpu'} ({torch.get_num_threads()} threads), "
          f"dtype {dtype}, torch {torch.__version__}, compile {a.compile}")
    for name in a.configs.split(","):
        bench(name, a.batch or (32 if gpu else 16), a.steps or (30 if gpu else 5), device, dtype, a.compile,
              a.objective)


if __name__ == "__main__":
    main()
