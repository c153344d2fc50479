"""Processing a corpus as numbered shards, in parallel processes and across machines.

The inputs are cut into pieces by a plan that depends only on the inputs and --shard_mb: each file
is a piece, and a JSONL or text file larger than --shard_mb is cut into byte ranges at record
boundaries (the line, or the blank line ending a paragraph, after each multiple of --shard_mb).
Piece i becomes train-0000i.bin / val-0000i.bin, made by data/build/corpus_processor.py's DataProcessor with its
own progress file, so every shard resumes byte-exactly after a SIGKILL. --workers K processes
pieces in K processes; --num_shards N --shard_index I makes this machine process the pieces i
with i % N == I: N machines together produce the files one machine would. manifest.json lists
every shard in order; training reads it (data/samples/token_shards.py) as one dataset."""
import fcntl
import os
import signal
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context

from tqdm import tqdm

from data.errors import DataError
from data.sources.jsonl import iter_lines
from data.sources.settings import DEFAULT_READ
from data.sources.records import input_size, is_plain_text, is_row_source
from data.samples.token_bin import FORMAT_VERSION
from utils import remove_stale_temporaries, write_json_atomic

MANIFEST = "manifest.json"


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:05d}.bin"


def _next_boundary(path: str, at: int, text_unit: str) -> int:
    """The first record start at or after byte `at`: after the next newline (after the next
    blank line for paragraphs of plain text)."""
    if at == 0:
        return 0
    paragraphs = is_plain_text(path) and text_unit == "paragraph"
    lines = iter_lines(path, at - 1)  # from the byte before: `at` may already start a line
    raw, offset = next(lines, (b"", at))
    if not paragraphs or raw == b"\n":
        return offset
    for raw, offset in lines:
        if not raw.strip():
            return offset
    return offset


def plan(files, shard_bytes: int, text_unit: str) -> list:
    """[{"index", "path", "start", "end"}] covering every byte of every input once, in order."""
    pieces = []
    for path in files:
        size = input_size(path)
        bounds = [0]
        whole = is_plain_text(path) and text_unit == "file"  # one document: never cut
        if not is_row_source(path) and not whole and shard_bytes > 0:
            for at in range(shard_bytes, size, shard_bytes):
                b = _next_boundary(path, at, text_unit)
                if bounds[-1] < b < size:
                    bounds.append(b)
        bounds.append(size)
        for start, end in zip(bounds, bounds[1:]):
            pieces.append({"index": len(pieces), "path": os.path.abspath(path), "start": start, "end": end})
    return pieces


def _die_with_parent() -> None:
    """A worker must not outlive a SIGKILLed parent: a rerun would find it still writing its shard."""
    if sys.platform.startswith("linux"):
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    # Ctrl-C reaches the whole process group: stop at once, quietly (a rerun truncates to the last commit).
    signal.signal(signal.SIGINT, lambda *_: os._exit(130))


_processors = {}  # one DataProcessor (and tokenizer) per process, reused for every piece it takes


def _processor(tokenizer_path, settings):
    from data.build.corpus_processor import DataProcessor
    key = (tokenizer_path, tuple(sorted(settings.items())))
    if key not in _processors:
        _processors.clear()
        _processors[key] = DataProcessor(tokenizer_path, show_progress=False, **settings)
    return _processors[key]


def _process_piece(piece, out_dir, tokenizer_path, settings, resume) -> dict:
    out = os.path.join(out_dir, shard_name("train", piece["index"]))
    # One writer per shard, even with a straggler from a killed run or a second machine on the same disk.
    with open(out + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        processor = _processor(tokenizer_path, settings)
        span = {"index": piece["index"], "start": piece["start"], "end": piece["end"]}
        processor.process_dataset(piece["path"], out, resume=resume, piece=span)
    os.remove(out + ".lock")
    return {"index": piece["index"], "stats": processor.stats, "reused": processor.reused,
            "tokens": processor.timing.get("tokens", 0)}


def _recorded(settings: dict) -> dict:
    """The processor's settings as manifest.json lists them: flat, the reading settings among the
    others, chunk_size left out (it never changes the bytes)."""
    read = settings.get("read", DEFAULT_READ)
    return {**{k: v for k, v in settings.items() if k not in ("read", "chunk_size")},
            "text_field": read.text_field, "max_chars": read.max_chars, "min_chars": read.min_chars,
            "text_unit": read.text_unit}


def process_sharded(files, out_dir: str, tokenizer_path: str, settings: dict, workers: int = 1,
                    num_shards: int = 1, shard_index: int = 0, shard_mb: float = 256.0, resume: bool = True,
                    show_progress: bool = True) -> dict:
    """Process this machine's pieces into out_dir; write the manifest. Returns the summary.
    settings: DataProcessor's keyword arguments (read, val_ratio, seed, chunk_size, max_length)."""
    if workers < 1:
        raise DataError(f"--workers must be at least 1, got {workers}")
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise DataError(f"--shard_index must be in [0, --num_shards) = [0, {num_shards}), got {shard_index}")
    if not shard_mb > 0:
        raise DataError(f"--shard_mb must be positive, got {shard_mb}")
    from data.tokenizer import load_tokenizer
    tokenizer = load_tokenizer(tokenizer_path)
    os.makedirs(out_dir, exist_ok=True)
    pieces = plan(files, int(shard_mb * 1e6), settings.get("read", DEFAULT_READ).text_unit)
    mine = [p for p in pieces if p["index"] % num_shards == shard_index]
    started = time.perf_counter()
    results = []
    bar = tqdm(total=sum(p["end"] - p["start"] for p in mine), unit="B", unit_scale=True,
               desc=f"processing {len(mine)} shard(s), {workers} worker(s)", disable=not show_progress)
    try:
        if workers == 1 or len(mine) <= 1:
            for p in mine:
                results.append(_process_piece(p, out_dir, tokenizer_path, settings, resume))
                bar.update(p["end"] - p["start"])
        else:
            # Forked workers start at once; each encodes on one core (--workers K uses K cores), which
            # also keeps the tokenizer's thread pool from being forked mid-use.
            os.environ["TOKENIZERS_PARALLELISM"] = "false"
            pool = ProcessPoolExecutor(min(workers, len(mine)), mp_context=get_context("fork"),
                                       initializer=_die_with_parent)
            try:
                jobs = {pool.submit(_process_piece, p, out_dir, tokenizer_path, settings, resume): p for p in mine}
                for job in as_completed(jobs):
                    try:
                        results.append(job.result())
                    except BrokenProcessPool:
                        raise DataError(f"a worker process died (killed, or out of memory?) while processing shards "
                                        f"in {out_dir}; the work committed so far is kept: run the same command again "
                                        "to resume") from None
                    bar.update(jobs[job]["end"] - jobs[job]["start"])
            except BaseException:  # an error or Ctrl-C: stop the workers now rather than finish the queue
                for worker in list((getattr(pool, "_processes", None) or {}).values()):
                    worker.kill()
                pool.shutdown(wait=True, cancel_futures=True)
                raise
            pool.shutdown(wait=True)
    finally:
        bar.close()
    # A worker of a killed run may have died inside an atomic write after this run looked; now that
    # every process of this run is done, whatever .tmp-PID remains belongs to a dead process.
    remove_stale_temporaries(out_dir)
    manifest = {"format": FORMAT_VERSION, "tokenizer_fingerprint": tokenizer.fingerprint(),
                "settings": _recorded(settings),
                "shard_mb": shard_mb, "n_shards": len(pieces),  # (a reader spots a lost entry by the count)
                "shards": [{"train": shard_name("train", p["index"]), "val": shard_name("val", p["index"]),
                            "input": [p["path"], p["start"], p["end"]]} for p in pieces]}
    write_json_atomic(os.path.join(out_dir, MANIFEST), manifest)
    results.sort(key=lambda r: r["index"])
    return {"pieces": len(pieces), "processed": [r["index"] for r in results],
            "seconds": time.perf_counter() - started, "tokens": sum(r["tokens"] for r in results),
            "results": results, "manifest": os.path.join(out_dir, MANIFEST)}


def prepare_sharded(inputs, out_dir: str, vocab_size: int, tokenizer_path, settings: dict, workers: int,
                    num_shards: int, shard_index: int, shard_mb: float, resume: bool = True) -> dict:
    """The processor's sharded command: settings checked, the tokenizer found or trained, this
    machine's shards made, a one-line summary printed."""
    from data.sources.inputs import expand_inputs
    from data.build.corpus_processor import check_settings
    from data.build.prepare import ensure_tokenizer
    from data.sources.records import nothing_usable
    from utils import check_writable_dir

    files = expand_inputs(inputs)
    read = settings["read"]
    check_settings(chunk_size=settings["chunk_size"], val_ratio=settings["val_ratio"], read=read)
    check_writable_dir(out_dir, "output directory")
    if num_shards > 1 and not tokenizer_path:
        raise DataError("--num_shards splits the job over machines, which must share one tokenizer: train it once "
                        "(python -m data.processor ... without --num_shards) and pass --tokenizer")
    if not tokenizer_path:
        tokenizer_path = ensure_tokenizer(files, out_dir, vocab_size, read)
    summary = process_sharded(files, out_dir, tokenizer_path, settings, workers=workers, num_shards=num_shards,
                              shard_index=shard_index, shard_mb=shard_mb, resume=resume)
    documents_read = sum(r["stats"]["documents_read"] for r in summary["results"])
    kept = sum(r["stats"]["documents_kept"] for r in summary["results"])
    rejected = {}
    for r in summary["results"]:
        for reason, n in r["stats"]["rejected"].items():
            rejected[reason] = rejected.get(reason, 0) + n
    if summary["results"] and kept == 0:
        raise nothing_usable(files, documents_read, rejected, read.text_field)
    split_tokens = {s: sum(r["stats"]["splits"][s]["tokens"] for r in summary["results"]) for s in ("train", "val")}
    from data.build.corpus_processor import rejection_note
    note = rejection_note({"documents_read": documents_read, "rejected": rejected}, read.max_chars)
    if note:
        print(note)
    print(f"processed {len(summary['processed'])} of {summary['pieces']} shards ({workers} worker(s)): "
          f"{documents_read} documents, kept {kept}; train {split_tokens['train']} tokens, val {split_tokens['val']} "
          f"tokens in {summary['seconds']:.1f}s -> {summary['manifest']}")
    return summary
