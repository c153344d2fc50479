"""Document boundaries inside packed windows (model.document_mask), and prefix-LM prefixes drawn
per document (model.objective plm).

A token file stores documents back to back; its .idx sidecar holds where each one starts. A window
is a slice of that stream, so it may hold the end of one document, whole documents and the start of
another. The model needs, per token, which document it belongs to (a number that only has to differ
between neighbours) and, for a prefix LM, whether it lies in the bidirectional prefix: drawn at
random, or a document's own prompt when the corpus gives one (data.prefix_field)."""
import numpy as np
import torch

from utils import IGNORE_INDEX


class DocumentIndex:
    """Per-token document numbers for any slice of a token file, from its document start offsets."""

    def __init__(self, offsets):
        offsets = np.asarray(offsets, dtype=np.int64)
        # [0] alone is a file without documents (an empty validation split): its windows are none.
        if offsets.ndim != 1 or len(offsets) < 1 or offsets[0] != 0 or np.any(np.diff(offsets) < 0):
            raise ValueError("document offsets must start at 0 and never decrease (n_docs + 1 entries)")
        self.offsets = offsets

    def ids(self, start: int, length: int) -> torch.Tensor:
        """[length] int64: the global document index of each token in [start, start + length)."""
        tokens = np.arange(start, start + length, dtype=np.int64)
        return torch.from_numpy(np.searchsorted(self.offsets, tokens, side="right") - 1)


def segment_starts(document_ids: torch.Tensor) -> torch.Tensor:
    """[T] bool: True where a document begins within the window (the first token always does)."""
    starts = torch.ones_like(document_ids, dtype=torch.bool)
    starts[1:] = document_ids[1:] != document_ids[:-1]
    return starts


def draw_prefix(document_ids: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """[T] bool in_prefix for one window: each document piece of length L in the window gets a prefix
    of P tokens, P uniform in [0, L - 1], so at least one of its tokens is a target. Without a
    document mask the window is one piece (document_ids all equal)."""
    starts = torch.nonzero(segment_starts(document_ids)).flatten()
    lengths = torch.diff(starts, append=torch.tensor([len(document_ids)]))
    # One draw per piece, always as many as the window has pieces: a pure function of the generator.
    fractions = torch.rand(len(lengths), generator=generator, dtype=torch.float64)
    prefix_lengths = (fractions * lengths).long()  # floor(u * L) is uniform over 0 .. L - 1
    offset = torch.arange(len(document_ids)) - torch.repeat_interleave(starts, lengths)
    return offset < torch.repeat_interleave(prefix_lengths, lengths)


def known_prefix(documents: DocumentIndex, prompt_lengths, start: int, length: int) -> torch.Tensor:
    """[length] bool: tokens [start, start + length) that lie in their document's prompt, whose
    length in tokens prompt_lengths gives per document (data/samples/prefix_split.py)."""
    ids = documents.ids(start, length).numpy()
    offset = np.arange(start, start + length) - documents.offsets[ids]
    return torch.from_numpy(offset < np.asarray(prompt_lengths)[ids])


def suffix_labels(labels: torch.Tensor, in_prefix: torch.Tensor) -> torch.Tensor:
    """Next-token labels (labels[t] is token t + 1) kept only where that token lies after the prefix:
    the loss counts exactly the suffix. in_prefix covers the inputs ([T]: the window's last label
    then counts, as drawn prefixes always leave a piece's last token out) or the targets too ([T + 1])."""
    if len(in_prefix) == len(labels) + 1:
        target_in_prefix = in_prefix[1:]
    else:
        target_in_prefix = torch.zeros_like(in_prefix)
        target_in_prefix[:-1] = in_prefix[1:]
    return torch.where(target_in_prefix, torch.full_like(labels, IGNORE_INDEX), labels)
