"""Coreset selection from per-sample scores.

All indices returned are indices into the ORIGINAL dataset: ``scores[k]`` belongs to the
sample ``dataset_indices[k]`` (the training split's positions are never returned).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["ORDERS", "select", "class_quotas"]

ORDERS = ("top", "bottom", "zero", "random")


def _check_fraction(fraction: float) -> float:
    f = float(fraction)
    if not (0.0 < f <= 1.0) or math.isnan(f):
        raise ValueError(f"fraction must be in (0, 1]; got {fraction}")
    return f


def class_quotas(labels: np.ndarray, *, fraction: float | None = None,
                 per_class: int | None = None) -> dict[int, int]:
    """Samples to keep per class: ``round(fraction * n_c)`` or ``per_class`` (capped at n_c)."""
    classes, counts = np.unique(labels, return_counts=True)
    if (fraction is None) == (per_class is None):
        raise ValueError("give exactly one of fraction= or per_class=")
    if fraction is not None:
        f = _check_fraction(fraction)
        # Round half up, as a person would read round(f * n_c), not numpy's half-to-even.
        return {int(c): int(math.floor(f * n + 0.5)) for c, n in zip(classes, counts)}
    k = int(per_class)
    if k < 1 or k != per_class:
        raise ValueError(f"per_class must be a positive integer; got {per_class}")
    return {int(c): min(k, int(n)) for c, n in zip(classes, counts)}


def _ranking(scores: np.ndarray, dataset_indices: np.ndarray, order: str,
             rng: np.random.Generator) -> np.ndarray:
    """Positions of the finite scores, best first; ties go to the lower dataset index."""
    finite = np.flatnonzero(np.isfinite(scores))
    s = scores[finite]
    if order == "top":
        key = -s
    elif order == "bottom":
        key = s
    elif order == "zero":
        key = np.abs(s)
    else:
        key = rng.random(finite.shape[0])
    return finite[np.lexsort((dataset_indices[finite], key))]


def select(scores: Any, labels: Any, *, fraction: float | None = None,
           per_class: int | None = None, order: str = "top", class_balanced: bool = True,
           dataset_indices: Any = None, seed: int = 0) -> np.ndarray:
    """Choose a coreset.

    Args:
        scores: [N] float scores (NaN = no score; never selected).
        labels: [N] int classes of the same samples.
        fraction: keep ``round(fraction * n_c)`` per class (or of N when not class-balanced).
        per_class: keep ``per_class`` samples of every class (class-balanced only).
        order: ``top`` (highest first), ``bottom`` (lowest first), ``zero`` (closest to 0
            first) or ``random`` (uniform among scored samples, seeded).
        class_balanced: rank within each class (default) or over all samples.
        dataset_indices: [N] original dataset index of each entry (default: 0..N-1).
        seed: for ``order="random"``.

    Returns the selected original dataset indices as a sorted int64 array. When a class has
    fewer scored samples than its quota, all of its scored samples are taken.
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1)
    if y.shape != s.shape:
        raise ValueError(f"labels has {y.shape[0]} entries but scores has {s.shape[0]}")
    if order not in ORDERS:
        raise ValueError(f"order must be one of {', '.join(ORDERS)}; got {order!r}")
    ids = np.arange(s.shape[0]) if dataset_indices is None else np.asarray(dataset_indices, np.int64)
    if ids.shape != s.shape:
        raise ValueError(f"dataset_indices has {ids.shape[0]} entries but scores has {s.shape[0]}")
    if np.unique(ids).shape[0] != ids.shape[0]:
        raise ValueError("dataset_indices holds duplicates: each entry must be a distinct sample")
    rng = np.random.default_rng(seed)
    if not class_balanced:
        if per_class is not None:
            raise ValueError("per_class= needs class_balanced=True; use fraction= for a global top-k")
        if fraction is None:
            raise ValueError("give fraction= for a selection without class balance")
        k = int(math.floor(_check_fraction(fraction) * s.shape[0] + 0.5))
        chosen = _ranking(s, ids, order, rng)[:k]
        return np.sort(ids[chosen])
    quotas = class_quotas(y, fraction=fraction, per_class=per_class)
    picked = []
    for c, quota in quotas.items():
        members = np.flatnonzero(y == c)
        ranked = _ranking(s[members], ids[members], order, rng)
        picked.append(ids[members[ranked[:quota]]])
    out = np.concatenate(picked) if picked else np.zeros(0, np.int64)
    return np.sort(out.astype(np.int64))
