"""Decode throughput: new tokens/s at batch 1 and 8, with and without the KV cache, with the
decoding step compiled (--compile in inference.py), with the blocks in int8 (--int8), and
transformers' LlamaForCausalLM.generate on the same weights when transformers is installed.

    python bench/bench_decode.py [--rounds 5] [--threads 2] [--skip_no_cache] [--skip_compile]

Ours and theirs alternate in one process (this machine's speed drifts); each figure is the median
of the rounds, and ratios are also given by CPU time, which other processes on a shared machine
disturb less than wall time. Greedy tokens are compared, since the weights are shared. The
compiled step is built (and its compile time printed) before the timed rounds. Each rate is also
given as a share of the weight-streaming limit: every step reads all weights once, so
--bandwidth GB/s over the weight bytes bounds the steps per second."""
import argparse
import copy
import os
import statistics
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
    p.add_argument("--skip_compile", action="store_true")
    p.add_argument("--bandwidth", type=float, default=45.0, help="memory bandwidth in GB/s, for the limit")
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
    weight_bytes = sum(p.numel() * p.element_size() for n, p in ours.named_parameters() if p.dim() == 2)
    steps_limit = a.bandwidth * 1e9 / weight_bytes  # decoding steps per second if weights stream at that rate
    if not a.skip_compile:
        start = time.perf_counter()
        for batch in (1, 8):
            generate_tokens(ours, [[5] * PROMPT] * batch, greedy, eos_id=-1, compiled=True)
        print(f"compiling the decoding step (batch 1 and 8): {time.perf_counter() - start:.1f} s")
    print(f"weights {weight_bytes / 1e6:.1f} MB: {steps_limit:.0f} steps/s at {a.bandwidth:g} GB/s")
    print(f"load average {os.getloadavg()[0]:.2f}; torch {torch.__version__}, {a.threads} threads, "
          f"vocab {CFG.vocab_size}, dim {CFG.dim}, {CFG.n_layers} layers, "
          f"{PROMPT}-token prompt, {NEW} new tokens, greedy")
    for batch in (1, 8):
        prompts = torch.randint(5, CFG.vocab_size, (batch, PROMPT)).tolist()
        jobs = {"ours (KV cache)": lambda: generate_tokens(ours, prompts, greedy, eos_id=-1)}
        if not a.skip_compile:
            jobs["ours compiled"] = lambda: generate_tokens(ours, prompts, greedy, eos_id=-1, compiled=True)
        if quantized is not None:
            jobs["ours int8 (KV cache)"] = lambda: generate_tokens(quantized, prompts, greedy, eos_id=-1)
        if theirs is not None:
            def hf():
                with torch.inference_mode():
                    out = theirs.generate(torch.tensor(prompts), max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False,
                                          pad_token_id=0, eos_token_id=None)
                return out[:, PROMPT:].tolist()
            jobs["transformers generate"] = hf
        times, cpu, outputs = {k: [] for k in jobs}, {k: [] for k in jobs}, {}
        for _ in range(a.rounds):
            for name, job in jobs.items():
                start, start_cpu = time.perf_counter(), time.process_time()
                outputs[name] = job()
                times[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
        if not a.skip_no_cache:
            start = time.perf_counter()
            outputs["ours (no cache)"] = no_cache_greedy(ours, prompts, NEW)
            times["ours (no cache)"] = [time.perf_counter() - start]
        rates = {k: batch * NEW / statistics.median(v) for k, v in times.items()}
        for name, rate in rates.items():
            print(f"batch {batch}: {name:22s} {rate:9.1f} tok/s, {rate / batch / steps_limit:6.1%} of the limit")
        if quantized is not None:
            pairs = [(x, y) for r, q in zip(outputs["ours (KV cache)"], outputs["ours int8 (KV cache)"])
                     for x, y in zip(r, q)]
            print(f"batch {batch}: int8 speed-up {rates['ours int8 (KV cache)'] / rates['ours (KV cache)']:.2f}x, "
                  f"greedy tokens equal to float32: {sum(x == y for x, y in pairs) / len(pairs):.1%}")
        if theirs is not None:
            hf = "transformers generate"
            for name in [k for k in jobs if k != hf]:
                by_cpu = statistics.median(cpu[hf]) / statistics.median(cpu[name])
                print(f"batch {batch}: ratio {name}/transformers {rates[name] / rates[hf]:.2f}x (CPU time "
                      f"{by_cpu:.2f}x), greedy tokens identical: {outputs[name] == outputs[hf]}")
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
