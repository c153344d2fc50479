"""FSDP2 (--fsdp) with real torchrun processes on CPU (gloo): two sharded ranks with batch B equal one
process with batch 2B; a run SIGKILLed (every process at once) and resumed from its sharded
checkpoint equals the uninterrupted one to the bit; sharded checkpoints reshard to one process and
single files to two ranks; `convert.py unshard` / `shard` go between the two forms."""
import os
import signal
import sys

import pytest
import torch

import checkpoint as ckpt
from tests.helpers.train_harness import (ROOT, losses, max_weight_diff, read_metrics, run, run_ok, run_torchrun_ok,
                                 start_and_signal, torchrun_cmd, train_cmd, weights, write_config)

pytestmark = pytest.mark.slow  # every test here starts processes

STEPS = 40
# Accumulation exercises the skipped reduce-scatter, EMA the sharded averages.
COMMON = dict(max_steps=STEPS, save_interval=10, eval_interval=20, accumulation_steps=2, use_ema="true",
              ema_decay=0.9)


@pytest.fixture(scope="module")
def runs(tiny_corpus, tmp_path_factory):
    """One process with batch 8 and two FSDP ranks with batch 4, both 40 steps."""
    corpus, data_dir = tiny_corpus
    root = tmp_path_factory.mktemp("fsdp")
    single = write_config(root / "single.yaml", corpus, data_dir, root / "out", run_name="single", batch_size=8,
                          **COMMON)
    run_ok(train_cmd("--config", single))
    fsdp = write_config(root / "fsdp.yaml", corpus, data_dir, root / "out", run_name="fsdp", batch_size=4, **COMMON)
    run_torchrun_ok(2, "--config", fsdp, "--fsdp")
    return {"root": root, "single": str(root / "out" / "single"), "fsdp": str(root / "out" / "fsdp"),
            "config": fsdp, "single_config": single, "corpus": corpus, "data_dir": data_dir}


def full(path, key="model"):
    return ckpt.load_checkpoint(str(path))[key]


def assert_losses_match(reference, run_dir, steps, rel=1e-5):
    a, b = losses(reference), losses(run_dir)
    assert sorted(b) == list(steps)
    for step in b:
        assert b[step] == pytest.approx(a[step], rel=rel, abs=1e-6), step


def test_two_fsdp_ranks_equal_one_process_with_double_batch(runs):
    assert_losses_match(runs["single"], runs["fsdp"], range(1, STEPS + 1))
    final = os.path.join(runs["fsdp"], f"checkpoint_step_{STEPS}.dcp")
    assert ckpt.is_sharded(final) and sorted(f for f in os.listdir(final) if f.endswith(".distcp")) == \
        ["__0_0.distcp", "__1_0.distcp"]  # each rank wrote its own shard
    reference = os.path.join(runs["single"], f"checkpoint_step_{STEPS}.pth")
    for key in ("model", "ema"):
        assert max_weight_diff(weights(reference, key), full(final, key)) < 1e-5, key
    # best.pth is one file, gathered from the shards, as a single run writes it.
    assert max_weight_diff(weights(os.path.join(runs["single"], "best.pth")),
                           weights(os.path.join(runs["fsdp"], "best.pth"))) < 1e-5


def test_two_fsdp_ranks_with_muon_equal_one_process(tiny_corpus, tmp_path):
    """Muon needs each whole matrix: every rank gathers the gradient, orthogonalises it and keeps its
    shard of the result, which equals the one process's update; the momentum stays sharded."""
    muon = dict(COMMON, max_steps=12, save_interval=12, eval_interval=12, optimizer_type="muon", lr_scheduler="wsd")
    corpus, data_dir = tiny_corpus
    single = write_config(tmp_path / "single.yaml", corpus, data_dir, tmp_path / "out", run_name="single",
                          batch_size=8, **muon)
    run_ok(train_cmd("--config", single))
    cfg = write_config(tmp_path / "fsdp.yaml", corpus, data_dir, tmp_path / "out", run_name="fsdp", batch_size=4,
                       **muon)
    run_torchrun_ok(2, "--config", cfg, "--fsdp")
    assert_losses_match(str(tmp_path / "out" / "single"), str(tmp_path / "out" / "fsdp"), range(1, 13))
    final = tmp_path / "out" / "fsdp" / "checkpoint_step_12.dcp"
    for key in ("model", "ema"):
        assert max_weight_diff(weights(tmp_path / "out" / "single" / "checkpoint_step_12.pth", key), full(final, key)) < 1e-5
    momentum = full(final, "optimizer")["state"][1]["momentum_buffer"]  # a block matrix, gathered whole
    assert momentum.abs().sum() > 0


def test_sigkill_then_resume_equals_uninterrupted_to_the_bit(runs):
    cfg = write_config(runs["root"] / "cut.yaml", runs["corpus"], runs["data_dir"], runs["root"] / "out",
                       run_name="cut", batch_size=4, **COMMON)
    cut = str(runs["root"] / "out" / "cut")
    code, _, err = start_and_signal(torchrun_cmd(2, "--config", cfg, "--fsdp"), cut, at_step=13,
                                    sig=signal.SIGKILL, tree=True)
    assert code == -signal.SIGKILL, err[-2000:]
    logged = max(r["step"] for r in read_metrics(cut))
    assert logged % 10 != 0 and logged < STEPS, "the kill must land between checkpoints"
    # Only complete checkpoints carry a checkpoint name (a write cut midway stays a temporary).
    assert all(ckpt.is_sharded(p) for _, p in ckpt.step_checkpoints(cut))
    run_torchrun_ok(2, "--config", cfg, "--fsdp", "--resume")
    assert losses(cut) == losses(runs["fsdp"])
    final = f"checkpoint_step_{STEPS}.dcp"
    for key in ("model", "ema", "optimizer"):
        a, b = full(os.path.join(runs["fsdp"], final), key), full(os.path.join(cut, final), key)
        if key == "optimizer":
            a = {f"{i}.{n}": t for i, s in a["state"].items() for n, t in s.items()}
            b = {f"{i}.{n}": t for i, s in b["state"].items() for n, t in s.items()}
        assert len(a) > 0 and max_weight_diff(a, b) == 0.0, key
    assert not any(n.startswith(".") for n in os.listdir(cut)), "a temporary of the killed write was left"


def test_sharded_checkpoint_resumes_in_one_process(runs, tmp_path):
    """Two ranks' shards read back by one process (DCP reshards) continue the single run."""
    out = tmp_path / "out"
    cfg = write_config(tmp_path / "one.yaml", runs["corpus"], runs["data_dir"], out, run_name="one", batch_size=8,
                       **COMMON)
    run_ok(train_cmd("--config", cfg, "--resume_from", os.path.join(runs["fsdp"], "checkpoint_step_30.dcp")))
    assert_losses_match(runs["single"], str(out / "one"), range(31, STEPS + 1))
    final = f"checkpoint_step_{STEPS}.pth"
    assert max_weight_diff(weights(os.path.join(runs["single"], final)), weights(out / "one" / final)) < 1e-5


def test_fsdp_ranks_resume_a_single_file_checkpoint(runs, tmp_path):
    """One process's checkpoint file, cut into shards by two FSDP ranks, continues the single run."""
    out = tmp_path / "out"
    cfg = write_config(tmp_path / "two.yaml", runs["corpus"], runs["data_dir"], out, run_name="two", batch_size=4,
                       **COMMON)
    run_torchrun_ok(2, "--config", cfg, "--fsdp", "--resume_from", os.path.join(runs["single"], "checkpoint_step_30.pth"))
    assert_losses_match(runs["single"], str(out / "two"), range(31, STEPS + 1))
    final = os.path.join(runs["single"], f"checkpoint_step_{STEPS}.pth")
    assert max_weight_diff(weights(final, "ema"), full(out / "two" / f"checkpoint_step_{STEPS}.dcp", "ema")) < 1e-5


def test_convert_between_sharded_and_single_file(runs, tmp_path):
    src = os.path.join(runs["fsdp"], f"checkpoint_step_{STEPS}.dcp")
    one = str(tmp_path / "one.pth")
    run_ok([sys.executable, os.path.join(ROOT, "convert.py"), "unshard", src, one])
    whole = torch.load(one, weights_only=True)
    assert whole["kind"] == "train" and whole["step"] == STEPS and len(whole["rng"]) == 2
    assert max_weight_diff(whole["model"], full(src)) == 0.0
    model, _, _ = ckpt.load_for_inference(one)  # inference, export and evaluation read the file
    back = str(tmp_path / "back.dcp")
    run_ok([sys.executable, os.path.join(ROOT, "convert.py"), "shard", one, back])
    again = ckpt.load_checkpoint(back)
    assert max_weight_diff(again["model"], whole["model"]) == 0.0 and again["progress"] == whole["progress"]
    assert again["optimizer"]["param_groups"] == whole["optimizer"]["param_groups"]
    assert max_weight_diff(again["optimizer"]["state"][0], whole["optimizer"]["state"][0]) == 0.0


# The issue-20 block pieces (QK-norm, ReLU^2, zero-initialised projections and untied head, soft cap).
RECIPE_FLAGS = ("--model.qk_norm", "true", "--model.feed_forward", "relu2", "--model.zero_init", "true",
                "--model.tie_embeddings", "false", "--model.head_init_std", "0", "--model.logit_softcap", "15")


@pytest.mark.parametrize("pieces", [(), RECIPE_FLAGS], ids=["default", "recipe"])
def test_gradient_checkpointing_under_fsdp_gives_the_same_run(tiny_corpus, tmp_path, pieces):
    (corpus, data_dir), out, short = tiny_corpus, tmp_path / "out", {**COMMON, "max_steps": 6, "save_interval": 6}
    cfg = write_config(tmp_path / "gc.yaml", corpus, data_dir, out, run_name="gc", batch_size=4, **short)
    ref = write_config(tmp_path / "ref.yaml", corpus, data_dir, out, run_name="ref", batch_size=8, **short)
    run_torchrun_ok(2, "--config", cfg, "--fsdp", "--gradient_checkpointing", *pieces)
    run_ok(train_cmd("--config", ref, *pieces))
    assert_losses_match(str(out / "ref"), str(out / "gc"), range(1, 7))
    model = ckpt.load_checkpoint(str(out / "ref" / "checkpoint_step_6.pth"))["model_config"]
    assert (model["qk_norm"], model["logit_softcap"]) == ((True, 15.0) if pieces else (False, 0.0))


def test_fsdp_refuses_what_it_cannot_do_in_one_line(tiny_corpus, tmp_path):
    cfg = write_config(tmp_path / "c.yaml", *tiny_corpus, tmp_path / "out")
    for flags, line in ((["--fsdp"], "--fsdp needs torchrun"), (["--fsdp", "--ddp"], "pass one"),
                        (["--fsdp", "--trainable", "new_embeddings"], "which --fsdp shards")):
        proc = run(train_cmd("--config", cfg, *flags))
        assert proc.returncode == 2 and line in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    proc = run(torchrun_cmd(2, "--config", cfg, "--fsdp", "--dtype", "float16"))
    assert proc.returncode != 0 and "--fsdp trains in float32 or bfloat16" in proc.stderr
    assert not os.path.exists(tmp_path / "out" / "run" / "metrics.jsonl")
