"""Validate, tokenize and pack JSONL files into train.bin / val.bin (the command line of
data/build/corpus_processor.py's DataProcessor, through data/build/prepare.py).

    python -m data.processor dataset/*.jsonl --out_dir dataset/mycorpus --vocab_size 8192
    python -m data.processor corpus.jsonl --tokenizer tok/tokenizer.json --text_field content --val_ratio 0.01
    python -m data.processor dataset/*.jsonl data.parquet hf_saved_dir --out_dir dataset/big --workers 4
    python -m data.processor dataset/*.jsonl --out_dir part1 --tokenizer tok.json --num_shards 2 --shard_index 1

With --workers, --num_shards, --shard_index or --shard_mb the output is numbered shards
(train-00000.bin, val-00000.bin, ...) and manifest.json, which training reads as one dataset
(data.train_bin: <out_dir>/manifest.json); data/build/sharded.py says how the inputs are cut.
"""
import argparse
import sys

from data.errors import DataError
from data.build.prepare import prepare_corpus
from data.sources.settings import DEFAULT_READ, TEXT_UNITS, ReadSettings
from utils import OneLineArgumentParser, run_cli


def build_arg_parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(prog="python -m data.processor",
                       description="Validate, tokenize and pack JSONL files into train.bin / val.bin.")
    p.add_argument("inputs", nargs="+", help="JSONL, .json arrays of objects, .txt, .md or .parquet files, "
                                             "directories written by a "
                                             "Hugging Face dataset's save_to_disk, or globs")
    p.add_argument("--out_dir", required=True, help="where tokenizer.json, train.bin, val.bin and stats go")
    p.add_argument("--tokenizer", default=None, help="an existing tokenizer.json or Hugging Face directory "
                                                     "(default: train one)")
    p.add_argument("--vocab_size", type=int, default=4096, help="size of a newly trained tokenizer")
    p.add_argument("--text_field", default=DEFAULT_READ.text_field,
                   help="JSON field holding the text (text, content, completion...)")
    p.add_argument("--val_ratio", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0, help="seed of the validation split")
    p.add_argument("--chunk_size", type=int, default=2048, help="documents tokenized per batch")
    p.add_argument("--max_length", type=int, default=None,
                   help="length in tokens of the training samples (recorded for train.py's data.seq_len); "
                        "no document is dropped for it: long ones pack across samples")
    p.add_argument("--max_chars", type=int, default=DEFAULT_READ.max_chars,
                   help="longest document kept, in characters (tokenizer training skips longer ones too)")
    p.add_argument("--min_chars", type=int, default=DEFAULT_READ.min_chars,
                   help="shortest document kept, in characters")
    p.add_argument("--text_unit", choices=TEXT_UNITS, default=DEFAULT_READ.text_unit,
                   help=".txt/.md inputs: one document per blank-line-separated paragraph (default), per line, or "
                        "per file (a folder of Markdown pages: each file one document)")
    p.add_argument("--prefix_field", default=DEFAULT_READ.prefix_field,
                   help="JSONL: the field holding each record's prompt, stored before its text as one document; "
                        "train.bin.prefix / val.bin.prefix record where each prompt ends (prefix-LM training)")
    p.add_argument("--word_starts", action="store_true",
                   help="also write train.bin.words / val.bin.words, the word boundaries whole-word masking "
                        "reads (Chinese words by the jieba segmenter)")
    p.add_argument("--workers", type=int, default=None, help="shards processed at once, one process each "
                                                             "(sharded output)")
    p.add_argument("--num_shards", type=int, default=None,
                   help="machines sharing the job: this one processes the shards i with i %% num_shards == shard_index")
    p.add_argument("--shard_index", type=int, default=None, help="this machine's number, from 0 (with --num_shards)")
    p.add_argument("--shard_mb", type=float, default=None,
                   help="JSONL and text files larger than this are cut into shards of about this size (default 256)")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="continue an interrupted run (default); --no-resume starts over")
    return p


def main(argv=None) -> int:
    args = build_arg_parser().parse_args(argv)
    if any(v is not None for v in (args.workers, args.num_shards, args.shard_index, args.shard_mb)):
        return _sharded(args)
    prepare_corpus(args.inputs, args.out_dir, ReadSettings.of(args), vocab_size=args.vocab_size,
                   val_ratio=args.val_ratio, tokenizer_path=args.tokenizer, seed=args.seed,
                   chunk_size=args.chunk_size, resume=args.resume, max_length=args.max_length,
                   word_starts=args.word_starts)
    return 0


def _sharded(args) -> int:
    from data.build.sharded import prepare_sharded
    if (args.num_shards is None) != (args.shard_index is None):
        raise DataError("--num_shards and --shard_index go together: --num_shards N --shard_index I, I in [0, N)")
    if args.prefix_field or args.word_starts:
        raise DataError("--prefix_field and --word_starts write sidecars of train.bin / val.bin; they are not "
                        "made for sharded output yet: drop --workers / --num_shards / --shard_index / --shard_mb")
    prepare_sharded(args.inputs, args.out_dir, vocab_size=args.vocab_size, tokenizer_path=args.tokenizer,
                    workers=1 if args.workers is None else args.workers, num_shards=args.num_shards or 1,
                    shard_index=args.shard_index or 0, shard_mb=256.0 if args.shard_mb is None else args.shard_mb,
                    resume=args.resume,
                    settings=dict(read=ReadSettings.of(args), val_ratio=args.val_ratio, seed=args.seed,
                                  chunk_size=args.chunk_size, max_length=args.max_length))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
