"""Word-start bits beside a token file, so whole-word masking costs training nothing:

    train.bin.words         one bit per token (numpy packbits order), 1 where a word starts
    train.bin.words.json    what the bits were computed from (the .bin, the tokenizer, the segmenter); written last

The bits are a pure function of the finished .bin and the tokenizer (data/samples/word_boundaries.py), computed
document by document in blocks of whole bytes. Each block is fsynced and then recorded in a progress
file replaced atomically; a killed run truncates to the recorded length and goes on, so the finished
file is byte-identical to an uninterrupted one."""
import math
import os

import numpy as np
from tqdm import tqdm

from data.errors import DataError
from data.fault_points import fault_point
from data.samples.token_bin import TokenBin, idx_path
from data.samples.token_shards import open_bin
from data.samples.word_boundaries import SEGMENTER, WordBoundaries
from utils import OutputError, read_json_or_none, write_json_atomic

FORMAT = 1
BLOCK = 1 << 20  # tokens per committed block; a multiple of 8, so every block is whole bytes


def words_path(bin_path: str) -> str:
    return bin_path + ".words"


def words_meta_path(bin_path: str) -> str:
    return bin_path + ".words.json"


def _identity(token_bin: TokenBin, tokenizer) -> dict:
    """The .bin by size and modification time (a reprocessed file is a new file), its tokenizer and
    the segmenter: any change makes the bits stale."""
    st = os.stat(token_bin.path)
    return {"format": FORMAT, "n_tokens": len(token_bin), "bin_bytes": st.st_size, "bin_mtime_ns": st.st_mtime_ns,
            "tokenizer_fingerprint": tokenizer.fingerprint(), "segmenter": SEGMENTER}


def block_starts(tokens, offsets: np.ndarray, lo: int, hi: int, boundaries: WordBoundaries, cache: dict) -> np.ndarray:
    """Word starts of tokens[lo:hi]. Documents with (or next to) a piece that may be Han are done
    by document_starts: runs of consecutive ones inside the block in one call (a special token
    separates documents, so a run gives each document's own starts), one that crosses the block's
    edge alone, kept in cache for the next block."""
    ids = tokens[lo:hi].astype(np.int64)
    starts = boundaries.vocab_starts(ids, int(tokens[lo - 1]) if lo else None)
    near = boundaries.maybe_han[ids]
    near[1:] |= near[:-1]
    if lo and boundaries.maybe_han[int(tokens[lo - 1])]:
        near[0] = True
    if not near.any():
        return starts
    docs = np.unique(np.searchsorted(offsets, lo + np.nonzero(near)[0], side="right") - 1)
    edge = (offsets[docs] < lo) | (offsets[docs + 1] > hi)
    for k in docs[edge].tolist():
        s, e = int(offsets[k]), int(offsets[k + 1])
        if cache.get("doc") != k:
            cache.update(doc=k, starts=boundaries.document_starts(tokens[s:e]))
        a, z = max(s, lo), min(e, hi)
        starts[a - lo:z - lo] = cache["starts"][a - s:z - s]
    inside = docs[~edge]
    for run in np.split(inside, np.nonzero(np.diff(inside) != 1)[0] + 1) if len(inside) else []:
        s, e = int(offsets[run[0]]), int(offsets[run[-1] + 1])
        starts[s - lo:e - lo] = boundaries.document_starts(tokens[s:e])
    return starts


def _committed_bytes(blocks_done: int, block: int, n_tokens: int) -> int:
    return math.ceil(min(blocks_done * block, n_tokens) / 8)


def ensure_word_starts(bin_path: str, tokenizer, show_progress: bool = True, block: int = BLOCK) -> None:
    """The word-start file of bin_path (of each of its shards, for a manifest.json or a glob: read as
    one file, their bits are those of one .bin holding the same tokens, since every shard starts a
    document), computed or finished unless an up-to-date one is there; block: tokens per commit."""
    if block < 8 or block % 8:
        raise ValueError(f"block must be a positive multiple of 8, got {block}")
    for shard in getattr(open_bin(bin_path), "shards", None) or [TokenBin(bin_path)]:
        _ensure_one(shard, tokenizer, show_progress, block)


def _ensure_one(token_bin: TokenBin, tokenizer, show_progress: bool, block: int) -> None:
    bin_path = token_bin.path
    identity = _identity(token_bin, tokenizer)
    final, meta, progress = words_path(bin_path), words_meta_path(bin_path), words_path(bin_path) + ".progress.json"
    if read_json_or_none(meta) == identity and os.path.exists(final):
        return
    if not os.path.isfile(idx_path(bin_path)):
        raise DataError(f"{bin_path} has no document index {idx_path(bin_path)}; process the corpus again")
    state = read_json_or_none(progress)
    n = len(token_bin)
    partial = final + ".partial"
    on_disk = os.path.getsize(partial) if os.path.exists(partial) else 0
    if not state or state.get("identity") != identity or state.get("block") != block or \
            _committed_bytes(state.get("blocks_done", 0), block, n) > on_disk:
        state = {"identity": identity, "block": block, "blocks_done": 0}
    offsets = token_bin.doc_offsets().astype(np.int64)
    n_blocks = math.ceil(n / block)
    boundaries = WordBoundaries(tokenizer)
    try:
        if os.path.exists(meta):
            os.remove(meta)  # stale bits must not look complete while they are replaced
        with open(partial, "r+b" if os.path.exists(partial) else "w+b") as f:
            f.truncate(_committed_bytes(state["blocks_done"], block, n))  # whatever came after the last commit goes
            f.seek(0, os.SEEK_END)
            cache = {}
            bar = tqdm(total=n_blocks, initial=state["blocks_done"], unit=" blocks", desc="word starts",
                       disable=not show_progress)
            for b in range(state["blocks_done"], n_blocks):
                lo, hi = b * block, min(n, (b + 1) * block)
                f.write(np.packbits(block_starts(token_bin.tokens, offsets, lo, hi, boundaries, cache)).tobytes())
                fault_point("words_written")
                f.flush()
                os.fsync(f.fileno())
                state["blocks_done"] = b + 1
                write_json_atomic(progress, state)
                fault_point("words_committed")
                bar.update(1)
            bar.close()
        os.replace(partial, final)
        write_json_atomic(meta, identity)
        if os.path.exists(progress):  # an empty .bin has no block, so never wrote one
            os.remove(progress)
    except OSError as e:
        raise OutputError(f"cannot write the word-start file {final}: {e.strerror or e}; free space or fix "
                          "permissions and run again to resume") from None


class WordStarts:
    """Read-only view of the word-start file(s) of a .bin or of its shards (a ShardedBin), each
    checked against its .bin: word starts of any window, across shard edges too."""

    def __init__(self, token_bin, tokenizer):
        self.parts, self.starts = [], [0]
        for shard in getattr(token_bin, "shards", None) or [token_bin]:
            path = words_path(shard.path)
            if read_json_or_none(words_meta_path(shard.path)) != _identity(shard, tokenizer) or not os.path.exists(path):
                raise DataError(f"{path} is missing or stale for {shard.path}; python -m data.processor "
                                "--word_starts (or a training run with data.whole_word_mask) writes it")
            self.parts.append(np.memmap(path, dtype=np.uint8, mode="r") if len(shard) else np.zeros(0, np.uint8))
            self.starts.append(self.starts[-1] + len(shard))

    def window(self, start: int, length: int) -> "torch.Tensor":
        import torch  # training reads the bits; the processor writing them never loads torch
        pieces, end = [], start + length
        for bits, lo, hi in zip(self.parts, self.starts[:-1], self.starts[1:]):
            a, z = max(start, lo) - lo, min(end, hi) - lo
            if a < z:
                first = a // 8
                unpacked = np.unpackbits(bits[first:(z + 7) // 8])
                pieces.append(unpacked[a - first * 8:z - first * 8])
        return torch.from_numpy(np.concatenate(pieces).astype(bool) if pieces else np.zeros(0, bool))
