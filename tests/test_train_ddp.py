"""Distributed training on CPU (gloo) with real torchrun processes: two ranks with batch B equal one
process with batch 2B; a SIGTERM-interrupted two-rank run resumes into the uninterrupted run; two
single-process 'nodes' meeting through torchrun's rendezvous equal one process."""
import os
import signal
import subprocess
import sys

import pytest
import torch

from tests.helpers.train_harness import (ROOT, env, free_port, losses, max_weight_diff, run, run_ok, run_torchrun_ok,
                                 start_and_signal,
                                 torchrun_cmd, train_cmd, weights, write_config)

pytestmark = pytest.mark.slow  # every test here starts processes


def assert_same_run(a_dir, b_dir, final):
    a, b = losses(a_dir), losses(b_dir)
    assert sorted(a) == sorted(b) and len(a) > 0
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-5, abs=1e-6), step
    assert max_weight_diff(weights(os.path.join(a_dir, final)), weights(os.path.join(b_dir, final))) < 1e-5


@pytest.fixture
def single_reference(tiny_corpus, run_root):
    corpus, data_dir = tiny_corpus
    cfg = write_config(run_root / "single.yaml", corpus, data_dir, run_root / "out", run_name="single",
                       max_steps=30, batch_size=8, save_interval=10)
    run_ok(train_cmd("--config", cfg))
    return str(run_root / "out" / "single")


def test_two_ranks_equal_one_process_with_double_batch(tiny_corpus, run_root, single_reference):
    corpus, data_dir = tiny_corpus
    cfg = write_config(run_root / "ddp.yaml", corpus, data_dir, run_root / "out", run_name="ddp",
                       max_steps=30, batch_size=4, save_interval=10)
    run_torchrun_ok(2, "--config", cfg, "--ddp")
    assert_same_run(single_reference, str(run_root / "out" / "ddp"), "checkpoint_step_30.pth")


def test_two_ranks_with_muon_equal_one_process_with_double_batch(tiny_corpus, run_root):
    """Every rank orthogonalises the same averaged gradient: the ranks stay one model."""
    corpus, data_dir = tiny_corpus
    muon = dict(max_steps=12, save_interval=12, optimizer_type="muon", lr_scheduler="wsd")
    single = write_config(run_root / "single.yaml", corpus, data_dir, run_root / "out", run_name="single",
                          batch_size=8, **muon)
    run_ok(train_cmd("--config", single))
    cfg = write_config(run_root / "ddp.yaml", corpus, data_dir, run_root / "out", run_name="ddp", batch_size=4, **muon)
    run_torchrun_ok(2, "--config", cfg, "--ddp")
    assert_same_run(str(run_root / "out" / "single"), str(run_root / "out" / "ddp"), "checkpoint_step_12.pth")


def test_sigterm_two_ranks_then_resume_equals_uninterrupted(tiny_corpus, run_root, single_reference):
    corpus, data_dir = tiny_corpus
    cfg = write_config(run_root / "ddp.yaml", corpus, data_dir, run_root / "out", run_name="ddp",
                       max_steps=30, batch_size=4, save_interval=10)
    run_dir = str(run_root / "out" / "ddp")
    code, out, err = start_and_signal(torchrun_cmd(2, "--config", cfg, "--ddp"), run_dir, at_step=3,
                                      sig=signal.SIGTERM)
    assert os.path.exists(os.path.join(run_dir, "checkpoint_interrupted.pth")), err[-3000:]
    step = torch.load(os.path.join(run_dir, "checkpoint_interrupted.pth"), weights_only=True)["step"]
    assert 3 <= step < 30
    run_torchrun_ok(2, "--config", cfg, "--ddp", "--resume")
    assert not os.path.exists(os.path.join(run_dir, "checkpoint_interrupted.pth"))
    assert_same_run(single_reference, run_dir, "checkpoint_step_30.pth")


def test_resume_on_another_world_size_continues_the_same_run(tiny_corpus, run_root, single_reference):
    """A single-process checkpoint resumed by two ranks (same global batch) finishes as the single run."""
    corpus, data_dir = tiny_corpus
    cfg = write_config(run_root / "grow.yaml", corpus, data_dir, run_root / "out", run_name="grow",
                       max_steps=30, batch_size=4, save_interval=10)
    start = os.path.join(single_reference, "checkpoint_step_10.pth")
    run_torchrun_ok(2, "--config", cfg, "--ddp", "--resume_from", start)
    a, b = losses(single_reference), losses(str(run_root / "out" / "grow"))
    assert sorted(b) == list(range(11, 31))
    for step in b:
        assert b[step] == pytest.approx(a[step], rel=1e-5, abs=1e-6), step
    final = "checkpoint_step_30.pth"
    assert max_weight_diff(weights(os.path.join(single_reference, final)),
                           weights(run_root / "out" / "grow" / final)) < 1e-5


def test_two_node_rendezvous_equals_one_process(tiny_corpus, run_root, single_reference):
    """Two 'nodes' of one process each, launched as on two machines (node 0 hosts the rendezvous
    store at --master_addr:--master_port), train as one run."""
    corpus, data_dir = tiny_corpus
    cfg = write_config(run_root / "nodes.yaml", corpus, data_dir, run_root / "out", run_name="nodes",
                       max_steps=30, batch_size=4, save_interval=10)
    port = free_port()
    procs = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1", f"--node_rank={rank}",
         "--master_addr=127.0.0.1", f"--master_port={port}", os.path.join(ROOT, "train.py"), "--config", cfg, "--ddp"],
        cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    try:
        results = [p.communicate(timeout=240) for p in procs]
    finally:
        for p in procs:  # never leave a node waiting on a rendezvous behind the test
            if p.poll() is None:
                p.kill()
    for p, (out, err) in zip(procs, results):
        assert p.returncode == 0, err[-3000:]
    assert_same_run(single_reference, str(run_root / "out" / "nodes"), "checkpoint_step_30.pth")


def test_torchrun_without_ddp_flag_refuses_to_train_copies(tiny_corpus, run_root):
    corpus, data_dir = tiny_corpus
    cfg = write_config(run_root / "nod.yaml", corpus, data_dir, run_root / "out", run_name="nod", max_steps=4)
    proc = run(torchrun_cmd(2, "--config", cfg))
    assert proc.returncode != 0 and "without --ddp" in proc.stderr
    assert not os.path.exists(run_root / "out" / "nod" / "metrics.jsonl")
