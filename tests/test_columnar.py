"""Parquet files and saved Hugging Face datasets (Arrow files + state.json) as inputs: the same
documents as a JSONL file give the same token files to the byte, rows are validated and counted
like lines, reading resumes at any row, a SIGKILLed run resumes byte-exactly, bad inputs are one line."""
import json
import os
import signal
import subprocess
import sys

import pytest

pa = pytest.importorskip("pyarrow")
import pyarrow.parquet as pq  # noqa: E402

from data.sources.columnar import iter_columnar  # noqa: E402
from data.sources.records import iter_records  # noqa: E402
from tests.helpers.data_fixtures import GOOD_WORDS, make_tokenizer  # noqa: E402
from tests.helpers.train_harness import ROOT  # noqa: E402

OUTPUTS = ("train.bin", "train.bin.idx", "train.bin.meta.json", "val.bin", "val.bin.idx", "val.bin.meta.json")


def rows(n=260):
    """Texts with the cases a reader must reject in place: null, empty, whitespace."""
    out = []
    for i in range(n):
        words = " ".join(GOOD_WORDS[(i * 7 + j) % len(GOOD_WORDS)] for j in range(5 + i % 40))
        out.append(None if i % 50 == 7 else "" if i % 50 == 8 else "  " if i % 50 == 9 else f"Row {i}: {words}.")
    return out


def write_parquet(path, texts):
    table = pa.table({"id": list(range(len(texts))), "text": pa.array(texts, pa.string())})
    pq.write_table(table, path, row_group_size=37)  # several row groups, none aligned with the batches
    return str(path)


def write_saved_dataset(directory, texts, files=2):
    """The layout datasets' save_to_disk writes: Arrow stream files, dataset_info.json, state.json."""
    os.makedirs(directory)
    names, per = [], -(-len(texts) // files)
    for k in range(files):
        name = f"data-{k:05d}-of-{files:05d}.arrow"
        part = texts[k * per:(k + 1) * per]
        batch_rows = 16
        schema = pa.schema([("text", pa.string()), ("id", pa.int64())])
        with pa.OSFile(os.path.join(directory, name), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
            for s in range(0, len(part), batch_rows):
                chunk = part[s:s + batch_rows]
                writer.write_batch(pa.record_batch([pa.array(chunk, pa.string()), pa.array(range(len(chunk)))],
                                                   schema=schema))
        names.append({"filename": name})
    with open(os.path.join(directory, "state.json"), "w") as f:
        json.dump({"_data_files": names, "_fingerprint": "test", "_split": "train"}, f)
    with open(os.path.join(directory, "dataset_info.json"), "w") as f:
        json.dump({"features": {"text": {"dtype": "string", "_type": "Value"}}}, f)
    return str(directory)


def write_jsonl(path, texts):
    with open(path, "w", encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps({"text": t}, ensure_ascii=False) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("columnar")
    make_tokenizer(root)
    texts = rows()
    return root, texts, {"jsonl": write_jsonl(root / "c.jsonl", texts), "parquet": write_parquet(root / "c.parquet", texts),
                         "saved": write_saved_dataset(root / "saved", texts)}


def process(root, source, out, *flags, fault=None):
    env = {k: v for k, v in os.environ.items() if k != "PRETRAIN_FAULT"}
    if fault:
        env["PRETRAIN_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "data.processor", source, "--out_dir", str(out), "--tokenizer",
                           str(root / "tokenizer.json"), "--val_ratio", "0.1", *flags], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_rows_are_read_validated_and_resumed_at_any_row(inputs):
    root, texts, paths = inputs
    for kind in ("parquet", "saved"):
        got = list(iter_records(paths[kind], 0))
        assert [t for t, *_ in got] == [t if t and t.strip() else None for t in texts]
        assert [r for _, r, _, _ in got if r] == ["non_string" if t is None else "empty_text"
                                                   for t in texts if not (t and t.strip())]
        assert [o for _, _, o, _ in got] == list(range(1, len(texts) + 1))
        for start in (1, 36, 37, 100, 129, 130, len(texts) - 1, len(texts)):  # across row groups and files
            assert list(iter_records(paths[kind], start)) == got[start:]


@pytest.mark.slow
def test_parquet_and_a_saved_dataset_give_the_jsonl_files_to_the_byte(inputs, tmp_path):
    root, texts, paths = inputs
    made = {}
    for kind, path in paths.items():
        proc = process(root, path, tmp_path / kind)
        assert proc.returncode == 0, proc.stderr[-2000:]
        made[kind] = {n: (tmp_path / kind / n).read_bytes() for n in OUTPUTS if not n.endswith("meta.json")}
        stats = json.loads((tmp_path / kind / "train.stats.json").read_text())["statistics"]
        assert stats["documents_read"] == len(texts)
        assert stats["documents_kept"] == sum(1 for t in texts if t and t.strip())
    assert made["parquet"] == made["jsonl"] and made["saved"] == made["jsonl"]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["parquet", "saved"])
def test_killed_and_rerun_is_byte_identical(inputs, tmp_path, kind):
    root, _, paths = inputs
    reference = tmp_path / "reference"
    assert process(root, paths[kind], reference, "--chunk_size", "20").returncode == 0
    out = tmp_path / "out"
    proc = process(root, paths[kind], out, "--chunk_size", "20", fault="chunk_committed:4")
    assert proc.returncode == -signal.SIGKILL
    proc = process(root, paths[kind], out, "--chunk_size", "20")
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in OUTPUTS:
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name


@pytest.mark.slow
def test_columnar_inputs_shard_and_train_a_tokenizer(inputs, tmp_path):
    root, texts, paths = inputs
    proc = subprocess.run([sys.executable, "-m", "data.processor", paths["parquet"], paths["saved"], "--out_dir",
                           str(tmp_path / "out"), "--vocab_size", "300", "--workers", "2"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert [s["train"] for s in manifest["shards"]] == ["train-00000.bin", "train-00001.bin"]  # one per input
    assert os.path.exists(tmp_path / "out" / "tokenizer.json")


def one_error_line(proc):
    """Exit 2 and one error line (after any progress bar), no traceback."""
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    return proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_bad_columnar_inputs_are_one_line(inputs, tmp_path):
    root, _, paths = inputs
    proc = process(root, paths["parquet"], tmp_path / "a", "--text_field", "body")
    assert one_error_line(proc) and "missing_field" in proc.stderr and "'body'" in proc.stderr, proc.stderr
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 this is not parquet")
    proc = process(root, str(broken), tmp_path / "b")
    assert one_error_line(proc) and "broken.parquet" in proc.stderr, proc.stderr
    (tmp_path / "plain_dir").mkdir()
    proc = process(root, str(tmp_path / "plain_dir"), tmp_path / "c")
    assert one_error_line(proc) and "state.json" in proc.stderr, proc.stderr
    # A DatasetDict root (save_to_disk of several splits): the error names the splits found.
    write_saved_dataset(tmp_path / "dd" / "train", ["a", "b"], files=1)
    write_saved_dataset(tmp_path / "dd" / "test", ["c"], files=1)
    (tmp_path / "dd" / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "test"]}))
    proc = process(root, str(tmp_path / "dd"), tmp_path / "e")
    assert one_error_line(proc) and "DatasetDict saved by save_to_disk, with splits train, test" in proc.stderr \
        and str(tmp_path / "dd" / "train") in proc.stderr, proc.stderr
    ints = write_parquet(tmp_path / "ints.parquet", ["x"])
    pq.write_table(pa.table({"text": [1, 2, 3]}), ints)
    proc = process(root, ints, tmp_path / "d")
    assert one_error_line(proc) and "non_string" in proc.stderr, proc.stderr


def test_a_batch_at_a_time(inputs, monkeypatch):
    """The reader holds one record batch, never the file: it asks pyarrow for batches of BATCH_ROWS."""
    root, texts, paths = inputs
    seen = []
    real = pq.ParquetFile.iter_batches

    def spy(self, batch_size=65536, **kw):
        for batch in real(self, batch_size=batch_size, **kw):
            seen.append(batch.num_rows)
            yield batch
    monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
    monkeypatch.setattr("data.sources.columnar.BATCH_ROWS", 10)
    reader = iter_columnar(paths["parquet"], 0, "text")
    for _ in range(15):
        next(reader)
    assert seen == [10, 10]  # 15 rows read: two batches of 10 fetched, nothing more
