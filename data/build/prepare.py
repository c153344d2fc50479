"""Everything a corpus needs before training, built once and reused: tokenizer, train/val token files.

Called by train.py at every start, so a second call only checks fingerprints and returns."""
import json
import os
import time

from data.sources.inputs import expand_inputs
from data.build.corpus_processor import DataProcessor, check_settings
from data.samples.prefix_split import ensure_prefix_lengths
from data.sources.settings import DEFAULT_READ, ReadSettings
from data.sources.records import input_size, nothing_usable
from data.tokenizer import load_tokenizer, train_tokenizer
from data.samples.word_starts import ensure_word_starts
from utils import check_writable_dir, write_json_atomic


def _tokenizer_recipe(files, vocab_size, read: ReadSettings) -> dict:
    return {"inputs": [[os.path.abspath(f), input_size(f)] for f in files], "vocab_size": vocab_size,
            **read.recorded()}


def _read_recipe(path: str):
    """The recipe a tokenizer was trained from; None when missing or cut short (then it is retrained)."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        print(f"note: {path} is unreadable (cut short?); training the tokenizer again")
        return None


def ensure_tokenizer(files, out_dir, vocab_size, read: ReadSettings = DEFAULT_READ) -> str:
    """out_dir/tokenizer.json, trained unless one made from the same recipe is already there (with
    read.prefix_field, on the prompts too: they are part of every document)."""
    path = os.path.join(out_dir, "tokenizer.json")
    recipe_path = path + ".recipe.json"
    recipe = _tokenizer_recipe(files, vocab_size, read)
    if os.path.exists(path) and _read_recipe(recipe_path) == recipe:
        return path
    check_writable_dir(out_dir, "output directory")
    started = time.perf_counter()
    print(f"tokenizer: training byte-level BPE ({vocab_size} tokens) on {len(files)} file(s)...", flush=True)
    tok = train_tokenizer(files, path, vocab_size=vocab_size, read=read)
    write_json_atomic(recipe_path, recipe)
    print(f"tokenizer: byte-level BPE, {tok.vocab_size} tokens, trained in {time.perf_counter() - started:.1f}s -> {path}")
    return path


def prepare_corpus(inputs, out_dir: str, read: ReadSettings = DEFAULT_READ, vocab_size: int = 4096,
                   val_ratio: float = 0.05, tokenizer_path=None, seed: int = 0, chunk_size: int = 2048,
                   resume: bool = True, word_starts: bool = False, max_length=None) -> dict:
    files = expand_inputs(inputs)
    check_settings(chunk_size=chunk_size, val_ratio=val_ratio, read=read)
    check_writable_dir(out_dir, "output directory")  # before any work
    if tokenizer_path:
        load_tokenizer(tokenizer_path)  # fail early with its own message
    else:
        tokenizer_path = ensure_tokenizer(files, out_dir, vocab_size, read)
    processor = DataProcessor(tokenizer_path, read=read, max_length=max_length, chunk_size=chunk_size,
                              val_ratio=val_ratio, seed=seed)
    paths = processor.process_dataset(files, os.path.join(out_dir, "train.bin"), resume=resume)
    if not processor.reused:
        _print_summary(processor, paths)
    s = processor.stats
    if s["documents_kept"] == 0:
        raise nothing_usable(files, s["documents_read"], s["rejected"], read.text_field)
    if read.prefix_field:  # where each document's prompt ends, for prefix-LM training
        ensure_prefix_lengths(files, {"train": paths["train"], "val": paths["val"]}, load_tokenizer(tokenizer_path),
                              read, seed, val_ratio)
    if word_starts:  # whole-word masking's word boundaries, computed now so training pays nothing for them
        tokenizer = load_tokenizer(tokenizer_path)
        for split in ("train", "val"):
            ensure_word_starts(paths[split], tokenizer)
    return {"train_bin": paths["train"], "val_bin": paths["val"], "tokenizer": tokenizer_path,
            "stats": paths["stats"]}


def _print_summary(processor, paths) -> None:
    s = processor.stats
    rejected = {k: v for k, v in s["rejected"].items() if v}
    t = processor.timing
    print(f"processed {s['documents_read']} documents: kept {s['documents_kept']}, rejected "
          f"{sum(rejected.values())}{' ' + json.dumps(rejected) if rejected else ''}; "
          f"train {s['splits']['train']['tokens']} tokens, val {s['splits']['val']['tokens']} tokens "
          f"({t.get('tokens_per_second', 0):,} tokens/s) -> {paths['train']}, {paths['val']}")
