"""The configuration reference and --help come from the dataclasses, and an unknown flag or key
names the nearest valid one."""
import os
import subprocess
import sys

import pytest

from model.config import ConfigError, LMConfig
from training.config import DataConfig, TrainConfig, build_config
from training.config_doc import entries, field_comments, help_text, markdown

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_committed_reference_is_the_generated_one():
    with open(os.path.join(ROOT, "docs", "configuration.md"), encoding="utf-8") as f:
        committed = f.read()
    assert committed == markdown(), "docs/configuration.md is stale: python -m training.config_doc > docs/configuration.md"


@pytest.mark.parametrize("cls", [LMConfig, DataConfig, TrainConfig])
def test_every_key_has_a_meaning(cls):
    missing = [name for name, _, meaning in entries(cls) if not meaning]
    assert missing == []


def test_comments_are_read_from_the_field_lines():
    train = dict((name, (default, meaning)) for name, default, meaning in entries(TrainConfig))
    assert train["batch_size"] == ("32", "per process, per micro-step")
    assert train["use_ema"][0] == "false" and train["resume_from"][0] == "null"
    model = field_comments(LMConfig)
    # A two-line comment joins; the group comment above arch belongs to no field.
    assert model["objective"].endswith("(a bidirectional prefix, causal after it); None: the family's")
    assert model["arch"] == "llama | qwen2 | qwen3 | gpt2 | bert"
    assert "family and its block pieces" not in " ".join(model.values())
    assert dict((n, d) for n, d, _ in entries(DataConfig))["inputs"] == "dataset/sample.jsonl"


@pytest.mark.slow
def test_help_lists_every_key_with_default_and_meaning_by_section():
    out = subprocess.run([sys.executable, "train.py", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == help_text()
    lines = out.stdout.splitlines()
    heads = [lines.index(f"{s}:") for s in ("model", "data", "train")]
    assert heads == sorted(heads)
    batch = next(line for line in lines if line.lstrip().startswith("--batch_size "))
    assert batch.split()[:2] == ["--batch_size", "32"] and batch.endswith("per process, per micro-step")
    assert any(line.lstrip().startswith("--model.n_layers null ") and line.endswith("None: depth") for line in lines)
    assert any(line.lstrip().startswith("--model.depth null ") for line in lines)
    assert any(line.lstrip().startswith("--data.vocab_size 4096 ") for line in lines)


@pytest.mark.parametrize("argv, message", [
    (["--batch_sz", "8"], "unknown flag --batch_sz; did you mean --batch_size?"),
    (["--n_layer", "2"], "unknown flag --n_layer; did you mean --model.n_layers?"),
    (["--zzzqqq", "1"], "unknown flag --zzzqqq; see python train.py --help"),
    (["--train.batch_sz", "8"], "unknown key train.batch_sz; did you mean train.batch_size?"),
    (["--data.vocab_sz", "8"], "unknown key data.vocab_sz; did you mean data.vocab_size?"),
    (["--model.n_layer", "2"], "unknown key model.n_layer; did you mean model.n_layers?"),
])
def test_unknown_flag_suggests_the_nearest(argv, message):
    with pytest.raises(ConfigError) as e:
        build_config(argv)
    assert str(e.value) == message


@pytest.mark.slow
def test_unknown_flag_is_one_line_and_exit_2():
    out = subprocess.run([sys.executable, "train.py", "--batch_sz", "8"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr == "error: unknown flag --batch_sz; did you mean --batch_size?\n"
