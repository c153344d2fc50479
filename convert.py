"""Models in and out of this project, and vocabulary changes.

    python convert.py from_hf HF_DIR OUT.pth            # a local Hugging Face model directory -> our checkpoint
    python convert.py to_hf CKPT OUT_DIR [--ema]        # our checkpoint -> a directory transformers loads
    python convert.py to_hf CKPT OUT_DIR --format native   # our own layout (safetensors + our config)
    python convert.py expand_vocab --model_path CKPT --out OUT.pth (--tokens words.txt | --mine corpus.jsonl --top 500)
    python convert.py unshard CKPT.dcp OUT.pth          # a sharded (--fsdp) checkpoint -> one file
    python convert.py shard CKPT.pth OUT.dcp            # one file -> a sharded checkpoint (any world size)

from_hf reads config.json, model.safetensors (or pytorch_model.bin, read with weights_only=True;
sharded files through their index) and the tokenizer (tokenizer.json or vocab.txt with its special
tokens' roles). Nothing is downloaded. The families (BERT, GPT-2, Llama, Qwen2) and their weight
names live in model/hf/, and the reading of a directory in model/hf/load.py."""
import argparse
import json
import os
import sys

import torch

import checkpoint
from model.hf.load import import_hf
from utils import UserError, atomic_write, check_writable_dir, run_cli


class ConvertError(UserError):
    """A checkpoint that cannot be converted or a vocabulary change that cannot be made; one line
    (a Hugging Face directory that cannot be read is model/hf/load.py's HFDirectoryError)."""


def from_hf(directory: str, out_path: str, say=print) -> str:
    from data.tokenizer import load_tokenizer
    model, cfg, tokenizer = import_hf(directory, load_tokenizer, say)
    check_writable_dir(os.path.dirname(os.path.abspath(out_path)), "output directory")
    meta = checkpoint.CheckpointMeta(kind="weights", step=0, model_config=cfg.to_dict(),
                                     config={"imported_from": os.path.abspath(directory)}, tokenizer=tokenizer,
                                     evaluated="model")
    checkpoint.write(out_path, {"model": model.state_dict()}, meta)
    return out_path


# ---- writing a Hugging Face directory --------------------------------------------------------------
def to_hf(checkpoint_path: str, out_dir: str, use_ema=None, fmt: str = "hf", say=print) -> str:
    from safetensors.torch import save

    from data.hf_tokenizer import save_for_transformers
    from model.hf import family_for_config

    model, cfg, tokenizer = checkpoint.load_for_inference(checkpoint_path, ema=use_ema, say=say)
    weights = model.state_dict()
    if fmt == "native":
        config = cfg.to_dict()
    else:
        try:
            family = family_for_config(cfg)
            weights, config = family.state_to_hf(weights, cfg), family.config_to_hf(cfg)
        except ValueError as e:
            raise ConvertError(f"{checkpoint_path}: {e}")
        # A tied weight is stored once, as save_pretrained does; loading ties it again.
        weights = {k: v for k, v in weights.items() if k not in family.tied_names(cfg)}
        ids = {"pad_token_id": tokenizer.pad_id, "bos_token_id": tokenizer.start_id, "eos_token_id": tokenizer.eos_id}
        # transformers 5 reads "dtype" (torch_dtype is its deprecated alias).
        config.update({k: v for k, v in ids.items() if v is not None}, dtype="float32")
    check_writable_dir(out_dir, "export directory")
    # The tokenizer files first: a vocabulary vocab.txt cannot hold fails before anything is written.
    save_for_transformers(tokenizer, out_dir, model_max_length=cfg.max_seq_len)
    # safetensors refuses tensors that share memory: each exported tensor gets its own storage.
    tensors = {k: v.detach().contiguous().clone() for k, v in weights.items()}
    metadata = {"format": "pt", "source": os.path.basename(checkpoint_path), "layout": fmt}
    atomic_write(os.path.join(out_dir, "model.safetensors"), lambda f: f.write(save(tensors, metadata=metadata)))
    atomic_write(os.path.join(out_dir, "config.json"), lambda f: json.dump(config, f, indent=2), binary=False)
    return out_dir


# ---- vocabulary expansion --------------------------------------------------------------------------
def _match_form(tokenizer, word: str) -> str:
    """The form in which the tokenizer matches a word: a lowercasing tokenizer reads Hath as hath,
    so the two are one word (adding both would leave one row that no text ever reaches)."""
    normalizer = tokenizer.backend.normalizer
    return " ".join(normalizer.normalize_str(word).split()) if normalizer is not None else word


def _splits(tokenizer, word: str) -> bool:
    """Whether the tokenizer lacks the word as one token: it splits it, or reads it as unknown (an
    emoji WordPiece has no piece for, a word beyond its max_input_chars_per_word). An added token is
    matched before WordPiece runs, so neither limit applies to it."""
    ids = tokenizer.encode(word)
    return len(ids) > 1 or (tokenizer.unk_id is not None and ids == [tokenizer.unk_id])


def mine_words(files, tokenizer, top: int, min_count: int, text_field: str = "text") -> list:
    """The `top` most frequent words (at least min_count times) that the tokenizer splits into
    several pieces: the words a domain adds most often."""
    import collections
    import re

    from data.sources.settings import ReadSettings
    from data.sources.records import iter_texts
    counts, surface = collections.Counter(), {}
    for text in iter_texts(files, ReadSettings(text_field=text_field)):
        for w in re.findall(r"\w+", text):
            if 2 <= len(w) <= 24:
                key = surface.setdefault(w, _match_form(tokenizer, w))
                counts[key] += 1
    first = {}
    for w, key in surface.items():
        first.setdefault(key, w)  # the first spelling seen stands for the word
    words = []
    for key, n in counts.most_common():
        if n < min_count or len(words) >= top:
            break
        if _splits(tokenizer, first[key]):
            words.append(first[key])
    return words


def expand_vocab(model_path: str, out_path: str, words: list, say=print) -> dict:
    """Add `words` to the checkpoint's tokenizer and give each a row (embedding, untied output,
    MLM decoder bias) equal to the mean of the rows of the pieces it used to be split into. Old
    ids and rows are untouched, so text without the new words gives exactly the old logits."""
    from tokenizers import AddedToken

    from model import LMConfig

    state = checkpoint.load_checkpoint(model_path)
    weights, _ = checkpoint.inference_weights(state, None, model_path)
    tokenizer = checkpoint.tokenizer_of(state)
    cfg = dict(state["model_config"])
    old_size, old_fingerprint = tokenizer.vocab_size, tokenizer.fingerprint()
    new, skipped, forms = [], [], set()
    for w in dict.fromkeys(x.strip() for x in words if x.strip()):
        form = _match_form(tokenizer, w)
        fresh = form not in forms and _splits(tokenizer, w) and tokenizer.backend.token_to_id(w) is None
        (new if fresh else skipped).append(w)
        forms.add(form)
    if not new:
        raise ConvertError("no new tokens to add: every word given is already a single token")
    pieces = {w: tokenizer.encode(w) for w in new}
    # A whole-word match for words with spaces around them (Latin scripts); Chinese words sit
    # between other characters, so they match anywhere.
    added = [AddedToken(w, single_word=w.isascii(), normalized=True) for w in new]
    tokenizer.backend.add_tokens(added)
    from data.tokenizer import Tokenizer
    tokenizer = Tokenizer(tokenizer.backend, tokenizer.roles, tokenizer.framing)
    ids = [tokenizer.backend.token_to_id(w) for w in new]
    if ids != list(range(old_size, old_size + len(new))):
        raise ConvertError("the tokenizer did not give the new tokens the next ids; is a word a special token?")
    rows = max(cfg["vocab_size"], 64 * -(-tokenizer.vocab_size // 64))
    weights = dict(weights)
    for name in ("tok_embeddings.weight", "output.weight", "mlm_head.bias"):
        if name not in weights:
            continue
        old = weights[name]
        grown = torch.cat([old, old.new_zeros(rows - old.shape[0], *old.shape[1:])]) if rows > old.shape[0] else old.clone()
        for w, i in zip(new, ids):
            grown[i] = old[pieces[w]].mean(0)
        weights[name] = grown
    cfg["vocab_size"] = rows
    LMConfig.from_dict(cfg)
    parts = {"model": weights}
    check_writable_dir(os.path.dirname(os.path.abspath(out_path)), "output directory")
    meta = checkpoint.CheckpointMeta(kind="weights", step=0, model_config=cfg, config=state.get("config", {}),
                                     tokenizer=tokenizer, evaluated="model",
                                     vocab_expansion={"new_rows_from": old_size, "expanded_from": old_fingerprint})
    checkpoint.write(out_path, parts, meta)
    say(f"added {len(new)} tokens (ids {old_size}..{old_size + len(new) - 1})"
        + (f"; {len(skipped)} already single tokens (or another spelling of a word added) were skipped"
           if skipped else "")
        + f"; each new row starts as the mean of its old pieces -> {out_path}")
    return {"added": new, "skipped": skipped, "ids": ids}


# ---- command line ----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python convert.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("from_hf", help="a local Hugging Face model directory -> a checkpoint of ours")
    a.add_argument("hf_dir")
    a.add_argument("out", help="the checkpoint to write, e.g. out/minilm/init.pth")
    b = sub.add_parser("to_hf", help="a checkpoint of ours -> a directory transformers loads")
    b.add_argument("checkpoint")
    b.add_argument("out_dir")
    b.add_argument("--format", choices=["hf", "native"], default="hf",
                   help="hf: the family's transformers layout (default); native: this project's own names")
    b.add_argument("--ema", action=argparse.BooleanOptionalAction, default=None,
                   help="--ema: the EMA weights; --no-ema: the raw ones; default: the weights the run evaluated")
    c = sub.add_parser("expand_vocab", help="add words to a checkpoint's tokenizer, rows initialised from their pieces")
    c.add_argument("--model_path", required=True)
    c.add_argument("--out", required=True, help="the expanded checkpoint to write")
    source = c.add_mutually_exclusive_group(required=True)
    source.add_argument("--tokens", help="a file with one new token per line")
    source.add_argument("--mine", nargs="+", help="JSONL files to mine frequent words from")
    c.add_argument("--top", type=int, default=500, help="with --mine: how many words to add")
    c.add_argument("--min_count", type=int, default=5, help="with --mine: least occurrences of a word")
    c.add_argument("--text_field", default="text")
    for name, what in (("unshard", "a sharded checkpoint directory (.dcp) -> one .pth file"),
                       ("shard", "a .pth checkpoint -> a sharded checkpoint directory (.dcp)")):
        d = sub.add_parser(name, help=what)
        d.add_argument("checkpoint")
        d.add_argument("out")
    return p


def _tokens_file(path: str) -> list:
    try:
        with open(path, encoding="utf-8") as f:
            return [line.rstrip("\r\n") for line in f]
    except (OSError, UnicodeDecodeError) as e:
        raise ConvertError(f"cannot read {path}: {e}")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    say = lambda line: print(line, file=sys.stderr)  # noqa: E731
    if args.command == "from_hf":
        print(f"wrote {from_hf(args.hf_dir, args.out, say)}")
    elif args.command == "to_hf":
        print(f"wrote {to_hf(args.checkpoint, args.out_dir, args.ema, args.format, say)}")
    elif args.command == "expand_vocab":
        if args.tokens:
            words = _tokens_file(args.tokens)
        else:
            tokenizer = checkpoint.tokenizer_of(checkpoint.load_checkpoint(args.model_path))
            words = mine_words(args.mine, tokenizer, args.top, args.min_count, args.text_field)
        expand_vocab(args.model_path, args.out, words, say=print)
    elif args.command in ("shard", "unshard"):
        from checkpoint import sharded  # torch.distributed.checkpoint, for these two commands only
        check_writable_dir(os.path.dirname(os.path.abspath(args.out)), "output directory")
        (sharded.to_sharded if args.command == "shard" else sharded.to_single_file)(args.checkpoint, args.out)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
