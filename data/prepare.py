"""Everything a corpus needs before training, built once and reused: tokenizer, train/val token files.

Called by train.py at every start, so a second call only checks fingerprints and returns."""
import argparse
import json
import os
import time

from data.jsonl import expand_inputs
from data.processor import DataProcessor, check_settings
from data.tokenizer import load_tokenizer, train_tokenizer


def _tokenizer_recipe(files, vocab_size, text_field) -> dict:
    return {"inputs": [[os.path.abspath(f), os.path.getsize(f)] for f in files], "vocab_size": vocab_size,
            "text_field": text_field}


def ensure_tokenizer(files, out_dir, vocab_size, text_field) -> str:
    """out_dir/tokenizer.json, trained unless one made from the same recipe is already there."""
    path = os.path.join(out_dir, "tokenizer.json")
    recipe_path = path + ".recipe.json"
    recipe = _tokenizer_recipe(files, vocab_size, text_field)
    if os.path.exists(path) and os.path.exists(recipe_path):
        with open(recipe_path, encoding="utf-8") as f:
            if json.load(f) == recipe:
                return path
    os.makedirs(out_dir, exist_ok=True)
    started = time.perf_counter()
    tok = train_tokenizer(files, path, vocab_size=vocab_size, text_field=text_field)
    with open(recipe_path, "w", encoding="utf-8") as f:
        json.dump(recipe, f)
    print(f"tokenizer: byte-level BPE, {tok.vocab_size} tokens, trained in {time.perf_counter() - started:.1f}s -> {path}")
    return path


def prepare_corpus(inputs, out_dir: str, vocab_size: int = 4096, text_field: str = "text", val_ratio: float = 0.05,
                   tokenizer_path=None, seed: int = 0, chunk_size: int = 2048, resume: bool = True,
                   max_length: int = 10_000_000) -> dict:
    files = expand_inputs(inputs)
    check_settings(chunk_size=chunk_size, val_ratio=val_ratio, max_length=max_length)
    if tokenizer_path:
        load_tokenizer(tokenizer_path)  # fail early with its own message
    else:
        tokenizer_path = ensure_tokenizer(files, out_dir, vocab_size, text_field)
    processor = DataProcessor(tokenizer_path, max_length=max_length, chunk_size=chunk_size, text_field=text_field,
                              val_ratio=val_ratio, seed=seed)
    paths = processor.process_dataset(files, os.path.join(out_dir, "train.bin"), resume=resume)
    if not processor.reused:
        _print_summary(processor, paths)
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


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of the usage block, like every other error here
        self.exit(2, f"error: {message}; see {self.prog} --help\n")


def build_arg_parser() -> argparse.ArgumentParser:
    p = _OneLineParser(prog="python -m data.processor",
                                description="Validate, tokenize and pack JSONL files into train.bin / val.bin.")
    p.add_argument("inputs", nargs="+", help="JSONL files or globs")
    p.add_argument("--out_dir", required=True, help="where tokenizer.json, train.bin, val.bin and stats go")
    p.add_argument("--tokenizer", default=None, help="an existing tokenizer.json (default: train one)")
    p.add_argument("--vocab_size", type=int, default=4096, help="size of a newly trained tokenizer")
    p.add_argument("--text_field", default="text", help="JSON field holding the text (text, content, completion...)")
    p.add_argument("--val_ratio", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0, help="seed of the validation split")
    p.add_argument("--chunk_size", type=int, default=2048, help="documents tokenized per batch")
    p.add_argument("--max_length", type=int, default=10_000_000, help="longest document kept, in characters")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="continue an interrupted run (default); --no-resume starts over")
    return p
