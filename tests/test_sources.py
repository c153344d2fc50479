"""Plain-text and Markdown inputs beside JSONL: documents per paragraph or per line, a minimum
length, and resume that stays byte-exact."""
import os
import subprocess
import sys

from data.sources import iter_records
from tests.train_harness import ROOT

TEXT = "\ufeff# Hamlet\n\nTo be, or not to be,\nthat is the question.\n\n\nOk\n\nWhether 'tis nobler in the mind\n"


def test_paragraphs_lines_and_minimum_length(tmp_path):
    path = tmp_path / "play.md"
    path.write_text(TEXT, encoding="utf-8")
    records = list(iter_records(str(path), min_chars=3))
    texts = [t for t, *_ in records if t is not None]
    assert texts == ["# Hamlet", "To be, or not to be,\nthat is the question.", "Whether 'tis nobler in the mind"]
    assert [r for _, r, *_ in records if r] == ["too_short"]                     # "Ok"
    assert records[-1][2] == os.path.getsize(path)                             # offsets reach the end
    # Resuming from any record's offset gives exactly the records after it.
    offset = records[1][2]
    assert [t for t, *_ in iter_records(str(path), offset, min_chars=3)] == [t for t, *_ in records[2:]]
    lines = [t for t, *_ in iter_records(str(path), text_unit="line") if t is not None]
    assert lines == ["# Hamlet", "To be, or not to be,", "that is the question.", "Ok", "Whether 'tis nobler in the mind"]


def test_processor_reads_text_files_and_resumes_byte_exact(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n\n".join(f"Paragraph {i} of the king and the queen.\nIts second line." for i in range(300)))
    base = [sys.executable, "-m", "data.processor", str(corpus), "--vocab_size", "300", "--chunk_size", "16",
            "--min_chars", "10"]
    env = {k: v for k, v in os.environ.items() if k != "PRETRAIN_FAULT"}
    whole = subprocess.run(base + ["--out_dir", str(tmp_path / "whole")], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=120)
    assert whole.returncode == 0 and "kept 300" in whole.stdout, whole.stderr
    cut = base + ["--out_dir", str(tmp_path / "cut")]
    killed = subprocess.run(cut, cwd=ROOT, env={**env, "PRETRAIN_FAULT": "chunk_committed:3"}, capture_output=True,
                            timeout=120)
    assert killed.returncode != 0
    assert subprocess.run(cut, cwd=ROOT, env=env, capture_output=True, timeout=120).returncode == 0
    for name in ("train.bin", "val.bin", "train.bin.idx"):
        assert (tmp_path / "cut" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes()
