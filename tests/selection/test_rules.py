"""Selection rules beyond top-k (cldfast.selection.rules), checked against numpy logic written
here from the definitions in docs/method.md ("Selection rules"), not the code under test."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cldfast.cli import main
from cldfast.io import ScoresFile, save_scores
from cldfast.selection import (RULES, auto_params, estimate_noise_rate, select_by_order,
                               select_by_rule)
from cldfast.selection.rules import beta_shape, ccs_beta_schedule, resolve_params

RANDOM_RULES = ("ccs", "filtered", "beta", "mix")


def make(n=600, classes=4, nan=0.08, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    scores = np.round(rng.normal(size=n), 2)  # rounded: ties occur
    scores[rng.random(n) < nan] = np.nan
    ids = rng.permutation(5 * n)[:n]
    return scores, labels, ids


def ref_quotas(labels, fraction=None, per_class=None):
    out = {}
    for c in sorted(set(labels.tolist())):
        n_c = int((labels == c).sum())
        out[c] = min(per_class, n_c) if per_class is not None else int(math.floor(fraction * n_c + 0.5))
    return out


def best_first(scores, ids, members):
    """Scored members, highest score first, ties to the lower dataset index (plain sort)."""
    m = [i for i in members if np.isfinite(scores[i])]
    return sorted(m, key=lambda i: (-scores[i], ids[i]))


def worst_first(scores, ids, members):
    m = [i for i in members if np.isfinite(scores[i])]
    return sorted(m, key=lambda i: (scores[i], ids[i]))


def picked_positions(idx, ids):
    pos = {int(d): k for k, d in enumerate(ids)}
    return np.array([pos[int(d)] for d in idx], dtype=np.int64)


SIZES = [dict(fraction=0.1), dict(fraction=0.35), dict(per_class=12)]


@pytest.mark.parametrize("rule", list(RULES))
@pytest.mark.parametrize("size", SIZES, ids=["f0.1", "f0.35", "k12"])
def test_counts_per_class_are_the_quotas_and_nan_is_never_picked(rule, size):
    s, y, ids = make()
    idx = select_by_rule(s, y, rule=rule, dataset_indices=ids, seed=1, **size)
    assert idx.dtype == np.int64 and np.all(np.diff(idx) > 0)
    pos = picked_positions(idx, ids)
    assert np.isfinite(s[pos]).all()
    got = {c: int((y[pos] == c).sum()) for c in sorted(set(y.tolist()))}
    assert got == ref_quotas(y, **size)


@pytest.mark.parametrize("rule", list(RULES))
def test_same_seed_same_output_other_seeds_differ_for_the_random_rules(rule):
    s, y, ids = make()
    a = select_by_rule(s, y, rule=rule, fraction=0.3, dataset_indices=ids, seed=5)
    np.testing.assert_array_equal(a, select_by_rule(s, y, rule=rule, fraction=0.3,
                                                    dataset_indices=ids, seed=5))
    others = [select_by_rule(s, y, rule=rule, fraction=0.3, dataset_indices=ids, seed=k)
              for k in (6, 7)]
    if rule in RANDOM_RULES:
        assert all(not np.array_equal(a, o) for o in others)
    else:
        assert all(np.array_equal(a, o) for o in others)
    assert {r.name for r in RULES.values() if r.random} == set(RANDOM_RULES)


@pytest.mark.parametrize("rule", list(RULES))
def test_the_order_of_the_entries_does_not_matter(rule):
    s, y, ids = make()
    perm = np.random.default_rng(9).permutation(s.shape[0])
    for size in SIZES:
        np.testing.assert_array_equal(
            select_by_rule(s, y, rule=rule, dataset_indices=ids, seed=2, **size),
            select_by_rule(s[perm], y[perm], rule=rule, dataset_indices=ids[perm], seed=2, **size))


@pytest.mark.parametrize("keep", ["top", "bottom"])
@pytest.mark.parametrize("size", SIZES, ids=["f0.1", "f0.35", "k12"])
def test_top_is_select_and_the_plain_sorted_top(keep, size):
    s, y, ids = make()
    got = select_by_rule(s, y, rule="top", keep=keep, dataset_indices=ids, **size)
    np.testing.assert_array_equal(got, select_by_order(s, y, order=keep, dataset_indices=ids,
                                                       **size))
    o = s if keep == "top" else -s
    ref = []
    for c, q in ref_quotas(y, **size).items():
        ref += [ids[i] for i in best_first(o, ids, np.flatnonzero(y == c))[:q]]
    np.testing.assert_array_equal(got, np.sort(ref))


@pytest.mark.parametrize("rule", list(RULES))
@pytest.mark.parametrize("seed", [0, 3])
def test_keep_bottom_mirrors_keep_top_on_negated_scores(rule, seed):
    s, y, ids = make(seed=2)
    for size in SIZES:
        a = select_by_rule(s, y, rule=rule, keep="top", dataset_indices=ids, seed=seed, **size)
        b = select_by_rule(-s, y, rule=rule, keep="bottom", dataset_indices=ids, seed=seed, **size)
        np.testing.assert_array_equal(a, b)


def test_band_is_the_quota_closest_to_the_class_median():
    s, y, ids = make()
    for size in SIZES:
        got = select_by_rule(s, y, rule="band", dataset_indices=ids, **size)
        ref = []
        for c, q in ref_quotas(y, **size).items():
            m = [i for i in np.flatnonzero(y == c) if np.isfinite(s[i])]
            med = float(np.median(s[m]))
            ref += [ids[i] for i in sorted(m, key=lambda i: (abs(s[i] - med), ids[i]))[:q]]
        np.testing.assert_array_equal(got, np.sort(ref))


def test_ties_go_to_the_lower_dataset_index():
    n = 40
    y = np.zeros(n, np.int64)
    ids = np.arange(n)[::-1] * 2  # position k has dataset index 2 (n - 1 - k)
    flat = np.zeros(n)
    lowest = np.sort(ids)[:10]
    for rule in ("top", "band"):
        np.testing.assert_array_equal(select_by_rule(flat, y, rule=rule, per_class=10,
                                                     dataset_indices=ids), lowest)
    # mix: its top part is the lowest indices among ties
    mixed = select_by_rule(flat, y, rule="mix", per_class=10, dataset_indices=ids,
                           params={"alpha": 0.5}, seed=3)
    assert set(lowest[:5]) <= set(mixed.tolist())
    # band: |s - median| ties (symmetric pairs) go to the lower index
    sym = np.array([-1.0, 1.0, -2.0, 2.0, 0.5, -0.5, 0.0])  # median 0
    got = select_by_rule(sym, np.zeros(7, np.int64), rule="band", per_class=4,
                         dataset_indices=[10, 11, 12, 13, 15, 14, 16])
    np.testing.assert_array_equal(got, [10, 14, 15, 16])  # 0, |0.5| twice, then |1|: 10 not 11
    # the drop orders (filtered, ccs) drop the worst first, ties to the lower index first:
    # everything tied, q = 0.5 -> the 20 lower indices go, the draw is among the others
    for rule, key in (("filtered", "q"), ("ccs", "beta")):
        for seed in range(5):
            got = select_by_rule(flat, y, rule=rule, per_class=10, dataset_indices=ids,
                                 params={key: 0.5}, seed=seed)
            assert set(got.tolist()) <= set(np.sort(ids)[20:].tolist())


def test_filtered_draws_uniformly_among_the_class_less_its_worst_q():
    s, y, ids = make(n=200, classes=2)
    q = 0.25
    pools = {}
    for c, quota in ref_quotas(y, fraction=0.2).items():
        w = worst_first(s, ids, np.flatnonzero(y == c))
        drop = min(int(math.floor(q * len(w))), len(w) - quota)
        pools[c] = set(w[drop:])
    counts = np.zeros(s.shape[0])
    seeds = 300
    for seed in range(seeds):
        pos = picked_positions(select_by_rule(s, y, rule="filtered", fraction=0.2,
                                              dataset_indices=ids, params={"q": q}, seed=seed), ids)
        for c in pools:
            assert set(pos[y[pos] == c].tolist()) <= pools[c]
        counts[pos] += 1
    for c, pool in pools.items():
        expect = ref_quotas(y, fraction=0.2)[c] / len(pool)
        freq = counts[sorted(pool)] / seeds
        assert abs(freq.mean() - expect) < 1e-9  # every draw takes exactly the quota
        assert freq.min() > 0 and np.abs(freq - expect).max() < 0.12


def test_mix_takes_the_alpha_share_from_the_top_and_the_rest_elsewhere():
    s, y, ids = make()
    alpha = 0.4
    for size in SIZES:
        pos = set(picked_positions(select_by_rule(s, y, rule="mix", dataset_indices=ids, seed=2,
                                                  params={"alpha": alpha}, **size), ids).tolist())
        for c, q in ref_quotas(y, **size).items():
            ranked = best_first(s, ids, np.flatnonzero(y == c))
            n_top = int(math.floor(alpha * q + 0.5))
            assert set(ranked[:n_top]) <= pos
            assert len(pos & set(ranked[n_top:])) == q - n_top


def ccs_bins(values, k):
    lo, hi = min(values), max(values)
    if hi == lo:
        return [0] * len(values)
    return [min(int(math.floor((v - lo) / (hi - lo) * k)), k - 1) for v in values]


def ccs_allocation(sizes, budget):
    order = sorted(range(len(sizes)), key=lambda b: (sizes[b], b))
    share, left = [0] * len(sizes), budget
    for i, b in enumerate(order):
        share[b] = min(sizes[b], left // (len(sizes) - i))
        left -= share[b]
    return share


@pytest.mark.parametrize("keep", ["top", "bottom"])
def test_ccs_drops_the_worst_beta_and_fills_the_bins_as_ccs_does(keep):
    s, y, ids = make(n=800)
    beta, k = 0.2, 8
    o = s if keep == "top" else -s
    for size in SIZES:
        pos = picked_positions(select_by_rule(s, y, rule="ccs", keep=keep, dataset_indices=ids,
                                              params={"beta": beta, "k": k}, seed=4, **size), ids)
        for c, q in ref_quotas(y, **size).items():
            w = worst_first(o, ids, np.flatnonzero(y == c))
            drop = min(int(math.floor(beta * len(w))), len(w) - q)
            pool = w[drop:]
            mine = pos[y[pos] == c]
            assert set(mine.tolist()) <= set(pool)
            bins = ccs_bins([o[i] for i in pool], k)
            sizes = [bins.count(b) for b in range(k)]
            of = dict(zip(pool, bins))
            got = [sum(1 for i in mine if of[i] == b) for b in range(k)]
            assert got == ccs_allocation(sizes, q)


def test_beta_draws_in_proportion_to_the_beta_density_of_the_rank():
    rng = np.random.default_rng(0)
    n = 12
    s = rng.normal(size=n)
    y = np.zeros(n, np.int64)
    c = 14.0
    f = 1 / n  # per_class=1 of one class of n: the budget's share
    a = 1 + (1 - f / 2) * c * (1 - f)
    b = 1 + (f / 2) * c * (1 - f)
    assert beta_shape(f, c) == pytest.approx((a, b))
    rank = np.empty(n)
    rank[np.argsort(-s)] = np.arange(n)  # 0 = best
    u = 1 - (rank + 0.5) / n
    w = u ** (a - 1) * (1 - u) ** (b - 1)
    expect = w / w.sum()
    draws = 4000
    counts = np.zeros(n)
    for seed in range(draws):
        counts[select_by_rule(s, y, rule="beta", per_class=1, seed=seed)] += 1
    assert np.abs(counts / draws - expect).max() < 0.03
    # larger budgets spread out: the mean normalised rank picked falls towards 1/2
    s, y, ids = make(n=2000, classes=2, nan=0)
    means = []
    for f in (0.05, 0.3, 0.7):
        pos = picked_positions(select_by_rule(s, y, rule="beta", fraction=f, dataset_indices=ids),
                               ids)
        r = np.empty(len(s))
        for cl in (0, 1):
            m = np.flatnonzero(y == cl)
            r[m[np.argsort(-s[m], kind="stable")]] = 1 - (np.arange(m.size) + 0.5) / m.size
        means.append(r[pos].mean())
    assert means[0] > 0.85 and means[0] > means[1] > means[2] > 0.5
    # c = 0: uniform
    flat = select_by_rule(s, y, rule="beta", fraction=0.1, params={"c": 0}, dataset_indices=ids)
    assert flat.size == sum(ref_quotas(y, fraction=0.1).values())


def two_gaussians(n=5000, share=0.2, seed=0):
    rng = np.random.default_rng(seed)
    k = int(share * n)
    return np.concatenate([rng.normal(-0.5, 0.1, k), rng.normal(0.3, 0.1, n - k)])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mixture_recovers_the_noise_share_and_finds_none_in_one_gaussian(seed):
    x = two_gaussians(seed=seed)
    rng = np.random.default_rng(seed)
    x = rng.permutation(x)
    assert estimate_noise_rate(x) == pytest.approx(0.2, abs=0.03)
    assert estimate_noise_rate(-x, keep="bottom") == estimate_noise_rate(x)
    assert estimate_noise_rate(x) == estimate_noise_rate(x)  # deterministic
    with_nan = np.concatenate([x, [np.nan] * 50])
    assert estimate_noise_rate(with_nan) == pytest.approx(0.2, abs=0.03)
    assert estimate_noise_rate(rng.normal(0.1, 0.3, 5000)) == 0.0
    assert estimate_noise_rate(rng.uniform(-1, 1, 5000)) == 0.0  # flat: no dip
    assert estimate_noise_rate(rng.beta(5, 2, 5000)) == 0.0  # skewed, one mode
    assert estimate_noise_rate(np.zeros(100)) == 0.0
    # the low share is capped at 0.5
    assert estimate_noise_rate(two_gaussians(share=0.7, seed=seed)) == 0.5


def test_automatic_parameters_follow_the_documented_formulas():
    rng = np.random.default_rng(0)
    noisy = rng.permutation(two_gaussians(n=4000))
    clean = rng.normal(0.2, 0.2, 4000)
    y = rng.integers(0, 4, 4000)
    q_hat = estimate_noise_rate(noisy)

    def sched(f):
        return 0.3 * min(1.0, max(0.0, (0.7 - f) / 0.6))

    for f in (0.05, 0.1, 0.3, 0.5, 0.7, 0.9):
        assert ccs_beta_schedule(f) == pytest.approx(sched(f))
        assert auto_params("ccs", clean, y, fraction=f) == {"beta": pytest.approx(sched(f)), "k": 50}
        assert auto_params("ccs", noisy, y, fraction=f)["beta"] == pytest.approx(
            max(sched(f), q_hat), abs=1e-4)
    assert [ccs_beta_schedule(f) for f in (0.9, 0.5, 0.3, 0.1)] == sorted(
        ccs_beta_schedule(f) for f in (0.9, 0.5, 0.3, 0.1))
    assert auto_params("filtered", noisy, y, fraction=0.3) == {"q": pytest.approx(q_hat, abs=1e-4)}
    assert auto_params("filtered", clean, y, fraction=0.3) == {"q": 0.0}
    assert auto_params("mix", noisy, y, fraction=0.3)["alpha"] == pytest.approx((1 + q_hat) / 2,
                                                                                abs=1e-4)
    assert auto_params("mix", clean, y, fraction=0.3) == {"alpha": 0.5}
    assert auto_params("beta", clean, y, fraction=0.3) == {"c": 14.0}
    assert auto_params("top", noisy, y, fraction=0.3) == {} == auto_params("band", noisy, y,
                                                                          fraction=0.3)
    # keep="bottom": the bad end is the high one
    assert auto_params("filtered", -noisy, y, fraction=0.3, keep="bottom") == \
        auto_params("filtered", noisy, y, fraction=0.3)
    # explicit parameters override, the rest stays automatic
    used, auto = resolve_params("ccs", noisy, y, fraction=0.1, params={"k": "20"})
    assert used == {"beta": pytest.approx(max(0.3, q_hat), abs=1e-4), "k": 20} and auto == ("beta",)
    # params=None is the automatic choice
    np.testing.assert_array_equal(
        select_by_rule(noisy, y, rule="filtered", fraction=0.2, seed=1),
        select_by_rule(noisy, y, rule="filtered", fraction=0.2, seed=1,
                       params=auto_params("filtered", noisy, y, fraction=0.2)))


@pytest.mark.parametrize("rule, params, message", [
    ("nope", None, r"unknown rule 'nope'; expected one of top, ccs, filtered, band, beta, mix"),
    ("ccs", {"beta": 1.0}, r"rule ccs: parameter beta must be in \[0, 1\); got 1.0"),
    ("filtered", {"q": -0.1}, r"rule filtered: parameter q must be in \[0, 1\); got -0.1"),
    ("mix", {"alpha": "x"}, r"rule mix: parameter alpha must be a number; got 'x'"),
    ("mix", {"alpha": float("nan")}, r"parameter alpha must be in \[0, 1\); got nan"),
    ("ccs", {"k": 0}, r"rule ccs: parameter k must be an integer >= 1; got 0"),
    ("ccs", {"k": 2.5}, r"parameter k must be an integer >= 1; got 2.5"),
    ("beta", {"c": -1}, r"rule beta: parameter c must be a finite number >= 0; got -1"),
    ("filtered", {"alpha": 0.2}, r"rule filtered has no parameter 'alpha' \(its parameters: q\)"),
    ("ccs", {"q": 0.2}, r"rule ccs has no parameter 'q' \(its parameters: beta, k\)"),
    ("top", {"q": 0.2}, r"rule top has no parameter 'q' \(its parameters: none\)"),
])
def test_bad_parameters_are_refused_naming_them(rule, params, message):
    s, y, ids = make()
    with pytest.raises(ValueError, match=message):
        select_by_rule(s, y, rule=rule, fraction=0.2, params=params)


def test_bad_keep_sizes_and_short_classes_are_refused_as_select_refuses_them():
    s, y, _ = make()
    with pytest.raises(ValueError, match="keep must be one of top, bottom; got 'zero'"):
        select_by_rule(s, y, rule="band", fraction=0.2, keep="zero")
    with pytest.raises(ValueError, match="exactly one of fraction= or per_class="):
        select_by_rule(s, y, rule="mix")
    for rule in RULES:
        for size in (dict(fraction=0.97), dict(per_class=400)):
            with pytest.raises(ValueError) as theirs:
                select_by_order(s, y, **size)
            with pytest.raises(ValueError) as ours:
                select_by_rule(s, y, rule=rule, **size)
            assert str(ours.value) == str(theirs.value) and "have a score" in str(ours.value)


def test_a_class_with_exactly_its_quota_scored_gives_all_of_them():
    s = np.array([0.3, np.nan, 0.1, np.nan, 0.9, 0.2, -0.4, np.nan])
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    for rule in RULES:
        got = select_by_rule(s, y, rule=rule, per_class=2, params={"q": 0.5} if rule == "filtered"
                             else None)
        assert 0 in got and 2 in got and got.size == 4


# -- the command line ------------------------------------------------------------------------

@pytest.fixture
def scores_path(tmp_path):
    rng = np.random.default_rng(0)
    n = 400
    labels = rng.integers(0, 4, n)
    scores = rng.permutation(two_gaussians(n=n))
    scores[3] = np.nan
    return save_scores(tmp_path / "scores.npz",
                       ScoresFile(scores, labels, np.arange(n) * 3 + 1, np.arange(5), {},
                                  {"aum": -scores}))


def test_cli_rule_ccs_writes_a_coreset_of_the_right_size(scores_path, capsys):
    from cldfast.io import load_scores

    sf = load_scores(scores_path)
    assert main(["select", str(scores_path), "--rule", "ccs", "--fraction", "0.1"]) == 0
    out = scores_path.with_name("indices_ccs_f0.1.npy")
    idx = np.load(out)
    assert idx.size == sum(ref_quotas(sf.labels, fraction=0.1).values())
    np.testing.assert_array_equal(idx, select_by_rule(sf.scores, sf.labels, rule="ccs",
                                                      fraction=0.1,
                                                      dataset_indices=sf.train_indices))
    line = capsys.readouterr().out
    assert "rule ccs: beta=" in line and "(auto)" in line and "k=50," in line
    # Over AUM the rules treat the end away from AUM's hard end (low AUM) as best: its top.
    aum = -sf.scores
    assert main(["select", str(scores_path), "--rule", "ccs", "--method", "aum",
                 "--fraction", "0.1"]) == 0
    np.testing.assert_array_equal(np.load(scores_path.with_name("indices_aum_ccs_f0.1.npy")),
                                  select_by_rule(aum, sf.labels, rule="ccs", fraction=0.1,
                                                 keep="top", dataset_indices=sf.train_indices))
    # Here aum = -cld: keeping AUM's bottom end gives CLD's coreset.
    assert main(["select", str(scores_path), "--rule", "ccs", "--method", "aum", "--order",
                 "bottom", "--fraction", "0.1"]) == 0
    np.testing.assert_array_equal(
        np.load(scores_path.with_name("indices_aum_ccs_bottom_f0.1.npy")), idx)


def test_cli_rule_param_overrides_the_automatic_choice(scores_path, tmp_path, capsys):
    from cldfast.io import load_scores

    sf = load_scores(scores_path)
    out = tmp_path / "filtered.txt"
    assert main(["select", str(scores_path), "--rule", "filtered", "--rule-param", "q=0.2",
                 "--fraction", "0.3", "--seed", "4", "-o", str(out)]) == 0
    line = capsys.readouterr().out
    assert "rule filtered: q=0.2," in line and "(auto)" not in line and "seed 4" in line
    np.testing.assert_array_equal(
        np.loadtxt(out, dtype=np.int64),
        select_by_rule(sf.scores, sf.labels, rule="filtered", fraction=0.3, seed=4,
                       params={"q": 0.2}, dataset_indices=sf.train_indices))
    assert main(["select", str(scores_path), "--rule", "filtered", "--rule-param", "q=1.5",
                 "--fraction", "0.3"]) == 2
    assert "parameter q must be in [0, 1); got 1.5" in capsys.readouterr().err
    assert main(["select", str(scores_path), "--rule", "ccs", "--rule-param", "q=0.1",
                 "--fraction", "0.3"]) == 2
    assert "its parameters: beta, k" in capsys.readouterr().err
    assert main(["select", str(scores_path), "--rule", "ccs", "--global", "--fraction", "0.3"]) == 2


def test_cli_help_describes_every_rule_and_parameter(capsys):
    with pytest.raises(SystemExit):
        main(["select", "--help"])
    text = capsys.readouterr().out
    assert "--rule NAME" in text and "--rule-param KEY=VALUE" in text
    for r in RULES.values():
        assert f"  {r.name}: " in text
        for p in r.params:
            assert f"      {p.name} (" in text
