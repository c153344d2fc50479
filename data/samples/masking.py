"""Dynamic masking for masked-LM training (BERT-style).

Of the positions chosen (mask_rate, 15% by default), mask_token_frac get the mask token,
random_token_frac a random ordinary token, and the rest stay unchanged; labels are -100 everywhere
else. Special tokens are never chosen and never drawn as replacements: both sets are explicit id
lists, never "every id below the vocabulary size". Whole-word masking (word starts given) makes
these choices per word instead of per piece."""
import torch

from utils import IGNORE_INDEX


class MLMMasker:
    def __init__(self, mask_id: int, special_ids, vocab_size: int, mask_rate: float = 0.15,
                 mask_token_frac: float = 0.8, random_token_frac: float = 0.1):
        if not 0 < mask_rate <= 1:
            raise ValueError(f"mask_rate must be in (0, 1], got {mask_rate}")
        if mask_token_frac < 0 or random_token_frac < 0 or mask_token_frac + random_token_frac > 1:
            raise ValueError("mask_token_frac + random_token_frac must lie within [0, 1]")
        self.mask_id, self.mask_rate = mask_id, mask_rate
        self.mask_token_frac, self.random_token_frac = mask_token_frac, random_token_frac
        special = torch.zeros(vocab_size, dtype=torch.bool)
        special[torch.as_tensor(sorted(set(special_ids)), dtype=torch.long)] = True
        self.is_special = special
        self.replacement_ids = torch.nonzero(~special).flatten()

    def __call__(self, ids: torch.Tensor, generator: torch.Generator = None, word_starts: torch.Tensor = None):
        """(inputs, labels) for a 1-D or 2-D tensor of token ids. With word_starts (True where a word
        begins, same shape), whole words are masked: every piece takes its word's first piece's draws,
        so a word is chosen (with probability mask_rate, so the expected share of pieces masked is
        mask_rate too) and given its 80/10/10 action once; random replacements are drawn per piece."""
        ids = ids.long()
        candidates = ~self.is_special[ids]
        draw = torch.rand(ids.shape, generator=generator)
        action = torch.rand(ids.shape, generator=generator)
        if word_starts is not None:
            head = word_heads(word_starts)
            draw, action = draw.flatten()[head].view(ids.shape), action.flatten()[head].view(ids.shape)
        chosen = (draw < self.mask_rate) & candidates
        use_mask = chosen & (action < self.mask_token_frac)
        use_random = chosen & (action >= self.mask_token_frac) & (action < self.mask_token_frac + self.random_token_frac)
        pick = torch.randint(len(self.replacement_ids), ids.shape, generator=generator)
        inputs = torch.where(use_mask, torch.full_like(ids, self.mask_id), ids)
        inputs = torch.where(use_random, self.replacement_ids[pick], inputs)
        labels = torch.where(chosen, ids, torch.full_like(ids, IGNORE_INDEX))
        return inputs, labels


def word_heads(word_starts: torch.Tensor) -> torch.Tensor:
    """For each position of the flattened tensor, the flat index of its word's first piece; every
    row starts a word (a window may begin inside one: its part in the window is the whole word here)."""
    starts = word_starts.bool().clone()
    starts.view(-1, starts.shape[-1])[:, 0] = True
    flat = starts.flatten()
    index = torch.arange(flat.numel())
    return torch.cummax(torch.where(flat, index, torch.zeros_like(index)), dim=0).values
