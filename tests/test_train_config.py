"""Config layering and validation: CLI beats YAML beats defaults; mistakes stop with one line."""
import os

import pytest

from model.config import ConfigError, LMConfig
from training.config import build_config, parse_cli


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return str(p)


def test_cli_beats_yaml_beats_defaults(tmp_path):
    path = write(tmp_path, "train:\n  batch_size: 16\n  learning_rate: 1.0e-3\nmodel:\n  n_layers: 3\n")
    cfg = build_config(["--config", path, "--batch_size", "64", "--model.n_layers", "6"])
    assert cfg.train.batch_size == 64            # CLI over YAML
    assert cfg.train.learning_rate == 1e-3       # YAML over default
    assert cfg.train.optimizer_type == "adamw"   # default
    assert cfg.model["n_layers"] == 6


def test_the_embedded_default_turns_its_shape_with_one_dial():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def shape(*argv):
        m = LMConfig.from_dict({"vocab_size": 4096, **build_config(["--config", os.path.join(root, "config.yaml"),
                                                                     *argv]).model})
        return m.n_layers, m.dim, m.n_heads

    assert shape() == (4, 256, 4)
    assert shape("--model.depth", "6") == (6, 384, 6)
    assert shape("--model.depth", "6", "--model.n_heads", "3") == (6, 384, 3)  # a key given beside it wins
    assert shape("--model.n_layers", "2") == (2, 256, 4)


def test_flag_forms(tmp_path):
    cfg = build_config(["--use_ema", "--lr_scheduler=polynomial", "--force-fresh", "--data.vocab_size", "512",
                        "--train.patience", "3", "--no-early_stopping", "--warmup", "0.1"])
    assert cfg.train.use_ema is True and cfg.train.force_fresh is True
    assert cfg.train.lr_scheduler == "polynomial" and cfg.train.patience == 3
    assert cfg.train.early_stopping is False and cfg.data.vocab_size == 512
    assert cfg.train.warmup == pytest.approx(0.1)
    cfg = build_config(["--use_ema", "false"])
    assert cfg.train.use_ema is False


@pytest.mark.parametrize("argv, fragment", [
    (["--bogus", "1"], "unknown flag --bogus"),
    (["--model.n_layer", "2"], "unknown key model.n_layer"),
    (["--data.nope", "2"], "unknown key data.nope"),
    (["--batch_size", "many"], "train.batch_size: expected int"),
    (["--lr_scheduler", "exp"], "train.lr_scheduler must be one of cosine, linear, polynomial, constant"),
    (["--optimizer_type", "sgd"], "train.optimizer_type must be one of adamw, adam"),
    (["--dtype", "fp8"], "train.dtype must be one of"),
    (["--model.dim", "100", "--model.n_heads", "3"], "model.dim (100) must be divisible by model.n_heads (3)"),
    (["--max_steps", "10", "--warmup", "20"], "train.warmup (20 steps) must be shorter than the run"),
    (["--resume", "--force-fresh"], "--resume and --force-fresh"),
    (["--model.objective", "seq2seq"], "model.objective must be one of clm, mlm"),
    (["--batch_size", "0"], "train.batch_size must be at least 1"),
])
def test_bad_configs_fail_with_one_line(argv, fragment):
    with pytest.raises(ConfigError) as e:
        build_config(argv)
    assert fragment in str(e.value)
    assert "\n" not in str(e.value)


def test_yaml_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        build_config(["--config", str(tmp_path / "missing.yaml")])
    bad = write(tmp_path, "train:\n  batch_size: [1\n")
    with pytest.raises(ConfigError, match=r"c.yaml line \d+: invalid YAML"):
        build_config(["--config", bad])
    with pytest.raises(ConfigError, match="unknown config section 'optim'"):
        build_config(["--config", write(tmp_path, "optim:\n  lr: 1\n")])


def test_parse_cli_keeps_config_path():
    path, overrides = parse_cli(["--config", "x.yaml", "--epochs", "3"])
    assert path == "x.yaml" and overrides == [("train", "epochs", "3")]


def test_run_length_from_cli_and_yaml(tmp_path):
    path = write(tmp_path, "train:\n  max_steps: 300\n")
    cfg = build_config(["--config", path, "--epochs", "3"])
    assert (cfg.train.epochs, cfg.train.max_steps) == (3, 0)       # the CLI's --epochs beats the YAML's max_steps
    assert "ignoring max_steps 300" in cfg.notes[0]
    cfg = build_config(["--config", path, "--epochs", "3", "--max_steps", "50"])
    assert cfg.train.max_steps == 50 and "max_steps 50 rules" in cfg.notes[0]
    cfg = build_config(["--config", write(tmp_path, "train:\n  epochs: 2\n"), "--max_steps", "10"])
    assert cfg.train.max_steps == 10 and "max_steps 10 rules" in cfg.notes[0]
    assert build_config(["--config", write(tmp_path, "train:\n  max_steps: 7\n")]).notes == []


def test_gradient_checkpointing_is_one_key_the_cli_can_switch_off(tmp_path):
    path = write(tmp_path, "model:\n  gradient_checkpointing: true\n")
    assert build_config(["--config", path]).model["gradient_checkpointing"] is True
    assert build_config(["--config", path, "--no-gradient_checkpointing"]).model["gradient_checkpointing"] is False
    assert build_config(["--gradient_checkpointing"]).model["gradient_checkpointing"] is True
    with pytest.raises(ConfigError, match="train.gradient_checkpointing is now model.gradient_checkpointing"):
        build_config(["--config", write(tmp_path, "train:\n  gradient_checkpointing: true\n")])


def test_legacy_local_rank_flag_is_accepted():
    for argv in (["--local-rank=0", "--epochs", "2"], ["--local_rank", "1", "--epochs", "2"]):
        assert parse_cli(argv)[1] == [("train", "epochs", "2")]


def test_data_max_length_names_the_character_cap_and_the_sample_length(tmp_path):
    """data.max_length was a character cap dropping documents; the reference means tokens per sample."""
    with pytest.raises(ConfigError, match="data.max_length is now data.max_chars .* data.seq_len"):
        build_config(["--config", write(tmp_path, "data:\n  max_length: 512\n")])
    assert build_config(["--config", write(tmp_path, "data:\n  max_chars: 512\n")]).data.max_chars == 512


def test_parallel_is_one_key_the_seed_flags_set(tmp_path):
    """train.parallel names the strategy; --ddp / --fsdp and an old config's `ddp: true` set it."""
    assert build_config([]).train.parallel == "single"
    assert build_config(["--ddp"]).train.parallel == "ddp"
    assert build_config(["--fsdp"]).train.parallel == "fsdp"
    assert build_config(["--parallel", "fsdp"]).train.parallel == "fsdp"
    old = write(tmp_path, "train:\n  ddp: true\n")
    assert build_config(["--config", old]).train.parallel == "ddp"
    assert build_config(["--config", old, "--no-ddp"]).train.parallel == "single"
    assert build_config(["--config", old, "--no-ddp", "--fsdp"]).train.parallel == "fsdp"
    assert "parallel" in build_config(["--ddp"]).to_dict()["train"]
    assert "ddp" not in build_config(["--ddp"]).to_dict()["train"]
    for argv, message in ((["--parallel", "tp"], "train.parallel must be one of single, ddp, fsdp, got 'tp'"),
                          (["--config", old, "--fsdp"], "--ddp and --fsdp are two ways to spread one run over "
                                                        "processes; pass one")):
        with pytest.raises(ConfigError) as e:
            build_config(argv)
        assert str(e.value) == message
