"""--trainable: which parameters a run trains; everything else stays bit-identical.

    all             every parameter (default)
    embeddings      the token embedding (and an untied output layer / MLM decoder bias)
    new_embeddings  only the vocabulary rows added by `convert.py expand_vocab`
    a,b*,...        parameters whose names match any of these glob patterns; the words above
                    combine with patterns (new_embeddings,mlm_head.*: the new rows and the MLM head)

Whole parameters are frozen with requires_grad=False (the optimizer never sees them). For
new_embeddings the old rows of each vocabulary-sized tensor are frozen inside a trained tensor:
their gradient is zeroed (so Adam's moments stay zero) and, after every optimizer step, they are
copied back from a saved copy, so neither weight decay nor anything else can move them."""
import fnmatch

import torch

from utils import ConfigError

VOCAB_PARAMS = ("tok_embeddings.weight", "output.weight", "mlm_head.bias")


class Freezer:
    def __init__(self, model, trainable: str, new_rows=None):
        """new_rows: (first, end) ids of the rows expansion added; needed by new_embeddings."""
        self.rows = {}  # name -> (parameter, saved copy, first, end): rows outside [first, end) are frozen
        names = dict(model.named_parameters())
        items = [p.strip() for p in trainable.split(",") if p.strip()]
        row_mode = "new_embeddings" in items
        chosen = set(names) if "all" in items else set()
        if row_mode or "embeddings" in items:
            chosen |= {n for n in VOCAB_PARAMS if n in names}
        patterns = [p for p in items if p not in ("all", "embeddings", "new_embeddings")]
        unmatched = [p for p in patterns if not any(fnmatch.fnmatch(n, p) for n in names)]
        if unmatched:
            raise ConfigError(f"train.trainable: no parameter matches {', '.join(unmatched)} (names look like "
                              f"{', '.join(list(names)[:3])}, ...)")
        chosen |= {n for n in names if any(fnmatch.fnmatch(n, p) for p in patterns)}
        if row_mode:
            if "all" in items or "embeddings" in items:
                raise ConfigError(f"train.trainable {trainable!r}: new_embeddings freezes the old rows that "
                                  "all/embeddings would train; choose one")
            if new_rows is None:
                raise ConfigError("train.trainable new_embeddings needs a model whose vocabulary was expanded with "
                                  "`python convert.py expand_vocab` (start the run with --init_from its output)")
            first, end = new_rows
            for n in (n for n in VOCAB_PARAMS if n in names):  # their old rows stay frozen, whatever else trains
                p = names[n]
                self.rows[n] = (p, p.detach().clone(), first, end)
                mask = torch.zeros(p.shape[0], *([1] * (p.dim() - 1)), dtype=p.dtype, device=p.device)
                mask[first:end] = 1
                p.register_hook(lambda g, m=mask: g * m)
        for n, p in names.items():
            p.requires_grad_(n in chosen)
        self.n_trainable = sum(p.numel() for n, p in names.items() if n in chosen and n not in self.rows)
        self.n_trainable += sum(p[first:end].numel() for p, _, first, end in self.rows.values())
        self.n_total = sum(p.numel() for p in names.values())

    @torch.no_grad()
    def after_step(self) -> None:
        """Put the frozen rows back exactly (weight decay or a fused kernel may have touched them)."""
        for p, saved, first, end in self.rows.values():
            p[:first].copy_(saved[:first])
            p[end:].copy_(saved[end:])

    def describe(self) -> str:
        return f"{self.n_trainable:,} of {self.n_total:,} parameters train"
