"""The processor and tokenizer training given hostile corpora and outputs, through the real command."""
import errno
import json
import os
import subprocess
import sys

import pytest

from data.build.corpus_processor import DataProcessor
from data.samples.token_bin import TokenBin
from data.tokenizer import load_tokenizer, train_tokenizer
from tests.helpers.train_harness import ROOT, write_corpus
from utils import OutputError


def processor(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "data.processor", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def one_line_error(proc, fragment):
    """Exit 2, no traceback, and one error line (progress bars on stderr may come before it)."""
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith("error: ") and fragment in errors[0], proc.stderr


def stored_documents(out_dir):
    """The documents of train.bin and val.bin, decoded (documents end with eos)."""
    tok = load_tokenizer(str(out_dir / "tokenizer.json"))
    docs = []
    for name in ("train.bin", "val.bin"):
        ids = TokenBin(str(out_dir / name)).tokens.tolist()
        start = 0
        for i, t in enumerate(ids):
            if t == tok.eos_id:
                docs.append(tok.decode(ids[start:i]))
                start = i + 1
    return docs


@pytest.mark.slow
def test_a_document_of_one_huge_word_does_not_stall_tokenizer_training(tmp_path):
    corpus = tmp_path / "c.jsonl"
    write_corpus(corpus, n_docs=100)
    blob = "QmFzZTY0" * 400_000  # a 3.2 MB base64-like word: minutes of BPE training if seen whole
    spaces = "a" + " " * 300_000 + "b"  # one word of whitespace, as slow to train on
    with open(corpus, "a") as f:
        f.write(json.dumps({"text": "see " + blob}) + "\n" + json.dumps({"text": spaces}) + "\n")
    proc = processor(corpus, "--out_dir", tmp_path / "o", "--vocab_size", "400", timeout=120)  # a hang guard
    assert proc.returncode == 0, proc.stderr
    assert "cut 2 document(s)" in proc.stdout and "shortened 2 run(s)" in proc.stdout, proc.stdout
    assert "tokenizer: reading" in proc.stderr and "training BPE merges" in proc.stderr  # long work shows progress
    texts = [json.loads(line)["text"] for line in corpus.read_text().splitlines()]
    assert sorted(stored_documents(tmp_path / "o")) == sorted(texts)  # the processor keeps every word whole
    # --max_chars applies to tokenizer training too: the huge documents are not read at all.
    proc = processor(corpus, "--out_dir", tmp_path / "m", "--vocab_size", "400", "--max_chars", "100000")
    assert proc.returncode == 0 and "document(s) to" not in proc.stdout, proc.stdout


@pytest.mark.slow
def test_a_cut_off_tokenizer_recipe_retrains_instead_of_failing(tmp_path):
    corpus = tmp_path / "c.jsonl"
    write_corpus(corpus, n_docs=60)
    assert processor(corpus, "--out_dir", tmp_path / "o", "--vocab_size", "300").returncode == 0
    recipe = tmp_path / "o" / "tokenizer.json.recipe.json"
    recipe.write_text(recipe.read_text()[:10])
    proc = processor(corpus, "--out_dir", tmp_path / "o", "--vocab_size", "300")
    assert proc.returncode == 0 and "unreadable" in proc.stdout, proc.stderr
    json.loads(recipe.read_text())  # whole again


@pytest.mark.slow
def test_every_line_rejected_is_an_error_with_the_summary(tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"content": "text under another field"}\n{"content": "again"}\nnot json\n')
    tok = train_tokenizer([str(_ok_corpus(tmp_path))], str(tmp_path / "tok.json"), vocab_size=300, say=lambda *_: None)
    proc = processor(corpus, "--out_dir", tmp_path / "o", "--tokenizer", tmp_path / "tok.json")
    one_line_error(proc, 'all 3 lines were rejected {"invalid_json": 1, "missing_field": 2}')
    assert tok.vocab_size == 300


@pytest.mark.slow
def test_every_line_rejected_fails_before_training_a_tokenizer(tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"content": "text under another field"}\n{"text": "   "}\n')
    proc = processor(corpus, "--out_dir", tmp_path / "o")
    one_line_error(proc, 'all 2 lines were rejected {"empty_text": 1, "missing_field": 1}')
    assert not (tmp_path / "o" / "tokenizer.json").exists()  # no tokenizer of bytes alone left behind


def _ok_corpus(tmp_path):
    path = tmp_path / "ok.jsonl"
    write_corpus(path, n_docs=40)
    return path


@pytest.mark.slow
def test_unwritable_output_directory_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    one_line_error(processor(_ok_corpus(tmp_path), "--out_dir", blocker / "o"), "is not writable")


@pytest.mark.slow
def test_unreadable_input_file_is_one_line(tmp_path):
    corpus = _ok_corpus(tmp_path)
    corpus.chmod(0)
    if os.access(corpus, os.R_OK):
        pytest.skip("running as root: a mode-0 file is still readable")
    one_line_error(processor(corpus, "--out_dir", tmp_path / "o"), "cannot read input file")


@pytest.mark.parametrize("step", ["_write_chunk", "_commit"])
def test_full_disk_is_one_line_and_a_rerun_resumes_to_the_same_output(tmp_path, monkeypatch, step):
    corpus = _ok_corpus(tmp_path)
    train_tokenizer([str(corpus)], str(tmp_path / "tok.json"), vocab_size=300, say=lambda *_: None)
    whole = DataProcessor(str(tmp_path / "tok.json"), chunk_size=8, show_progress=False)
    whole.process_dataset(str(corpus), str(tmp_path / "whole" / "train.bin"))
    calls = {"n": 0}
    real = getattr(DataProcessor, step)

    def full_after_two(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *args, **kwargs)
    monkeypatch.setattr(DataProcessor, step, full_after_two)
    cut = DataProcessor(str(tmp_path / "tok.json"), chunk_size=8, show_progress=False)
    with pytest.raises(OutputError) as e:
        cut.process_dataset(str(corpus), str(tmp_path / "cut" / "train.bin"))
    message = str(e.value)
    assert "no space left" in message and "MB free" in message and str(tmp_path / "cut") in message
    assert "committed so far is kept" in message and "\n" not in message
    progress = json.loads((tmp_path / "cut" / "train.bin.progress.json").read_text())
    assert progress["stats"]["documents_kept"] == 16  # two chunks of 8 were committed before the disk filled
    monkeypatch.setattr(DataProcessor, step, real)
    DataProcessor(str(tmp_path / "tok.json"), chunk_size=8, show_progress=False).process_dataset(
        str(corpus), str(tmp_path / "cut" / "train.bin"))
    for name in ("train.bin", "val.bin"):
        assert (tmp_path / "cut" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes()


@pytest.mark.slow
def test_data_package_has_no_import_cycle():
    code = ("import sys, importlib; importlib.import_module('data.build.prepare'); "
            "print('data.processor' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "False", proc.stdout + proc.stderr  # prepare needs only the packer
    assert os.path.exists(os.path.join(ROOT, "data", "fault_points.py"))


def _hand_bin(tmp_path, tokens, meta_changes=(), vocab_size=300):
    """A token file, its offsets and a sidecar as the processor writes them, then meta_changes applied."""
    from data.samples.token_bin import FORMAT_VERSION
    import numpy as np
    path = tmp_path / "train.bin"
    np.asarray(tokens, dtype="<u2").tofile(path)
    np.asarray([0, len(tokens)], dtype="<u8").tofile(str(path) + ".idx")
    meta = {"format": FORMAT_VERSION, "dtype": "uint16", "n_tokens": len(tokens), "n_docs": 1, "n_text_bytes": 40,
            "n_characters": 40, "vocab_size": vocab_size, "eos_id": 0, "split": "train",
            "tokenizer_fingerprint": "fp", "signature": {}}
    meta.update(meta_changes)
    (tmp_path / "train.bin.meta.json").write_text(json.dumps(meta))
    return str(path)


@pytest.mark.parametrize("lie, fragment", [
    ({"dtype": "uint32", "n_tokens": 5}, "does not describe"),           # the size still adds up
    ({"dtype": "uint32", "n_tokens": 5, "vocab_size": 70000}, "does not match"),  # the .idx says 10 tokens
    ({"dtype": "float32", "n_tokens": 5}, "token files are uint16 or uint32"),
    ({"n_docs": 3}, "does not match"),
    ({"n_tokens": "ten"}, "non-number"),
])
def test_a_sidecar_that_does_not_describe_its_file_is_one_line(tmp_path, lie, fragment):
    from data.errors import DataError
    path = _hand_bin(tmp_path, list(range(10)), lie)
    with pytest.raises(DataError) as e:
        TokenBin(path)
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_token_ids_beyond_the_vocabulary_are_refused_before_work(tmp_path):
    from data.errors import DataError
    from data.samples.token_shards import open_bin
    path = _hand_bin(tmp_path, [5, 7, 299, 300, 2])
    b = open_bin(path)
    b.check_tokenizer("fp")  # the fingerprint alone does not read the tokens
    with pytest.raises(DataError, match="holds token id 300, beyond the tokenizer's vocabulary of 300"):
        b.check_tokenizer("fp", 300)
    with pytest.raises(DataError, match="says a vocabulary of 300, the tokenizer has 512"):
        b.check_tokenizer("fp", 512)
    good = _hand_bin(tmp_path, [5, 7, 299])
    TokenBin(good).check_tokenizer("fp", 300)
