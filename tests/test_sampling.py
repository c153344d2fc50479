"""Sampling rules on known distributions."""
import math

import torch

from model.sampling import ban_repeated_ngrams, choose, repetition_penalty, seen_mask, top_k_filter, top_p_filter


def test_top_p_keeps_smallest_set_reaching_p():
    probs = torch.tensor([[0.05, 0.4, 0.1, 0.3, 0.15]])
    logits = probs.log()
    kept = lambda p: torch.isfinite(top_p_filter(logits, p))[0].nonzero().flatten().tolist()
    assert kept(0.4) == [1]                      # 0.4 alone reaches 0.4
    assert kept(0.5) == [1, 3]                   # 0.4 + 0.3
    assert kept(0.7) == [1, 3]                   # exactly 0.7
    assert kept(0.71) == [1, 3, 4]
    assert kept(0.96) == [0, 1, 2, 3, 4]
    assert kept(1.0) == [0, 1, 2, 3, 4]


def test_top_k_and_top_k_one_is_greedy():
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0]])
    assert torch.isfinite(top_k_filter(logits, 2))[0].tolist() == [False, True, False, True]
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        assert choose(logits, True, 1.5, 1, 1.0, g).item() == 1
    assert choose(logits, False, 1.0, 0, 1.0).item() == 1


def test_repetition_penalty_divides_positive_and_multiplies_negative():
    logits = torch.tensor([[2.0, -2.0, 1.0, 0.5]])
    out = repetition_penalty(logits, seen_mask([[0, 1, 1]], 4), 2.0)
    assert out.tolist() == [[1.0, -4.0, 1.0, 0.5]]
    assert repetition_penalty(logits, seen_mask([[0]], 4), 1.0).tolist() == logits.tolist()


def test_repetition_penalty_rows_of_different_lengths_stay_apart():
    logits = torch.tensor([[3.0, 3.0, 3.0], [3.0, 3.0, 3.0]])
    seen = seen_mask([[0, 0, 2], [1]], 3)
    assert seen.tolist() == [[True, False, True], [False, True, False]]
    assert repetition_penalty(logits, seen, 3.0).tolist() == [[1.0, 3.0, 1.0], [3.0, 1.0, 3.0]]


def _ngram_ban(rows, n):
    """ban_repeated_ngrams on lists of tokens, left padded as generation pads them."""
    width = max(len(r) for r in rows)
    seq, real = torch.zeros(len(rows), width, dtype=torch.long), torch.zeros(len(rows), width, dtype=torch.bool)
    for b, r in enumerate(rows):
        if r:
            seq[b, width - len(r):], real[b, width - len(r):] = torch.tensor(r), True
    return ban_repeated_ngrams(torch.zeros(len(rows), 10), seq, real, n)


def test_no_repeat_ngram_bans_completion():
    out = _ngram_ban([[1, 2, 3, 1, 2]], 3)   # "1 2" was followed by 3 before
    assert math.isinf(out[0, 3]) and torch.isfinite(out[0, [0, 1, 2, 4, 5]]).all()
    out = _ngram_ban([[4, 4]], 1)             # unigram: every seen token banned
    assert math.isinf(out[0, 4]) and torch.isfinite(out[0, 5])


def test_no_repeat_ngram_on_padded_rows_equals_the_definition():
    # Padding (id 0, also a real token here) never forms an n-gram; each row sees only its own.
    g = torch.Generator().manual_seed(0)
    for trial in range(200):
        n = 1 + trial % 4
        rows = [torch.randint(0, 3, (int(torch.randint(0, 9, (1,), generator=g)),), generator=g).tolist()
                for _ in range(3)]
        if not any(rows):
            continue
        banned = torch.isinf(_ngram_ban(rows, n))
        for b, r in enumerate(rows):
            tail = tuple(r[len(r) - n + 1:]) if n > 1 else ()
            expected = {r[i + n - 1] for i in range(len(r) - n + 1) if tuple(r[i:i + n - 1]) == tail}
            assert set(banned[b].nonzero().flatten().tolist()) == (expected if len(r) >= n else set()), (rows, n)


def test_temperature_sampling_follows_the_distribution():
    probs = torch.tensor([0.7, 0.2, 0.1])
    logits = probs.log().expand(20000, 3)
    g = torch.Generator().manual_seed(0)
    picks = choose(logits, True, 1.0, 0, 1.0, g)
    freq = torch.bincount(picks, minlength=3).float() / 20000
    assert torch.allclose(freq, probs, atol=0.015)
