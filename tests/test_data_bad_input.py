"""The processor and tokenizer training given hostile corpora and outputs, through the real command."""
import errno
import json
import os
import subprocess
import sys

import pytest

from data.packer import DataProcessor
from data.tokenizer import train_tokenizer
from tests.train_harness import ROOT, write_corpus
from utils import OutputError


def processor(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "data.processor", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def one_line_error(proc, fragment):
    """Exit 2, no traceback, and one error line (progress bars on stderr may come before it)."""
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith("error: ") and fragment in errors[0], proc.stderr


def test_a_document_of_one_huge_word_does_not_stall_tokenizer_training(tmp_path):
    corpus = tmp_path / "c.jsonl"
    write_corpus(corpus, n_docs=100)
    blob = "QmFzZTY0" * 400_000  # a 3.2 MB base64-like word: minutes of BPE training if seen whole
    with open(corpus, "a") as f:
        f.write(json.dumps({"text": "see " + blob}) + "\n")
    proc = processor(corpus, "--out_dir", tmp_path / "o", "--vocab_size", "400", timeout=120)  # a hang guard
    assert proc.returncode == 0, proc.stderr
    assert "cut 1 document(s)" in proc.stdout and "split" in proc.stdout
    assert "tokenizer: reading" in proc.stderr  # long work shows progress
    # --max_length applies to tokenizer training too: the huge document is not read at all.
    proc = processor(corpus, "--out_dir", tmp_path / "m", "--vocab_size", "400", "--max_length", "100000")
    assert proc.returncode == 0 and "cut 1 document" not in proc.stdout, proc.stdout


def test_a_cut_off_tokenizer_recipe_retrains_instead_of_failing(tmp_path):
    corpus = tmp_path / "c.jsonl"
    write_corpus(corpus, n_docs=60)
    assert processor(corpus, "--out_dir", tmp_path / "o", "--vocab_size", "300").returncode == 0
    recipe = tmp_path / "o" / "tokenizer.json.recipe.json"
    recipe.write_text(recipe.read_text()[:10])
    proc = processor(corpus, "--out_dir", tmp_path / "o", "--vocab_size", "300")
    assert proc.returncode == 0 and "unreadable" in proc.stdout, proc.stderr
    json.loads(recipe.read_text())  # whole again


def test_every_line_rejected_is_an_error_with_the_summary(tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"content": "text under another field"}\n{"content": "again"}\nnot json\n')
    tok = train_tokenizer([str(_ok_corpus(tmp_path))], str(tmp_path / "tok.json"), vocab_size=300, say=lambda *_: None)
    proc = processor(corpus, "--out_dir", tmp_path / "o", "--tokenizer", tmp_path / "tok.json")
    one_line_error(proc, 'all 3 lines were rejected {"invalid_json": 1, "missing_field": 2}')
    assert tok.vocab_size == 300


def _ok_corpus(tmp_path):
    path = tmp_path / "ok.jsonl"
    write_corpus(path, n_docs=40)
    return path


def test_unwritable_output_directory_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    one_line_error(processor(_ok_corpus(tmp_path), "--out_dir", blocker / "o"), "is not writable")


def test_full_disk_is_one_line_and_a_rerun_resumes_to_the_same_output(tmp_path, monkeypatch):
    corpus = _ok_corpus(tmp_path)
    train_tokenizer([str(corpus)], str(tmp_path / "tok.json"), vocab_size=300, say=lambda *_: None)
    whole = DataProcessor(str(tmp_path / "tok.json"), chunk_size=8, show_progress=False)
    whole.process_dataset(str(corpus), str(tmp_path / "whole" / "train.bin"))
    calls = {"n": 0}
    real = DataProcessor._store

    def full_after_two(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *args, **kwargs)
    monkeypatch.setattr(DataProcessor, "_store", full_after_two)
    cut = DataProcessor(str(tmp_path / "tok.json"), chunk_size=8, show_progress=False)
    with pytest.raises(OutputError) as e:
        cut.process_dataset(str(corpus), str(tmp_path / "cut" / "train.bin"))
    assert "no space left" in str(e.value) and "MB free" in str(e.value) and "\n" not in str(e.value)
    monkeypatch.setattr(DataProcessor, "_store", real)
    DataProcessor(str(tmp_path / "tok.json"), chunk_size=8, show_progress=False).process_dataset(
        str(corpus), str(tmp_path / "cut" / "train.bin"))
    for name in ("train.bin", "val.bin"):
        assert (tmp_path / "cut" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes()


def test_data_package_has_no_import_cycle():
    code = ("import sys, importlib; importlib.import_module('data.prepare'); "
            "print('data.processor' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "False", proc.stdout + proc.stderr  # prepare needs only the packer
    assert os.path.exists(os.path.join(ROOT, "data", "fault_points.py"))
