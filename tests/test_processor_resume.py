"""The processor killed with SIGKILL at any point and run again produces byte-identical files.

The kill points are the processor's fault-injection hook (PRETRAIN_FAULT), which SIGKILLs the real
subprocess at a named point: early, mid-chunk (tokens written, progress not yet committed), after
a few committed chunks, and in the middle of the final renames."""
import os
import signal
import subprocess
import sys

import pytest

from tests.data_fixtures import make_tokenizer, write_docs
from tests.train_harness import ROOT

OUTPUTS = ("train.bin", "train.bin.idx", "train.bin.meta.json", "val.bin", "val.bin.idx", "val.bin.meta.json",
           "train.stats.json")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    make_tokenizer(root)
    write_docs(root / "a.jsonl", n=500, seed=3)
    write_docs(root / "b.jsonl", n=300, seed=4)
    reference = root / "reference"
    assert process(root, reference).returncode == 0
    return root, {name: (reference / name).read_bytes() for name in OUTPUTS}


def process(root, out_dir, fault=None):
    env = dict(os.environ)
    env.pop("PRETRAIN_FAULT", None)
    if fault:
        env["PRETRAIN_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "data.processor", str(root / "a.jsonl"), str(root / "b.jsonl"),
                           "--out_dir", str(out_dir), "--tokenizer", str(root / "tokenizer.json"),
                           "--chunk_size", "50", "--val_ratio", "0.1"], cwd=ROOT, env=env,
                          capture_output=True, text=True)


@pytest.mark.parametrize("faults", [
    ["chunk_written:1"],                     # early: first chunk's tokens written, nothing committed
    ["chunk_written:4"],                     # mid-run, between a write and its commit
    ["chunk_committed:3", "chunk_written:2"],  # killed twice
    ["chunk_committed:11"],                  # the second input file's first commit
    ["finalize_stats"],                      # during the final write
    ["finalize_renamed:1"],                  # half the outputs renamed
])
def test_killed_and_rerun_is_byte_identical(setup, tmp_path, faults):
    root, reference = setup
    out = tmp_path / "out"
    for fault in faults:
        proc = process(root, out, fault)
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
        assert not (out / "train.bin.meta.json").exists() or fault.startswith("finalize")
    proc = process(root, out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in OUTPUTS:
        assert (out / name).read_bytes() == reference[name], name
    assert not any(p.endswith((".partial", ".progress.json")) for p in os.listdir(out))
