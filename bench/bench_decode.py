"""Decode throughput: new tokens/s at batch 1 and 8, with and without the KV cache, with the
blocks in int8 (--int8 in inference.py), and transformers' LlamaForCausalLM.generate on the same
weights when transformers is installed.

    python bench/bench_decode.py [--rounds 5] [--threads 2] [--skip_no_cache]

Ours and theirs alternate in one process (this machine's speed drifts) and each figure is the
fastest of the rounds (the round least disturbed by other processes); greedy tokens are
compared, since the weights are shared. The load average is printed before and after: other
processes on a 2-core machine can slow every figure many times over."""
import argparse
import copy
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from model import LMConfig, Transformer  # noqa: E402
from model.generation import GenerationConfig, generate_tokens  # noqa: E402
from model.int8 import int8_available, quantize_int8  # noqa: E402
from model.hf.llama import LLAMA  # noqa: E402

CFG = LMConfig(vocab_size=8192, dim=384, n_layers=6, n_heads=6, max_seq_len=320)
PROMPT, NEW = 32, 256


@torch.inference_mode()
def no_cache_greedy(model, prompts, new):
    """The baseline without a cache: a full forward over the whole sequence for every token."""
    seq = torch.tensor(prompts)
    for _ in range(new):
        nxt = model(seq).logits[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], dim=1)
    return seq[:, len(prompts[0]):].tolist()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip_no_cache", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    ours = Transformer(CFG).eval()
    greedy = GenerationConfig(do_sample=False, max_new_tokens=NEW, stop_on_eos=False)
    theirs = None
    try:
        import transformers
        theirs = transformers.LlamaForCausalLM(transformers.LlamaConfig.from_dict(LLAMA.config_to_hf(CFG))).eval()
        theirs.load_state_dict(LLAMA.state_to_hf(ours.state_dict(), CFG))
    except ImportError:
        pass
    quantized = quantize_int8(copy.deepcopy(ours)) if int8_available() else None
    print(f"load average {os.getloadavg()[0]:.2f}; torch {torch.__version__}, {a.threads} threads, "
          f"vocab {CFG.vocab_size}, dim {CFG.dim}, {CFG.n_layers} layers, "
          f"{PROMPT}-token prompt, {NEW} new tokens, greedy")
    for batch in (1, 8):
        prompts = torch.randint(5, CFG.vocab_size, (batch, PROMPT)).tolist()
        jobs = {"ours (KV cache)": lambda: generate_tokens(ours, prompts, greedy, eos_id=-1)}
        if quantized is not None:
            jobs["ours int8 (KV cache)"] = lambda: generate_tokens(quantized, prompts, greedy, eos_id=-1)
        if theirs is not None:
            def hf():
                with torch.inference_mode():
                    out = theirs.generate(torch.tensor(prompts), max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False,
                                          pad_token_id=0, eos_token_id=None)
                return out[:, PROMPT:].tolist()
            jobs["transformers generate"] = hf
        times, outputs = {k: [] for k in jobs}, {}
        for _ in range(a.rounds):
            for name, job in jobs.items():
                start = time.perf_counter()
                outputs[name] = job()
                times[name].append(time.perf_counter() - start)
        if not a.skip_no_cache:
            start = time.perf_counter()
            outputs["ours (no cache)"] = no_cache_greedy(ours, prompts, NEW)
            times["ours (no cache)"] = [time.perf_counter() - start]
        rates = {k: batch * NEW / min(v) for k, v in times.items()}
        for name, rate in rates.items():
            print(f"batch {batch}: {name:22s} {rate:9.1f} tok/s")
        if quantized is not None:
            pairs = [(x, y) for r, q in zip(outputs["ours (KV cache)"], outputs["ours int8 (KV cache)"])
                     for x, y in zip(r, q)]
            print(f"batch {batch}: int8 speed-up {rates['ours int8 (KV cache)'] / rates['ours (KV cache)']:.2f}x, "
                  f"greedy tokens equal to float32: {sum(x == y for x, y in pairs) / len(pairs):.1%}")
        if theirs is not None:
            same = outputs["ours (KV cache)"] == outputs["transformers generate"]
            print(f"batch {batch}: ratio ours/transformers {rates['ours (KV cache)'] / rates['transformers generate']:.2f}x, "
                  f"greedy tokens identical: {same}")
            if quantized is not None:
                print(f"batch {batch}: ratio ours int8/transformers "
                      f"{rates['ours int8 (KV cache)'] / rates['transformers generate']:.2f}x")
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
