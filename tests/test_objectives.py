"""The objective registry: one entry per model objective, and one sample form for every windows class."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from data.samples.documents import DocumentIndex
from data.samples.masking import MLMMasker
from model.config import OBJECTIVES as MODEL_OBJECTIVES
from model.config import LMConfig
from tests.helpers.data_fixtures import FakeBin
from training.batches import fetch
from training.objectives import OBJECTIVES, objective_for

CLS, SEP, PAD, MASK = 1, 2, 0, 3
SEQ = 12


def corpus() -> FakeBin:
    """Four documents framed [CLS] text [SEP], as the processor stores them for a BERT tokenizer."""
    rng = np.random.default_rng(0)
    docs = [[CLS, *rng.integers(5, 50, n).tolist(), SEP] for n in (20, 31, 9, 25)]
    offsets = np.cumsum([0] + [len(d) for d in docs])
    return FakeBin([t for d in docs for t in d], offsets)


PAIR_TOKENIZER = SimpleNamespace(bos_id=CLS, eos_id=SEP, pad_id=PAD, frame=lambda ids: [CLS, *ids, SEP])


def test_every_model_objective_has_one_entry_that_agrees_with_the_model():
    assert set(OBJECTIVES) == set(MODEL_OBJECTIVES)
    for name, objective in OBJECTIVES.items():
        config = LMConfig(vocab_size=64, dim=32, n_layers=1, n_heads=2, max_seq_len=SEQ, objective=name)
        assert objective.name == name and objective_for(config) is objective
        assert objective.causal == config.causal  # a decoder reads one token more than its inputs
        assert objective.window_tokens(SEQ) == SEQ + (1 if config.causal else 0)


def windows_of_every_kind():
    token_bin = corpus()
    documents = DocumentIndex(token_bin.doc_offsets())
    masker = MLMMasker(MASK, [PAD, CLS, SEP, MASK], 50, mask_rate=0.5)
    prompts = np.array([3, 4, 2, 5])
    kinds = {}
    for name, objective in OBJECTIVES.items():
        use = masker if objective.masks else None
        kinds[name] = objective.windows(token_bin, SEQ, use)
        kinds[f"{name} documents"] = objective.windows(token_bin, SEQ, use, documents)
    kinds["plm prompts"] = OBJECTIVES["plm"].windows(token_bin, SEQ, None, documents, prompts)
    kinds["mlm pairs"] = OBJECTIVES["mlm"].windows(token_bin, SEQ, masker, pair_tokenizer=PAIR_TOKENIZER)
    return kinds


@pytest.mark.parametrize("kind", list(windows_of_every_kind()))
def test_a_sample_of_every_windows_class_is_a_dict_of_named_tensors(kind):
    windows = windows_of_every_kind()[kind]
    assert len(windows) > 0
    sample = fetch(windows, 0, seed=3, position=0)
    assert isinstance(sample, dict) and {"input_ids", "labels"} <= set(sample)
    assert all(isinstance(t, torch.Tensor) for t in sample.values())
    assert sample["input_ids"].shape == sample["labels"].shape == (SEQ,)
    assert ("document_ids" in sample) == ("documents" in kind or "prompts" in kind)
    again = fetch(windows, 0, seed=3, position=0)  # a pure function of (seed, position)
    assert all(torch.equal(sample[k], again[k]) for k in sample)
