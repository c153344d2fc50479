"""prepare_corpus: builds once, reuses while everything matches, rebuilds when the tokenizer changes."""
import os
import time

import pytest

from data.errors import DataError
from data.build.prepare import prepare_corpus
from data.samples.token_bin import TokenBin
from data.tokenizer import load_tokenizer
from tests.helpers.data_fixtures import make_tokenizer, write_docs


def mtimes(out_dir):
    return {name: os.stat(os.path.join(out_dir, name)).st_mtime_ns for name in sorted(os.listdir(out_dir))}


@pytest.fixture
def corpus(tmp_path):
    return write_docs(tmp_path / "c.jsonl", n=120)


def test_second_call_reuses_everything(corpus, tmp_path, capsys):
    out = str(tmp_path / "data")
    first = prepare_corpus([corpus], out, vocab_size=300, val_ratio=0.1)
    assert "tokenizer: byte-level BPE" in capsys.readouterr().out
    before = mtimes(out)
    started = time.perf_counter()
    second = prepare_corpus([corpus], out, vocab_size=300, val_ratio=0.1)
    assert time.perf_counter() - started < 1.0 and capsys.readouterr().out == ""
    assert second == first and mtimes(out) == before                  # nothing rewritten
    tok = load_tokenizer(first["tokenizer"])
    assert TokenBin(first["train_bin"]).meta["tokenizer_fingerprint"] == tok.fingerprint() and tok.vocab_size == 300


def test_changed_settings_or_tokenizer_rebuild_the_bins(corpus, tmp_path):
    out = str(tmp_path / "data")
    paths = prepare_corpus([corpus], out, vocab_size=300, val_ratio=0.1)
    n_val = TokenBin(paths["val_bin"]).meta["n_docs"]
    paths = prepare_corpus([corpus], out, vocab_size=300, val_ratio=0.3)  # other split: processed again
    assert TokenBin(paths["val_bin"]).meta["n_docs"] > n_val
    other = make_tokenizer(tmp_path)                                      # another tokenizer, given explicitly
    paths = prepare_corpus([corpus], out, vocab_size=300, val_ratio=0.3, tokenizer_path=str(tmp_path / "tokenizer.json"))
    assert TokenBin(paths["train_bin"]).meta["tokenizer_fingerprint"] == other.fingerprint()
    # The tokenizer in out_dir replaced behind our back: its fingerprint no longer matches the bins.
    other.save(os.path.join(out, "tokenizer.json"))
    paths = prepare_corpus([corpus], out, vocab_size=300, val_ratio=0.3)
    TokenBin(paths["train_bin"]).check_tokenizer(other.fingerprint())


def test_missing_inputs_and_tokenizer_are_one_line_errors(corpus, tmp_path):
    with pytest.raises(DataError, match="input file not found"):
        prepare_corpus([str(tmp_path / "nope.jsonl")], str(tmp_path / "d"))
    with pytest.raises(DataError, match="no file matches"):
        prepare_corpus([str(tmp_path / "*.json")], str(tmp_path / "d"))
    with pytest.raises(DataError, match="tokenizer not found"):
        prepare_corpus([corpus], str(tmp_path / "d"), tokenizer_path=str(tmp_path / "tok.json"))
