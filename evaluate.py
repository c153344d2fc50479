"""Evaluate a checkpoint on a corpus, exactly as training evaluates its validation split.

    python evaluate.py --model_path out/shakespeare/best.pth --data dataset/sample/val.bin
    python evaluate.py --model_path out/mlm/best.pth --data notes.jsonl --max_batches 50 --json
    python evaluate.py --model_path out/run/best.pth --data chapter.txt --seq_len 128

--data is a processed .bin (python -m data.processor; its tokenizer must be the checkpoint's), a
JSONL file (the text under --text_field; bad lines are counted and skipped as the processor does) or
a plain .txt / .md file (a document per blank-line-separated paragraph, or per line with
--text_unit line). Texts are tokenized on the fly the way the processor stores them: each document
framed (eos, or [CLS] ... [SEP]) and concatenated in order.

Causal models: loss, perplexity and bits per byte over non-overlapping windows of seq_len + 1
tokens; prefix LMs the same over the tokens after each window's prefix, drawn from a fixed seed as
training's validation draws them, or, with --prefix_field, each document's prompt (as training with
data.prefix_field takes it). Masked models: masked loss and masked-token accuracy, the masks drawn
from a fixed seed at
--mask_rate with 80/10/10, so two runs give the same figures to the bit; a model with BERT's
next-sentence head (data.pairs, BertForPreTraining) also gets its next-sentence accuracy, on the
sentence pairs training's validation would draw from the same text."""
import argparse
import contextlib
import json
import math
import os
import sys

import numpy as np
import torch
from tqdm import tqdm

from checkpoint import load_for_inference
from data.samples.documents import DocumentIndex
from data.samples.prefix_split import prefix_lengths, prompt_length
from data.errors import DataError
from data.sources.settings import DEFAULT_READ, TEXT_UNITS, ReadSettings
from data.sources.records import iter_records, nothing_usable
from data.samples.token_bin import TokenBin, token_dtype
from training.batches import EVAL_SEED, evaluate
from training.config import DataConfig
from training.objectives import OBJECTIVES, masker_for
from training.parallelism.distributed import DistInfo
from utils import DTYPES, OneLineArgumentParser, UsageError, check_device, resolve_dtype, run_cli

BATCH_SIZE = 16
ENCODE_CHUNK = 1024  # documents tokenized per batch call


def build_parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(prog="python evaluate.py", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_path", required=True, help="a checkpoint: best.pth or checkpoint_step_N.pth")
    p.add_argument("--data", required=True, help="a processed .bin, a JSONL file, or a .txt / .md file")
    p.add_argument("--text_field", default=DEFAULT_READ.text_field, help="JSONL: the field holding the text")
    p.add_argument("--text_unit", choices=TEXT_UNITS, default=DEFAULT_READ.text_unit,
                   help=".txt / .md: one document per blank-line-separated paragraph (default), per line, or per file")
    p.add_argument("--max_batches", type=int, default=0, help="evaluate at most this many batches (0 = all)")
    p.add_argument("--batch_size", type=int, default=BATCH_SIZE, help=f"windows per batch (default {BATCH_SIZE})")
    p.add_argument("--seq_len", type=int, default=None,
                   help="window length (default: the model's max_seq_len; a run trained with a shorter data.seq_len evaluated with it)")
    p.add_argument("--prefix_field", default=DEFAULT_READ.prefix_field,
                   help="a packed prefix LM trained with data.prefix_field: the JSONL field holding each record's "
                        "prompt (a .bin: read its .prefix file), taken as each document's prefix")
    p.add_argument("--mask_rate", type=float, default=0.15,
                   help="masked LM: share of positions masked (80%% mask token, 10%% random, 10%% kept)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", choices=DTYPES, default="float32",
                   help="autocast dtype of the forward pass (default float32)")
    p.add_argument("--ema", action=argparse.BooleanOptionalAction, default=None,
                   help="--ema: the EMA weights; --no-ema: the raw trained weights; default: the weights the "
                        "run evaluated (EMA when it trained with --use_ema)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout instead of text")
    return p


def check_flags(args) -> None:
    if args.batch_size < 1:
        raise UsageError(f"--batch_size must be at least 1, got {args.batch_size}")
    if args.max_batches < 0:
        raise UsageError(f"--max_batches must be 0 (all) or positive, got {args.max_batches}")
    if args.seq_len is not None and args.seq_len < 1:
        raise UsageError(f"--seq_len must be at least 1, got {args.seq_len}")
    if not (0 < args.mask_rate <= 1):  # also refuses nan
        raise UsageError(f"--mask_rate must be in (0, 1], got {args.mask_rate}")
    if not os.path.exists(args.data):
        raise DataError(f"data file not found: {args.data}")
    if os.path.isdir(args.data):
        raise DataError(f"{args.data} is a directory; pass a .bin, JSONL, .txt or .md file")


# ---- the tokens to evaluate ------------------------------------------------------------------------
class TokenArray:
    """In-memory stand-in for a TokenBin: what the windows read (tokens), and the sidecar's counts."""

    def __init__(self, path: str, tokens: np.ndarray, text_bytes: int, documents: int, offsets: np.ndarray,
                 prompt_lengths=None):
        self.path, self.tokens, self.offsets, self.prompt_lengths = path, tokens, offsets, prompt_lengths
        self.meta = {"n_tokens": int(len(tokens)), "n_text_bytes": int(text_bytes), "n_documents": documents}

    def doc_offsets(self) -> np.ndarray:
        return self.offsets

    def __len__(self) -> int:
        return len(self.tokens)


def tokenize_file(path: str, tokenizer, text_field: str, text_unit: str, prefix_field=None) -> tuple:
    """(TokenArray, {reason: lines skipped}) of a JSONL or plain-text file, tokenized as the processor
    stores it: every document framed, all concatenated in order (with prefix_field, each record's
    prompt before its text, and the prompts' lengths as data/prefix_split.py counts them)."""
    dtype = token_dtype(tokenizer.vocab_size)
    pieces, texts, rejected, prompts = [], [], {}, []
    read = text_bytes = documents = 0

    def flush():
        for ids in tokenizer.encode_batch(texts):
            pieces.append(np.asarray(tokenizer.frame(ids), dtype=dtype))
        if prefix_field:
            first = len(pieces) - len(texts)
            for k, ids in enumerate(tokenizer.encode_batch([t.prefix for t in texts])):
                prompts.append(prompt_length(tokenizer.frame(ids), pieces[first + k]))
        texts.clear()

    reading = ReadSettings(text_field=text_field, text_unit=text_unit, prefix_field=prefix_field)
    for text, reason, _offset, _size in iter_records(path, 0, reading):
        read += 1
        if text is None:
            rejected[reason] = rejected.get(reason, 0) + 1
            continue
        texts.append(text)
        documents += 1
        text_bytes += len(text.encode("utf-8"))
        if len(texts) >= ENCODE_CHUNK:
            flush()
    flush()
    if documents == 0:
        raise nothing_usable([path], read, rejected, text_field)
    tokens = np.concatenate(pieces) if pieces else np.zeros(0, dtype=dtype)
    offsets = np.concatenate([[0], np.cumsum([len(p) for p in pieces])]).astype(np.int64)
    return TokenArray(path, tokens, text_bytes, documents, offsets, np.asarray(prompts) if prefix_field else None), \
        rejected


def load_tokens(path: str, tokenizer, text_field: str, text_unit: str, prefix_field=None) -> tuple:
    if path.endswith(".bin"):
        token_bin = TokenBin(path)
        token_bin.check_tokenizer(tokenizer.fingerprint(), tokenizer.vocab_size)
        if prefix_field:
            token_bin.prompt_lengths = prefix_lengths(path, prefix_field)
        return token_bin, {}
    return tokenize_file(path, tokenizer, text_field, text_unit, prefix_field)


# ---- windows with a progress bar -------------------------------------------------------------------
class ProgressWindows:
    """Windows that advance a bar by one batch each time evaluate() starts fetching the next batch's
    first window (a batch is done once the next one begins; the last is counted when evaluate
    returns). The samples are the wrapped windows' own, so evaluate() scores exactly what it scores
    on training's validation windows."""

    def __init__(self, windows, bar, batch_size: int):
        self.windows, self.bar, self.batch_size = windows, bar, batch_size

    def __len__(self) -> int:
        return len(self.windows)

    def sample(self, i: int, generator):
        if i > 0 and i % self.batch_size == 0:
            self.bar.update(1)
        return self.windows.sample(i, generator)


# ---- the command -----------------------------------------------------------------------------------
def run(args) -> dict:
    check_flags(args)
    device = check_device(args.device)
    loaded = []
    model, config, tokenizer = load_for_inference(args.model_path, ema=args.ema, device=device, say=loaded.append)
    weights = "ema" if any("using the EMA weights" in line for line in loaded) else "model"
    for line in loaded:
        print(line, file=sys.stderr)
    objective = OBJECTIVES[config.objective]
    seq_len = args.seq_len or config.max_seq_len
    if seq_len > config.max_seq_len:
        raise UsageError(f"--seq_len {seq_len} is longer than the model's context (max_seq_len {config.max_seq_len})")
    masker = None
    if objective.masks:
        if tokenizer.mask_id is None:
            raise UsageError(f"{args.model_path} is a masked LM but its tokenizer has no mask token")
        masker = masker_for(DataConfig(eval_mask_rate=args.mask_rate), tokenizer, eval_mode=True)

    if args.prefix_field and not objective.takes_prompts(config):
        raise UsageError("--prefix_field makes each document's prompt the prefix of a packed prefix LM; this model is "
                         f"{objective.name}{' with' if config.document_mask else ' without'} model.document_mask")
    token_bin, rejected = load_tokens(args.data, tokenizer, args.text_field, args.text_unit, args.prefix_field)
    n_tokens = len(token_bin)
    need = objective.window_tokens(seq_len)
    if n_tokens < need:
        raise DataError(f"{args.data} holds {n_tokens} tokens; one window needs {need} (seq_len {seq_len}"
                        f"{'' if need == seq_len else ' + 1'}): use more text or a shorter --seq_len")
    text_bytes = token_bin.meta.get("n_text_bytes", 0)
    bytes_per_token = text_bytes / max(1, n_tokens)

    documents = DocumentIndex(token_bin.doc_offsets()) if config.document_mask else None
    windows = objective.windows(token_bin, seq_len, masker, documents,
                                token_bin.prompt_lengths if args.prefix_field else None)
    n_windows = len(windows) if args.max_batches <= 0 else min(len(windows), args.max_batches * args.batch_size)
    n_batches = math.ceil(n_windows / args.batch_size)
    dtype = resolve_dtype(args.dtype, device)
    autocast = (contextlib.nullcontext() if dtype == torch.float32
                else torch.autocast(device.type, dtype=dtype))
    with tqdm(total=n_batches, unit="batch", desc="evaluating", file=sys.stderr, dynamic_ncols=True,
              disable=None) as bar:
        metrics = evaluate(model, ProgressWindows(windows, bar, args.batch_size), objective, args.batch_size,
                           args.max_batches, bytes_per_token, DistInfo(), device, autocast)
        bar.update(n_batches - bar.n)
    if not metrics:
        raise DataError(f"{args.data}: the {n_windows} windows evaluated hold no masked position to score; "
                        "use more text or a larger --mask_rate")
    result = {
        "model_path": args.model_path, "objective": objective.name, "weights": weights, "data": args.data,
        "seq_len": seq_len, "batch_size": args.batch_size, "windows": n_windows, "windows_total": len(windows),
        "tokens": n_tokens, "text_bytes": text_bytes, "targets": metrics["val_tokens"],
        "loss": metrics["val_loss"], "perplexity": metrics["val_ppl"],
    }
    if isinstance(token_bin, TokenArray):
        result["documents"] = token_bin.meta["n_documents"]
        result["skipped"] = dict(sorted(rejected.items()))
    if objective.masks:
        result.update(accuracy=metrics["val_mlm_accuracy"], mask_rate=args.mask_rate, mask_seed=EVAL_SEED)
    else:
        result["bits_per_byte"] = metrics["val_bpb"]
    if config.next_sentence:  # the masked figures above stay on plain windows, comparable with any masked model
        pairs = objective.windows(token_bin, seq_len, masker, pair_tokenizer=tokenizer)
        nsp = evaluate(model, pairs, objective, args.batch_size, args.max_batches, bytes_per_token, DistInfo(), device, autocast)
        if nsp:
            n_pairs = len(pairs) if args.max_batches <= 0 else min(len(pairs), args.max_batches * args.batch_size)
            result.update(pairs=n_pairs, nsp_loss=nsp["val_nsp_loss"], nsp_accuracy=nsp["val_nsp_accuracy"])
    return result


def report(r: dict) -> str:
    weights = "EMA weights" if r["weights"] == "ema" else "raw trained weights"
    objective = OBJECTIVES[r["objective"]]
    lines = [f"model        {r['model_path']} ({objective.report_kind} LM, {weights})"]
    data = f"data         {r['data']}: {r['tokens']:,} tokens"
    if "documents" in r:
        data += f" from {r['documents']:,} documents"
        if r["skipped"]:
            data += f" ({sum(r['skipped'].values())} skipped: " + \
                    ", ".join(f"{k} {v}" for k, v in r["skipped"].items()) + ")"
    lines.append(data)
    lines.append(f"windows      {r['windows']:,} of {r['windows_total']:,} "
                 f"({objective.window_tokens(r['seq_len'])} tokens each), {r['targets']:,} {objective.report_targets}")
    if not objective.masks:
        lines += [f"loss         {r['loss']:.4f}", f"perplexity   {r['perplexity']:.3f}",
                  f"bits/byte    {r['bits_per_byte']:.4f}"]
    else:
        lines += [f"masked loss  {r['loss']:.4f}  (perplexity {r['perplexity']:.3f})",
                  f"accuracy     {r['accuracy']:.4f}  (mask rate {r['mask_rate']}, 80/10/10, seed {r['mask_seed']})"]
        if "nsp_accuracy" in r:
            lines.append(f"next sentence accuracy {r['nsp_accuracy']:.4f}  (loss {r['nsp_loss']:.4f}; "
                         f"{r['pairs']:,} sentence pairs, B from another document half of the time)")
    return "\n".join(lines)


def _main(argv) -> int:
    args = build_parser().parse_args(argv)
    result = run(args)
    print(json.dumps(result, sort_keys=True) if args.json else report(result))
    return 0


def main(argv=None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
