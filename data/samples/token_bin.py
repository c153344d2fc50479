"""The on-disk token format: a raw little-endian array plus a JSON sidecar written last.

    train.bin            uint16 tokens when the vocabulary fits, else uint32; eos after every document
    train.bin.idx        uint64 document start offsets (n_docs + 1 entries)
    train.bin.meta.json  dtype, counts, text bytes, tokenizer fingerprint

numpy.memmap reads the .bin directly; the sidecar's presence means the file is complete."""
import hashlib
import json
import os

import numpy as np

from data.errors import DataError

FORMAT_VERSION = 1


def token_dtype(vocab_size: int):
    return np.dtype("<u2") if vocab_size <= 65535 else np.dtype("<u4")


def meta_path(bin_path: str) -> str:
    return bin_path + ".meta.json"


def idx_path(bin_path: str) -> str:
    return bin_path + ".idx"


def read_meta(bin_path: str) -> dict:
    path = meta_path(bin_path)
    if not os.path.isfile(bin_path):
        raise DataError(f"token file not found: {bin_path} (build it with python -m data.processor)")
    if not os.path.isfile(path):
        raise DataError(f"{bin_path} has no sidecar {path}: it is incomplete; run the processor again to finish it")
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except ValueError:
        raise DataError(f"{path} is not valid JSON; run the processor again")
    if meta.get("format") != FORMAT_VERSION:
        raise DataError(f"{path}: unknown format {meta.get('format')!r} (expected {FORMAT_VERSION})")
    return meta


TOKEN_DTYPES = ("uint16", "uint32")
RANGE_CHUNK = 1 << 24  # tokens per step of the range check (bounded memory on any file size)


def max_token(tokens) -> int:
    """The largest id in a token array (memory-mapped: read once, a chunk at a time)."""
    top = -1
    for start in range(0, len(tokens), RANGE_CHUNK):
        top = max(top, int(np.max(tokens[start:start + RANGE_CHUNK])))
    return top


class TokenBin:
    """Read-only view of a processed token file, checked against its sidecar before any use."""

    def __init__(self, path: str):
        self.path = path
        self.meta = read_meta(path)
        self.tokens = self._open()

    def _open(self):
        """The memmap, after the sidecar's dtype, counts and vocabulary agree with the file itself:
        a sidecar that lies would otherwise turn every figure into one computed on garbage."""
        path, meta, side = self.path, self.meta, meta_path(self.path)
        try:
            name, n_tokens, n_docs, vocab = meta["dtype"], int(meta["n_tokens"]), int(meta["n_docs"]), \
                int(meta["vocab_size"])
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{side} lacks dtype / n_tokens / n_docs / vocab_size or holds a non-number: "
                            "rebuild it with the processor") from None
        if name not in TOKEN_DTYPES:
            raise DataError(f"{side} says dtype {name!r}; token files are {' or '.join(TOKEN_DTYPES)}: "
                            "rebuild it with the processor")
        dtype = np.dtype(name).newbyteorder("<")
        if dtype != token_dtype(vocab):
            raise DataError(f"{side} says dtype {name} for a vocabulary of {vocab}, which the processor stores as "
                            f"{token_dtype(vocab).name}: the sidecar does not describe {path}; rebuild it")
        expected = n_tokens * dtype.itemsize
        if os.path.getsize(path) != expected:
            raise DataError(f"{path} holds {os.path.getsize(path)} bytes but its sidecar says {expected} "
                            f"({n_tokens} {name} tokens); rebuild it with the processor")
        self._check_index(n_tokens, n_docs)
        return np.memmap(path, dtype=dtype, mode="r") if expected else np.zeros(0, dtype=dtype)

    def _check_index(self, n_tokens: int, n_docs: int) -> None:
        """The .idx holds n_docs + 1 offsets ending at n_tokens (read: its size and its last entry)."""
        path = idx_path(self.path)
        if not os.path.isfile(path):
            return  # (the document offsets are only read by runs that need them; they fail there)
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            f.seek(max(0, size - 8))
            last = np.frombuffer(f.read(8), dtype="<u8")
        if size != (n_docs + 1) * 8 or not len(last) or int(last[0]) != n_tokens:
            raise DataError(f"{path} does not match {meta_path(self.path)} ({size // 8} offsets ending at "
                            f"{int(last[0]) if len(last) else 0}; the sidecar says {n_docs} documents, {n_tokens} "
                            "tokens): rebuild it with the processor")

    def __len__(self) -> int:
        return int(self.meta["n_tokens"])

    def doc_offsets(self) -> np.ndarray:
        return np.fromfile(idx_path(self.path), dtype="<u8")

    def identity(self) -> list:
        """What a sample order over this file depends on, cheaply: its name, counts, and a hash of
        16 evenly spaced runs of 256 tokens (a resume compares it with the checkpoint's)."""
        n = len(self)
        digest = hashlib.blake2b(digest_size=8)
        for k in range(16):
            start = (n - 256) * k // 15 if n > 256 else 0
            digest.update(np.asarray(self.tokens[start:start + 256]).tobytes())
        return [{"name": os.path.basename(self.path), "n_tokens": n, "n_docs": int(self.meta["n_docs"]),
                 "sample_hash": digest.hexdigest()}]

    def check_tokenizer(self, fingerprint: str, vocab_size=None) -> None:
        """The file was made with this tokenizer; with vocab_size, also every id is below it (one
        pass over the file), so an id the model has no row for is refused before any work."""
        if self.meta["tokenizer_fingerprint"] != fingerprint:
            raise DataError(f"{self.path} was made with another tokenizer (fingerprint "
                            f"{self.meta['tokenizer_fingerprint']}, this one is {fingerprint}); "
                            "process the corpus again with this tokenizer")
        if vocab_size is None:
            return
        if int(self.meta["vocab_size"]) != vocab_size:
            raise DataError(f"{meta_path(self.path)} says a vocabulary of {self.meta['vocab_size']}, the tokenizer "
                            f"has {vocab_size}: process the corpus again with this tokenizer")
        top = max_token(self.tokens)
        if top >= vocab_size:
            raise DataError(f"{self.path} holds token id {top}, beyond the tokenizer's vocabulary of {vocab_size}: "
                            "the file or its sidecar is damaged; rebuild it with the processor")
