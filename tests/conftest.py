import os

import pytest

from tests.helpers.train_harness import write_corpus


def pytest_configure(config):
    # The quick tier is `python -m pytest -m "not slow" tests`; the full suite runs everything.
    config.addinivalue_line("markers", "slow: starts processes (train.py, torchrun, a CLI) or takes more "
                                       "than a few seconds (training, torch.compile)")


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    """A synthetic JSONL corpus and the data directory its tokenizer and .bin files go to; the first
    training run prepares them and later runs reuse them."""
    root = tmp_path_factory.mktemp("corpus")
    corpus = root / "corpus.jsonl"
    write_corpus(corpus)
    return str(corpus), str(root / "data")


@pytest.fixture
def run_root(tmp_path):
    os.makedirs(tmp_path / "out", exist_ok=True)
    return tmp_path
