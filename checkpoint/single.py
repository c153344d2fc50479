"""The single-file form (NAME.pth): written atomically, read with torch.load(weights_only=True) only."""
import glob
import os
import warnings

import torch

from checkpoint.format import FORMAT, CheckpointError, CheckpointMeta
from utils import atomic_write


def write(path: str, parts: dict, meta: CheckpointMeta) -> None:
    """Write parts ({name: state_dict}) and the metadata as one checkpoint file, atomically."""
    atomic_save(meta.state(parts), path)


def atomic_save(obj, path: str) -> None:
    """torch.save(obj) to path, atomically; a full disk is one line naming the space needed."""
    size = sum(t.numel() * t.element_size() for t in _tensors(obj))
    atomic_write(path, lambda f: torch.save(obj, f), size_hint=size)


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


def full_tensors(obj):
    """obj with every DTensor gathered whole, for a single file written under FSDP (a collective:
    every rank must call it); plain tensors are returned as they are."""
    if hasattr(obj, "full_tensor"):
        return obj.full_tensor()
    if isinstance(obj, dict):
        return {k: full_tensors(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(full_tensors(v) for v in obj)
    return obj


def read(path: str, map_location="cpu") -> dict:
    """The checkpoint dict of a file, or one CheckpointError line saying what is wrong with it."""
    if os.path.isdir(path):
        found = sorted(os.path.basename(p) for p in glob.glob(os.path.join(path, "*.pth")))
        hint = f"it holds {', '.join(found[:4])}" if found else "it holds no .pth checkpoint"
        raise CheckpointError(f"{path} is a directory, not a checkpoint file; {hint} (pass e.g. {path}/best.pth)")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickles before failing on them
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many kinds for a truncated or foreign file
        raise CheckpointError(f"{path} is not a readable checkpoint: truncated, corrupt, or holding objects that "
                              f"loading would have to execute ({type(e).__name__})")
    if not isinstance(state, dict) or "model" not in state or "model_config" not in state:
        raise CheckpointError(f"{path} is not a checkpoint of this project (no model / model_config entry)")
    if state.get("format") != FORMAT:
        raise CheckpointError(f"{path} has checkpoint format {state.get('format')!r}; this version reads format "
                              f"{FORMAT} only (retrain, or use the version of this code that wrote it)")
    return state
