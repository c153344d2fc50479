"""estimate.py: the memory it predicts is the memory a real training step takes (CPU, measured in a
process of its own), and its parts follow the model, the strategy and the world size."""
import json
import os
import subprocess
import sys

import pytest
import yaml

from data.build.corpus_processor import DataProcessor
from model import LMConfig, Transformer
from tests.helpers.data_fixtures import make_tokenizer, write_docs
from tests.helpers.train_harness import ROOT
from training.parallelism.memory import estimate

# Small enough for a shared 2-core CPU, large enough that the model, not the runtime, is the memory.
MODEL = dict(dim=256, n_layers=4, n_heads=4, vocab_size=8192, max_seq_len=256)
BATCH = 4


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("estimate")
    make_tokenizer(root)
    write_docs(root / "c.jsonl", n=300, seed=2)
    DataProcessor(str(root / "tokenizer.json"), show_progress=False).process_dataset(
        str(root / "c.jsonl"), str(root / "train.bin"))
    return root


def measure(root, checkpointing: bool, model=MODEL, batch=BATCH) -> dict:
    flags = ["--batch_size", str(batch), "--out_dir", str(root / "out"), "--force_fresh",
             "--model.gradient_checkpointing", str(checkpointing).lower()]
    flags += [x for k, v in model.items() for x in (f"--model.{k}", str(v))]
    # A fixed mmap threshold: every tensor of any size is given back to the system when freed, so
    # the resident memory is what is alive (glibc would otherwise raise it and keep freed heap).
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS="2", PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "helpers", "memory_probe.py"), str(root / "train.bin"),
                           str(root / "tokenizer.json"), *flags], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("checkpointing", [False, True])
def test_estimated_peak_is_within_15_percent_of_a_measured_training_step(corpus, checkpointing):
    measured = measure(corpus, checkpointing)
    cfg = LMConfig(**MODEL, gradient_checkpointing=checkpointing)
    e = estimate(cfg, batch_size=BATCH, compute_bytes=4)
    assert measured["params"] == e.params
    # Between steps only the weights and AdamW's moments are alive (gradients are set to None).
    assert measured["between_steps_bytes"] == pytest.approx(e.weights + e.optimizer, rel=0.15)
    assert measured["peak_bytes"] == pytest.approx(e.peak, rel=0.15), (measured, e)
    # The switch is worth it where the estimate says (activations dominate without it).
    assert (e.activations < e.activations_other) == checkpointing


# Reference 003's micro model: a 250k vocabulary at dim 16, where the loss's logits are ten times
# everything else (the estimate was once 85 MiB against 560-900 measured).
LARGE_VOCAB = dict(dim=16, n_layers=2, n_heads=2, vocab_size=250_000, max_seq_len=64)


@pytest.mark.slow
@pytest.mark.parametrize("objective, batch", [("clm", 8), ("mlm", 16)])
def test_a_large_vocabulary_is_counted(corpus, objective, batch):
    model = {**LARGE_VOCAB, "objective": objective}
    measured = measure(corpus, False, model, batch)
    e = estimate(LMConfig(**model), batch_size=batch, compute_bytes=4, head_fraction=0.15 if objective == "mlm" else 1)
    assert measured["params"] == e.params
    assert e.logits > 5 * (e.weights + e.optimizer)  # the case this covers: the vocabulary dominates
    assert measured["peak_bytes"] == pytest.approx(e.peak, rel=0.15), (measured, e)


def test_parts_follow_the_model_the_strategy_and_the_world_size():
    cfg = LMConfig(dim=128, n_layers=3, n_heads=4, n_kv_heads=2, vocab_size=1000, max_seq_len=64)
    model = Transformer(cfg)
    p = model.num_params()
    single = estimate(cfg, batch_size=2)
    assert (single.params, single.weights, single.gradients, single.optimizer) == (p, 4 * p, 4 * p, 8 * p)
    assert single.flops_per_token == model.flops_per_token()
    assert single.buckets == single.gathered == single.ema == 0
    ddp = estimate(cfg, batch_size=2, world_size=4, strategy="ddp", use_ema=True)
    assert (ddp.weights, ddp.buckets, ddp.ema) == (4 * p, 4 * p, 4 * p)
    fsdp = estimate(cfg, batch_size=2, world_size=4, strategy="fsdp")
    assert (fsdp.weights, fsdp.gradients, fsdp.optimizer) == (p, p, 2 * p)
    block = sum(q.numel() for q in model.layers[0].parameters())
    assert fsdp.gathered == 4 * (p - cfg.n_layers * block + 2 * block)
    bf16 = estimate(cfg, batch_size=2, world_size=4, strategy="fsdp", compute_bytes=2)
    assert bf16.gathered == fsdp.gathered // 2
    assert fsdp.activations == single.activations  # activations are per micro-batch, not sharded
    # Activations grow with the tokens of a micro-batch; bf16 autocast halves most of them.
    assert estimate(cfg, batch_size=4).activations > 1.9 * single.activations - 2 * cfg.vocab_size * cfg.dim * 4
    assert estimate(cfg, batch_size=2, compute_bytes=2).activations < single.activations


def run_cli(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "estimate.py"), *args], cwd=ROOT, capture_output=True,
                          text=True, env=dict(os.environ, PYTHONPATH=ROOT), timeout=120)


@pytest.mark.slow
def test_cli_prints_parameters_memory_and_flops_for_a_config():
    proc = run_cli("--config", "config.yaml", "--world_size", "2", "--strategy", "fsdp", "--dtype", "bf16",
                   "--batch_size", "8", "--seq_len", "512", "--model.vocab_size", "4096")
    assert proc.returncode == 0, proc.stderr
    with open(os.path.join(ROOT, "config.yaml")) as f:
        model = yaml.safe_load(f)["model"]
    cfg = LMConfig(**{**model, "vocab_size": 4096, "max_seq_len": 512})
    e = estimate(cfg, batch_size=8, world_size=2, strategy="fsdp", compute_bytes=2)
    out = proc.stdout
    assert f"{e.params:,} parameters" in out
    assert "fsdp on 2 rank(s), bfloat16" in out
    assert f"{e.flops_per_token / 1e9:.3f} GFLOP per token" in out
    assert "peak, gradient checkpointing off" in out and "peak, gradient checkpointing on" in out


@pytest.mark.slow
def test_cli_mistakes_are_one_line():
    for args in (["--strategy", "zero"], ["--world_size", "0"], ["--model.dim", "100", "--model.n_heads", "3"]):
        proc = run_cli(*args)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and proc.stderr.startswith("error:"), proc.stderr
