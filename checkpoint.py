"""The checkpoint file: its schema, and the only code that writes or reads it.

A checkpoint is one dict that torch.load(weights_only=True) reads (tensors, numbers, strings, lists,
dicts: loading it can never run code), written atomically (temporary file, fsync, rename).

Format 2:
    format                 2 (a file of another format is refused with one line)
    kind                   "train": everything a resume needs; "weights": the model only (best.pth)
    step                   optimizer steps taken (also in the progress part; here for listing tools)
    model_config           LMConfig.to_dict()
    config                 the run's resolved configuration (model / data / train sections)
    tokenizer              the tokenizer's JSON text: a checkpoint needs no file beside it
    tokenizer_roles        {"roles": {pad, bos, eos, unk, mask: token or None}, "framing": "eos" | "cls_sep"}
    tokenizer_fingerprint  Tokenizer.fingerprint() of that tokenizer
    evaluated              "ema" or "model": the weights the run evaluated (and chose best.pth by)
    vocab_expansion        None, or {"new_rows_from": first row added by `convert.py expand_vocab`,
                           "expanded_from": fingerprint of the tokenizer before the expansion}
    <part>                 one entry per part of the run's state, each the part's state_dict():
                           model, ema (with --use_ema), and for kind "train" also optimizer,
                           scheduler, scaler, progress, rng (a list, one per rank),
                           early_stopping, nan_guard, data (the training data's identity, seq_len, seed
                           and batch layout: a resume on other tokens is refused), ...

A sharded checkpoint (--fsdp) is a directory NAME.dcp written by every rank at once:
    meta.pth               this same dict, each sharded tensor replaced by a marker
                           {"__shard__": key, "shape": [...], "dtype": "float32"}; read with weights_only=True
    .metadata, __R_0.distcp  torch.distributed.checkpoint's files holding those tensors by key (rank R's
                           shards), which DCP reads back into any other world size
It is written under a temporary name and renamed once complete, so it too exists whole or not at all.
`load_checkpoint` reads one as full tensors, so everything that reads a .pth reads a .dcp. DCP's
.metadata is a pickle: it is unpickled against exact (module, class) pairs of DCP's metadata, every
entry must be a tensor (DCP would unpickle bytes entries in full), and DCP is handed that vetted
record instead of unpickling the file itself, so a crafted one is refused instead of running code.

Inference, export, evaluation and tests load through `load_for_inference`."""
import glob
import os
import re
import shutil
import warnings

import torch

from utils import UserError, atomic_write

FORMAT = 2
META_KEYS = ("format", "kind", "step", "model_config", "config", "tokenizer", "tokenizer_roles",
             "tokenizer_fingerprint", "evaluated", "vocab_expansion")
CHECKPOINT_RE = re.compile(r"checkpoint_step_(\d+)\.(?:pth|dcp)$")
INTERRUPTED = "checkpoint_interrupted.pth"
BEST = "best.pth"
SHARDED = ".dcp"
SHARD_META = "meta.pth"
MARKER = "__shard__"


class CheckpointError(UserError):
    """A checkpoint that cannot be used; the message is one line."""


# ---- writing ---------------------------------------------------------------------------------------
def write(path: str, parts: dict, *, kind: str, step: int, model_config: dict, config: dict, tokenizer,
          evaluated: str, vocab_expansion=None) -> None:
    """Write parts ({name: state_dict}) and the metadata as one checkpoint file, atomically."""
    atomic_save(_with_meta(parts, kind=kind, step=step, model_config=model_config, config=config,
                           tokenizer=tokenizer, evaluated=evaluated, vocab_expansion=vocab_expansion), path)


def _with_meta(parts: dict, *, kind, step, model_config, config, tokenizer, evaluated, vocab_expansion) -> dict:
    clash = sorted(set(parts) & set(META_KEYS))
    if clash:
        raise ValueError(f"part names {clash} clash with checkpoint metadata keys")
    return {"format": FORMAT, "kind": kind, "step": int(step), "model_config": dict(model_config),
            "config": config, "tokenizer": tokenizer.backend.to_str(), "tokenizer_roles": tokenizer.roles_state(),
            "tokenizer_fingerprint": tokenizer.fingerprint(), "evaluated": evaluated,
            "vocab_expansion": vocab_expansion, **parts}


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


def write_sharded(path: str, parts: dict, *, kind: str, step: int, model_config: dict, config: dict, tokenizer,
                  evaluated: str, vocab_expansion=None) -> None:
    """A collective: every rank calls it with its own parts (DTensor shards); writes the directory path."""
    from checkpoint_sharded import write
    write(path, _with_meta(parts, kind=kind, step=step, model_config=model_config, config=config,
                           tokenizer=tokenizer, evaluated=evaluated, vocab_expansion=vocab_expansion))


# ---- reading ---------------------------------------------------------------------------------------
def load_checkpoint(path: str, map_location="cpu") -> dict:
    """The checkpoint dict, or one CheckpointError line saying what is wrong with the file.
    A sharded checkpoint (directory) comes back whole, as the single file would hold it."""
    if is_sharded(path):
        from checkpoint_sharded import read_full
        return read_full(path)
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


def load_for_resume(path: str, live: dict, map_location="cpu") -> dict:
    """The checkpoint (a file or a sharded directory) laid out as the running parts' live state
    ({name: state_dict}): under FSDP each tensor arrives as this rank's shard, at any world size
    the checkpoint was written with. A collective under a process group."""
    from checkpoint_sharded import place_like, read_into
    if is_sharded(path):
        return read_into(path, live)
    return place_like(load_checkpoint(path, map_location), live)


def to_single_file(src: str, dst: str) -> None:
    """A sharded checkpoint directory as one file (what inference, export and evaluation read)."""
    if not is_sharded(src):
        raise CheckpointError(f"{src} is not a sharded checkpoint (a .dcp directory holding {SHARD_META})")
    atomic_save(load_checkpoint(src), dst)


def to_sharded(src: str, dst: str) -> None:
    """One checkpoint file as a sharded directory, which any number of --fsdp ranks resume."""
    if is_sharded(src) or not dst.endswith(SHARDED):
        raise CheckpointError(f"shard takes a .pth checkpoint and a new {SHARDED} directory name, got {src} -> {dst}")
    from checkpoint_sharded import to_sharded as write_from
    write_from(src, dst)


def full_tensors(obj):
    """obj with every DTensor gathered whole (a collective: every rank must call it); plain
    tensors are returned as they are."""
    if hasattr(obj, "full_tensor"):
        return obj.full_tensor()
    if isinstance(obj, dict):
        return {k: full_tensors(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(full_tensors(v) for v in obj)
    return obj


def tokenizer_of(state: dict, source: str = "the checkpoint"):
    """The checkpoint's tokenizer; a corrupt entry, or roles missing or naming no token of it, is one line."""
    from tokenizers import Tokenizer as Backend

    from data.tokenizer import Tokenizer
    text, roles = state.get("tokenizer"), state.get("tokenizer_roles")
    if not isinstance(text, str) or not isinstance(roles, dict) or not isinstance(roles.get("roles"), dict):
        raise CheckpointError(f"{source}: its tokenizer entry is missing or damaged (no tokenizer JSON with its "
                              "roles); was it written by this project?")
    try:
        return Tokenizer(Backend.from_str(text), roles["roles"], roles.get("framing", "eos"))
    except Exception as e:  # the tokenizers library raises its own kinds for unreadable JSON
        why = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise CheckpointError(f"{source}: its tokenizer cannot be used ({why})") from None


def restore_parts(state: dict, parts: dict, source: str, say=print) -> None:
    """Load each part's saved state; a part the checkpoint lacks keeps its fresh state, with a note."""
    for name, part in parts.items():
        saved = state.get(name)
        if saved is None:
            say(f"note: {source} has no {name} state; {name} starts fresh")
            continue
        try:
            part.load_state_dict(saved)
        except (KeyError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{source}: its {name} state does not fit this run "
                                  f"({str(e).splitlines()[0][:160] if str(e) else type(e).__name__})")


def load_weights(model, weights: dict, source: str) -> None:
    """load_state_dict, with a mismatch (another version or shape) as one line instead of a traceback."""
    try:
        result = model.load_state_dict(weights, strict=False)
    except RuntimeError as e:  # a tensor of the wrong shape
        raise CheckpointError(f"{source}: weights do not fit this model ({str(e).splitlines()[-1].strip()[:160]})")
    missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    if missing or unexpected:
        what = ", ".join([f"missing {k}" for k in missing[:2]] + [f"unexpected {k}" for k in unexpected[:2]])
        raise CheckpointError(f"{source}: weights do not fit this model ({what}, ...); "
                              "was it written by another version of this code?")


def inference_weights(state: dict, ema, source: str) -> tuple:
    """(weights, which): ema=None takes the weights the run evaluated (EMA when it kept one),
    True insists on EMA, False takes the raw trained weights."""
    has_ema = bool(state.get("ema"))
    if ema is None:
        ema = has_ema and state.get("evaluated", "model") == "ema"
    if ema and not has_ema:
        raise CheckpointError(f"{source} holds no EMA weights (train with --use_ema)")
    if ema:
        return {**state["model"], **state["ema"]}, "ema"
    return state["model"], "model"


def load_for_inference(path: str, ema=None, device="cpu", say=None) -> tuple:
    """(model in eval mode on device, LMConfig, Tokenizer) from a checkpoint file.
    ema: None = the weights the run evaluated, True = EMA, False = raw. say(line) hears which."""
    from model import LMConfig, Transformer

    state = load_checkpoint(path)
    weights, which = inference_weights(state, ema, path)
    try:
        config = LMConfig.from_dict(state["model_config"])
    except ValueError as e:  # a model_config this version rejects
        raise CheckpointError(f"{path}: {e}")
    model = Transformer(config)
    load_weights(model, weights, path)
    tokenizer = tokenizer_of(state, path)
    if say is not None and state.get("ema"):  # there was a choice of weights: say which was taken
        say(f"{path}: using the {'EMA' if which == 'ema' else 'raw trained'} weights"
            f"{' (the ones the run evaluated)' if which == state.get('evaluated', 'model') else ''}")
    return model.to(device).eval(), config, tokenizer


# ---- a run directory's checkpoints -----------------------------------------------------------------
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


def is_sharded(path: str) -> bool:
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, SHARD_META))


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
