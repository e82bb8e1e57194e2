"""Coreset selection from per-sample scores.

All indices returned are indices into the ORIGINAL dataset: ``scores[k]`` belongs to the
sample ``dataset_indices[k]`` (the training split's positions are never returned).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..defaults import CCS_BETA, CCS_STRATA, RUN_FRACTIONS

__all__ = ["ORDERS", "DEFAULT_FRACTIONS", "select_by_order", "select", "class_quotas", "ccs_select",
           "check_fraction", "check_fractions", "check_scored", "check_dataset_indices"]

ORDERS = ("top", "bottom", "zero", "random")


#: Coreset fractions of ``cldfast run`` / :func:`cldfast.pipeline.run` by default
#: (:data:`cldfast.defaults.RUN_FRACTIONS`).
DEFAULT_FRACTIONS: tuple[float, ...] = RUN_FRACTIONS


def check_fraction(fraction: float, name: str = "fraction") -> float:
    """The one check of a coreset fraction: a number in (0, 1]."""
    try:
        f = float(fraction)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number in (0, 1]; got {fraction!r}") from None
    if not (0.0 < f <= 1.0) or math.isnan(f):
        raise ValueError(f"{name} must be in (0, 1]; got {fraction}")
    return f


def check_fractions(fractions: Any, name: str = "fractions") -> list[float]:
    """Sorted distinct fractions, each checked by :func:`check_fraction`; at least one."""
    values = sorted({check_fraction(f, name) for f in fractions})
    if not values:
        raise ValueError(f"{name} must hold at least one fraction in (0, 1]; got {list(fractions)}")
    return values


def class_quotas(labels: np.ndarray, *, fraction: float | None = None,
                 per_class: int | None = None) -> dict[int, int]:
    """Samples to keep per class: ``round(fraction * n_c)`` or ``per_class`` (capped at n_c)."""
    classes, counts = np.unique(labels, return_counts=True)
    if (fraction is None) == (per_class is None):
        raise ValueError("give exactly one of fraction= or per_class=")
    if fraction is not None:
        f = check_fraction(fraction)
        # Round half up, as a person would read round(f * n_c), not numpy's half-to-even.
        return {int(c): int(math.floor(f * n + 0.5)) for c, n in zip(classes, counts)}
    k = int(per_class)
    if k < 1 or k != per_class:
        raise ValueError(f"per_class must be a positive integer; got {per_class}")
    return {int(c): min(k, int(n)) for c, n in zip(classes, counts)}


def check_scored(c: int, quota: int, scored: int, n: int, *, fraction: float | None = None,
                 per_class: int | None = None) -> None:
    """The one short-class check: ValueError when class ``c`` (``n`` samples, ``scored`` of
    them with a finite score) has fewer scored samples than its selection asks for
    (``per_class``, not capped at ``n``, or its ``quota`` from ``fraction``)."""
    asked = quota if per_class is None else int(per_class)
    if asked > scored:
        how = (f"per_class={int(per_class)}" if per_class is not None
               else f"fraction {fraction:g} of its {n} samples")
        raise ValueError(f"class {c}: the selection asks for {asked} samples ({how}) but "
                         f"only {scored} of its {n} samples have a score (NaN: no score); "
                         "ask for fewer")


def check_dataset_indices(dataset_indices: Any, n: int) -> np.ndarray:
    """[n] int64 original dataset index of each score (default 0..n-1), checked distinct."""
    ids = np.arange(n) if dataset_indices is None else np.asarray(dataset_indices, np.int64)
    if ids.shape != (n,):
        raise ValueError(f"dataset_indices has {ids.shape[0] if ids.ndim else 0} entries but "
                         f"scores has {n}")
    if np.unique(ids).shape[0] != n:
        raise ValueError("dataset_indices holds duplicates: each entry must be a distinct sample")
    return ids


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


def select_by_order(scores: Any, labels: Any, *, fraction: float | None = None,
                    per_class: int | None = None, order: str = "top", class_balanced: bool = True,
                    dataset_indices: Any = None, seed: int = 0,
                    allow_short: bool = False) -> np.ndarray:
    """Choose a coreset from a score array by keeping one end (``order``) of each class's
    ranking (or of the ranking over all samples): the paper's top-k selection and its
    bottom / near-zero / random variants. (:func:`cldfast.selection.select_by_rule` applies
    the other selection rules; ``select`` is this function's earlier name.)

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
        allow_short: what happens when a class has fewer scored (finite) samples than its
            quota (``per_class``, or ``round(fraction * n_c)`` with ``n_c`` counting the
            class's unscored samples too), or, without class balance, the whole set fewer
            than ``round(fraction * N)``: False (default) raises ValueError naming the
            class, the quota and the scored count, so that a coreset always has the size
            asked for; True takes all the scored samples instead (the DeepCore adapter,
            where the held-out validation samples count in ``n_c`` by DeepCore's
            convention but can never be picked).

    Returns the selected original dataset indices as a sorted int64 array.
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1)
    if y.shape != s.shape:
        raise ValueError(f"labels has {y.shape[0]} entries but scores has {s.shape[0]}")
    if order not in ORDERS:
        raise ValueError(f"order must be one of {', '.join(ORDERS)}; got {order!r}")
    ids = check_dataset_indices(dataset_indices, s.shape[0])
    rng = np.random.default_rng(seed)
    if not class_balanced:
        if per_class is not None:
            raise ValueError("per_class= needs class_balanced=True; use fraction= for a global top-k")
        if fraction is None:
            raise ValueError("give fraction= for a selection without class balance")
        k = int(math.floor(check_fraction(fraction) * s.shape[0] + 0.5))
        chosen = _ranking(s, ids, order, rng)
        if k > chosen.shape[0] and not allow_short:
            raise ValueError(f"the selection asks for {k} samples (fraction {fraction:g} of "
                             f"{s.shape[0]}) but only {chosen.shape[0]} have a score (NaN: no "
                             "score); ask for fewer")
        return np.sort(ids[chosen[:k]])
    quotas = class_quotas(y, fraction=fraction, per_class=per_class)
    picked = []
    for c, quota in quotas.items():
        members = np.flatnonzero(y == c)
        ranked = _ranking(s[members], ids[members], order, rng)
        if not allow_short:
            check_scored(c, quota, int(ranked.shape[0]), int(members.shape[0]),
                         fraction=fraction, per_class=per_class)
        picked.append(ids[members[ranked[:quota]]])
    out = np.concatenate(picked) if picked else np.zeros(0, np.int64)
    return np.sort(out.astype(np.int64))


#: The earlier name of :func:`select_by_order` (``cldfast.select``), kept for existing code.
select = select_by_order


def _ccs_group(s: np.ndarray, ids: np.ndarray, members: np.ndarray, budget: int, *, hard: str,
               beta: float, strata: int, rng: np.random.Generator) -> np.ndarray:
    """CCS over ``members`` (positions) with ``budget`` picks: steps 1-4 of :func:`ccs_select`.
    Returns the picked dataset indices (unsorted)."""
    ranked = members[_ranking(s[members], ids[members], hard, rng)]  # hardest first, finite only
    budget = min(budget, ranked.shape[0])
    n_prune = min(int(math.floor(beta * ranked.shape[0])), ranked.shape[0] - budget)
    pool = ranked[n_prune:]
    if budget == 0 or pool.size == 0:
        return np.zeros(0, np.int64)
    ps = s[pool]
    lo, hi = float(ps.min()), float(ps.max())
    if hi > lo:
        bins = np.minimum(np.floor((ps - lo) / (hi - lo) * strata).astype(np.int64), strata - 1)
    else:
        bins = np.zeros(pool.shape[0], np.int64)
    share = _stratum_shares(np.bincount(bins, minlength=strata), budget)
    picked = []
    for stratum in range(strata):
        if share[stratum] == 0:
            continue
        members_k = pool[bins == stratum]
        members_k = members_k[np.argsort(ids[members_k], kind="stable")]
        picked.append(rng.choice(members_k, size=int(share[stratum]), replace=False))
    return ids[np.concatenate(picked)] if picked else np.zeros(0, np.int64)


def _stratum_shares(sizes: np.ndarray, budget: int) -> np.ndarray:
    """CCS's budget per stratum: smallest stratum first, each ``min(its size, remaining //
    strata left)``, so small strata are taken whole and the larger ones share the rest."""
    k = sizes.shape[0]
    share = np.zeros(k, np.int64)
    left = budget
    for i, stratum in enumerate(np.argsort(sizes, kind="stable")):
        take = min(int(sizes[stratum]), left // (k - i))
        share[stratum] = take
        left -= take
    return share


def ccs_select(scores: Any, labels: Any, *, fraction: float | None = None,
               per_class: int | None = None, hard: str = "top", beta: float = CCS_BETA,
               strata: int = CCS_STRATA, class_balanced: bool = False, dataset_indices: Any = None,
               seed: int = 0) -> np.ndarray:
    """Coverage-centric coreset selection (CCS; Zheng et al., ICLR 2023).

    1. Drop the hardest ``floor(beta * n)`` scored samples (the ``hard`` end: ``top`` = the
       highest scores are hardest, ``bottom`` = the lowest), but never so many that fewer
       than the budget remain.
    2. Split the rest into ``strata`` bins of equal score width between their min and max.
    3. Spread the budget over the bins, smallest bin first: each gets
       ``min(its size, remaining budget // bins left)``, so small bins are taken whole and
       the rest is shared evenly by the larger ones (the last bin takes what remains).
    4. Draw each bin's share uniformly at random (``numpy.random.default_rng(seed)``; bins in
       ascending score order, members in dataset-index order before the draw).

    Args:
        scores: [N] float difficulty scores (NaN = no score; never selected).
        labels: [N] int classes.
        fraction: budget ``round(fraction * N)`` (half up) over all samples, or
            ``round(fraction * n_c)`` per class when ``class_balanced`` (CCS within each class).
        per_class: instead of ``fraction``, ``min(per_class, n_c)`` per class (needs
            ``class_balanced``).
        hard: which end is hardest, ``top`` or ``bottom``.
        beta: hard cutoff rate in [0, 1).
        strata: number of bins, >= 1 (the paper uses 50).
        class_balanced: run CCS within every class with its own quota (default: over all
            samples, as in the paper).
        dataset_indices: [N] original dataset index of each entry (default 0..N-1).
        seed: seed of the draws.

    Returns the selected original dataset indices, sorted int64.
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1)
    if y.shape != s.shape:
        raise ValueError(f"labels has {y.shape[0]} entries but scores has {s.shape[0]}")
    if hard not in ("top", "bottom"):
        raise ValueError(f"hard must be 'top' or 'bottom'; got {hard!r}")
    b = float(beta)
    if not 0.0 <= b < 1.0:
        raise ValueError(f"beta (CCS hard cutoff rate) must be in [0, 1); got {beta}")
    k = int(strata)
    if k < 1 or k != strata:
        raise ValueError(f"strata must be a positive integer; got {strata}")
    if not class_balanced and (per_class is not None or fraction is None):
        raise ValueError("CCS over all samples needs fraction= (per_class= needs "
                         "class_balanced=True)")
    quotas = class_quotas(y, fraction=fraction, per_class=per_class) if class_balanced else None
    ids = check_dataset_indices(dataset_indices, s.shape[0])
    rng = np.random.default_rng(seed)

    def one_group(members: np.ndarray, budget: int) -> np.ndarray:
        return _ccs_group(s, ids, members, budget, hard=hard, beta=b, strata=k, rng=rng)

    if not class_balanced:
        f = check_fraction(fraction)
        chosen = one_group(np.arange(s.shape[0]), int(math.floor(f * s.shape[0] + 0.5)))
    else:
        parts = [one_group(np.flatnonzero(y == c), quota) for c, quota in quotas.items()]
        chosen = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    return np.sort(chosen.astype(np.int64))
