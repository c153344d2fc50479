"""Numbered token shards (data/build/sharded.py) read as the one token file they add up to.

`open_bin(path)` takes a .bin, a manifest.json or a glob of .bin shards (train-*.bin). A
ShardedBin offers what a TokenBin does (tokens, meta, doc_offsets, check_tokenizer), its tokens
being the shards one after another, so windows, sample order and resume are exactly those of a
single .bin holding the same tokens."""
import glob
import json
import os

import numpy as np

from data.errors import DataError
from data.samples.token_bin import TokenBin


class ConcatTokens:
    """Read-only concatenation of memory-mapped arrays: len() and slicing, copying only the slice."""

    def __init__(self, parts):
        self.parts = [p for p in parts if len(p)]
        self.dtype = parts[0].dtype
        self.starts = np.cumsum([0] + [len(p) for p in self.parts])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, key):
        if not isinstance(key, slice):
            raise TypeError("ConcatTokens reads slices (a window of tokens)")
        start, stop, step = key.indices(len(self))
        if step != 1:
            raise ValueError("ConcatTokens reads contiguous slices")
        first = int(np.searchsorted(self.starts, start, side="right")) - 1
        pieces = []
        while start < stop:
            part, base = self.parts[first], int(self.starts[first])
            take = min(stop, base + len(part)) - start
            pieces.append(np.asarray(part[start - base:start - base + take]))
            start, first = start + take, first + 1
        return np.concatenate(pieces) if len(pieces) != 1 else pieces[0]


class ShardedBin:
    """Several .bin shards of one split as one token file."""

    def __init__(self, paths, source: str):
        if not paths:
            raise DataError(f"{source} names no token shard")
        self.path, self.shards = source, [TokenBin(p) for p in paths]
        first = self.shards[0].meta
        for b in self.shards[1:]:
            for key in ("dtype", "tokenizer_fingerprint", "vocab_size"):
                if b.meta[key] != first[key]:
                    raise DataError(f"{b.path} differs from {self.shards[0].path} in {key} "
                                    f"({b.meta[key]} vs {first[key]}): shards of one dataset share a tokenizer")
        self.meta = dict(first, **{k: sum(b.meta[k] for b in self.shards)
                                   for k in ("n_tokens", "n_docs", "n_text_bytes", "n_characters")})
        self.tokens = ConcatTokens([b.tokens for b in self.shards])

    def __len__(self) -> int:
        return int(self.meta["n_tokens"])

    def doc_offsets(self) -> np.ndarray:
        """Document start offsets into the concatenated tokens (n_docs + 1 entries)."""
        out, base = [np.zeros(1, dtype="<u8")], 0
        for b in self.shards:
            offsets = b.doc_offsets()
            out.append(offsets[1:] + np.uint64(base))
            base += len(b)
        return np.concatenate(out)

    def identity(self) -> list:
        return [entry for b in self.shards for entry in b.identity()]

    def check_tokenizer(self, fingerprint: str, vocab_size=None) -> None:
        for shard in self.shards if vocab_size is not None else self.shards[:1]:
            shard.check_tokenizer(fingerprint, vocab_size)


def _check_complete(path: str, manifest: dict) -> None:
    """The entries still cover every input, in order: a manifest that lost an entry (edited, or
    merged by hand) would otherwise train on part of the corpus without a word."""
    shards, expected = manifest["shards"], manifest.get("n_shards")  # (absent from older manifests)
    if expected is not None and len(shards) != expected:
        raise DataError(f"{path} lists {len(shards)} shards but was written with {expected}: an entry was lost; "
                        "write it again with python -m data.processor (same command: finished shards are reused)")
    previous = (None, 0)  # (input, byte where the next shard of that input must start)
    for position, shard in enumerate(shards):
        source, start, end = shard.get("input", (None, 0, 0))
        due = previous[1] if source == previous[0] else 0
        if source is not None and start != due:
            raise DataError(f"{path}: no entry covers bytes {due}-{start} of {os.path.basename(str(source))} (before "
                            f"entry {position}, {shard.get('train')}): an entry was lost; write it again with "
                            "python -m data.processor")
        previous = (source, end)


def manifest_shards(path: str, split: str) -> list:
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
        names = [s[split] for s in manifest["shards"]]
    except OSError as e:
        raise DataError(f"cannot read the manifest {path}: {e.strerror or e}") from None
    except (ValueError, KeyError, TypeError):
        raise DataError(f"{path} is not a shard manifest written by python -m data.processor") from None
    _check_complete(path, manifest)
    paths = [os.path.join(os.path.dirname(os.path.abspath(path)), n) for n in names]
    missing = [n for n, p in zip(names, paths) if not os.path.exists(p + ".meta.json")]
    if missing:
        raise DataError(f"{path} lists {len(names)} {split} shards but {len(missing)} are missing or unfinished "
                        f"({', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}): run the processor "
                        "for every --shard_index, or copy their shards here")
    return paths


def open_bin(path: str, split: str = "train"):
    """A TokenBin for a .bin; a ShardedBin for a manifest.json (its `split` shards) or a glob."""
    if path.endswith(".json"):
        return ShardedBin(manifest_shards(path, split), path)
    if glob.has_magic(path):
        return ShardedBin(sorted(glob.glob(path)), path)
    return TokenBin(path)
