"""Packed windows that respect document boundaries (model.document_mask): attention never crosses a
document and positions restart at each one, so a document's logits are the same whether it sits
alone or packed between others: for causal, prefix and masked models and every family."""
import numpy as np
import pytest
import torch

from data.samples.documents import DocumentIndex
from model import LMConfig, Transformer
from tests.helpers.data_fixtures import FakeBin
from training.batches import fetch, make_windows

SMALL = dict(vocab_size=211, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=48)
FAMILIES = [("llama", "clm"), ("llama", "plm"), ("llama", "mlm"), ("qwen2", "clm"), ("gpt2", "clm"),
            ("bert", "mlm")]


def make(arch, objective):
    torch.manual_seed(0)
    return Transformer(LMConfig(**SMALL, arch=arch, objective=objective, document_mask=True)).eval()


@pytest.mark.parametrize("arch,objective", FAMILIES)
def test_a_document_packed_between_others_equals_it_alone(arch, objective):
    m = make(arch, objective)
    g = torch.Generator().manual_seed(1)
    docs = [torch.randint(5, 211, (n,), generator=g) for n in (7, 13, 4, 10)]
    packed = torch.cat(docs)[None]
    document_ids = torch.cat([torch.full((len(d),), i) for i, d in enumerate(docs)])[None]
    prefix_lengths = (3, 5, 0, 4)                            # prefix LM: each document has its own prefix
    in_prefix = torch.cat([torch.arange(len(d)) < p for d, p in zip(docs, prefix_lengths)])[None]
    extra = {"in_prefix": in_prefix} if objective == "plm" else {}
    together = m(packed, document_ids=document_ids, **extra).logits[0]
    start = 0
    for d, p in zip(docs, prefix_lengths):
        alone_extra = {"in_prefix": (torch.arange(len(d)) < p)[None]} if objective == "plm" else {}
        alone = m(d[None], **alone_extra).logits[0]
        assert (together[start:start + len(d)] - alone).abs().max() < 1e-5
        start += len(d)
    # without the document mask the same packed window mixes documents
    plain = m(packed, **extra).logits[0]
    assert (plain[7:20] - together[7:20]).abs().max() > 1e-3


def test_document_mask_trains_with_gradients_and_checkpointing():
    torch.manual_seed(0)
    m = Transformer(LMConfig(**SMALL, document_mask=True, gradient_checkpointing=True)).train()
    x = torch.randint(5, 211, (2, 24))
    document_ids = torch.tensor([[0] * 10 + [1] * 14, [5] * 24])
    out = m(x, labels=x, document_ids=document_ids, return_logits=False)
    out.loss.backward()
    assert torch.isfinite(out.loss) and all(p.grad is not None for p in m.parameters())


def test_document_ids_cannot_ride_on_a_decoding_step():
    m = make("llama", "clm")
    cache = m.new_cache(1, 16)
    m(torch.randint(5, 211, (1, 4)), cache=cache)
    with pytest.raises(ValueError, match="empty cache"):
        m(torch.randint(5, 211, (1, 1)), cache=cache, document_ids=torch.zeros(1, 1, dtype=torch.long))


def test_document_index_numbers_tokens_by_document():
    index = DocumentIndex([0, 3, 3, 8, 10])                  # an empty document between 3 and 3
    assert index.ids(0, 10).tolist() == [0, 0, 0, 2, 2, 2, 2, 2, 3, 3]
    assert index.ids(2, 4).tolist() == [0, 2, 2, 2]
    with pytest.raises(ValueError):
        DocumentIndex([1, 3])
    assert DocumentIndex([0]).offsets.tolist() == [0]           # a split without documents


@pytest.mark.parametrize("objective", ["clm", "plm", "mlm"])
def test_windows_carry_document_ids_only_when_asked(objective):
    from data.samples.masking import MLMMasker
    masker = MLMMasker(4, [0, 1, 2, 3, 4], 211) if objective == "mlm" else None
    fake = FakeBin(np.arange(5, 45), [0, 12, 30, 40])
    packed = fetch(make_windows(fake, 16, objective, masker, document_mask=True), 1, seed=0, position=0)
    assert packed["document_ids"].tolist() == [1] * 14 + [2] * 2          # tokens 16..31
    plain = fetch(make_windows(fake, 16, objective, masker), 1, seed=0, position=0)
    assert "document_ids" not in plain and torch.equal(plain["input_ids"], packed["input_ids"])
