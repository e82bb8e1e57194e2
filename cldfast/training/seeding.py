"""The seeds of a training run: one derivation for every consumer.

:func:`seed_everything` seeds Python's, numpy's and torch's global generators at the start
of a run (model initialisation); :func:`epoch_seed` is the seed of epoch ``epoch``'s
shuffling and augmentation, derived from the run's seed alone, so that a run resumed at any
epoch draws what an uninterrupted one draws. Code that must repeat the training loop's draws
(e.g. a re-implementation of another pipeline trained on the same order, or a pruner's
per-epoch draws) derives its seeds here instead of copying the formula.
"""

from __future__ import annotations

import random

import numpy as np
import torch

__all__ = ["seed_everything", "epoch_seed"]

# epoch_seed(seed, epoch) = (seed * SEED_STRIDE + epoch * EPOCH_STRIDE) mod 2**62
SEED_STRIDE = 1_000_003
EPOCH_STRIDE = 7919


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, numpy's global generator (``seed mod 2**32``) and torch's."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch ``epoch`` (0-based) of a run with seed ``seed``: a non-negative
    int below 2**62 (the training loop seeds the epoch's shuffling and augmentation with it)."""
    return (int(seed) * SEED_STRIDE + int(epoch) * EPOCH_STRIDE) % 2**62
