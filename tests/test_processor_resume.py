"""The processor killed with SIGKILL at any point and run again produces byte-identical files.

The kill points are the processor's fault-injection hook (PRETRAIN_FAULT), which SIGKILLs the real
subprocess at a named point: early, mid-chunk (tokens written, progress not yet committed), after
a few committed chunks, and in the middle of the final renames."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers.data_fixtures import make_tokenizer, write_docs
from tests.helpers.train_harness import ROOT

pytestmark = pytest.mark.slow  # every test here starts processes

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


def command(root, out_dir, chunk_size=50):
    return [sys.executable, "-m", "data.processor", str(root / "a.jsonl"), str(root / "b.jsonl"), "--out_dir",
            str(out_dir), "--tokenizer", str(root / "tokenizer.json"), "--chunk_size", str(chunk_size),
            "--val_ratio", "0.1"]


def process(root, out_dir, fault=None):
    env = dict(os.environ)
    env.pop("PRETRAIN_FAULT", None)
    if fault:
        env["PRETRAIN_FAULT"] = fault
    return subprocess.run(command(root, out_dir), cwd=ROOT, env=env, capture_output=True, text=True)


@pytest.mark.parametrize("faults", [
    ["chunk_written:1"],                     # early: first chunk's tokens written, nothing committed
    ["chunk_written:4"],                     # mid-run, between a write and its commit
    ["chunk_committed:3", "chunk_written:2"],  # killed twice
    ["chunk_committed:11"],                  # the second input file's first commit
    ["finalize_stats"],                      # during the final write
    ["finalize_renamed:1"],                  # half the outputs renamed
    ["finalize_meta:1"],                     # train's sidecar written, val's not yet
    ["finalize_meta:2"],                     # both sidecars written, progress file not yet removed
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


def position(out):
    try:
        state = json.loads((out / "train.bin.progress.json").read_text())
        return state["file_index"], state["offset"]
    except (OSError, ValueError, KeyError):
        return None


def test_killed_from_outside_at_arbitrary_moments(setup, tmp_path):
    """No cooperation from the processor: each run is SIGKILLed a random few milliseconds after its
    durable progress passes a mark (10% and 60% into the first file, 30% into the second), which lands
    in the middle of writes, fsyncs and commits alike; a last run finishes the job."""
    root, reference = setup
    out, rng = tmp_path / "out", random.Random(0)
    env = {k: v for k, v in os.environ.items() if k != "PRETRAIN_FAULT"}
    size_a, size_b = os.path.getsize(root / "a.jsonl"), os.path.getsize(root / "b.jsonl")
    for mark in ((0, size_a // 10), (0, size_a * 6 // 10), (1, size_b * 3 // 10)):
        proc = subprocess.Popen(command(root, out, chunk_size=1), cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while proc.poll() is None and (position(out) or (0, 0)) < mark:
            time.sleep(0.001)
        time.sleep(rng.uniform(0, 0.002))
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL and not (out / "train.bin.meta.json").exists()
    proc = subprocess.run(command(root, out, chunk_size=1), cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in OUTPUTS:   # (the reference used chunks of 50: chunking never changes the bytes either)
        assert (out / name).read_bytes() == reference[name], name
