"""BERT's next-sentence prediction: BertForPreTraining (random weights in every parameter) imports
with its pooler and next-sentence head and gives transformers' prediction and seq_relationship
logits and loss; exported back it loads strictly into BertForPreTraining with equal outputs."""
import json

import pytest
import torch

from model import ConfigError, LMConfig, Transformer
from model.hf import FAMILIES, family_for_hf_config

transformers = pytest.importorskip("transformers")
from tests.helpers.model_checks import perturbed  # noqa: E402  (after the transformers skip)

VOCAB = 211


def pretraining_model(seed=0):
    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=128, max_position_embeddings=64, type_vocab_size=2,
                                     architectures=["BertForPreTraining"])
    return perturbed(transformers.BertForPreTraining(config), seed)


def imported(theirs):
    hf_config = json.loads(json.dumps(theirs.config.to_dict()))
    family = family_for_hf_config(hf_config)
    cfg = LMConfig.from_dict(family.config_from_hf(hf_config))
    ours = Transformer(cfg).eval()
    ours.load_state_dict(family.state_from_hf(theirs.state_dict(), cfg))  # strict: the head's keys too
    return ours, cfg


def inputs(seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (3, 20), generator=g)
    types = torch.cat([torch.zeros(3, 9, dtype=torch.long), torch.ones(3, 11, dtype=torch.long)], dim=1)
    mask = torch.ones(3, 20, dtype=torch.long)
    mask[2, 14:] = 0  # right padding
    return ids, types, mask


def test_pretraining_model_imports_with_its_next_sentence_head():
    theirs = pretraining_model()
    ours, cfg = imported(theirs)
    assert cfg.next_sentence and ours.next_sentence is not None
    ids, types, mask = inputs(1)
    labels = torch.where(torch.rand(ids.shape, generator=torch.Generator().manual_seed(2)) < 0.3, ids, -100)
    labels[2, 14:] = -100
    nsp = torch.tensor([0, 1, 1])
    with torch.no_grad():
        ref = theirs(ids, attention_mask=mask, token_type_ids=types, labels=labels, next_sentence_label=nsp)
        full = ours(ids, attention_mask=mask, token_type_ids=types)
        out = ours(ids, attention_mask=mask, token_type_ids=types, labels=labels, next_sentence_label=nsp)
    real = mask.bool()
    assert (full.logits[real] - ref.prediction_logits[real]).abs().max() < 1e-4
    assert (full.nsp_logits - ref.seq_relationship_logits).abs().max() < 1e-5
    # transformers' loss: mean masked loss + mean next-sentence loss
    assert abs((out.loss + out.nsp_loss_sum / 3).item() - ref.loss.item()) < 1e-5


def test_export_is_bert_for_pretraining_with_equal_outputs():
    theirs = pretraining_model(seed=3)
    ours, cfg = imported(theirs)
    family = FAMILIES["bert"]
    hf_config = json.loads(json.dumps(family.config_to_hf(cfg)))
    assert hf_config["architectures"] == ["BertForPreTraining"] and family.hf_class_name(cfg) == "BertForPreTraining"
    back = transformers.BertForPreTraining(transformers.BertConfig.from_dict(hf_config)).eval()
    back.load_state_dict(family.state_to_hf(ours.state_dict(), cfg), strict=True)
    ids, types, mask = inputs(4)
    with torch.no_grad():
        mine, ref = ours(ids, attention_mask=mask, token_type_ids=types), back(ids, attention_mask=mask,
                                                                               token_type_ids=types)
    real = mask.bool()
    assert (mine.logits[real] - ref.prediction_logits[real]).abs().max() < 1e-4
    assert (mine.nsp_logits - ref.seq_relationship_logits).abs().max() < 1e-5
    again, _ = imported(back)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), ours.state_dict().values()))


def test_masked_lm_classes_still_leave_the_head_behind():
    """BertForMaskedLM's config gives no next-sentence head; its export stays BertForMaskedLM."""
    hf_config = dict(pretraining_model().config.to_dict(), architectures=["BertForMaskedLM"])
    cfg = LMConfig.from_dict(FAMILIES["bert"].config_from_hf(hf_config))
    assert not cfg.next_sentence and FAMILIES["bert"].hf_class_name(cfg) == "BertForMaskedLM"
    assert not any(k.startswith("next_sentence.") for k in Transformer(cfg).state_dict())


def test_next_sentence_is_for_masked_models_and_needs_its_head():
    with pytest.raises(ConfigError, match="model.next_sentence is a masked model's second head"):
        LMConfig(vocab_size=64, dim=32, n_heads=2, next_sentence=True)  # llama default: clm
    model = Transformer(LMConfig(vocab_size=64, dim=32, n_heads=2, arch="bert")).eval()
    with pytest.raises(ValueError, match="no next-sentence head"):
        model(torch.ones(1, 4, dtype=torch.long), next_sentence_label=torch.zeros(1, dtype=torch.long))
