"""JSONL -> memory-mapped token files, streaming, validated, resumable (DataProcessor; the command
line is data/processor.py).

Durability: tokens are appended to `.partial` files; after every chunk (or every save_interval
documents) they are fsynced and a small progress file (input position, output lengths, statistics) is replaced atomically. A restarted run
truncates the partial files to the recorded lengths and reads on from the recorded byte offset, so
the finished files are byte-identical to an uninterrupted run however the first one died."""
import errno
import hashlib
import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from data.errors import DataError
from data.fault_points import fault_point
from data.sources.inputs import expand_inputs
from data.sources.jsonl import REJECT_REASONS
from data.stats_plot import png_path as stats_png
from data.stats_plot import write_png as write_stats_png
from data.sources.settings import DEFAULT_READ, ReadSettings
from data.sources.records import input_size, input_stamp, iter_records
from data.samples.token_bin import FORMAT_VERSION, idx_path, meta_path, token_dtype
from data.tokenizer import load_tokenizer
from utils import OutputError, atomic_write, write_json_atomic

SPLITS = ("train", "val")
CHUNK_BYTES = 2 << 20  # text per tokenizer batch: big enough to keep every core busy


def is_validation(doc_index: int, seed: int, val_ratio: float, piece=None) -> bool:
    """Whether the doc_index-th kept document goes to validation: a hash, so the split is spread
    over the whole corpus and stable across runs and chunk sizes. piece: the shard's number when
    the corpus is processed in shards (data/build/sharded.py), which count their documents each."""
    key = f"{seed}:{doc_index}" if piece is None else f"{seed}:{piece}:{doc_index}"
    h = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") / 2**64 < val_ratio


@dataclass
class Chunk:
    texts: list = field(default_factory=list)
    text_bytes: int = 0
    read: int = 0                                 # lines consumed, rejected ones included
    rejected: dict = field(default_factory=dict)
    end: tuple = (0, 0)                           # (file index, byte offset) after the last line


def check_settings(chunk_size: int, val_ratio: float, read: ReadSettings) -> None:
    """Refuse impossible settings before any work (prepare_corpus calls this before training a tokenizer)."""
    if chunk_size < 1:
        raise DataError(f"chunk_size must be at least 1, got {chunk_size}")
    if not 0 <= val_ratio < 1:
        raise DataError(f"val_ratio must be in [0, 1), got {val_ratio}")
    read.check()


REJECTION_NOTE_SHARE = 0.05  # a run that rejects more of its input says so at the end


def rejection_note(stats: dict, max_chars: int):
    """One line when more than REJECTION_NOTE_SHARE of the documents read were rejected, else None."""
    read, rejected = stats["documents_read"], {k: v for k, v in stats["rejected"].items() if v}
    total = sum(rejected.values())
    if not read or total <= REJECTION_NOTE_SHARE * read:
        return None
    why = (f"; too_long means over max_chars ({max_chars:,} characters): raise --max_chars / data.max_chars to "
           "keep them (long documents pack across training samples)") if rejected.get("too_long") else ""
    return (f"note: {total} of {read} documents ({total / read:.0%}) were rejected "
            f"{json.dumps(rejected, sort_keys=True)}{why}")


def _totals(stats) -> tuple:
    """(tokens, text bytes) written so far, both splits together."""
    splits = stats["splits"].values()
    return sum(s["tokens"] for s in splits), sum(s["text_bytes"] for s in splits)


def _summarize(stats: dict) -> dict:
    """The statistics as reported: the accumulators plus the mean, and the histogram as a list
    in size order (JSON would sort its string keys as text)."""
    out = json.loads(json.dumps(stats))
    tpd = out["tokens_per_document"]
    tpd["mean"] = round(tpd["sum"] / out["documents_kept"], 3) if out["documents_kept"] else 0
    tpd["log2_histogram"] = [{"up_to_tokens": int(k), "documents": v}
                             for k, v in sorted(tpd["log2_histogram"].items(), key=lambda kv: int(kv[0]))]
    return out


def _fresh_stats() -> dict:
    return {"documents_read": 0, "documents_kept": 0, "rejected": {r: 0 for r in REJECT_REASONS},
            "splits": {s: {"documents": 0, "tokens": 0, "characters": 0, "text_bytes": 0} for s in SPLITS},
            "tokens_per_document": {"min": None, "max": 0, "sum": 0, "log2_histogram": {}}}


@contextmanager
def _output_errors(paths):
    """An OSError while writing the .partial token files becomes one OutputError line; the work
    committed before it stays valid, and the progress file lets a rerun resume from there."""
    directory = os.path.dirname(os.path.abspath(paths["train"]))
    try:
        yield
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise OutputError(f"cannot write the token files in {directory}: {e.strerror or e}") from None
        try:
            free = f"{shutil.disk_usage(directory).free / 1e6:.1f} MB free"
        except OSError:
            free = "free space unknown"
        raise OutputError(f"no space left writing the token files in {directory} ({free}): the work committed "
                          "so far is kept; free some space and run the same command again to resume") from None


class DataProcessor:
    def __init__(self, tokenizer_path: str, read: ReadSettings = DEFAULT_READ, max_length=None,
                 chunk_size: int = 2048, save_interval: int = 0, val_ratio: float = 0.0, seed: int = 0,
                 show_progress: bool = True, chunk_bytes: int = CHUNK_BYTES):
        """read: how documents are read from the inputs (data/sources/settings.py; with its prefix_field, a
        record's prompt and text are one document, and data/samples/prefix_split.py records where the prompt
        ends). max_length: what the reference means by it, the length in tokens of the training samples
        (train.py's data.seq_len, which it becomes when none is given: it is recorded in the sidecar
        as sample_length). No document is dropped or cut for it: a longer one packs across
        consecutive samples (the cap on a document is read.max_chars). chunk_size: most documents tokenized
        per batch; chunk_bytes: most text per batch (memory follows the batch, not the corpus);
        save_interval: documents between durable progress commits (0: every chunk)."""
        check_settings(chunk_size=chunk_size, val_ratio=val_ratio, read=read)
        if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int)
                                       or max_length < 2):
            raise DataError(f"max_length is the training sample length in tokens, at least 2; got {max_length!r} "
                            "(a cap on document characters is max_chars)")
        self.read, self.max_length = read, max_length
        self.tokenizer_path = tokenizer_path
        self.tokenizer = load_tokenizer(tokenizer_path)
        self.chunk_size, self.save_interval = chunk_size, save_interval
        self.chunk_bytes = chunk_bytes
        self.val_ratio, self.seed = val_ratio, seed
        self.show_progress = show_progress
        self.stats = _fresh_stats()
        self.timing = {}
        self.reused = False  # whether the last process_dataset found its output complete and kept it
        self.piece = None    # a shard's {"index", "start", "end"}: one byte range of one input file

    # ---- validation only --------------------------------------------------------------------
    def validate_and_clean_jsonl(self, input_path, output_path: str) -> dict:
        """Write only the valid documents, as {"<text_field>": text} lines; count the rest by reason."""
        stats = _fresh_stats()

        def write(out):
            for path in expand_inputs(input_path):
                for text, reason, _, _ in self._records(path, 0):
                    stats["documents_read"] += 1
                    if reason:
                        stats["rejected"][reason] += 1
                        continue
                    stats["documents_kept"] += 1
                    out.write(json.dumps({self.read.text_field: text}, ensure_ascii=False) + "\n")
        atomic_write(output_path, write, binary=False)
        self.stats = stats
        return stats

    # ---- processing -------------------------------------------------------------------------
    def output_paths(self, output_path: str) -> dict:
        root, _ = os.path.splitext(output_path)
        name = os.path.basename(root)
        if name == "train" or name.startswith("train-"):  # train.bin -> val.bin, train-00007.bin -> val-00007.bin
            val = os.path.join(os.path.dirname(output_path), "val" + name[len("train"):] + ".bin")
        else:
            val = root + ".val.bin"
        return {"train": output_path, "val": val, "stats": root + ".stats.json", "run_log": root + ".run.json",
                "progress": output_path + ".progress.json"}

    def _signature(self, files) -> dict:
        """What the output depends on. Inputs are named by path, size and modification time: a corpus
        edited in place is processed again (and never resumed into a half-old output)."""
        inputs = [[os.path.abspath(f), *input_stamp(f)] for f in files]
        return {"format": FORMAT_VERSION, "inputs": inputs,
                "tokenizer_fingerprint": self.tokenizer.fingerprint(), "val_ratio": self.val_ratio, "seed": self.seed,
                **self.read.recorded(),
                **({"piece": self.piece} if self.piece else {}),
                **({"sample_length": self.max_length} if self.max_length else {})}

    def _records(self, path: str, start: int):
        return iter_records(path, start, self.read)

    def is_complete(self, input_path, output_path: str) -> bool:
        paths = self.output_paths(output_path)
        try:
            with open(meta_path(paths["train"]), encoding="utf-8") as f:
                meta = json.load(f)
        except (OSError, ValueError):
            return False
        return meta.get("signature") == self._signature(expand_inputs(input_path)) and \
            os.path.exists(meta_path(paths["val"]))

    def process_dataset(self, input_path, output_path: str, resume: bool = True, piece=None) -> dict:
        """piece: process only bytes [start, end) of the one input file, a shard of a larger job
        (its validation split is drawn with the shard's index)."""
        files = expand_inputs(input_path)
        self.piece = piece
        paths = self.output_paths(output_path)
        os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
        signature = self._signature(files)
        self.reused = resume and self.is_complete(files, output_path)
        if self.reused:
            with open(paths["stats"], encoding="utf-8") as f:
                self.stats = json.load(f)["statistics"]
            if os.path.exists(paths["progress"]):  # killed after the last sidecar, before this cleanup
                os.remove(paths["progress"])
            if not os.path.exists(stats_png(paths["stats"])):  # built before the picture, or killed before it
                write_stats_png(paths["stats"])
            return paths
        state = self._load_progress(paths, signature) if resume else None
        if state is None:
            self._clear(paths)
            state = {"signature": signature, "phase": "tokenize", "file_index": 0,
                     "offset": piece["start"] if piece else 0,
                     "lengths": {s: [0, 8] for s in SPLITS}, "stats": _fresh_stats()}
        self.stats = state["stats"]
        tokens_before, bytes_before = _totals(self.stats)
        started = time.perf_counter()
        if state["phase"] == "tokenize":
            self._tokenize(files, paths, state)
        self._finalize(paths, state)
        elapsed = max(time.perf_counter() - started, 1e-9)
        tokens, text_bytes = (a - b for a, b in zip(_totals(self.stats), (tokens_before, bytes_before)))
        # Throughput of this run only (a resumed run counts what it did itself).
        self.timing = {"seconds": round(elapsed, 3), "tokens": tokens, "tokens_per_second": round(tokens / elapsed),
                       "megabytes_per_second": round(text_bytes / 1e6 / elapsed, 2),
                       "resumed_from": [state.get("resumed_file", 0), state.get("resumed_at", 0)]}
        self.save_statistics(paths["run_log"])
        write_stats_png(paths["stats"])  # the statistics drawn beside their .json (outside the timing)
        note = rejection_note(self.stats, self.read.max_chars)
        if note and not piece:  # (a shard's share is summed by data/build/sharded.py)
            print(note, flush=True)
        return paths

    def _load_progress(self, paths, signature):
        try:
            with open(paths["progress"], encoding="utf-8") as f:
                state = json.load(f)
        except (OSError, ValueError):
            return None
        if state.get("signature") != signature:
            return None  # other inputs or settings: start over rather than mix
        state["resumed_file"], state["resumed_at"] = state["file_index"], state["offset"]
        return state

    def _clear(self, paths) -> None:
        """Forget any earlier output (sidecars first, so nothing looks complete meanwhile)."""
        for split in SPLITS:
            for p in (meta_path(paths[split]), paths[split], idx_path(paths[split]),
                      paths[split] + ".partial", idx_path(paths[split]) + ".partial"):
                if os.path.exists(p):
                    os.remove(p)
        for p in (paths["stats"], stats_png(paths["stats"]), paths["run_log"], paths["progress"]):
            if os.path.exists(p):
                os.remove(p)

    def _open_partials(self, paths, state) -> dict:
        handles = {}
        for split in SPLITS:
            bin_len, idx_len = state["lengths"][split]
            files = []
            for path, length, initial in ((paths[split] + ".partial", bin_len, b""),
                                          (idx_path(paths[split]) + ".partial", idx_len, np.zeros(1, "<u8").tobytes())):
                f = open(path, "r+b" if os.path.exists(path) else "w+b")
                if not os.path.getsize(path) and initial:
                    f.write(initial)
                f.truncate(length)  # drop whatever was written after the last commit
                f.seek(length)
                files.append(f)
            handles[split] = files
        return handles

    def _read_chunks(self, files, state, bar):
        """Valid texts in chunks of at most chunk_size documents / chunk_bytes of text, each with
        the input position after its last line and the counts of the lines it consumed (rejected
        ones included), so that a commit after the chunk is an exact resume point. A chunk never
        spans two files."""
        for file_index in range(state["file_index"], len(files)):
            start = state["offset"] if file_index == state["file_index"] else 0
            chunk, last = Chunk(), start
            for text, reason, offset, size in self._records(files[file_index], start):
                if self.piece and offset - size >= self.piece["end"]:
                    break  # the first record of the next shard
                bar.update(offset - last)
                last = offset
                chunk.read += 1
                if reason:
                    chunk.rejected[reason] = chunk.rejected.get(reason, 0) + 1
                else:
                    chunk.texts.append(text)
                    chunk.text_bytes += size
                if len(chunk.texts) >= self.chunk_size or chunk.text_bytes >= self.chunk_bytes:
                    chunk.end = (file_index, offset)
                    yield chunk
                    chunk = Chunk()
            if chunk.read:
                chunk.end = (file_index, last)
                yield chunk

    def _tokenize(self, files, paths, state) -> None:
        """Read and validate the next chunk while a worker thread tokenizes the previous one (the
        tokenizer releases the GIL), then write and commit chunks strictly in input order."""
        with _output_errors(paths):
            handles = self._open_partials(paths, state)
        total = sum(input_size(f) for f in files)  # (rows count as bytes for Parquet: an approximate bar)
        done_before = sum(input_size(f) for f in files[:state["file_index"]]) + state["offset"]
        bar = tqdm(total=total, initial=done_before, unit="B", unit_scale=True, desc="processing",
                   disable=not self.show_progress)
        since_commit, pending = 0, None
        try:
            with ThreadPoolExecutor(max_workers=1) as pool:
                for chunk in self._read_chunks(files, state, bar):
                    encoded = pool.submit(self.tokenizer.encode_batch, chunk.texts)
                    if pending:
                        since_commit = self._store(*pending, paths, state, handles, since_commit)
                    pending = (chunk, encoded)
                if pending:
                    self._store(*pending, paths, state, handles, since_commit=-1)
        finally:
            bar.close()
            for pair in handles.values():
                for f in pair:
                    try:
                        f.close()
                    except OSError:  # unflushed bytes past the last commit: a rerun truncates them anyway
                        pass
        state["phase"] = "finalize"
        write_json_atomic(paths["progress"], state)

    def _store(self, chunk, encoded, paths, state, handles, since_commit: int) -> int:
        """Append one tokenized chunk and commit when save_interval documents have piled up (and
        always after the last chunk: since_commit < 0). Returns the documents not yet committed."""
        stats = state["stats"]
        stats["documents_read"] += chunk.read
        for reason, n in chunk.rejected.items():
            stats["rejected"][reason] += n
        ids = encoded.result()
        with _output_errors(paths):
            self._write_chunk(chunk.texts, ids, handles, stats)
            if since_commit < 0 or since_commit + len(chunk.texts) >= self.save_interval:
                self._commit(paths, state, handles, *chunk.end)
                return 0
        return since_commit + len(chunk.texts)

    def _write_chunk(self, texts, encoded, handles, stats) -> None:
        dtype = token_dtype(self.tokenizer.vocab_size)
        tokens = {s: [] for s in SPLITS}   # one flat list per split: one array conversion per chunk
        ends = {s: [] for s in SPLITS}
        tpd = stats["tokens_per_document"]
        for text, ids in zip(texts, encoded):
            piece = self.piece["index"] if self.piece else None
            split = "val" if is_validation(stats["documents_kept"], self.seed, self.val_ratio, piece) else "train"
            stats["documents_kept"] += 1
            ids = self.tokenizer.frame(ids)  # text then eos, or [CLS] text [SEP] for BERT-style tokenizers
            n = len(ids)
            s = stats["splits"][split]
            s["documents"] += 1
            s["tokens"] += n
            s["characters"] += len(text)
            s["text_bytes"] += len(text.encode("utf-8"))
            tpd["min"] = n if tpd["min"] is None else min(tpd["min"], n)
            tpd["max"], tpd["sum"] = max(tpd["max"], n), tpd["sum"] + n
            bucket = str(1 << (n - 1).bit_length())  # documents of up to this many tokens
            tpd["log2_histogram"][bucket] = tpd["log2_histogram"].get(bucket, 0) + 1
            tokens[split] += ids
            ends[split].append(s["tokens"])
        for split in SPLITS:
            if ends[split]:
                bin_f, idx_f = handles[split]
                bin_f.write(np.array(tokens[split], dtype=dtype).tobytes())
                idx_f.write(np.array(ends[split], dtype="<u8").tobytes())
        fault_point("chunk_written")

    def _commit(self, paths, state, handles, file_index, offset) -> None:
        lengths = {}
        for split, (bin_f, idx_f) in handles.items():
            for f in (bin_f, idx_f):
                f.flush()
                os.fsync(f.fileno())
            lengths[split] = [bin_f.tell(), idx_f.tell()]
        state.update(file_index=file_index, offset=offset, lengths=lengths)
        write_json_atomic(paths["progress"], state)
        fault_point("chunk_committed")

    def _finalize(self, paths, state) -> None:
        """Each step is safe to repeat, so a kill anywhere in here is finished by the next run."""
        stats = _summarize(state["stats"])
        write_json_atomic(paths["stats"], {"statistics": stats, "signature": state["signature"]})
        fault_point("finalize_stats")
        for split in SPLITS:
            for final in (paths[split], idx_path(paths[split])):
                if os.path.exists(final + ".partial"):
                    os.replace(final + ".partial", final)
            fault_point("finalize_renamed")
        dtype = token_dtype(self.tokenizer.vocab_size)
        for split in SPLITS:
            s = stats["splits"][split]
            write_json_atomic(meta_path(paths[split]), {
                "format": FORMAT_VERSION, "dtype": dtype.name, "n_tokens": s["tokens"], "n_docs": s["documents"],
                "n_text_bytes": s["text_bytes"], "n_characters": s["characters"],
                "vocab_size": self.tokenizer.vocab_size, "eos_id": self.tokenizer.eos_id, "split": split,
                "tokenizer_fingerprint": self.tokenizer.fingerprint(), "signature": state["signature"],
                **({"sample_length": self.max_length} if self.max_length else {})})
            fault_point("finalize_meta")
        if os.path.exists(paths["progress"]):
            os.remove(paths["progress"])
        self.stats = stats

    def save_statistics(self, path: str) -> None:
        """The statistics of the last run plus its timing (the automatic <name>.stats.json leaves the
        timing out so that it is byte-identical across interrupted and uninterrupted runs)."""
        write_json_atomic(path, {"statistics": self.stats, "timing": self.timing})
