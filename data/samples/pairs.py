"""Sentence-pair samples for BERT's next-sentence prediction: [CLS] A [SEP] B [SEP].

Every document's text (its framing tokens left out) is cut into chunks of seq_len - 3 tokens; a
sample is one chunk split at a point drawn from the sample's generator into A and B, the segment that
follows A. Half of the time (drawn too) B is replaced by as many tokens from a random place in
another document. So a sample, its label and its masks are a pure function of (seed, position),
like every other window. Token types are 0 up to the first [SEP], 1 after it; padding (a short
chunk or a short other document) has attention_mask 0, type 0 and no label."""
import numpy as np
import torch

from data.samples.windows import MaskedWindows
from data.errors import DataError

IS_NEXT, IS_RANDOM = 0, 1  # next-sentence labels as transformers' BertForPreTraining reads them
RANDOM_B = 0.5  # share of samples whose B comes from another document


class PairWindows(MaskedWindows):
    """Masked sentence pairs with next-sentence labels over a token file. tokenizer gives [CLS]
    (bos), [SEP] (eos) and padding ids."""

    def __init__(self, token_bin, seq_len: int, masker, tokenizer):
        if tokenizer.bos_id is None:
            raise DataError("sentence pairs start with [CLS] (the tokenizer's bos / cls token); "
                            "this tokenizer has none")
        if seq_len < 5:
            raise DataError(f"sentence pairs need windows of at least 5 tokens ([CLS] A [SEP] B [SEP]), got {seq_len}")
        self.tokens, self.seq_len, self.masker, self.documents = token_bin.tokens, seq_len, masker, None
        self.cls_id, self.sep_id, self.pad_id = tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id
        offsets = token_bin.doc_offsets().astype(np.int64)
        # Each document's text without the framing the processor gave it: [CLS] ... [SEP], or ... eos.
        lead = len(tokenizer.frame([])) - 1
        starts = offsets[:-1] + lead
        self.text_start, self.text_len = starts, np.maximum(offsets[1:] - 1 - starts, 0)
        ends = starts + self.text_len
        self.other_docs = np.nonzero(self.text_len > 0)[0]  # where a random B can come from
        room = seq_len - 3
        per_doc = -(-self.text_len // room)  # ceil
        doc = np.repeat(np.arange(len(starts)), per_doc)
        within = np.arange(len(doc)) - np.repeat(np.cumsum(per_doc) - per_doc, per_doc)
        chunk_start = starts[doc] + within * room
        chunk_len = np.minimum(room, ends[doc] - chunk_start)
        keep = chunk_len >= 2  # A and B need a token each
        self.chunk_doc, self.chunk_start, self.chunk_len = doc[keep], chunk_start[keep], chunk_len[keep]
        self.n = len(self.chunk_doc)
        if self.n and len(self.other_docs) < 2:
            raise DataError(f"{token_bin.path}: sentence pairs draw B from another document half of the time; "
                            "it holds fewer than two documents with text")

    def __len__(self) -> int:
        return self.n

    def _random_b(self, doc: int, want: int, generator: torch.Generator):
        """(start, length) of up to `want` tokens from a random place in a document other than doc."""
        pick = int(torch.randint(len(self.other_docs) - 1, (1,), generator=generator))
        pick += pick >= int(np.searchsorted(self.other_docs, doc))  # skip doc itself
        other = int(self.other_docs[pick])
        length = min(want, int(self.text_len[other]))
        offset = int(torch.randint(int(self.text_len[other]) - length + 1, (1,), generator=generator))
        return int(self.text_start[other]) + offset, length

    def sample(self, i: int, generator: torch.Generator) -> dict:
        doc, start, n = int(self.chunk_doc[i]), int(self.chunk_start[i]), int(self.chunk_len[i])
        a_len = int(torch.randint(1, n, (1,), generator=generator))
        random_b = bool(torch.rand((), generator=generator) < RANDOM_B)
        b_start, b_len = self._random_b(doc, n - a_len, generator) if random_b else (start + a_len, n - a_len)
        a = torch.from_numpy(self.tokens[start:start + a_len].astype(np.int64))
        b = torch.from_numpy(self.tokens[b_start:b_start + b_len].astype(np.int64))
        cls, sep = torch.tensor([self.cls_id]), torch.tensor([self.sep_id])
        real = a_len + b_len + 3
        pad = torch.full((self.seq_len - real,), self.pad_id, dtype=torch.long)
        ids = torch.cat([cls, a, sep, b, sep, pad])
        starts = None
        if self.word_starts is not None:  # whole-word masking: each segment's own word starts
            yes = torch.ones(1, dtype=torch.bool)
            starts = torch.cat([yes, self.word_starts.window(start, a_len), yes,
                                self.word_starts.window(b_start, b_len), yes, torch.ones(len(pad), dtype=torch.bool)])
        inputs, labels = self.masker(ids, generator, starts)
        types = torch.zeros(self.seq_len, dtype=torch.long)
        types[a_len + 2:real] = 1
        attention = torch.zeros(self.seq_len, dtype=torch.long)
        attention[:real] = 1
        return {"input_ids": inputs, "labels": labels, "token_type_ids": types, "attention_mask": attention,
                "next_sentence_label": torch.tensor(IS_RANDOM if random_b else IS_NEXT)}
