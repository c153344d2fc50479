"""Causal and masked windows over a token file, and the sample order across ranks and resumes."""
import numpy as np
import pytest
import torch

from data.samples.windows import CausalWindows, MaskedWindows, SampleOrder
from data.samples.masking import MLMMasker

SPECIAL = [0, 1, 2, 3, 4]
VOCAB = 1000


class FakeBin:
    def __init__(self, tokens):
        self.tokens = np.asarray(tokens, dtype="<u2")


def test_causal_windows_shift_by_one():
    w = CausalWindows(FakeBin(np.arange(100)), seq_len=8)
    assert len(w) == 12                                        # (100 - 1) // 8
    x, y = w[2]
    assert x.tolist() == list(range(16, 24)) and y.tolist() == list(range(17, 25)) and x.dtype == torch.int64


def test_masked_windows_draw_fresh_masks():
    masker = MLMMasker(4, SPECIAL, VOCAB)
    w = MaskedWindows(FakeBin(np.random.default_rng(0).integers(5, VOCAB, 4096)), 128, masker)
    assert len(w) == 32
    a = w.sample(3, torch.Generator().manual_seed(1))["labels"]
    b = w.sample(3, torch.Generator().manual_seed(2))["labels"]
    assert not torch.equal(a, b)


def test_order_is_a_pure_function_and_covers_each_epoch():
    order = SampleOrder(50, seed=3)
    epoch0 = [order.index(p) for p in range(50)]
    epoch1 = [order.index(p) for p in range(50, 100)]
    assert sorted(epoch0) == list(range(50)) == sorted(epoch1) and epoch0 != epoch1
    assert [SampleOrder(50, seed=3).index(p) for p in range(120, 60, -1)] == [order.index(p) for p in range(120, 60, -1)]


@pytest.mark.parametrize("world", [1, 2, 4])
def test_ranks_together_read_the_single_process_sequence(world):
    order, global_batch = SampleOrder(37, seed=1), 8
    single = [order.index(p) for p in range(0, 10 * global_batch)]
    sharded = []
    for step in range(10):
        for rank in range(world):
            sharded += [order.index(p) for p in order.rank_positions(step * global_batch, global_batch, rank, world)]
    assert sharded == single


def test_resume_and_resharding_neither_repeat_nor_skip():
    order = SampleOrder(37, seed=1)
    seen = []
    position = 0
    for world, steps in ((2, 3), (4, 2), (1, 5)):              # world size changes at each "resume"
        for _ in range(steps):
            for rank in range(world):
                seen += order.rank_positions(position, 8, rank, world)
            position += 8
    assert seen == list(range(position))
