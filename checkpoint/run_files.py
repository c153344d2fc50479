"""The checkpoints a run directory holds: checkpoint_step_N, checkpoint_interrupted and best.pth,
each a .pth file or (written with --fsdp) a .dcp directory; which holds the most progress, and
which go when a run prunes, finishes or starts over."""
import glob
import os
import re
import shutil

import torch

from checkpoint.format import SHARD_META, SHARDED, is_sharded

CHECKPOINT_RE = re.compile(r"checkpoint_step_(\d+)\.(?:pth|dcp)$")
INTERRUPTED = "checkpoint_interrupted.pth"
BEST = "best.pth"


def step_checkpoints(run_dir: str) -> list:
    """[(step, path)] of checkpoint_step_N.pth files, oldest first."""
    found = []
    for p in glob.glob(os.path.join(run_dir, "checkpoint_step_*")):
        m = CHECKPOINT_RE.search(p)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(run_dir: str):
    """The checkpoint holding the most progress: the highest step among checkpoint_step_N.pth and
    checkpoint_interrupted.pth (the interrupted one wins a tie, it is written later)."""
    candidates = step_checkpoints(run_dir)
    for interrupted in interrupted_checkpoints(run_dir):
        step = checkpoint_step(interrupted)
        if step is not None:  # an unreadable interrupted file must not hide the good step checkpoints
            candidates.append((step + 0.5, interrupted))
    return max(candidates)[1] if candidates else None


def checkpoint_step(path: str):
    """The step a checkpoint (file or sharded directory) was written at, or None when unreadable."""
    try:
        file = os.path.join(path, SHARD_META) if is_sharded(path) else path
        return int(torch.load(file, map_location="cpu", weights_only=True, mmap=True)["step"])
    except Exception:
        return None


def interrupted_checkpoints(run_dir: str) -> list:
    """checkpoint_interrupted.pth and / or its sharded form, where present."""
    names = (INTERRUPTED, sharded_name(INTERRUPTED))
    return [p for p in (os.path.join(run_dir, n) for n in names) if os.path.exists(p)]


def sharded_name(name: str) -> str:
    """checkpoint_step_N.pth -> checkpoint_step_N.dcp"""
    return os.path.splitext(name)[0] + SHARDED


def remove(path: str) -> None:
    """Delete a checkpoint file or a sharded checkpoint directory."""
    if os.path.isdir(path):
        shutil.rmtree(path)
    else:
        os.remove(path)


def prune_checkpoints(run_dir: str, keep_last: int) -> None:
    for _, path in step_checkpoints(run_dir)[:-keep_last]:
        remove(path)


def remove_run_checkpoints(run_dir: str) -> int:
    paths = [p for _, p in step_checkpoints(run_dir)] + interrupted_checkpoints(run_dir)
    for p in paths:
        remove(p)
    return len(paths)


def remove_superseded_interrupted(run_dir: str, step: int) -> None:
    """Drop interrupted checkpoints holding no more progress than `step`, which a checkpoint just
    written holds; one from further on (a run resumed from an earlier checkpoint) stays."""
    for path in interrupted_checkpoints(run_dir):
        saved = checkpoint_step(path)
        if saved is not None and saved <= step:
            remove(path)
