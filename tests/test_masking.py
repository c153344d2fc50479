"""MLM masking: rates and the 80/10/10 split measured over many samples, special tokens never touched."""
import pytest
import torch

from data.samples.masking import IGNORE_INDEX, MLMMasker

SPECIAL = [0, 1, 2, 3, 4]
VOCAB = 1000


def test_masking_rates_and_special_tokens():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, VOCAB, (400, 512), generator=g)
    ids[:, ::16] = 2                                           # separators (eos) throughout
    ids[:, 1::37] = 0
    masker = MLMMasker(mask_id=4, special_ids=SPECIAL, vocab_size=VOCAB)
    inputs, labels = masker(ids, g)
    chosen = labels != -100
    eligible = ~torch.isin(ids, torch.tensor(SPECIAL))
    rate = chosen.sum().item() / eligible.sum().item()
    assert abs(rate - 0.15) < 0.005
    n = chosen.sum().item()
    as_mask = (inputs[chosen] == 4).sum().item() / n
    unchanged = (inputs[chosen] == ids[chosen]).sum().item() / n
    randomised = 1 - as_mask - unchanged
    # a random replacement can coincide with the original token (1 in 995): within tolerance
    assert abs(as_mask - 0.8) < 0.01 and abs(unchanged - 0.1) < 0.01 and abs(randomised - 0.1) < 0.01
    assert not torch.isin(ids[chosen], torch.tensor(SPECIAL)).any()           # specials never chosen
    replaced = chosen & (inputs != ids) & (inputs != 4)
    assert not torch.isin(inputs[replaced], torch.tensor(SPECIAL)).any()      # nor drawn as replacements
    assert torch.equal(inputs[~chosen], ids[~chosen]) and (labels[chosen] == ids[chosen]).all()


def test_masking_is_configurable_and_seeded():
    ids = torch.randint(5, VOCAB, (50, 256))
    all_mask = MLMMasker(4, SPECIAL, VOCAB, mask_rate=0.4, mask_token_frac=1.0, random_token_frac=0.0)
    inputs, labels = all_mask(ids, torch.Generator().manual_seed(1))
    chosen = labels != -100
    assert abs(chosen.float().mean().item() - 0.4) < 0.01 and (inputs[chosen] == 4).all()
    a = all_mask(ids, torch.Generator().manual_seed(7))
    b = all_mask(ids, torch.Generator().manual_seed(7))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    with pytest.raises(ValueError):
        MLMMasker(4, SPECIAL, VOCAB, mask_token_frac=0.9, random_token_frac=0.2)


def test_special_ids_are_an_explicit_set_not_a_range():
    """A special token in the middle of the vocabulary (a separator added after training, say) is
    never chosen and never drawn as a replacement."""
    special = SPECIAL + [500, 999]
    masker = MLMMasker(4, special, VOCAB, mask_rate=0.5, mask_token_frac=0.0, random_token_frac=1.0)
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, VOCAB, (200, 256), generator=g)
    inputs, labels = masker(ids, g)
    chosen = labels != IGNORE_INDEX
    assert not torch.isin(ids[chosen], torch.tensor(special)).any()
    assert not torch.isin(inputs[chosen], torch.tensor(special)).any()       # every replacement ordinary
    assert len(torch.unique(inputs[chosen])) > 0.9 * (VOCAB - len(special))  # drawn from all of them
    specials_in = torch.isin(ids, torch.tensor(special))
    assert torch.equal(inputs[specials_in], ids[specials_in]) and (labels[specials_in] == IGNORE_INDEX).all()
