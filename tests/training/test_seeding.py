"""cldfast.training.seeding: the run's seeds, checked against the formula written out and
against what the generators draw after seeding them by hand."""

from __future__ import annotations

import random

import numpy as np
import torch

from cldfast.training.seeding import epoch_seed, seed_everything


def test_epoch_seed_formula():
    assert epoch_seed(0, 0) == 0
    assert epoch_seed(0, 1) == 7919
    assert epoch_seed(1, 0) == 1_000_003
    assert epoch_seed(3, 5) == 3 * 1_000_003 + 5 * 7919
    big = 2**70 + 11
    assert epoch_seed(big, 2) == (big * 1_000_003 + 2 * 7919) % 2**62
    assert isinstance(epoch_seed(np.int64(4), np.int32(2)), int)
    assert epoch_seed(np.int64(4), np.int32(2)) == 4 * 1_000_003 + 2 * 7919


def test_seed_everything_seeds_all_three_generators():
    for seed in (0, 7, 2**40 + 3):
        seed_everything(seed)
        got = (random.random(), np.random.rand(), torch.rand(()).item())
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        assert got == (random.random(), np.random.rand(), torch.rand(()).item())
