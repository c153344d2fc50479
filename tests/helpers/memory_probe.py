"""Test support: the measured peak memory of a real training step on CPU, in a process of its own.

    python tests/helpers/memory_probe.py <train.bin> <tokenizer.json> <train.py flags...>

Prints one JSON line: the peak resident memory of the third Trainer.train_step (the first two create
the optimizer state and warm the kernels) above the memory before the Trainer existed. Made robust
by: a fixed malloc mmap threshold (set by the caller's environment), so freed tensors go back to the
system instead of staying in a heap the RSS would keep counting; a warm-up step of a tiny model
before the baseline, so library code and thread pools touched by the first step are not charged to
the model; and /proc/self/clear_refs, which restarts the peak just before the measured step."""
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

from data.tokenizer import load_tokenizer  # noqa: E402
from model import LMConfig, Transformer  # noqa: E402
from training.parallelism import distributed  # noqa: E402
from training.config import build_config  # noqa: E402


def status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def warm_up(cfg: LMConfig, batch_size: int) -> None:
    """Two steps of a one-block model of the same shapes: the math libraries keep per-thread
    buffers sized by the largest matmul they have seen, which are no part of the model."""
    tiny = Transformer(LMConfig(**{**cfg.to_dict(), "n_layers": 1}))
    opt = torch.optim.AdamW(tiny.parameters(), fused=True)
    x = torch.randint(0, cfg.vocab_size, (batch_size, cfg.max_seq_len))
    for _ in range(2):
        tiny(x, labels=x, return_logits=False).loss_sum.backward()
        torch.nn.utils.clip_grad_norm_(tiny.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)


def main():
    train_bin, tokenizer, *flags = sys.argv[1:]
    cfg = build_config(["--data.train_bin", train_bin, "--data.tokenizer_path", tokenizer, "--max_steps", "3",
                        "--device", "cpu", "--dtype", "float32", "--grad_clip", "1.0", *flags])
    info, device = distributed.setup(False, "cpu")
    from training.loop import Trainer
    from training.plan import build_plan
    warm_up(cfg.model_config(load_tokenizer(tokenizer).vocab_size), cfg.train.batch_size)
    baseline = status_kib("VmRSS")
    trainer = Trainer(build_plan(cfg, info), info, device)
    trainer.model.train()
    for _ in range(2):
        trainer.train_step()
    before = status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    trainer.train_step()
    peak = status_kib("VmHWM")
    print(json.dumps({"peak_bytes": (peak - baseline) * 1024, "between_steps_bytes": (before - baseline) * 1024,
                      "params": trainer.raw_model.num_params()}))


if __name__ == "__main__":
    main()
