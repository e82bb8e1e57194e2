"""Selection invariants, checked against a direct numpy reading of the rules."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from cldfast.selection import class_quotas, select_by_order


@st.composite
def scored(draw):
    n = draw(st.integers(1, 80))
    labels = draw(arrays(np.int64, n, elements=st.integers(0, 4)))
    scores = draw(arrays(np.float64, n, elements=st.one_of(
        st.floats(-1, 1), st.sampled_from([np.nan, 0.0, 0.5, -0.5]))))
    ids = draw(st.permutations(list(range(3 * n))))[:n]
    return scores, labels, np.array(ids, np.int64)


@settings(max_examples=200, deadline=None)
@given(scored(), st.sampled_from(["top", "bottom", "zero", "random"]), st.floats(0.01, 1.0))
def test_class_balanced_invariants(problem, order, fraction):
    scores, labels, ids = problem
    short = any(int(np.floor(fraction * (labels == c).sum() + 0.5))
                > np.isfinite(scores[labels == c]).sum() for c in np.unique(labels))
    if short:  # a class with fewer scored samples than its quota: an error by default
        with pytest.raises(ValueError, match=r"class \d+: the selection asks for \d+ samples"):
            select_by_order(scores, labels, fraction=fraction, order=order, dataset_indices=ids,
                            seed=3)
    chosen = select_by_order(scores, labels, fraction=fraction, order=order, dataset_indices=ids,
                             seed=3, allow_short=True)
    assert np.all(np.diff(chosen) > 0)  # sorted, no duplicates
    pos = {int(i): k for k, i in enumerate(ids)}
    picked = np.array([pos[int(i)] for i in chosen], dtype=np.int64)  # in original space
    assert np.isfinite(scores[picked]).all()
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        finite = members[np.isfinite(scores[members])]
        quota = int(np.floor(fraction * members.size + 0.5))
        mine = picked[labels[picked] == c]
        assert mine.size == min(quota, finite.size)  # allow_short: every scored one
        rest = np.setdiff1d(finite, mine)
        if order in ("top", "bottom", "zero") and mine.size and rest.size:
            key = {"top": -scores, "bottom": scores, "zero": np.abs(scores)}[order]
            worst_in = max((key[i], ids[i]) for i in mine)
            best_out = min((key[i], ids[i]) for i in rest)
            assert worst_in < best_out  # nothing left out ranks before anything taken


def test_top_is_highest_with_ties_to_lower_index():
    scores = np.array([0.5, 0.9, 0.5, 0.1, np.nan, 0.9])
    labels = np.zeros(6, np.int64)
    assert select_by_order(scores, labels, per_class=3).tolist() == [0, 1, 5]
    assert select_by_order(scores, labels, per_class=2, order="bottom").tolist() == [0, 3]
    assert select_by_order(scores, labels, per_class=1, order="zero").tolist() == [3]
    assert select_by_order(scores, labels, per_class=5).tolist() == [0, 1, 2, 3, 5]  # NaN never
    assert (select_by_order(scores, labels, per_class=10, allow_short=True).tolist()
            == [0, 1, 2, 3, 5])


def test_global_and_per_class_counts():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], [10, 20, 30])
    scores = rng.random(60)
    assert select_by_order(scores, labels, fraction=0.5, class_balanced=False).size == 30
    top_global = select_by_order(scores, labels, fraction=0.1, class_balanced=False)
    assert set(top_global) == set(np.argsort(-scores)[:6])
    assert select_by_order(scores, labels, per_class=4).size == 12
    assert class_quotas(labels, fraction=0.25) == {0: 3, 1: 5, 2: 8}  # 2.5 rounds up


def test_random_is_seeded_and_uniform_over_scored():
    labels = np.zeros(100, np.int64)
    scores = np.where(np.arange(100) % 2 == 0, 1.0, np.nan)
    a = select_by_order(scores, labels, per_class=10, order="random", seed=1)
    b = select_by_order(scores, labels, per_class=10, order="random", seed=1)
    c = select_by_order(scores, labels, per_class=10, order="random", seed=2)
    assert a.tolist() == b.tolist() and a.tolist() != c.tolist()
    assert np.all(a % 2 == 0)


@pytest.mark.parametrize("kwargs, match", [
    (dict(fraction=0.0), r"fraction must be in \(0, 1\]; got 0.0"),
    (dict(fraction=1.5), r"fraction must be in \(0, 1\]; got 1.5"),
    (dict(per_class=0), "per_class must be a positive integer"),
    (dict(fraction=0.5, per_class=2), "exactly one of"),
    (dict(fraction=0.5, order="best"), "order must be one of top, bottom, zero, random"),
    (dict(per_class=2, class_balanced=False), "per_class= needs class_balanced=True"),
])
def test_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        select_by_order(np.zeros(4), np.zeros(4, np.int64), **kwargs)


def test_a_quota_above_the_scored_count_is_an_error_naming_class_quota_and_count():
    """A coreset has the size asked for, or the call fails: NaN samples count in n_c (the
    fraction's base) but cannot be picked."""
    labels = np.repeat([0, 1], 10)
    scores = np.linspace(-1, 1, 20)
    scores[10:17] = np.nan  # class 1: 3 of 10 scored
    assert select_by_order(scores, labels, per_class=3).size == 6
    with pytest.raises(ValueError, match=r"class 1: .*asks for 4 samples \(per_class=4\) but only "
                                         r"3 of its 10 samples have a score"):
        select_by_order(scores, labels, per_class=4)
    assert select_by_order(scores, labels, fraction=0.3).size == 6  # round(0.3 * 10) = 3 per class
    with pytest.raises(ValueError, match=r"class 1: .*asks for 4 samples \(fraction 0.4 of its "
                                         r"10 samples\) but only 3"):
        select_by_order(scores, labels, fraction=0.4)
    with pytest.raises(ValueError, match=r"class 0: .*asks for 11 samples \(per_class=11\) but "
                                         r"only 10 of its 10"):  # more than the class holds
        select_by_order(np.zeros(20), labels, per_class=11)
    # Without class balance: round(f * N) against every scored sample.
    assert select_by_order(scores, labels, fraction=0.65, class_balanced=False).size == 13
    with pytest.raises(ValueError, match=r"asks for 14 samples \(fraction 0.7 of 20\) but only 13"):
        select_by_order(scores, labels, fraction=0.7, class_balanced=False)
    with pytest.raises(ValueError, match="class 0"):
        select_by_order(np.full(20, np.nan), labels, fraction=0.1)
    # allow_short=True: every scored sample of a short class (the DeepCore adapter's rule).
    assert select_by_order(scores, labels, per_class=4, allow_short=True).size == 7


def test_earlier_names_are_the_canonical_functions():
    """The select functions are named for what they do; the earlier names stay as aliases."""
    import cldfast
    import cldfast.pipeline as pipeline
    from cldfast.selection import method_coreset, select, select_for_method

    assert select is select_by_order and cldfast.select is select_by_order
    assert select_for_method is method_coreset
    assert pipeline.select_coreset is pipeline.cld_coreset
    assert pipeline.select_to_file is pipeline.write_coreset
