"""What model.document_mask costs a training step: the default model (config.yaml) trained on the
same packed windows with and without document_ids, the two alternating step by step so that a
machine shared with other work slows both alike.

    python bench/bench_document_mask.py                                   # clm, sample corpus windows
    python bench/bench_document_mask.py --objective mlm --steps 10 --batch 8

Windows come from a processed .bin (real document boundaries from its .idx); without one, from
random tokens cut into documents of --doc_len tokens on average."""
import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.bench_train import model_config  # noqa: E402
from data.samples.documents import DocumentIndex, draw_prefix  # noqa: E402
from data.samples.token_bin import TokenBin  # noqa: E402
from model import Transformer  # noqa: E402
from training.config import TrainConfig  # noqa: E402
from training.optimization.optimizers import build_optimizer  # noqa: E402


def windows(path, batch, seq, vocab, doc_len, rng):
    """(tokens [B, T + 1], document ids [B, T]) from a .bin file, or random."""
    if path and os.path.exists(path):
        token_bin = TokenBin(path)
        tokens, index = token_bin.tokens, DocumentIndex(token_bin.doc_offsets())
    else:
        tokens = rng.integers(5, vocab, 200_000)
        lengths = rng.geometric(1.0 / doc_len, 200_000 // doc_len * 2)
        index = DocumentIndex(np.concatenate([[0], np.cumsum(lengths)]))
    starts = rng.integers(0, (len(tokens) - seq - 1) // seq, batch) * seq
    ids = torch.stack([torch.from_numpy(tokens[s:s + seq + 1].astype(np.int64)) for s in starts])
    return ids.clamp(max=vocab - 1), torch.stack([index.ids(int(s), seq) for s in starts])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--objective", default="clm", choices=["clm", "plm", "mlm"])
    p.add_argument("--data", default="dataset/sample/train.bin")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=6, help="timed steps of each kind (after one warm-up each)")
    p.add_argument("--doc_len", type=int, default=1500, help="mean document length for random windows")
    a = p.parse_args()
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    cfg = model_config("default", a.objective)
    seq = cfg.max_seq_len
    ids, document_ids = windows(a.data, a.batch, seq, cfg.vocab_size, a.doc_len, rng)
    x, y = ids[:, :-1], ids[:, 1:].clone()
    if a.objective == "mlm":  # 15% of positions carry a label, like a masked-LM batch
        y = torch.where(torch.rand(y.shape) < 0.15, y, torch.full_like(y, -100))
    models = {}
    for name, extra in (("plain", {}), ("document_mask", {"document_ids": document_ids})):
        if a.objective == "plm":  # each window (plain) or each document piece (masked) gets its prefix
            g = torch.Generator().manual_seed(1)
            pieces = extra.get("document_ids", torch.zeros_like(document_ids))
            extra["in_prefix"] = torch.stack([draw_prefix(row, g) for row in pieces])
        model = Transformer(cfg).train()
        models[name] = (model, build_optimizer(model, TrainConfig(), torch.device("cpu")), extra)

    def step(name):
        model, opt, extra = models[name]
        start = time.perf_counter()
        model(x, labels=y, return_logits=False, **extra).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    seconds = {name: 0.0 for name in models}
    for name in models:
        step(name)  # warm-up
    for _ in range(a.steps):
        for name in models:
            seconds[name] += step(name)
    pieces = int((document_ids[:, 1:] != document_ids[:, :-1]).sum()) + a.batch
    print(f"{a.objective}, batch {a.batch} x {seq}, {pieces / a.batch:.2f} document pieces per window, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    rates = {name: a.batch * seq * a.steps / s for name, s in seconds.items()}
    for name, rate in rates.items():
        print(f"  {name:14s} {rate:8.0f} tok/s")
    print(f"  document_mask costs {100 * (1 - rates['document_mask'] / rates['plain']):.1f}% of the plain step's speed")


if __name__ == "__main__":
    main()
