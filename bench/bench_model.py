"""Training-step throughput (forward + backward + AdamW) of our causal and masked models, and of
transformers' LlamaForCausalLM / BertForMaskedLM of the same size when transformers is installed.

    python bench/bench_model.py [--steps 10] [--compile]

Ours and theirs alternate step by step in one process: this machine's speed drifts, so only ratios
from one run mean anything."""
import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from model import LMConfig, Transformer  # noqa: E402
from model.hf.llama import LLAMA  # noqa: E402
from training.reporting.throughput import mfu  # noqa: E402

VOCAB, DIM, LAYERS, HEADS, SEQ, BATCH = 8192, 256, 4, 4, 128, 32


def make_step(model, inputs, labels, fused):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused)

    def step():
        out = model(inputs, labels=labels, **({"return_logits": False} if isinstance(model, Transformer) else {}))
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def matmul_peak_flops(size=2048, repeats=5):
    """Achievable fp32 FLOP/s of this machine at the current thread count: the best of a few large
    square matmuls. MFU below is measured against it (a datasheet peak is not known here)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * size ** 3 / best


def _timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def keep_freed_memory():
    """Ask glibc to keep freed blocks instead of returning them to the OS: every step allocates the
    same large activations again, and fresh pages cost a page fault each (tens of thousands per
    step here). Returns False where the C library is not glibc."""
    import ctypes
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_mmap_threshold, 1 << 30)) and bool(libc.mallopt(m_trim_threshold, (1 << 31) - 1))


def theirs(objective):
    try:
        import transformers
    except ImportError:
        return None
    if objective == "clm":
        cfg = LMConfig(vocab_size=VOCAB, dim=DIM, n_layers=LAYERS, n_heads=HEADS, max_seq_len=SEQ)
        return transformers.LlamaForCausalLM(transformers.LlamaConfig.from_dict(LLAMA.config_to_hf(cfg), attn_implementation="sdpa"))
    cfg = transformers.BertConfig(vocab_size=VOCAB, hidden_size=DIM, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                                  intermediate_size=4 * DIM, max_position_embeddings=SEQ, attn_implementation="sdpa")
    return transformers.BertForMaskedLM(cfg)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--compile", action="store_true", help="torch.compile our blocks (cold compile takes a while)")
    p.add_argument("--keep_freed_memory", action="store_true",
                   help="glibc mallopt: reuse freed memory instead of page-faulting fresh memory every step")
    p.add_argument("--peak_tflops", type=float, default=0.0,
                   help="peak FLOP/s for MFU, in TFLOP/s (default: measure a large fp32 matmul)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    if a.keep_freed_memory and not keep_freed_memory():
        print("--keep_freed_memory needs glibc; running without it")
    torch.manual_seed(0)
    fused = True
    peak = a.peak_tflops * 1e12 if a.peak_tflops > 0 else matmul_peak_flops()
    print(f"torch {torch.__version__}, {a.threads} threads, fp32, vocab {VOCAB}, dim {DIM}, {LAYERS} layers, "
          f"{HEADS} heads, seq {SEQ}, batch {BATCH}, {'compiled' if a.compile else 'eager'}"
          f"{', keep_freed_memory' if a.keep_freed_memory else ''}; "
          f"peak for MFU {peak / 1e9:.0f} GFLOP/s{'' if a.peak_tflops > 0 else ' (measured fp32 matmul)'}")
    for objective in ("clm", "mlm"):
        ours = Transformer(LMConfig(vocab_size=VOCAB, dim=DIM, n_layers=LAYERS, n_heads=HEADS, max_seq_len=SEQ,
                                    objective=objective)).train()
        if a.compile:
            ours.compile_blocks()
        x = torch.randint(5, VOCAB, (BATCH, SEQ))
        if objective == "clm":
            y_ours, y_theirs = torch.roll(x, -1, 1), x          # HF shifts labels itself
        else:
            y_ours = torch.where(torch.rand(BATCH, SEQ) < 0.15, x, torch.full_like(x, -100))
            y_theirs = y_ours
        steps = {"ours": make_step(ours, x, y_ours, fused)}
        ref = theirs(objective)
        if ref is not None:
            ref.train()
            steps["theirs"] = make_step(ref, x, y_theirs, fused)
        for fn in steps.values():  # warm-up
            fn(), fn()
        times = {k: [] for k in steps}
        order = list(steps.items())
        for i in range(a.steps):
            # Flip who goes first every step: a step runs measurably faster or slower after the other.
            for name, fn in (order if i % 2 == 0 else order[::-1]):
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
        rates = {k: BATCH * SEQ / statistics.median(v) for k, v in times.items()}
        # MLM: vocabulary logits exist only at masked positions, so only those count as model FLOPs.
        head_fraction = 1.0 if objective == "clm" else float((y_ours != -100).float().mean())
        flops = ours.flops_per_token(head_fraction)
        line = (f"{objective}: ours {rates['ours']:8.0f} tok/s ({flops * rates['ours'] / 1e9:6.1f} GFLOP/s, "
                f"MFU {mfu(ours, rates['ours'], peak, fraction=head_fraction):.1%})")
        if "theirs" in rates:
            name = "LlamaForCausalLM" if objective == "clm" else "BertForMaskedLM"
            line += f" | {name} {rates['theirs']:8.0f} tok/s | ratio ours/theirs {rates['ours'] / rates['theirs']:.2f}x"
        print(line)


if __name__ == "__main__":
    main()
