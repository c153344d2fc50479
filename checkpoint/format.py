"""The checkpoint format: its version, its metadata (one CheckpointMeta), and the names of its
sharded layout. Every other module of the package imports this one; it imports none of them.

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
Reading one gives full tensors, so everything that reads a .pth reads a .dcp. DCP's .metadata is a
pickle: it is unpickled against exact (module, class) pairs of DCP's metadata, every entry must be a
tensor (DCP would unpickle bytes entries in full), and DCP is handed that vetted record instead of
unpickling the file itself, so a crafted one is refused instead of running code (checkpoint/sharded.py)."""
import os
from dataclasses import dataclass
from typing import Optional

from utils import UserError

FORMAT = 2
META_KEYS = ("format", "kind", "step", "model_config", "config", "tokenizer", "tokenizer_roles",
             "tokenizer_fingerprint", "evaluated", "vocab_expansion")
SHARDED = ".dcp"
SHARD_META = "meta.pth"
MARKER = "__shard__"


class CheckpointError(UserError):
    """A checkpoint that cannot be used; the message is one line."""


@dataclass(frozen=True)
class CheckpointMeta:
    """What a checkpoint records beside its parts; every writer takes one."""
    kind: str                  # "train" (a resume's everything) or "weights" (best.pth, an import)
    step: int
    model_config: dict         # LMConfig.to_dict()
    config: dict               # the run's resolved configuration
    tokenizer: object          # data.tokenizer.Tokenizer, stored as its JSON text, roles and fingerprint
    evaluated: str             # "ema" or "model"
    vocab_expansion: Optional[dict] = None

    def state(self, parts: dict) -> dict:
        """The checkpoint dict: this metadata and parts ({name: state_dict})."""
        clash = sorted(set(parts) & set(META_KEYS))
        if clash:
            raise ValueError(f"part names {clash} clash with checkpoint metadata keys")
        t = self.tokenizer
        return {"format": FORMAT, "kind": self.kind, "step": int(self.step), "model_config": dict(self.model_config),
                "config": self.config, "tokenizer": t.backend.to_str(), "tokenizer_roles": t.roles_state(),
                "tokenizer_fingerprint": t.fingerprint(), "evaluated": self.evaluated,
                "vocab_expansion": self.vocab_expansion, **parts}


def is_sharded(path: str) -> bool:
    """Whether path is a sharded checkpoint: a directory holding meta.pth."""
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, SHARD_META))
