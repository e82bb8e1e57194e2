"""Geometry methods (Herding, k-Center Greedy) and CCS against plain numpy references of
their definitions (cldfast.selection.geometry, cldfast.selection.ccs_select)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cldfast.selection import ccs_select, class_quotas, select_by_order
from cldfast.selection.geometry import greedy_scores, herding, kcenter_greedy


# --------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------


def ref_kcenter(x, budget, first):
    x = np.asarray(x, np.float64)
    chosen = [first]
    for _ in range(budget - 1):
        d = np.min([np.linalg.norm(x - x[c], axis=1) for c in chosen], axis=0)
        d[chosen] = -1
        chosen.append(int(np.argmax(d)))
    return np.array(chosen)


def ref_herding(x, budget):
    x = np.asarray(x, np.float64)
    mu = x.mean(0)
    chosen = []
    for t in range(budget):
        best, best_d = None, np.inf
        for i in range(x.shape[0]):
            if i in chosen:
                continue
            d = np.linalg.norm(mu - (x[chosen].sum(0) + x[i]) / (t + 1))
            if d < best_d:
                best, best_d = i, d
        chosen.append(best)
    return np.array(chosen)


def test_kcenter_and_herding_match_numpy_references():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 7)).astype(np.float32)
    np.testing.assert_array_equal(kcenter_greedy(x, 25, first=5), ref_kcenter(x, 25, 5))
    np.testing.assert_array_equal(kcenter_greedy(torch.from_numpy(x), 25, first=5), ref_kcenter(x, 25, 5))
    np.testing.assert_array_equal(herding(x, 30), ref_herding(x, 30))
    np.testing.assert_array_equal(herding(torch.from_numpy(x), 30), ref_herding(x, 30))
    # seeded first center; the budget is capped at N; a greedy order's prefix does not depend on it
    assert kcenter_greedy(x, 10, seed=3)[0] == np.random.default_rng(3).integers(120)
    assert herding(x, 500).size == 120 and sorted(herding(x, 500)) == list(range(120))
    np.testing.assert_array_equal(kcenter_greedy(x, 40, first=1)[:12], kcenter_greedy(x, 12, first=1))


def test_kcenter_runs_on_imagenet_sized_sets_without_an_n_by_n_matrix():
    n = 1_281_167  # ImageNet-1k's training set; an N x N float32 matrix would take 6.5 TB
    x = np.random.default_rng(0).normal(size=(n, 4)).astype(np.float32)
    order = kcenter_greedy(x, 4, first=0)
    np.testing.assert_array_equal(order, ref_kcenter_fast(x, 4, 0))


def ref_kcenter_fast(x, budget, first):
    x = x.astype(np.float64)
    mins = np.full(x.shape[0], np.inf)
    out = [first]
    for _ in range(budget - 1):
        mins = np.minimum(mins, ((x - x[out[-1]]) ** 2).sum(1))
        mins[out] = -1
        out.append(int(np.argmax(mins)))
    return np.array(out)


def test_greedy_scores_are_class_balanced_pick_orders():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 90)
    x = rng.normal(size=(90, 5)).astype(np.float32)
    s = greedy_scores("herding", x, labels, fraction=0.5)
    quotas = class_quotas(labels, fraction=0.5)
    for c, q in quotas.items():
        members = np.flatnonzero(labels == c)
        assert np.isfinite(s[members]).sum() == q
        order = herding(x[members], q)
        np.testing.assert_array_equal(s[members[order]], -np.arange(q))
    # a smaller fraction takes the first picks of each class
    small = select_by_order(s, labels, fraction=0.2, order="top")
    for c, q in class_quotas(labels, fraction=0.2).items():
        members = np.flatnonzero(labels == c)
        np.testing.assert_array_equal(np.sort(members[herding(x[members], q)]),
                                      np.sort(small[np.isin(small, members)]))
    g = greedy_scores("kcenter", x, labels, fraction=0.3, class_balanced=False, seed=4)
    assert np.isfinite(g).sum() == 27 and np.nanmax(g) == 0


# --------------------------------------------------------------------------------------------
# CCS
# --------------------------------------------------------------------------------------------


def ref_allocation(sizes, budget):
    """Zheng et al.'s budget split: smallest stratum first, an even share of what is left."""
    share = {}
    left = budget
    pending = sorted(range(len(sizes)), key=lambda i: (sizes[i], i))
    while pending:
        i = pending.pop(0)
        share[i] = min(sizes[i], left // (len(pending) + 1))
        left -= share[i]
    return [share[i] for i in range(len(sizes))]


@pytest.mark.parametrize("hard", ["top", "bottom"])
def test_ccs_prunes_the_hard_end_and_spreads_the_budget_over_strata(hard):
    rng = np.random.default_rng(2)
    n = 1000
    scores = rng.gamma(2.0, 1.0, n)  # skewed: strata of very different sizes
    scores[:5] = np.nan
    labels = rng.integers(0, 4, n)
    ids = np.arange(n) * 3 + 7
    beta, k, f = 0.1, 20, 0.3
    got = ccs_select(scores, labels, fraction=f, hard=hard, beta=beta, strata=k,
                     dataset_indices=ids, seed=0)
    budget = math.floor(f * n + 0.5)
    assert got.size == budget and np.unique(got).size == budget
    pos = (got - 7) // 3
    assert np.isfinite(scores[pos]).all()
    finite = np.flatnonzero(np.isfinite(scores))
    key = -scores[finite] if hard == "top" else scores[finite]
    pruned = finite[np.argsort(key, kind="stable")[: math.floor(beta * finite.size)]]
    assert not np.isin(pos, pruned).any()
    pool = np.setdiff1d(finite, pruned)
    lo, hi = scores[pool].min(), scores[pool].max()
    bins = np.minimum(((scores[pool] - lo) / (hi - lo) * k).astype(int), k - 1)
    sizes = [int((bins == b).sum()) for b in range(k)]
    got_bins = np.minimum(((scores[pos] - lo) / (hi - lo) * k).astype(int), k - 1)
    assert [int((got_bins == b).sum()) for b in range(k)] == ref_allocation(sizes, budget)
    assert min(sizes) < budget // k  # the small strata were taken whole
    again = ccs_select(scores, labels, fraction=f, hard=hard, beta=beta, strata=k,
                       dataset_indices=ids, seed=0)
    np.testing.assert_array_equal(got, again)
    other = ccs_select(scores, labels, fraction=f, hard=hard, beta=beta, strata=k,
                       dataset_indices=ids, seed=1)
    assert not np.array_equal(got, other)


def test_ccs_class_balanced_quotas_and_beta_cap():
    rng = np.random.default_rng(3)
    scores = rng.normal(size=300)
    labels = np.repeat([0, 1, 2], 100)
    got = ccs_select(scores, labels, fraction=0.25, class_balanced=True, seed=0)
    assert np.bincount(labels[got]).tolist() == [25, 25, 25]
    # beta too large for the budget: prune only what leaves the budget
    got = ccs_select(scores, labels, fraction=0.6, beta=0.9, seed=0)
    assert got.size == 180
    hardest = np.argsort(-scores)[:120]
    assert not np.isin(got, hardest).any()
    with pytest.raises(ValueError, match="beta"):
        ccs_select(scores, labels, fraction=0.5, beta=1.0)
    with pytest.raises(ValueError, match="hard"):
        ccs_select(scores, labels, fraction=0.5, hard="zero")
