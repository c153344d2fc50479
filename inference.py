"""Generate text from a causal checkpoint, or fill masks with a masked-LM checkpoint.

    python inference.py --model_path out/<run>/best.pth --prompt "To be" --max_new_tokens 100 --stream
    python inference.py --model_path out/<run>/best.pth --interactive --stream
    python inference.py --model_path out/<run>/best.pth --batch_file prompts.txt --output results.jsonl
    python inference.py --model_path out/<mlm-run>/best.pth --fill_mask "The <mask> of Denmark"

The tokenizer and model config come from the checkpoint's run directory; nothing else is needed."""
import argparse
import json
import os
import sys
import time

import torch
from tqdm import tqdm

from model.generation import GenerationConfig
from model.text_generator import TextGenerator

EXIT_BAD_INPUT = 2


class UsageError(Exception):
    """A request this checkpoint or input cannot serve; printed as one line, exit code 2."""


def pick_device(name: str) -> torch.device:
    """--device as a torch.device, or one line saying why this machine cannot use it."""
    from utils import resolve_device

    try:
        device = resolve_device(name)
    except RuntimeError:
        raise UsageError(f"--device {name!r} is not a device name (try auto, cpu, cuda, cuda:1, mps)")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: this torch ({torch.__version__}) sees no CUDA GPU")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise UsageError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {name}: MPS is not available here")
    return device


def load_generator(checkpoint_path: str, device: str = "auto", use_ema: bool = False,
                   int8: bool = False) -> TextGenerator:
    """A TextGenerator from a checkpoint file (read with weights_only=True: it cannot run code).
    int8: the blocks' linear layers in int8 (CPU only, faster decoding, close to float32)."""
    from data.errors import DataError
    from data.tokenizer import load_tokenizer
    from model import LMConfig, Transformer
    from training.checkpoint import CheckpointError, load_checkpoint, load_weights

    device = pick_device(device)
    try:
        state = load_checkpoint(checkpoint_path)
        tok_path = os.path.join(os.path.dirname(os.path.abspath(checkpoint_path)), "tokenizer.json")
        if not os.path.exists(tok_path):
            tok_path = (state.get("config", {}).get("data", {}) or {}).get("tokenizer_path") or tok_path
        tokenizer = load_tokenizer(tok_path)
    except (CheckpointError, DataError) as e:
        raise UsageError(str(e))
    if state.get("tokenizer_fingerprint") not in (None, tokenizer.fingerprint()):
        raise UsageError(f"{tok_path} is not the tokenizer {checkpoint_path} was trained with")
    weights = state["model"]
    if use_ema:
        if not state.get("ema"):
            raise UsageError(f"{checkpoint_path} holds no EMA weights (train with --use_ema)")
        weights = {**weights, **state["ema"]}
    try:
        model = Transformer(LMConfig.from_dict(state["model_config"]))
        load_weights(model, weights, checkpoint_path)
    except (CheckpointError, ValueError) as e:  # ValueError: a model_config this version rejects
        raise UsageError(str(e))
    model = model.to(device)
    if int8:
        from model.int8 import quantize_int8
        try:
            quantize_int8(model)
        except (RuntimeError, ValueError) as e:
            raise UsageError(f"--int8: {e}")
    return TextGenerator(model, tokenizer)


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
    p.add_argument("--batch_size", type=int, default=8, help="with --batch_file: prompts generated together")
    p.add_argument("--max_new_tokens", type=int, default=100)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top_k", type=int, default=None,
                   help="sampling: keep the k most likely (default 50, 0 = all); fill-mask: candidates shown (default 5)")
    p.add_argument("--top_p", type=float, default=0.9)
    p.add_argument("--repetition_penalty", type=float, default=1.0)
    p.add_argument("--no_repeat_ngram_size", type=int, default=0)
    p.add_argument("--greedy", action="store_true", help="always take the most likely token")
    p.add_argument("--seed", type=int, default=None, help="same seed, same output")
    p.add_argument("--device", default="auto")
    p.add_argument("--ema", action="store_true", help="use the EMA weights stored in the checkpoint")
    p.add_argument("--int8", action="store_true",
                   help="CPU: run the blocks' linear layers in int8 (1.2-1.4x faster decoding, close to float32)")
    return p


def generation_config(args) -> GenerationConfig:
    try:
        top_k = 50 if args.top_k is None else args.top_k
        return GenerationConfig(do_sample=not args.greedy, temperature=args.temperature, top_k=top_k,
                                top_p=args.top_p, max_new_tokens=args.max_new_tokens,
                                repetition_penalty=args.repetition_penalty,
                                no_repeat_ngram_size=args.no_repeat_ngram_size, seed=args.seed)
    except ValueError as e:
        raise UsageError(str(e))


def run_fill_mask(gen: TextGenerator, args) -> None:
    k = args.top_k if args.top_k else 5
    for i, candidates in enumerate(gen.fill_mask(args.fill_mask, top_k=k), start=1):
        print(f"mask {i}:")
        for token, prob in candidates:
            print(f"  {prob:7.4f}  {token!r}")


def read_prompts(path: str) -> list:
    try:
        with open(path, encoding="utf-8") as f:
            prompts = [line.rstrip("\r\n") for line in f if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read {path}: {e}")
    if not prompts:
        raise UsageError(f"{path} has no prompts (blank lines are skipped)")
    return prompts


def run_batch(gen: TextGenerator, args, config) -> None:
    """Batches of --batch_size prompts of similar length (less padding); results in file order."""
    prompts = read_prompts(args.batch_file)
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
        with out:
            for prompt, text in zip(prompts, results):
                out.write(json.dumps({"prompt": prompt, "generated": text}, ensure_ascii=False) + "\n")
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


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.output and not args.batch_file:
            raise UsageError("--output goes with --batch_file")
        if args.batch_size < 1:
            raise UsageError(f"--batch_size must be at least 1, got {args.batch_size}")
        config = generation_config(args)
        pick_device(args.device)  # a wrong device is refused before the checkpoint is read
        if args.seed is not None:
            torch.manual_seed(args.seed)
        gen = load_generator(args.model_path, args.device, args.ema, args.int8)
        causal = gen.model.config.causal
        if args.fill_mask is not None:
            if causal:
                raise UsageError("this checkpoint is a causal LM: it generates (--prompt), it does not fill masks")
            run_fill_mask(gen, args)
        elif not causal:
            raise UsageError("this checkpoint is a masked LM: it fills masks (--fill_mask), it does not generate")
        elif args.batch_file:
            run_batch(gen, args, config)
        elif args.interactive:
            run_interactive(gen, args, config)
        else:
            print(args.prompt, end="", flush=True)
            text = gen.generate(args.prompt, config, stream=args.stream)
            print("" if args.stream else text)
    except (UsageError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:  # Ctrl-C outside the REPL: stop quietly, as shells expect
        print(file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
