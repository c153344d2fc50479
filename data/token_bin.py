"""The on-disk token format: a raw little-endian array plus a JSON sidecar written last.

    train.bin            uint16 tokens when the vocabulary fits, else uint32; eos after every document
    train.bin.idx        uint64 document start offsets (n_docs + 1 entries)
    train.bin.meta.json  dtype, counts, text bytes, tokenizer fingerprint

numpy.memmap reads the .bin directly; the sidecar's presence means the file is complete."""
import json
import os

import numpy as np

from data.errors import DataError
from utils import write_json_atomic  # noqa: F401  (the sidecars are written with it)

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


class TokenBin:
    """Read-only view of a processed token file."""

    def __init__(self, path: str):
        self.path = path
        self.meta = read_meta(path)
        dtype = np.dtype(self.meta["dtype"]).newbyteorder("<")
        expected = self.meta["n_tokens"] * dtype.itemsize
        if os.path.getsize(path) != expected:
            raise DataError(f"{path} holds {os.path.getsize(path)} bytes but its sidecar says {expected}; "
                            "rebuild it with the processor")
        self.tokens = np.memmap(path, dtype=dtype, mode="r") if expected else np.zeros(0, dtype=dtype)

    def __len__(self) -> int:
        return int(self.meta["n_tokens"])

    def doc_offsets(self) -> np.ndarray:
        return np.fromfile(idx_path(self.path), dtype="<u8")

    def check_tokenizer(self, fingerprint: str) -> None:
        if self.meta["tokenizer_fingerprint"] != fingerprint:
            raise DataError(f"{self.path} was made with another tokenizer (fingerprint "
                            f"{self.meta['tokenizer_fingerprint']}, this one is {fingerprint}); "
                            "process the corpus again with this tokenizer")
