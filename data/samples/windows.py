"""Training samples over a memory-mapped token file, and the order they are read in.

Every kind of window gives its samples one way: sample(i, generator) -> a dict of named tensors
(input_ids, labels, and whatever else the model takes by name), so a reader needs no case per kind."""
import numpy as np
import torch

from data.samples.documents import draw_prefix, known_prefix, suffix_labels


class _Windows:
    """What every kind of window shares: window i's inputs start at token i * seq_len."""
    seq_len, documents = 0, None

    def document_ids(self, i: int) -> torch.Tensor:
        """Per-token document numbers of window i's inputs (needs the DocumentIndex `documents`)."""
        return self.documents.ids(i * self.seq_len, self.seq_len)

    def _named(self, i: int, **tensors) -> dict:
        """A sample's tensors, with document_ids when the windows carry a document index."""
        if self.documents is not None:
            tensors["document_ids"] = self.document_ids(i)
        return tensors


class CausalWindows(_Windows):
    """Non-overlapping windows of seq_len + 1 tokens: x = window[:-1], y = window[1:].
    documents: a data.documents.DocumentIndex when samples carry document_ids (model.document_mask)."""

    def __init__(self, token_bin, seq_len: int, documents=None):
        self.tokens, self.seq_len, self.documents = token_bin.tokens, seq_len, documents
        self.n = max(0, (len(self.tokens) - 1) // seq_len)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        start = i * self.seq_len
        window = torch.from_numpy(self.tokens[start:start + self.seq_len + 1].astype(np.int64))
        return window[:-1], window[1:]

    def sample(self, i: int, generator: torch.Generator = None) -> dict:
        """{input_ids, labels}: nothing is drawn, the generator is not used."""
        x, y = self[i]
        return self._named(i, input_ids=x, labels=y)


class PrefixWindows(CausalWindows):
    """Causal windows for a prefix LM: each sample draws where its prefix ends from the generator
    (so a sample is a pure function of its position); with a document index each document piece in
    the window gets a prefix of its own. prompt_lengths (with a document index): each document's
    prefix is its prompt instead, nothing drawn. Labels inside the prefix are -100."""

    def __init__(self, token_bin, seq_len: int, documents=None, prompt_lengths=None):
        super().__init__(token_bin, seq_len, documents)
        if prompt_lengths is not None and documents is None:
            raise ValueError("prompt lengths need the document index (model.document_mask)")
        self.prompt_lengths = prompt_lengths

    def sample(self, i: int, generator: torch.Generator) -> dict:
        """{input_ids, labels, in_prefix}: in_prefix [seq_len] bool marks the bidirectional prefix of x."""
        x, y = self[i]
        if self.prompt_lengths is not None:  # inputs and the last target: it may lie in a prompt too
            in_prefix = known_prefix(self.documents, self.prompt_lengths, i * self.seq_len, self.seq_len + 1)
            return self._named(i, input_ids=x, labels=suffix_labels(y, in_prefix), in_prefix=in_prefix[:-1])
        documents = self.document_ids(i) if self.documents is not None else torch.zeros(self.seq_len, dtype=torch.long)
        in_prefix = draw_prefix(documents, generator)
        return self._named(i, input_ids=x, labels=suffix_labels(y, in_prefix), in_prefix=in_prefix)


class MaskedWindows(_Windows):
    """Windows of seq_len tokens, masked afresh every time a sample is drawn."""

    def __init__(self, token_bin, seq_len: int, masker, documents=None):
        self.tokens, self.seq_len, self.masker, self.documents = token_bin.tokens, seq_len, masker, documents
        self.n = len(self.tokens) // seq_len

    def __len__(self) -> int:
        return self.n

    def window(self, i: int) -> torch.Tensor:
        start = i * self.seq_len
        return torch.from_numpy(self.tokens[start:start + self.seq_len].astype(np.int64))

    word_starts = None  # a data.word_starts.WordStarts view of the same .bin: then whole words are masked

    def sample(self, i: int, generator: torch.Generator) -> dict:
        """{input_ids, labels}: the window masked with the generator's draws."""
        starts = None if self.word_starts is None else self.word_starts.window(i * self.seq_len, self.seq_len)
        x, y = self.masker(self.window(i), generator, starts)
        return self._named(i, input_ids=x, labels=y)


class SampleOrder:
    """Which sample sits at a global position: epoch = position // n, and within an epoch a
    permutation that is a pure function of (seed, epoch). Nothing else is state, so a run resumed at
    any position, or split over another number of ranks, reads exactly the same sequence."""

    def __init__(self, n_samples: int, seed: int):
        if n_samples < 1:
            raise ValueError("SampleOrder needs at least one sample")
        self.n, self.seed = n_samples, seed
        self._epoch, self._perm = None, None

    def permutation(self, epoch: int) -> np.ndarray:
        if self._epoch != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._perm = rng.permutation(self.n)
            self._epoch = epoch
        return self._perm

    def index(self, position: int) -> int:
        return int(self.permutation(position // self.n)[position % self.n])

    def rank_positions(self, start: int, global_batch: int, rank: int, world_size: int) -> list:
        """The contiguous block of [start, start + global_batch) that `rank` reads."""
        if global_batch % world_size:
            raise ValueError(f"global batch {global_batch} is not divisible by world size {world_size}")
        per_rank = global_batch // world_size
        first = start + rank * per_rank
        return list(range(first, first + per_rank))
