"""Will it fit? Memory per rank and FLOPs per token of a training run, before running it.

    python estimate.py --config config.yaml --world_size 2 --strategy fsdp --dtype bf16 --batch_size 8 --seq_len 1024
    python estimate.py --model.dim 2048 --model.n_layers 24 --model.n_heads 16 --model.vocab_size 32000

Takes the same config and flags as train.py (--config, --batch_size, --dtype, --accumulation_steps,
--use_ema, --gradient_checkpointing, --model.*) plus --world_size, --strategy and --seq_len."""
import math
import os
import sys

from utils import DTYPE_BYTES, OneLineArgumentParser, run_cli

DTYPE_ALIASES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def parse(argv):
    from training.parallelism.strategies import STRATEGIES
    p = OneLineArgumentParser(prog="python estimate.py", description=__doc__.splitlines()[0])
    p.add_argument("--world_size", type=int, default=1, help="processes (GPUs) the run is spread over")
    p.add_argument("--strategy", choices=[s for s in STRATEGIES if s != "single"], default="ddp",
                   help="ddp: every rank holds everything; fsdp: weights, gradients and optimizer state sharded")
    p.add_argument("--seq_len", type=int, default=None, help="tokens per sample (model.max_seq_len)")
    own, rest = p.parse_known_args(argv)
    if own.world_size < 1:
        p.error(f"--world_size must be at least 1, got {own.world_size}")
    for i, arg in enumerate(rest):  # the short dtype names people type
        if i and rest[i - 1] == "--dtype" and arg in DTYPE_ALIASES:
            rest[i] = DTYPE_ALIASES[arg]
    if own.seq_len is not None:
        rest += ["--model.max_seq_len", str(own.seq_len)]
    return own, rest


def vocab_size(cfg) -> tuple:
    """The vocabulary the run would get, and where it comes from (the trainer pads a tokenizer's
    size to a multiple of 64)."""
    if "vocab_size" in cfg.model:
        return cfg.model["vocab_size"], "model.vocab_size"
    d = cfg.data
    if d.tokenizer_path and os.path.exists(d.tokenizer_path):
        from data.tokenizer import load_tokenizer
        return 64 * math.ceil(load_tokenizer(d.tokenizer_path).vocab_size / 64), d.tokenizer_path
    return 64 * math.ceil(d.vocab_size / 64), "data.vocab_size (the tokenizer a run would train)"


def main(argv=None) -> int:
    own, rest = parse(sys.argv[1:] if argv is None else argv)
    from training.config import build_config
    from model.losses import default_chunk_rows
    from training.parallelism.memory import estimate
    from training.objectives import objective_for

    cfg = build_config(rest, default_config="config.yaml" if os.path.exists("config.yaml") else None)
    t = cfg.train
    vocab, vocab_from = vocab_size(cfg)
    model_cfg = cfg.model_config(vocab)
    dtype = "bfloat16" if t.dtype == "auto" else t.dtype  # auto on a GPU with bf16 support
    strategy = own.strategy if own.world_size > 1 else "single"
    kw = dict(batch_size=t.batch_size, world_size=own.world_size, strategy=strategy,
              compute_bytes=DTYPE_BYTES[dtype], use_ema=t.use_ema, accumulation_steps=t.accumulation_steps,
              head_fraction=objective_for(model_cfg).head_fraction(cfg.data.mask_rate),
              chunk_rows=default_chunk_rows("cpu" if t.device == "cpu" else "cuda"))
    e = estimate(model_cfg, **kw)
    flipped = estimate(type(model_cfg)(**{**model_cfg.to_dict(),
                                          "gradient_checkpointing": not model_cfg.gradient_checkpointing}), **kw)
    ckpt = model_cfg.gradient_checkpointing
    tokens_per_step = t.batch_size * t.accumulation_steps * own.world_size * model_cfg.max_seq_len
    print(f"model: {e.params:,} parameters ({model_cfg.arch}, dim {model_cfg.dim}, {model_cfg.n_layers} layers, "
          f"vocabulary {vocab:,} from {vocab_from}, {model_cfg.max_seq_len} tokens per sample)")
    print(f"run: {strategy} on {own.world_size} rank(s), {dtype} autocast over fp32 weights, micro-batch "
          f"{t.batch_size} x {t.accumulation_steps} accumulation step(s), {t.optimizer_type}"
          f"{', EMA' if t.use_ema else ''}")
    print("per rank:")
    for name, value in e.rows():
        if value or name in ("weights", "gradients", "optimizer state", "activations"):
            print(f"  {name:22s} {gib(value):>12s}")
    for on, est in ((ckpt, e), (not ckpt, flipped)):
        print(f"  peak, gradient checkpointing {'on ' if on else 'off'} {gib(est.peak):>12s}  "
              f"(activations {gib(est.activations)})")
    print(f"training FLOPs: {e.flops_per_token / 1e9:.3f} GFLOP per token, "
          f"{e.flops_per_token * tokens_per_step / 1e12:.2f} TFLOP per optimizer step "
          f"({tokens_per_step:,} tokens)")
    print("not included: the framework's own memory (a CUDA context is about 0.5-1 GiB) and allocator "
          "fragmentation; leave 10-20% headroom")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
