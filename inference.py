"""Generate text from a causal checkpoint, or fill masks with a masked-LM checkpoint.

    python inference.py --model_path out/<run>/best.pth --prompt "To be" --max_new_tokens 100 --stream
    python inference.py --model_path out/<run>/best.pth --interactive --stream
    python inference.py --model_path out/<run>/best.pth --batch_file prompts.txt --output results.jsonl
    python inference.py --model_path out/<mlm-run>/best.pth --fill_mask "The <mask> of Denmark"

The tokenizer and model config come from the checkpoint's run directory; nothing else is needed."""
import os
import signal
import sys

QUIET_START = __name__ == "__main__"
if QUIET_START:  # Ctrl-C during the imports below (a second or more): a quiet exit 130, as run_cli gives later
    signal.signal(signal.SIGINT, lambda *_: (os.write(2, b"\n"), os._exit(130)))

import argparse
import errno
import json
import time

import torch
from tqdm import tqdm

from model.generation import GenerationConfig
from model.text_generator import TextGenerator
from utils import UsageError, check_device, run_cli


BATCH_SIZE = 8
SAMPLING = {"max_new_tokens": 100, "temperature": 0.8, "top_p": 0.9, "repetition_penalty": 1.0,
            "no_repeat_ngram_size": 0}


def load_generator(checkpoint_path: str, device: str = "auto", use_ema=None, int8: bool = False,
                   say=None, compiled: bool = False) -> TextGenerator:
    """A TextGenerator from a checkpoint file (read with weights_only=True: it cannot run code).
    use_ema: None = the weights the run evaluated, True = EMA, False = the raw trained weights.
    int8: the blocks' linear layers in int8 (CPU only, faster decoding, close to float32).
    compiled: decode through a torch.compile'd step (float models)."""
    from checkpoint import load_for_inference

    model, _config, tokenizer = load_for_inference(checkpoint_path, ema=use_ema, device=check_device(device),
                                                   say=say)
    if int8:
        from model.int8 import quantize_int8
        try:
            quantize_int8(model)
        except (RuntimeError, ValueError) as e:
            raise UsageError(f"--int8: {e}")
    return TextGenerator(model, tokenizer, compiled)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_path", required=True, help="a checkpoint: best.pth or checkpoint_step_N.pth")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--prompt")
    mode.add_argument("--interactive", action="store_true", help="a REPL: exit/quit/q leave, clear forgets")
    mode.add_argument("--batch_file", help="one prompt per line (blank lines skipped)")
    mode.add_argument("--fill_mask", help="text with one or more <mask> tokens (masked-LM checkpoints)")
    p.add_argument("--stream", action="store_true", help="print tokens as they are produced")
    p.add_argument("--output", help="with --batch_file: write one JSON line per prompt here")
    p.add_argument("--batch_size", type=int, default=None,
                   help=f"with --batch_file: prompts generated together (default {BATCH_SIZE})")
    # Generation settings default to None so that giving one where it has no effect is refused.
    p.add_argument("--max_new_tokens", type=int, default=None, help=f"default {SAMPLING['max_new_tokens']}")
    p.add_argument("--temperature", type=float, default=None, help=f"default {SAMPLING['temperature']}")
    p.add_argument("--top_k", type=int, default=None,
                   help="sampling: keep the k most likely (default 50, 0 = all); fill-mask: candidates shown (default 5)")
    p.add_argument("--top_p", type=float, default=None, help=f"default {SAMPLING['top_p']}")
    p.add_argument("--repetition_penalty", type=float, default=None, help=f"default {SAMPLING['repetition_penalty']}")
    p.add_argument("--no_repeat_ngram_size", type=int, default=None, help=f"default {SAMPLING['no_repeat_ngram_size']}")
    p.add_argument("--greedy", action="store_true", help="always take the most likely token")
    p.add_argument("--seed", type=int, default=None, help="same seed, same output")
    p.add_argument("--device", default="auto")
    p.add_argument("--ema", action=argparse.BooleanOptionalAction, default=None,
                   help="--ema: the EMA weights; --no-ema: the raw trained weights; default: the weights the "
                        "run evaluated (EMA when it trained with --use_ema)")
    p.add_argument("--int8", action="store_true",
                   help="CPU: run the blocks' linear layers in int8 (1.2-1.4x faster decoding, close to float32)")
    p.add_argument("--compile", action="store_true",
                   help="decode through a torch.compile'd step: faster per token, after tens of seconds of "
                        "compiling (needs a C++ compiler on CPU); pays for long or many generations")
    return p


def generation_config(args) -> GenerationConfig:
    given = {k: getattr(args, k) for k in SAMPLING if getattr(args, k) is not None}
    try:
        top_k = 50 if args.top_k is None else args.top_k
        return GenerationConfig(do_sample=not args.greedy, top_k=top_k, seed=args.seed, **{**SAMPLING, **given})
    except ValueError as e:
        raise UsageError(str(e))


def run_fill_mask(gen: TextGenerator, args) -> None:
    k = args.top_k if args.top_k else 5
    for i, candidates in enumerate(gen.fill_mask(args.fill_mask, top_k=k), start=1):
        print(f"mask {i}:")
        for c in candidates:
            print(f"  {c['score']:7.4f}  {c['token_str']!r} (id {c['token']})  {c['sequence']}")


def read_prompts(path: str) -> list:
    try:
        with open(path, encoding="utf-8") as f:
            prompts = [line.rstrip("\r\n") for line in f if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read {path}: {e}")
    if not prompts:
        raise UsageError(f"{path} has no prompts (blank lines are skipped)")
    return prompts


def run_batch(gen: TextGenerator, args, config, prompts) -> None:
    """Batches of --batch_size prompts of similar length (less padding); results in file order."""
    try:  # opened before generating, so an unwritable path fails at once, not after the work
        out = open(args.output, "w", encoding="utf-8") if args.output else None
    except OSError as e:
        raise UsageError(f"cannot write {args.output}: {e.strerror}")
    lengths = [len(gen.tokenizer.encode(p)) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: lengths[i])
    results = [None] * len(prompts)
    start, n_tokens = time.perf_counter(), 0
    with tqdm(total=len(prompts), unit="prompt", desc="generating", file=sys.stderr,
              disable=len(prompts) <= args.batch_size) as bar:
        for first in range(0, len(order), args.batch_size):
            chunk = order[first:first + args.batch_size]
            for i, ids in zip(chunk, gen.batch_generate_ids([prompts[i] for i in chunk], config)):
                results[i] = gen.tokenizer.decode(ids)
                n_tokens += len(ids)
            bar.update(len(chunk))
    seconds = time.perf_counter() - start
    if out:
        try:
            with out:
                for prompt, text in zip(prompts, results):
                    out.write(json.dumps({"prompt": prompt, "generated": text}, ensure_ascii=False) + "\n")
        except OSError as e:
            full = e.errno in (errno.ENOSPC, errno.EDQUOT)
            raise UsageError(f"{'no space left to write' if full else 'cannot write'} {args.output} "
                             f"({e.strerror or e}); nothing was kept: run again with another --output") from None
    else:
        for prompt, text in zip(prompts, results):
            print(f"### {prompt}\n{prompt}{text}\n")
    where = f", wrote {args.output}" if args.output else ""
    print(f"{len(prompts)} prompts, {n_tokens} new tokens in {seconds:.1f} s "
          f"({n_tokens / max(seconds, 1e-9):.0f} tokens/s){where}", file=sys.stderr)


def run_interactive(gen: TextGenerator, args, config) -> None:
    print("interactive mode: 'exit', 'quit' or 'q' leaves, 'clear' forgets the conversation")
    history = []
    while True:
        try:
            line = input("you> ")
        except (EOFError, KeyboardInterrupt):
            print()
            break
        command = line.strip().lower()
        if command in ("exit", "quit", "q"):
            break
        if command == "clear":
            history = []
            print("(history cleared)")
            continue
        if not line.strip():
            continue
        history.append({"role": "user", "content": line.strip()})
        print("model> ", end="", flush=True)
        try:
            reply = gen.chat(history, config, stream=args.stream)
        except KeyboardInterrupt:
            print()
            break
        print(("" if args.stream else reply), flush=True)
        history.append({"role": "assistant", "content": reply})
    print("bye")


def check_flags(args) -> None:
    """Refuse flags that the chosen mode would ignore, one line each."""
    if args.output and not args.batch_file:
        raise UsageError("--output goes with --batch_file")
    if args.output and (os.path.isdir(args.output) or
                        not os.access(os.path.dirname(os.path.abspath(args.output)), os.W_OK)):
        raise UsageError(f"cannot write {args.output}: " + ("it is a directory" if os.path.isdir(args.output)
                                                             else "its directory is missing or not writable"))
    if args.compile and args.int8:
        raise UsageError("--compile and --int8 do not combine: the compiled step is built for float weights")
    if args.compile and args.fill_mask is not None:
        raise UsageError("--compile speeds up generation; --fill_mask runs one forward pass")
    if args.batch_size is not None and not args.batch_file:
        raise UsageError("--batch_size goes with --batch_file (prompts generated together)")
    if args.batch_size is not None and args.batch_size < 1:
        raise UsageError(f"--batch_size must be at least 1, got {args.batch_size}")
    if args.stream and (args.batch_file or args.fill_mask is not None):
        raise UsageError("--stream goes with --prompt or --interactive; --batch_file prints each result when "
                         "its batch is done")
    if args.fill_mask is not None:
        ignored = [f"--{k}" for k in SAMPLING if getattr(args, k) is not None]
        ignored += [f"--{k}" for k in ("greedy", "seed") if getattr(args, k)]
        if ignored:
            raise UsageError(f"{', '.join(ignored)} has no effect with --fill_mask, which shows the --top_k most "
                             "likely tokens for each mask")


def main(argv=None) -> int:
    return run_cli(_main, argv)


def _main(argv) -> int:
    if QUIET_START:  # inside run_cli now, which turns Ctrl-C (KeyboardInterrupt) into the same quiet exit
        signal.signal(signal.SIGINT, signal.default_int_handler)
    args = build_parser().parse_args(argv)
    try:
        check_flags(args)
        args.batch_size = args.batch_size or BATCH_SIZE
        config = generation_config(args)
        check_device(args.device)  # a wrong device or prompt file is refused before the checkpoint is read
        prompts = read_prompts(args.batch_file) if args.batch_file else None
        if args.seed is not None:
            torch.manual_seed(args.seed)
        loaded = []  # which weights were loaded: said once the request is known to be servable
        gen = load_generator(args.model_path, args.device, args.ema, args.int8, say=loaded.append,
                             compiled=args.compile)
        causal = gen.model.config.causal
        if args.fill_mask is not None:
            if causal:
                raise UsageError("this checkpoint is a causal LM: it generates (--prompt), it does not fill masks")
        elif not causal:
            raise UsageError("this checkpoint is a masked LM: it fills masks (--fill_mask), it does not generate")
        for line in loaded:
            print(line, file=sys.stderr)
        if args.fill_mask is not None:
            run_fill_mask(gen, args)
        elif args.batch_file:
            run_batch(gen, args, config, prompts)
        elif args.interactive:
            run_interactive(gen, args, config)
        else:
            print(args.prompt, end="", flush=True)
            text = gen.generate(args.prompt, config, stream=args.stream)
            print("" if args.stream else text)
    except ValueError as e:  # a prompt or setting the generator refuses
        raise UsageError(str(e))
    return 0


if __name__ == "__main__":
    sys.exit(main())
