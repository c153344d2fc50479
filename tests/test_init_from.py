"""--init_from: a new run from existing weights, with a fresh optimizer, schedule and step."""
import pytest
import torch

from tests.helpers.train_harness import losses, run, run_ok, train_cmd, write_config

pytestmark = pytest.mark.slow  # every test here starts processes


def test_init_from_a_checkpoint_starts_a_new_run_from_its_weights(tiny_corpus, run_root):
    corpus, data_dir = tiny_corpus
    cfg = write_config(run_root / "c.yaml", corpus, data_dir, run_root / "out", max_steps=8)
    run_ok(train_cmd("--config", cfg))
    source = str(run_root / "out" / "run" / "checkpoint_step_8.pth")
    proc = run_ok(train_cmd("--config", cfg, "--run_name", "next", "--init_from", source, "--max_steps", "2",
                            "--warmup", "1"))
    assert "weights loaded; optimizer, schedule and step start fresh" in proc.stdout + proc.stderr
    first = losses(str(run_root / "out" / "run"))
    continued = losses(str(run_root / "out" / "next"))
    assert continued[1] < first[1] - 0.3          # it starts where the source ended, not from random weights
    state = torch.load(run_root / "out" / "next" / "checkpoint_step_2.pth", weights_only=True)
    assert state["progress"]["step"] == 2 and state["scheduler"]["step_count"] == 2
    assert all(int(s["step"]) == 2 for s in state["optimizer"]["state"].values())  # a fresh optimizer


def test_init_from_refuses_a_conflicting_model_setting(tiny_corpus, run_root):
    corpus, data_dir = tiny_corpus
    cfg = write_config(run_root / "c.yaml", corpus, data_dir, run_root / "out", max_steps=2, warmup=1)
    run_ok(train_cmd("--config", cfg))
    proc = run(train_cmd("--config", cfg, "--run_name", "x", "--init_from",
                         str(run_root / "out" / "run" / "best.pth"), "--model.n_layers", "3"))
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "drop model.n_layers=3 (the source has 2)" in proc.stderr


def test_init_from_refuses_a_tokenizer_that_is_not_the_sources(tiny_corpus, run_root):
    corpus, data_dir = tiny_corpus
    cfg = write_config(run_root / "c.yaml", corpus, data_dir, run_root / "out", max_steps=2, warmup=1)
    run_ok(train_cmd("--config", cfg))
    run_ok(train_cmd("--config", cfg, "--run_name", "other", "--data.out_dir", str(run_root / "d300"),
                     "--data.vocab_size", "300"))
    proc = run(train_cmd("--config", cfg, "--run_name", "x", "--init_from", str(run_root / "out" / "run" / "best.pth"),
                         "--data.tokenizer_path", str(run_root / "d300" / "tokenizer.json")))
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "is not the tokenizer of --init_from" in proc.stderr


def test_the_config_files_model_section_gives_way_to_the_source(tiny_corpus, run_root):
    corpus, data_dir = tiny_corpus
    cfg = write_config(run_root / "c.yaml", corpus, data_dir, run_root / "out", max_steps=2, warmup=1)
    run_ok(train_cmd("--config", cfg, "--model.n_layers", "1"))
    proc = run_ok(train_cmd("--config", cfg, "--run_name", "x", "--init_from", str(run_root / "out" / "run" / "best.pth")))
    assert "the config file's model.n_layers give way to the source's" in proc.stdout + proc.stderr
    assert torch.load(run_root / "out" / "x" / "best.pth", weights_only=True)["model_config"]["n_layers"] == 1
