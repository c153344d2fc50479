"""The JSONL processor: every bad line is counted by reason, never a crash; output format and split."""
import json
import subprocess
import sys

import numpy as np
import pytest

from data.errors import DataError
from data.build.corpus_processor import DataProcessor
from data.sources.settings import ReadSettings
from data.samples.token_bin import TokenBin
from tests.helpers.data_fixtures import make_tokenizer, write_bad_corpus, write_docs
from tests.helpers.train_harness import ROOT


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    root = tmp_path_factory.mktemp("proc")
    return make_tokenizer(root), root


def test_every_bad_line_is_counted_by_reason(tok, tmp_path):
    tokenizer, root = tok
    corpus = write_bad_corpus(tmp_path / "bad.jsonl")
    proc = DataProcessor(str(root / "tokenizer.json"), val_ratio=0.0, show_progress=False)
    paths = proc.process_dataset(corpus, str(tmp_path / "train.bin"))
    s = proc.stats
    assert s["documents_read"] == 14 and s["documents_kept"] == 5
    assert {k: v for k, v in s["rejected"].items() if v} == {
        "invalid_json": 1, "not_object": 1, "missing_field": 1, "non_string": 1, "empty_text": 1,
        "invalid_utf8": 2, "contains_nul": 1, "empty_line": 1}
    b = TokenBin(paths["train"])
    docs = np.split(np.asarray(b.tokens), b.doc_offsets()[1:-1])
    texts = [tokenizer.decode(d[:-1].tolist()) for d in docs]
    assert texts[0] == "good one" and texts[1] == "crlf line" and texts[2] == "bom line"
    assert texts[3] == "x" * 3_000_000 and texts[4] == "no final newline"
    assert all(d[-1] == tokenizer.eos_id for d in docs)
    limited = DataProcessor(str(root / "tokenizer.json"), read=ReadSettings(max_chars=1000), show_progress=False)
    limited.process_dataset(corpus, str(tmp_path / "lim" / "train.bin"))
    assert limited.stats["rejected"]["too_long"] == 1


def test_output_format_meta_and_stats(tok, tmp_path):
    tokenizer, root = tok
    corpus = write_docs(tmp_path / "c.jsonl", n=400)
    proc = DataProcessor(str(root / "tokenizer.json"), val_ratio=0.1, chunk_size=64, show_progress=False)
    paths = proc.process_dataset(corpus, str(tmp_path / "train.bin"))
    train, val = TokenBin(paths["train"]), TokenBin(paths["val"])
    assert train.meta["dtype"] == "uint16" and train.tokens.dtype == np.dtype("<u2")
    assert train.meta["tokenizer_fingerprint"] == tokenizer.fingerprint()
    assert train.meta["n_docs"] + val.meta["n_docs"] == 400
    assert 20 <= val.meta["n_docs"] <= 60                      # about 10%, by document
    raw = np.fromfile(paths["train"], dtype="<u2")             # plain little-endian array
    assert np.array_equal(raw, np.asarray(train.tokens))
    assert (raw == tokenizer.eos_id).sum() == train.meta["n_docs"]
    stats = json.load(open(paths["stats"]))["statistics"]
    lengths = np.concatenate([np.diff(train.doc_offsets()), np.diff(val.doc_offsets())])  # eos included
    tpd = stats["tokens_per_document"]
    assert (tpd["min"], tpd["max"], tpd["mean"]) == (lengths.min(), lengths.max(), round(lengths.mean(), 3))
    bounds = [h["up_to_tokens"] for h in tpd["log2_histogram"]]
    assert bounds == sorted(bounds) and sum(h["documents"] for h in tpd["log2_histogram"]) == 400
    assert stats["splits"]["train"]["text_bytes"] == train.meta["n_text_bytes"] > 0
    assert "timing" not in json.load(open(paths["stats"]))    # timing lives in the run log only
    timing = json.load(open(paths["run_log"]))["timing"]
    assert timing["tokens"] == train.meta["n_tokens"] + val.meta["n_tokens"] and timing["tokens_per_second"] > 0
    assert stats["splits"]["train"]["tokens"] == train.meta["n_tokens"]
    # The split does not depend on chunking.
    other = DataProcessor(str(root / "tokenizer.json"), val_ratio=0.1, chunk_size=7, show_progress=False)
    other_paths = other.process_dataset(corpus, str(tmp_path / "b" / "train.bin"))
    assert open(other_paths["val"], "rb").read() == open(paths["val"], "rb").read()
    proc.save_statistics(str(tmp_path / "s.json"))
    assert json.load(open(tmp_path / "s.json"))["timing"]["tokens_per_second"] > 0


def test_foreign_tokenizer_is_refused(tok, tmp_path):
    _, root = tok
    proc = DataProcessor(str(root / "tokenizer.json"), show_progress=False)
    paths = proc.process_dataset(write_docs(tmp_path / "c.jsonl", n=20), str(tmp_path / "train.bin"))
    with pytest.raises(DataError, match="made with another tokenizer"):
        TokenBin(paths["train"]).check_tokenizer("0" * 16)


def test_validate_and_clean(tok, tmp_path):
    _, root = tok
    proc = DataProcessor(str(root / "tokenizer.json"), show_progress=False)
    stats = proc.validate_and_clean_jsonl(write_bad_corpus(tmp_path / "bad.jsonl"), str(tmp_path / "clean.jsonl"))
    lines = [json.loads(l) for l in open(tmp_path / "clean.jsonl", encoding="utf-8")]
    assert len(lines) == stats["documents_kept"] == 5 and lines[0] == {"text": "good one"}


@pytest.mark.slow
def test_text_field_and_globs_via_cli(tok, tmp_path):
    _, root = tok
    write_docs(tmp_path / "a1.jsonl", n=30, field="content")
    write_docs(tmp_path / "a2.jsonl", n=30, seed=5, field="content")
    proc = subprocess.run([sys.executable, "-m", "data.processor", str(tmp_path / "a*.jsonl"), "--out_dir",
                           str(tmp_path / "out"), "--tokenizer", str(root / "tokenizer.json"), "--text_field",
                           "content", "--val_ratio", "0.2"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    stats = json.load(open(tmp_path / "out" / "train.stats.json"))["statistics"]
    assert stats["documents_kept"] == 60


@pytest.mark.slow
def test_cli_missing_input_is_one_line_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "data.processor", str(tmp_path / "nope.jsonl"), "--out_dir",
                           str(tmp_path / "o")], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: input file not found: {tmp_path / 'nope.jsonl'}"


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (["--val_ratio", "1.5"], "error: val_ratio must be in [0, 1), got 1.5"),
    (["--chunk_size", "0"], "error: chunk_size must be at least 1, got 0"),
    (["--vocab_size", "100"], "error: vocab_size must be at least 261 (256 bytes + 5 special tokens), got 100"),
    (["--bogus"], "error: unrecognized arguments: --bogus; see python -m data.processor --help"),
])
def test_cli_bad_settings_are_one_line_exit_2_before_any_work(tmp_path, args, message):
    corpus = write_docs(tmp_path / "c.jsonl", n=5)
    proc = subprocess.run([sys.executable, "-m", "data.processor", corpus, "--out_dir", str(tmp_path / "o")] + args,
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip() == message
    assert not (tmp_path / "o" / "tokenizer.json").exists()


@pytest.mark.slow
def test_the_processor_does_not_load_torch():
    """torch alone adds about 160 MiB of RSS; the processor, run on its own, must not pay it."""
    import subprocess
    import sys

    from tests.helpers.train_harness import ROOT
    code = "import sys, data.processor, data.build.prepare; print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "False", proc.stdout + proc.stderr


def _long_docs(path, n=20, chars=1500):
    """Documents of about `chars` characters each, as a real corpus's articles are."""
    words = "the king queen speaks night crown sword love honour death".split()
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            text = " ".join(words[(i + k) % len(words)] for k in range(chars // 6))
            f.write(json.dumps({"text": f"Doc {i}: {text}"}) + "\n")
    return str(path)


def test_max_length_as_the_reference_writes_it_keeps_long_documents_and_sets_the_sample_length(tok, tmp_path, capsys):
    """DataProcessor(max_length=512) dropped every document over 512 characters as too_long."""
    _, root = tok
    corpus = _long_docs(tmp_path / "long.jsonl")
    proc = DataProcessor(str(root / "tokenizer.json"), max_length=512, chunk_size=8, show_progress=False)
    paths = proc.process_dataset(corpus, str(tmp_path / "train.bin"))
    assert proc.stats["documents_kept"] == 20 and sum(proc.stats["rejected"].values()) == 0
    train = TokenBin(paths["train"])
    assert train.meta["sample_length"] == 512 and train.meta["n_tokens"] > 20 * 512 / 2  # whole documents
    assert "note:" not in capsys.readouterr().out
    with pytest.raises(DataError, match="max_length is the training sample length in tokens"):
        DataProcessor(str(root / "tokenizer.json"), max_length=0, show_progress=False)


def test_a_run_rejecting_more_than_a_small_share_says_so_at_the_end(tok, tmp_path, capsys):
    _, root = tok
    corpus = _long_docs(tmp_path / "long.jsonl", n=10)
    with open(corpus, "a", encoding="utf-8") as f:
        for i in range(10):
            f.write(json.dumps({"text": f"short document {i}"}) + "\n")
    proc = DataProcessor(str(root / "tokenizer.json"), read=ReadSettings(max_chars=1000), show_progress=False)
    proc.process_dataset(corpus, str(tmp_path / "train.bin"))
    out = capsys.readouterr().out
    notes = [line for line in out.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and notes[0].startswith('note: 10 of 20 documents (50%) were rejected {"too_long": 10}')
    assert "max_chars (1,000 characters)" in notes[0]
    # train.py's data build (data.build.prepare.prepare_corpus) says it too.
    from data.build.prepare import prepare_corpus
    prepare_corpus([corpus], str(tmp_path / "run"), tokenizer_path=str(root / "tokenizer.json"),
                   read=ReadSettings(max_chars=1000))
    assert 'note: 10 of 20 documents (50%) were rejected {"too_long": 10}' in capsys.readouterr().out
    # A few rejections (at most 5%) stay quiet.
    proc = DataProcessor(str(root / "tokenizer.json"), show_progress=False)
    proc.process_dataset(corpus, str(tmp_path / "all.bin"))
    assert "note:" not in capsys.readouterr().out
