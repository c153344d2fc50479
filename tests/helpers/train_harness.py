"""Shared pieces for tests that run train.py as real processes on a tiny synthetic corpus."""
import json
import os
import random
import socket
import subprocess
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORDS = ("the king queen lord lady love death night day sword crown heart blood time world man "
         "woman father mother son daughter speak come go see know think tell give take make good "
         "fair sweet noble true false dead old young great little honour grace heaven earth").split()


def write_corpus(path, n_docs=240, seed=0):
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(n_docs):
            sentences = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))).capitalize() + "."
                         for _ in range(rng.randint(3, 9))]
            f.write(json.dumps({"text": " ".join(sentences)}) + "\n")


def write_config(path, corpus, data_dir, out_dir, objective="clm", **train):
    """A tiny model whose steps take tens of milliseconds, so kills can land between checkpoints."""
    settings = dict(run_name="run", max_steps=12, batch_size=8, learning_rate=3e-3, min_lr=3e-4, warmup=2,
                    eval_interval=4, eval_batches=2, save_interval=4, log_interval=1, seed=7, keep_last=10)
    settings.update(train)
    lines = ["model:", f"  objective: {objective}", "  dim: 64", "  n_layers: 2", "  n_heads: 4",
             "  n_kv_heads: 2", "  max_seq_len: 32", "data:", f"  inputs: [{corpus}]", f"  out_dir: {data_dir}",
             "  vocab_size: 400", "  val_ratio: 0.1", "train:", f"  out_dir: {out_dir}"]
    lines += [f"  {k}: {json.dumps(v) if isinstance(v, str) else v}" for k, v in settings.items()]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return str(path)


def env():
    e = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    e.pop("WORLD_SIZE", None)
    return e


def train_cmd(*args):
    return [sys.executable, os.path.join(ROOT, "train.py"), *args]


def torchrun_cmd(nproc, *args, extra=()):
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", *extra,
            "--master_port", str(free_port()), os.path.join(ROOT, "train.py"), *args]


PORT_ERRORS = ("Address already in use", "EADDRINUSE", "DistNetworkError")


def run_torchrun_ok(nproc, *args, timeout=300):
    """torchrun on a free port; a port taken between choosing and binding it gets one new try."""
    proc = run(torchrun_cmd(nproc, *args), timeout)
    if proc.returncode != 0 and any(e in proc.stderr for e in PORT_ERRORS):
        proc = run(torchrun_cmd(nproc, *args), timeout)
    assert proc.returncode == 0, f"torchrun {' '.join(args)}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    return proc


def run(cmd, timeout=300):
    proc = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=timeout)
    return proc


def run_ok(cmd, timeout=300):
    proc = run(cmd, timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    return proc


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_metrics(run_dir, split="train"):
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    out = []
    with open(path) as f:
        for line in f:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("split") == split:
                out.append(rec)
    return out


def losses(run_dir):
    return {r["step"]: r["loss"] for r in read_metrics(run_dir)}


def descendants(pid):
    """pid and every process below it (torchrun starts its ranks in sessions of their own)."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(children.get(p, []))
    return found


def start_and_signal(cmd, run_dir, at_step, sig, tree=False):
    """Start a training process and send `sig` once it has logged step `at_step`; tree: to it and
    every process it started (torchrun and all its ranks at once, as when a machine dies)."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if any(r["step"] >= at_step for r in read_metrics(run_dir)):
            break
        time.sleep(0.005)
    assert proc.poll() is None, f"finished before the signal:\n{proc.stderr.read()[-2000:]}"
    for pid in descendants(proc.pid) if tree else [proc.pid]:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


def weights(path, key="model"):
    return torch.load(path, map_location="cpu", weights_only=True)[key]


def max_weight_diff(a, b):
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)
