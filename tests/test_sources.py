"""Plain-text and Markdown inputs beside JSONL: documents per paragraph or per line, a minimum
length, and resume that stays byte-exact."""
import os
import subprocess
import sys

import pytest

from data.sources.settings import ReadSettings
from data.sources.records import iter_records
from tests.helpers.train_harness import ROOT

TEXT = "\ufeff# Hamlet\n\nTo be, or not to be,\nthat is the question.\n\n\nOk\n\nWhether 'tis nobler in the mind\n"


def test_paragraphs_lines_and_minimum_length(tmp_path):
    path = tmp_path / "play.md"
    path.write_text(TEXT, encoding="utf-8")
    three = ReadSettings(min_chars=3)
    records = list(iter_records(str(path), read=three))
    texts = [t for t, *_ in records if t is not None]
    assert texts == ["# Hamlet", "To be, or not to be,\nthat is the question.", "Whether 'tis nobler in the mind"]
    assert [r for _, r, *_ in records if r] == ["too_short"]                     # "Ok"
    assert records[-1][2] == os.path.getsize(path)                             # offsets reach the end
    # Resuming from any record's offset gives exactly the records after it.
    offset = records[1][2]
    assert [t for t, *_ in iter_records(str(path), offset, three)] == [t for t, *_ in records[2:]]
    lines = [t for t, *_ in iter_records(str(path), read=ReadSettings(text_unit="line")) if t is not None]
    assert lines == ["# Hamlet", "To be, or not to be,", "that is the question.", "Ok", "Whether 'tis nobler in the mind"]


@pytest.mark.slow
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


def _docs(paths):
    """The documents a processor run stores, decoded."""
    import numpy as np

    from data.samples.token_bin import TokenBin
    from data.tokenizer import load_tokenizer
    tok = load_tokenizer(paths["tokenizer"])
    b = TokenBin(paths["train"])
    return [tok.decode(d[:-1].tolist()) for d in np.split(np.asarray(b.tokens), b.doc_offsets()[1:-1])]


def _processor(tmp_path, **kw):
    from data.build.corpus_processor import DataProcessor
    from tests.helpers.data_fixtures import make_tokenizer
    make_tokenizer(tmp_path)
    return DataProcessor(str(tmp_path / "tokenizer.json"), show_progress=False, **kw)


def test_a_json_array_of_objects_is_a_list_of_documents_and_resumes_by_element(tmp_path):
    """Before, each line of such a file (reference 002's input) was rejected as invalid_json."""
    import json
    records = [{"text": f"the king speaks {i}"} for i in range(5)] + [{"body": "no text"}, 7]
    path = tmp_path / "docs.json"
    path.write_text("\n  " + json.dumps(records, indent=2), encoding="utf-8")
    got = list(iter_records(str(path)))
    assert [t for t, *_ in got] == [f"the king speaks {i}" for i in range(5)] + [None, None]
    assert [r for _, r, *_ in got] == [None] * 5 + ["missing_field", "not_object"]
    assert [p for _, _, p, _ in got] == list(range(1, 8))               # positions are element indices
    assert [t for t, *_ in iter_records(str(path), 3)][:2] == ["the king speaks 3", "the king speaks 4"]
    proc = _processor(tmp_path)
    paths = proc.process_dataset(str(path), str(tmp_path / "out" / "train.bin"))
    assert proc.stats["documents_kept"] == 5 and _docs({**paths, "tokenizer": str(tmp_path / "tokenizer.json")}) == \
        [f"the king speaks {i}" for i in range(5)]


def test_text_unit_file_makes_each_file_one_document(tmp_path):
    pages = {"a.md": "# Title\n\nFirst paragraph.\n\nSecond one.\n", "b.md": "\ufeffOne line only\n", "c.md": "\n \n"}
    for name, text in pages.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    whole_files = ReadSettings(text_unit="file")
    got = list(iter_records(str(tmp_path / "a.md"), read=whole_files))
    assert got == [("# Title\n\nFirst paragraph.\n\nSecond one.\n", None, len(pages["a.md"]), len(pages["a.md"]))]
    assert list(iter_records(str(tmp_path / "a.md"), got[0][2], whole_files)) == []  # resumed past it
    proc = _processor(tmp_path, read=whole_files)
    paths = proc.process_dataset(str(tmp_path / "*.md"), str(tmp_path / "out" / "train.bin"))
    assert proc.stats["documents_kept"] == 2 and proc.stats["rejected"]["empty_text"] == 1
    docs = _docs({**paths, "tokenizer": str(tmp_path / "tokenizer.json")})
    assert docs[0].split() == pages["a.md"].split() and docs[1].strip() == "One line only"
    from data.build.sharded import plan
    assert len(plan([str(tmp_path / "a.md")], 8, "file")) == 1 and len(plan([str(tmp_path / "a.md")], 8, "line")) > 1
