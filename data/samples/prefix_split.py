"""Where each document's prompt ends, for prefix-LM training on prompt/completion records
(data.prefix_field / --prefix_field). Beside each token file:

    train.bin.prefix        uint32 per document: how many of its leading tokens are its prompt
    train.bin.prefix.json   what the counts were computed from; written last

The processor stores a record's prompt and text as one document (data.sources.jsonl.PrefixedText). This
pass reads the inputs again in the same order, with the same rejections and the same validation
split, tokenizes each prompt alone and counts the stored document's leading tokens that agree with
it; a token the tokenizer merged across the seam counts as completion. The counts are small (four
bytes a document), so the pass keeps them in memory and writes each file whole, atomically: a killed
pass is simply done again."""
import os

import numpy as np
from tqdm import tqdm

from data.errors import DataError
from data.sources.inputs import expand_inputs
from data.build.corpus_processor import is_validation
from data.sources.settings import ReadSettings
from data.sources.records import iter_records
from data.samples.token_bin import TokenBin
from utils import atomic_write, read_json_or_none, write_json_atomic

FORMAT = 1
BATCH = 1024  # prompts tokenized per call


def prefix_path(bin_path: str) -> str:
    return bin_path + ".prefix"


def prefix_meta_path(bin_path: str) -> str:
    return bin_path + ".prefix.json"


def _identity(token_bin: TokenBin, prefix_field: str) -> dict:
    """The .bin by size and modification time (a reprocessed file is a new file) and the field."""
    st = os.stat(token_bin.path)
    return {"format": FORMAT, "prefix_field": prefix_field, "n_docs": int(token_bin.meta["n_docs"]),
            "bin_bytes": st.st_size, "bin_mtime_ns": st.st_mtime_ns,
            "tokenizer_fingerprint": token_bin.meta["tokenizer_fingerprint"]}


def prefix_lengths(bin_path: str, prefix_field: str) -> np.ndarray:
    """The prompt length, in tokens, of every document of bin_path (one line of error when the
    counts are missing or were made for another file or field)."""
    token_bin = TokenBin(bin_path)
    meta = read_json_or_none(prefix_meta_path(bin_path))
    if meta != _identity(token_bin, prefix_field) or not os.path.isfile(prefix_path(bin_path)):
        raise DataError(f"{bin_path} has no up-to-date prompt lengths for data.prefix_field {prefix_field!r} "
                        f"({prefix_path(bin_path)}); process the corpus with --prefix_field {prefix_field}")
    return np.fromfile(prefix_path(bin_path), dtype="<u4").astype(np.int64)


def prompt_length(framed_prompt, document) -> int:
    """How many leading tokens of a stored document (framed prompt + text) are its prompt: those that
    agree with the prompt framed and tokenized alone, and never the document's last token (a target)."""
    framed = np.asarray(framed_prompt, dtype=np.int64)
    stored = np.asarray(document[:len(framed)], dtype=np.int64)
    differ = np.nonzero(framed[:len(stored)] != stored)[0]
    agree = int(differ[0]) if len(differ) else len(stored)
    return min(agree, len(document) - 1)


class _Split:
    """One output split's documents, matched in order against their prompts."""

    def __init__(self, bin_path: str):
        self.bin = TokenBin(bin_path)
        self.offsets = self.bin.doc_offsets().astype(np.int64)
        self.lengths, self.prompts = [], []

    def flush(self, tokenizer) -> None:
        for ids in tokenizer.encode_batch(self.prompts):
            doc = len(self.lengths)
            if doc + 1 >= len(self.offsets):
                raise DataError(f"{self.bin.path} holds fewer documents than its inputs now give; process the "
                                "corpus again")
            start, end = self.offsets[doc], self.offsets[doc + 1]
            self.lengths.append(prompt_length(tokenizer.frame(ids), self.bin.tokens[start:end]))
        self.prompts.clear()


def ensure_prefix_lengths(inputs, bin_paths: dict, tokenizer, read: ReadSettings, seed: int, val_ratio: float,
                          show_progress: bool = True) -> None:
    """Write <bin>.prefix for bin_paths {"train": ..., "val": ...} unless up-to-date ones exist.
    The reading settings (read.prefix_field set) and the split must be the ones the processor used
    for those files."""
    prefix_field = read.prefix_field
    splits = {name: _Split(path) for name, path in bin_paths.items()}
    if all(read_json_or_none(prefix_meta_path(s.bin.path)) == _identity(s.bin, prefix_field) and
           os.path.isfile(prefix_path(s.bin.path)) for s in splits.values()):
        return
    kept = 0
    bar = tqdm(total=sum(int(s.bin.meta["n_docs"]) for s in splits.values()), unit=" docs", desc="prompt lengths",
               disable=not show_progress)
    for path in expand_inputs(inputs):
        for text, _reason, _offset, _size in iter_records(path, 0, read):
            if text is None:
                continue
            split = splits["val" if is_validation(kept, seed, val_ratio) else "train"]
            kept += 1
            split.prompts.append(text.prefix)
            if len(split.prompts) >= BATCH:
                split.flush(tokenizer)
                bar.update(BATCH)
    for split in splits.values():
        bar.update(len(split.prompts))
        split.flush(tokenizer)
    bar.close()
    for split in splits.values():
        if len(split.lengths) != int(split.bin.meta["n_docs"]):
            raise DataError(f"{split.bin.path} holds {split.bin.meta['n_docs']} documents but its inputs now give "
                            f"{len(split.lengths)}; process the corpus again")
        atomic_write(prefix_path(split.bin.path), lambda f, s=split: f.write(np.asarray(s.lengths, "<u4").tobytes()))
        write_json_atomic(prefix_meta_path(split.bin.path), _identity(split.bin, prefix_field))
