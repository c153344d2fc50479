"""Choosing the next token from logits: penalties, bans, temperature, top-k, top-p.

Every function takes logits [B, V] and returns new logits (banned tokens at -inf), so they compose."""
import torch

NEG_INF = float("-inf")


def seen_mask(rows, vocab_size: int, device=None):
    """bool [B, V]: True where the token occurs in that row (rows: lists of token ids)."""
    seen = torch.zeros(len(rows), vocab_size, dtype=torch.bool, device=device)
    for b, row in enumerate(rows):
        if row:
            seen[b, torch.tensor(row, device=device)] = True
    return seen


def repetition_penalty(logits, seen, penalty: float):
    """Tokens already seen in a row (seen: bool [B, V]): a positive logit is divided by `penalty`,
    a negative one multiplied by it (both make the token less likely for penalty > 1). A mask
    rather than padded id lists, so rows of different lengths never penalise each other's tokens."""
    if penalty == 1.0:
        return logits
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def ban_repeated_ngrams(logits, seq, real, n: int):
    """Forbid any token that would complete an n-gram already present in that row. seq [B, L]: each
    row's tokens so far; real [B, L] bool, False at padding (a row's real tokens are contiguous and
    end at L). All rows at once on the device: no token goes to the host."""
    if n <= 0 or seq.shape[1] < n:
        return logits
    windows = seq.unfold(1, n, 1)                      # [B, L - n + 1, n], every n-gram
    match = real.unfold(1, n, 1).all(-1)               # n-grams of real tokens only
    if n > 1:                                          # ... whose first n - 1 tokens end the row now
        match = match & (windows[..., :-1] == seq[:, None, seq.shape[1] - n + 1:]).all(-1)
    hits = torch.zeros_like(logits).scatter_add_(1, windows[..., -1], match.to(logits.dtype))
    return logits.masked_fill(hits > 0, NEG_INF)


def top_k_filter(logits, k: int):
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, NEG_INF)


def top_p_filter(logits, p: float):
    """Keep the smallest set of most likely tokens whose probability mass reaches p."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
    probs = torch.softmax(sorted_logits, dim=-1)
    mass_before = probs.cumsum(-1) - probs
    drop_sorted = mass_before >= p  # the mass before this token already reached p
    drop = drop_sorted.scatter(1, order, drop_sorted)
    return logits.masked_fill(drop, NEG_INF)


def choose(logits, do_sample: bool, temperature: float, top_k: int, top_p: float, generator=None):
    """Next token per row: argmax when not sampling (or temperature 0), else a filtered sample."""
    if not do_sample or temperature <= 0:
        return logits.argmax(-1)
    logits = top_p_filter(top_k_filter(logits / temperature, top_k), top_p)
    probs = torch.softmax(logits.float(), dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)
