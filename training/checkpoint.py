"""Checkpoint files: written atomically, loaded without ever executing code.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so
torch.load(weights_only=True) can read it. Files appear under their final name only once complete:
write to a temporary file in the same directory, flush, fsync, rename, fsync the directory."""
import glob
import os
import re
import warnings

import torch

CHECKPOINT_RE = re.compile(r"checkpoint_step_(\d+)\.pth$")
INTERRUPTED = "checkpoint_interrupted.pth"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message is one line."""


def atomic_save(obj, path: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_checkpoint(path: str, map_location="cpu") -> dict:
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickles before failing on them
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many kinds for a truncated or foreign file
        raise CheckpointError(f"{path} is not a readable checkpoint: truncated, corrupt, or holding objects that "
                              f"loading would have to execute ({type(e).__name__})")
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_config" not in ckpt:
        raise CheckpointError(f"{path} is not a checkpoint of this project (no model / model_config entry)")
    return ckpt


def load_weights(model, weights: dict, source: str) -> None:
    """load_state_dict, with a mismatch (another version or shape) as one line instead of a traceback."""
    missing, unexpected = [], []
    try:
        result = model.load_state_dict(weights, strict=False)
        missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    except RuntimeError as e:  # a tensor of the wrong shape
        raise CheckpointError(f"{source}: weights do not fit this model ({str(e).splitlines()[-1].strip()[:160]})")
    if missing or unexpected:
        what = ", ".join([f"missing {k}" for k in missing[:2]] + [f"unexpected {k}" for k in unexpected[:2]])
        raise CheckpointError(f"{source}: weights do not fit this model ({what}, ...); "
                              "was it written by another version of this code?")


def step_checkpoints(run_dir: str) -> list:
    """[(step, path)] of checkpoint_step_N.pth files, oldest first."""
    found = []
    for p in glob.glob(os.path.join(run_dir, "checkpoint_step_*.pth")):
        m = CHECKPOINT_RE.search(p)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(run_dir: str):
    """The checkpoint holding the most progress: the highest step among checkpoint_step_N.pth and
    checkpoint_interrupted.pth (the interrupted one wins a tie, it is written later)."""
    candidates = step_checkpoints(run_dir)
    interrupted = os.path.join(run_dir, INTERRUPTED)
    if os.path.isfile(interrupted):
        try:
            step = torch.load(interrupted, map_location="cpu", weights_only=True, mmap=True)["step"]
            candidates.append((step + 0.5, interrupted))
        except Exception:
            pass  # an unreadable interrupted file must not hide the good step checkpoints
    return max(candidates)[1] if candidates else None


def prune_checkpoints(run_dir: str, keep_last: int) -> None:
    for _, path in step_checkpoints(run_dir)[:-keep_last]:
        os.remove(path)


def remove_run_checkpoints(run_dir: str) -> int:
    paths = [p for _, p in step_checkpoints(run_dir)] + glob.glob(os.path.join(run_dir, INTERRUPTED))
    for p in paths:
        os.remove(p)
    return len(paths)
