"""Token-level generation with the KV cache: batched prompts (left padded), prefill, then one
token per step until eos or max_new_tokens. A prefix LM's prompt is its bidirectional prefix."""
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


@torch.inference_mode()
def generate_tokens(model, prompts: List[List[int]], config: GenerationConfig, eos_id: int, pad_id: int = 0,
                    on_token: Optional[Callable[[int, int], bool]] = None) -> List[List[int]]:
    """New tokens for each prompt (eos not included). on_token(row, token) is called as tokens
    are produced; if it returns True that row stops. Prompts must already fit:
    len(prompt) + max_new_tokens <= max_seq_len."""
    if not prompts:
        return []
    if min(len(p) for p in prompts) == 0:
        raise ValueError("every prompt needs at least one token (a bos token will do)")
    device = next(model.parameters()).device
    batch = len(prompts)
    width = max(len(p) for p in prompts)
    total = width + config.max_new_tokens
    ids = torch.full((batch, width), pad_id, dtype=torch.long)
    mask = torch.zeros((batch, total), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[i, width - len(p):] = 1
    ids, mask = ids.to(device), mask.to(device)
    padded = any(len(p) != width for p in prompts)
    generator = None
    if config.seed is not None:
        generator = torch.Generator(device=device).manual_seed(config.seed)
    cache = model.new_cache(batch, total)
    history = [list(p) for p in prompts]
    outputs = [[] for _ in prompts]
    done = [False] * batch
    # A prefix LM reads the whole prompt as its bidirectional prefix, then decodes causally.
    prefix = {"in_prefix": mask[:, :width].bool()} if model.config.objective == "plm" else {}
    logits = model(ids, attention_mask=mask[:, :width] if padded else None, cache=cache, **prefix).logits[:, -1]
    penalise = config.repetition_penalty != 1.0
    seen = seen_mask(prompts, logits.shape[-1], device) if penalise else None
    rows = torch.arange(batch, device=device)
    for step in range(config.max_new_tokens):
        logits = logits.float()
        if penalise:
            logits = repetition_penalty(logits, seen, config.repetition_penalty)
        if config.no_repeat_ngram_size:
            logits = ban_repeated_ngrams(logits, history, config.no_repeat_ngram_size)
        next_tokens = choose(logits, config.do_sample, config.temperature, config.top_k, config.top_p, generator)
        if penalise:
            seen[rows, next_tokens] = True
        for b, tok in enumerate(next_tokens.tolist()):
            if done[b]:
                continue
            if config.stop_on_eos and tok == eos_id:
                done[b] = True
                continue
            outputs[b].append(tok)
            history[b].append(tok)
            if on_token is not None and on_token(b, tok):
                done[b] = True
        if all(done) or step == config.max_new_tokens - 1:
            break
        step_mask = mask[:, :width + step + 1] if padded else None
        logits = model(next_tokens[:, None], attention_mask=step_mask, cache=cache).logits[:, -1]
    return outputs
