"""Sharded processing: any number of worker processes or machines make the same shard files, every
document lands in exactly one shard, a SIGKILLed run resumes every shard byte-exactly, and training
reads the manifest as the one .bin its shards add up to (same samples, same losses, same resume)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from data.samples.windows import CausalWindows, SampleOrder
from data.errors import DataError
from data.build.sharded import plan
from data.samples.token_bin import TokenBin
from data.samples.token_shards import open_bin
from tests.helpers.data_fixtures import make_tokenizer, write_docs
from tests.helpers.train_harness import ROOT, losses, read_metrics, run_ok

pytestmark = pytest.mark.slow  # every test here starts processes

SHARD_MB = "0.03"  # cuts a.jsonl and the text file into byte ranges


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    make_tokenizer(root)
    write_docs(root / "a.jsonl", n=400, seed=3)
    write_docs(root / "b.jsonl", n=120, seed=4)
    with open(root / "c.txt", "w", encoding="utf-8") as f:  # paragraphs of 1-3 lines, some blank runs
        for i in range(300):
            f.write("\n".join(f"Paragraph {i} line {j}: the king speaks." for j in range(i % 3 + 1)))
            f.write("\n\n\n" if i % 7 == 0 else "\n\n")
    inputs = [str(root / n) for n in ("a.jsonl", "b.jsonl", "c.txt")]
    reference = root / "reference"
    proc = processor(root, inputs, reference, "--workers", "1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return root, inputs, reference


def processor(root, inputs, out, *flags, env_extra=None, chunk_size=50):
    env = {k: v for k, v in os.environ.items() if k != "PRETRAIN_FAULT"}
    env.update(env_extra or {})
    return subprocess.run(command(root, inputs, out, *flags, chunk_size=chunk_size), cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def command(root, inputs, out, *flags, chunk_size=50):
    return [sys.executable, "-m", "data.processor", *inputs, "--out_dir", str(out), "--tokenizer",
            str(root / "tokenizer.json"), "--val_ratio", "0.1", "--shard_mb", SHARD_MB, "--chunk_size",
            str(chunk_size), *flags]


def outputs(directory) -> dict:
    """Every file that must not depend on how the work was spread (run logs hold timings)."""
    return {n: (directory / n).read_bytes() for n in sorted(os.listdir(directory)) if not n.endswith(".run.json")}


def test_the_plan_cuts_at_record_boundaries_and_covers_every_byte(corpus):
    root, inputs, reference = corpus
    pieces = plan(inputs, int(float(SHARD_MB) * 1e6), "paragraph")
    assert len(pieces) > len(inputs)  # a.jsonl and c.txt were cut
    for path in inputs:
        mine = [p for p in pieces if p["path"] == os.path.abspath(path)]
        data = open(path, "rb").read()
        assert mine[0]["start"] == 0 and mine[-1]["end"] == len(data)
        assert all(a["end"] == b["start"] for a, b in zip(mine, mine[1:]))
        for p in mine[1:]:  # each later piece starts a record: after a newline, or a blank line for paragraphs
            assert data[p["start"] - 1:p["start"]] == b"\n"
            if path.endswith(".txt"):
                assert data[p["start"] - 2:p["start"]] == b"\n\n"


def test_workers_and_machines_make_the_same_shards_and_keep_every_document_once(corpus, tmp_path):
    root, inputs, reference = corpus
    expected = outputs(reference)
    manifest = json.loads(expected["manifest.json"])
    assert len(manifest["shards"]) == len(plan(inputs, int(float(SHARD_MB) * 1e6), "paragraph"))
    proc = processor(root, inputs, tmp_path / "two", "--workers", "2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert outputs(tmp_path / "two") == expected
    # Two machines, each its part, in directories of their own: together the same files.
    together = {}
    for index in (0, 1):
        out = tmp_path / f"machine{index}"
        proc = processor(root, inputs, out, "--num_shards", "2", "--shard_index", str(index), "--workers", "2")
        assert proc.returncode == 0, proc.stderr[-2000:]
        part = outputs(out)
        assert part["manifest.json"] == expected["manifest.json"]
        assert {n for n in part if n.startswith("train-")} == \
            {n for i, s in enumerate(manifest["shards"]) if i % 2 == index
             for n in expected if n.startswith(s["train"][:-len("bin")])}
        together.update(part)
    assert together == expected
    # The same documents as one unsharded run: same count, same tokens in total.
    single = tmp_path / "single"
    run_ok([sys.executable, "-m", "data.processor", *inputs, "--out_dir", str(single), "--tokenizer",
            str(root / "tokenizer.json"), "--val_ratio", "0.1"])
    whole = [TokenBin(str(single / n)) for n in ("train.bin", "val.bin")]
    shards = [open_bin(str(reference / "manifest.json"), s) for s in ("train", "val")]
    assert sum(b.meta["n_docs"] for b in shards) == sum(b.meta["n_docs"] for b in whole) == 400 + 120 + 300
    assert sum(len(b) for b in shards) == sum(len(b) for b in whole)
    assert sorted(np.concatenate([b.tokens[0:len(b)] for b in shards]).tolist()) == \
        sorted(np.concatenate([np.asarray(b.tokens) for b in whole]).tolist())


def progress_commits(out) -> int:
    n = 0
    for name in os.listdir(out) if os.path.isdir(out) else []:
        if name.endswith(".progress.json"):
            try:
                state = json.loads((out / name).read_text())
                n += state["stats"]["documents_read"] > 0
            except (OSError, ValueError, KeyError):
                pass
    return n


def test_parent_sigkilled_mid_run_resumes_every_shard_byte_exactly(corpus, tmp_path):
    """Only the parent is killed: its workers must die with it (a straggler would write on)."""
    root, inputs, reference = corpus
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "PRETRAIN_FAULT"}
    proc = subprocess.Popen(command(root, inputs, out, "--workers", "2", chunk_size=1), cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while proc.poll() is None and progress_commits(out) < 2 and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not (out / "manifest.json").exists()
    proc = processor(root, inputs, out, "--workers", "2", chunk_size=1)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert outputs(out) == outputs(reference)
    assert not any(n.endswith((".partial", ".progress.json", ".lock")) for n in os.listdir(out))


def test_a_worker_killed_at_a_commit_is_one_error_line_and_a_rerun_finishes(corpus, tmp_path):
    root, inputs, reference = corpus
    out = tmp_path / "out"
    proc = processor(root, inputs, out, "--workers", "2", env_extra={"PRETRAIN_FAULT": "chunk_committed:2"},
                     chunk_size=20)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error: a worker process died")
    assert "Traceback" not in proc.stderr
    proc = processor(root, inputs, out, "--workers", "2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert outputs(out) == outputs(reference)


def test_bad_shard_flags_are_one_line(corpus, tmp_path):
    root, inputs, _ = corpus
    for flags in (["--num_shards", "2"], ["--num_shards", "2", "--shard_index", "2"], ["--workers", "0"],
                  ["--shard_mb", "0"], ["--workers", "2", "--word_starts"], ["--workers", "2", "--prefix_field", "p"]):
        proc = processor(root, inputs, tmp_path / "x", *flags)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and proc.stderr.startswith("error:"), \
            (flags, proc.stderr)


def test_a_missing_shard_is_named(corpus, tmp_path):
    root, _, reference = corpus
    partial = tmp_path / "partial"
    shutil.copytree(reference, partial)
    os.remove(partial / "train-00001.bin.meta.json")
    with pytest.raises(DataError, match="train-00001.bin"):
        open_bin(str(partial / "manifest.json"))


@pytest.mark.parametrize("lost", ["second", "last"])
def test_a_manifest_that_lost_an_entry_is_refused(corpus, tmp_path, lost):
    """Before the check, a manifest without one of its entries trained on the rest without a word."""
    _, _, reference = corpus
    partial = tmp_path / "partial"
    shutil.copytree(reference, partial)
    manifest = json.loads((partial / "manifest.json").read_text())
    assert manifest["shards"][0]["input"][0] == manifest["shards"][1]["input"][0]  # one input cut in two or more
    del manifest["shards"][1 if lost == "second" else -1]
    if lost == "second":  # as a manifest written before the count was recorded: the byte ranges show the gap
        manifest.pop("n_shards", None)
    (partial / "manifest.json").write_text(json.dumps(manifest))
    fragment = "no entry covers bytes" if lost == "second" else f"lists {len(manifest['shards'])} shards but"
    with pytest.raises(DataError, match=fragment):
        open_bin(str(partial / "manifest.json"))


def concatenate(manifest, split, out_path):
    """The one .bin (sidecars included) the manifest's shards add up to."""
    sharded = open_bin(str(manifest), split)
    np.asarray(sharded.tokens[0:len(sharded)]).tofile(out_path)
    sharded.doc_offsets().astype("<u8").tofile(str(out_path) + ".idx")
    with open(str(out_path) + ".meta.json", "w") as f:
        json.dump(sharded.meta, f)
    return sharded


def test_the_manifest_reads_as_the_bin_its_shards_add_up_to(corpus, tmp_path):
    _, _, reference = corpus
    sharded = concatenate(reference / "manifest.json", "train", tmp_path / "train.bin")
    single = TokenBin(str(tmp_path / "train.bin"))
    assert len(sharded.shards) > 3 and len(single) == len(sharded)
    a, b = CausalWindows(sharded, 37), CausalWindows(single, 37)
    order = SampleOrder(len(a), seed=5)
    assert len(a) == len(b)
    for position in range(2 * len(a)):  # two epochs, windows crossing shard boundaries included
        i = order.index(position)
        assert all(np.array_equal(p.numpy(), q.numpy()) for p, q in zip(a[i], b[i]))
    assert np.array_equal(sharded.doc_offsets(), single.doc_offsets())
    # A glob of the shards is the same dataset.
    assert np.array_equal(open_bin(str(reference / "train-*.bin")).tokens[0:len(single)], single.tokens[:])


def train(out, train_bin, val_bin, tokenizer, *extra):
    return run_ok([sys.executable, os.path.join(ROOT, "train.py"), "--data.train_bin", str(train_bin),
                   "--data.val_bin", str(val_bin), "--data.tokenizer_path", str(tokenizer), "--model.dim", "64",
                   "--model.n_layers", "2", "--model.n_heads", "4", "--model.max_seq_len", "32", "--max_steps", "6",
                   "--batch_size", "8", "--warmup", "2", "--eval_interval", "3", "--eval_batches", "2",
                   "--save_interval", "3", "--log_interval", "1", "--device", "cpu", "--dtype", "float32",
                   "--out_dir", str(out), "--run_name", "run", *extra])


def test_training_on_a_manifest_equals_training_on_its_concatenation_and_resumes_exactly(corpus, tmp_path):
    root, _, reference = corpus
    manifest = reference / "manifest.json"
    for split in ("train", "val"):
        concatenate(manifest, split, tmp_path / f"{split}.bin")
    tok = root / "tokenizer.json"
    train(tmp_path / "sharded", manifest, manifest, tok)
    train(tmp_path / "single", tmp_path / "train.bin", tmp_path / "val.bin", tok)
    sharded, single = tmp_path / "sharded" / "run", tmp_path / "single" / "run"
    assert len(losses(sharded)) == 6 and losses(sharded) == losses(single)
    assert [r["loss"] for r in read_metrics(sharded, "val")] == [r["loss"] for r in read_metrics(single, "val")]
    # Resumed from its step-3 checkpoint, the sharded run continues as it went on uninterrupted.
    shutil.copytree(sharded, tmp_path / "resumed" / "run")
    for name in os.listdir(tmp_path / "resumed" / "run"):
        if name.startswith("checkpoint_step_6") or name == "metrics.jsonl":
            os.remove(tmp_path / "resumed" / "run" / name)
    train(tmp_path / "resumed", manifest, manifest, tok, "--resume_from",
          str(tmp_path / "resumed" / "run" / "checkpoint_step_3.pth"))
    resumed = losses(tmp_path / "resumed" / "run")
    assert {s: resumed[s] for s in (4, 5, 6)} == {s: losses(sharded)[s] for s in (4, 5, 6)}
