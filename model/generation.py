"""Token-level generation with the KV cache: batched prompts (left padded), prefill, then one
token per step until eos or max_new_tokens. A prefix LM's prompt is its bidirectional prefix.
use_cache=False runs the whole sequence through the model at every step instead (the same tokens,
more work: for checking the cache, or a model without one)."""
from dataclasses import dataclass
from typing import Callable, List, Optional

import torch

from model.sampling import ban_repeated_ngrams, choose, repetition_penalty, seen_mask


@dataclass
class GenerationConfig:
    do_sample: bool = True
    temperature: float = 0.8
    top_k: int = 50
    top_p: float = 0.9
    max_new_tokens: int = 100
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    seed: Optional[int] = None
    stop_on_eos: bool = True
    use_cache: bool = True  # False: no KV cache, a full forward over the sequence per new token

    def __post_init__(self):
        rules = [("max_new_tokens", self.max_new_tokens >= 1, "at least 1"),
                 ("temperature", self.temperature >= 0, ">= 0 (0 means greedy)"),
                 ("top_k", self.top_k >= 0, ">= 0 (0 keeps every token)"),
                 ("top_p", 0 < self.top_p <= 1, "in (0, 1]"),
                 ("repetition_penalty", self.repetition_penalty > 0, "> 0 (1 is off)"),
                 ("no_repeat_ngram_size", self.no_repeat_ngram_size >= 0, ">= 0 (0 is off)")]
        for name, ok, need in rules:
            if not ok:
                raise ValueError(f"{name} must be {need}, got {getattr(self, name)}")


# Cache lengths are rounded up to a multiple of this, so a compiled step (whose shapes include the
# cache length) is reused across prompts of similar length.
CACHE_ROUND = 64


@torch.inference_mode()
def generate_tokens(model, prompts: List[List[int]], config: GenerationConfig, eos_id: int, pad_id: int = 0,
                    on_token: Optional[Callable[[int, int], bool]] = None, compiled: bool = False) -> List[List[int]]:
    """New tokens for each prompt (eos not included). on_token(row, token) is called as tokens
    are produced; if it returns True that row stops. Prompts must already fit:
    len(prompt) + max_new_tokens <= max_seq_len. compiled: run the steps through compiled_step(model).

    Tokens are chosen, penalised and checked for eos on the model's device; they reach the host at
    the end, or per step only when on_token needs them."""
    if not prompts:
        return []
    if min(len(p) for p in prompts) == 0:
        raise ValueError("every prompt needs at least one token (a bos token will do)")
    if compiled and not config.use_cache:
        raise ValueError("compiled decoding compiles the cached step: it needs use_cache=True")
    device = next(model.parameters()).device
    step = compiled_step(model) if compiled else model.decode_step
    batch, width, new = len(prompts), max(len(p) for p in prompts), config.max_new_tokens
    total = width + new
    # Row b: left padding, its prompt, then its new tokens (the buffer the n-gram ban reads).
    history = torch.full((batch, total), pad_id, dtype=torch.long)
    real = torch.zeros((batch, total), dtype=torch.bool)
    for i, p in enumerate(prompts):
        history[i, width - len(p):width] = torch.tensor(p, dtype=torch.long)
        real[i, width - len(p):width] = True
    history, real = history.to(device), real.to(device)
    padded = any(len(p) != width for p in prompts)
    generator = None
    if config.seed is not None:
        generator = torch.Generator(device=device).manual_seed(config.seed)
    cache_len = min(-(-total // CACHE_ROUND) * CACHE_ROUND, model.config.max_seq_len)
    cache = model.new_cache(batch, cache_len) if config.use_cache else None
    prompt_mask = real[:, :width]
    # A prefix LM reads the whole prompt as its bidirectional prefix, then decodes causally.
    plm = model.config.objective == "plm"
    prefix = {"in_prefix": prompt_mask} if plm else {}
    logits = model(history[:, :width], attention_mask=prompt_mask.long() if padded else None, cache=cache,
                   **prefix).logits[:, -1]
    key_mask = torch.zeros((batch, cache_len), dtype=torch.bool, device=device)
    key_mask[:, :width] = prompt_mask
    slot = torch.tensor([width], device=device)
    positions = prompt_mask.sum(1)  # the first new token's position: the row's prompt length
    penalise = config.repetition_penalty != 1.0
    seen = seen_mask(prompts, logits.shape[-1], device) if penalise else None
    rows = torch.arange(batch, device=device)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    # Reading a CPU tensor costs no device sync: stop as soon as every row is done. Elsewhere look
    # only every few steps (a few wasted steps cost less than a sync per token).
    check_every = 1 if device.type == "cpu" else 8
    for i in range(new):
        logits = logits.float()
        if penalise:
            logits = repetition_penalty(logits, seen, config.repetition_penalty)
        if config.no_repeat_ngram_size:
            logits = ban_repeated_ngrams(logits, history[:, :width + i], real[:, :width + i],
                                         config.no_repeat_ngram_size)
        next_tokens = choose(logits, config.do_sample, config.temperature, config.top_k, config.top_p, generator)
        if penalise:
            seen[rows, next_tokens] = True
        if config.stop_on_eos:
            done = done | (next_tokens == eos_id)
        history[:, width + i] = next_tokens
        real[:, width + i] = ~done
        if on_token is not None:
            for b, (tok, keep) in enumerate(zip(next_tokens.tolist(), real[:, width + i].tolist())):
                if keep and on_token(b, tok):
                    done[b] = True
        if i == new - 1 or ((i + 1) % check_every == 0 and bool(done.all())):
            break
        key_mask[:, width + i] = True
        keys = key_mask[:, :width + i + 1]  # attend only to the keys written so far
        if cache is None:  # every token so far through the model, with the mask the cached step uses
            prefix = {"in_prefix": torch.cat([prompt_mask, torch.zeros_like(keys[:, width:])], 1)} if plm else {}
            logits = model(history[:, :width + i + 1], attention_mask=keys.long() if padded else None,
                           **prefix).logits[:, -1]
        else:
            if compiled:  # one graph for every length: the key count is a symbolic size, not a constant
                torch._dynamo.mark_dynamic(keys, 1)
            logits = step(next_tokens, cache, slot, positions, keys)
            slot += 1
            positions += 1
    # A row's new tokens are the kept ones: contiguous from the start until it stopped.
    kept = real[:, width:].sum(1).tolist()
    return [row[width:width + n] for row, n in zip(history.tolist(), kept)]


def compiled_step(model):
    """model.decode_step through torch.compile, built once per model (a new graph per batch size and
    cache length; generate_tokens marks the number of keys attended to as dynamic). On CPU it fuses each block's element-wise work into generated C++ loops and drops
    the per-op Python cost, which is most of a batch-1 step. It needs a C++ compiler, and each new
    graph takes tens of seconds to build."""
    step = getattr(model, "_compiled_step", None)
    if step is None:
        step = torch.compile(model.decode_step, dynamic=False, fullgraph=True)
        object.__setattr__(model, "_compiled_step", step)  # a plain attribute, not a submodule
    return step
