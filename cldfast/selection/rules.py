"""Selection rules beyond the paper's top-k, each usable with any stored score.

:data:`RULES` names them; :func:`select_by_rule` applies one to a score (CLD or a
baseline's, :data:`cldfast.selection.METHODS`); :func:`auto_params` chooses a rule's
parameters from the training scores and the budget alone (never the test set);
:func:`estimate_noise_rate` is the label-noise estimate those choices start from.

Every rule is class-balanced with the quotas of :func:`cldfast.selection.select`
(``round(f * n_c)`` half up, or ``per_class``), never picks a sample without a score (NaN),
refuses a class with fewer scored samples than its quota, is deterministic for a given
``seed`` (``numpy.random.default_rng(seed)``), and breaks ties by the lower dataset index
wherever an order matters: first in the order being applied, so an order of what to keep
(top, band, mix's top part, beta's ranks) keeps it first and an order of what to drop (the
worst share ccs and filtered drop, worst first as :func:`cldfast.selection.ccs_select` does)
drops it first. ``keep`` names the end of the score the rules treat as best (CLD: ``top``;
for a baseline the end away from its hard end, ``METHODS[name].rule_keep``: AUM ``top``,
forgetting ``bottom``, so that ccs and filtered drop the hard end, where mislabeled samples
gather): the rules first orient the score so that higher = keep, so ``keep="bottom"`` on
``s`` gives exactly ``keep="top"`` on ``-s``.
See docs/method.md, "Selection rules", for the sources and the automatic choices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping

import numpy as np

from .balanced import (ccs_select, check_dataset_indices, check_fraction, check_scored,
                       class_quotas, select)

__all__ = ["RuleParam", "RuleInfo", "RULES", "KEEPS", "select_by_rule", "auto_params",
           "resolve_params", "check_params", "estimate_noise_rate", "ccs_beta_schedule",
           "beta_shape", "rules_help"]

KEEPS = ("top", "bottom")

#: The CCS hard cutoff rate of the automatic choice, by budget f (pruning rate 1 - f): 0 for
#: f >= 0.7, rising linearly to 0.3 at f = 0.1, 0.3 below.
_CCS_BETA_MAX, _CCS_F_HI, _CCS_F_LO = 0.3, 0.7, 0.1
#: Dip a two-component fit needs to count as label noise: the data's density between the
#: components below this share of its density at each component's mean.
_DIP = 0.75
#: Scores the mixture is fitted on at most (an evenly spaced subsample of the sorted values),
#: and EM iterations at most.
_EM_MAX, _EM_ITER = 50_000, 300


@dataclass(frozen=True)
class RuleParam:
    """One parameter of a rule. kind: ``share`` (a number in [0, 1)), ``count`` (an integer
    >= 1) or ``nonneg`` (a finite number >= 0); default: its value when not given, None when
    :func:`auto_params` chooses it from the scores and the budget."""

    name: str
    kind: str
    default: float | int | None
    help: str


@dataclass(frozen=True)
class RuleInfo:
    """One selection rule: name, parameters (with defaults; None = automatic), the paper it
    comes from, a one-line description, and whether it draws at random (uses the seed)."""

    name: str
    params: tuple[RuleParam, ...]
    source: str
    description: str
    random: bool = False

    @property
    def defaults(self) -> dict[str, Any]:
        """Parameter name -> default (None: chosen by :func:`auto_params`)."""
        return {p.name: p.default for p in self.params}


RULES: Mapping[str, RuleInfo] = MappingProxyType({r.name: r for r in (
    RuleInfo("top", (), "Nagaraj et al., TMLR 2025 (the paper's rule)",
             "per class, the quota with the best scores (the kept end), ties to the lower "
             "dataset index (what `select` does)"),
    RuleInfo("ccs", (RuleParam("beta", "share", None,
                               "share of each class's scored samples dropped from the bad end "
                               "(auto: from the budget, at least the estimated noise rate)"),
                     RuleParam("k", "count", 50, "number of equal-width score bins")),
             "Zheng et al., ICLR 2023 (coverage-centric coreset selection)",
             "per class, drop the worst beta share, then spread the quota over k equal-width "
             "score bins, smallest bins first, drawing uniformly within each", True),
    RuleInfo("filtered", (RuleParam("q", "share", None,
                                    "share of each class's scored samples dropped from the bad "
                                    "end (auto: the estimated label-noise rate)"),),
             "noise filtering, then random (cf. Pleiss et al., NeurIPS 2020)",
             "per class, drop the worst q share, then draw the quota uniformly among the "
             "rest", True),
    RuleInfo("band", (), "Xia et al., ICLR 2023 (Moderate coresets)",
             "per class, the quota whose scores lie closest to the class median, ties to the "
             "lower dataset index"),
    RuleInfo("beta", (RuleParam("c", "nonneg", 14.0,
                                "concentration: a + b = 2 + c (1 - f) (0: uniform)"),),
             "DUAL-style (Cho et al., 2025): Beta-density sampling",
             "per class, draw without replacement with probability proportional to a "
             "Beta(a, b) density at each sample's normalised rank (1 = best), mode 1 - f/2", True),
    RuleInfo("mix", (RuleParam("alpha", "share", None,
                               "share of the quota taken from the best end (auto: (1 + q)/2, "
                               "q the estimated noise rate)"),),
             "top-k / random mixture",
             "per class, round(alpha x quota) best, the rest uniformly among the class's other "
             "scored samples", True),
)})


def _rule(rule: str) -> RuleInfo:
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; expected one of {', '.join(RULES)}")
    return RULES[rule]


def _check_value(rule: str, p: RuleParam, value: Any) -> float | int:
    where = f"rule {rule}: parameter {p.name}"
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where} must be a number; got {value!r}") from None
    if p.kind == "share":
        if not 0.0 <= v < 1.0:  # NaN fails too
            raise ValueError(f"{where} must be in [0, 1); got {value}")
        return v
    if p.kind == "count":
        if not (math.isfinite(v) and v >= 1 and v == int(v)):
            raise ValueError(f"{where} must be an integer >= 1; got {value}")
        return int(v)
    if not (math.isfinite(v) and v >= 0):
        raise ValueError(f"{where} must be a finite number >= 0; got {value}")
    return v


def check_params(rule: str, params: Mapping[str, Any] | None) -> dict[str, Any]:
    """``params`` checked for ``rule`` (numbers or their text, as ``--rule-param`` gives
    them) and converted; ValueError naming the parameter, the value and the range, or, for a
    name the rule does not have, the rule's parameters."""
    info = _rule(rule)
    known = {p.name: p for p in info.params}
    out: dict[str, Any] = {}
    for name, value in (params or {}).items():
        if name not in known:
            have = ", ".join(known) if known else "none"
            raise ValueError(f"rule {rule} has no parameter {name!r} (its parameters: {have})")
        out[name] = _check_value(rule, known[name], value)
    return out


def _oriented(scores: Any, keep: str) -> np.ndarray:
    if keep not in KEEPS:
        raise ValueError(f"keep must be one of {', '.join(KEEPS)}; got {keep!r}")
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    return s if keep == "top" else -s


def estimate_noise_rate(scores: Any, *, keep: str = "top") -> float:
    """The share of samples a two-component 1-D Gaussian mixture over the finite scores puts
    in its low (bad-end) component, clipped to [0, 0.5]; 0 unless the two components are
    separated, which needs both

    - the mixture to beat one Gaussian by BIC (5 parameters against 2), and
    - a real dip in the data between them: a Gaussian kernel density estimate of the scores
      (Silverman's bandwidth) at the mixture density's lowest point between the two means is
      below 3/4 of the estimate at each of the two means (a flat or skewed unimodal score
      distribution, which a mixture can also fit better than one Gaussian, has no dip).

    Fitted by EM (numpy, deterministic: initialised at the quartiles) on the whole set; above
    50,000 scores on an evenly spaced subsample of the sorted values (its quantiles)."""
    x = _oriented(scores, keep)
    x = np.sort(x[np.isfinite(x)])
    if x.size > _EM_MAX:
        x = x[np.linspace(0, x.size - 1, _EM_MAX).round().astype(np.int64)]
    n = x.size
    if n < 10 or float(x.std()) == 0.0:
        return 0.0
    z = (x - x.mean()) / x.std()  # one Gaussian: mean 0, variance 1
    floor = 1e-4  # variance floor (standardised units): no collapse onto tied values
    mu = [float(np.quantile(z, 0.25)), float(np.quantile(z, 0.75))]
    var = [0.5, 0.5]
    w = [0.5, 0.5]
    ll, ll_old = -np.inf, -np.inf
    for _ in range(_EM_ITER):
        l0, l1 = ((math.log(w[j]) - 0.5 * math.log(2 * math.pi * var[j]))
                  - 0.5 * (z - mu[j]) ** 2 / var[j] for j in (0, 1))
        lse = np.maximum(l0, l1) + np.log1p(np.exp(-np.abs(l0 - l1)))  # np.logaddexp, faster
        ll = float(lse.sum())
        if ll - ll_old < 1e-7 * n:  # converged (per-sample log-likelihood)
            break
        ll_old = ll
        r0 = np.exp(l0 - lse)
        for j, r in ((0, r0), (1, 1.0 - r0)):
            nk = float(r.sum())
            if nk < 1e-9 * n:  # a component emptied: one Gaussian
                return 0.0
            w[j] = nk / n
            mu[j] = float((r * z).sum()) / nk  # not r @ z: a BLAS call, slow under load
            var[j] = max(float((r * (z - mu[j]) ** 2).sum()) / nk, floor)
    ll1 = -0.5 * n * (np.log(2 * np.pi) + 1.0)
    if not 5 * np.log(n) - 2 * ll < 2 * np.log(n) - 2 * ll1:  # BIC(2) < BIC(1)
        return 0.0
    lo, hi = (0, 1) if mu[0] <= mu[1] else (1, 0)
    grid = np.linspace(mu[lo], mu[hi], 201)
    mix = sum(w[j] / math.sqrt(2 * math.pi * var[j]) * np.exp(-0.5 * (grid - mu[j]) ** 2 / var[j])
              for j in (0, 1))
    valley = grid[int(np.argmin(mix))]
    iqr = float(np.subtract(*np.quantile(z, [0.75, 0.25])))
    h = 0.9 * min(1.0, iqr / 1.34 if iqr > 0 else 1.0) * n ** -0.2

    def kde(p: float) -> float:
        return float(np.exp(-0.5 * ((z - p) / h) ** 2).mean())

    if not kde(valley) < _DIP * min(kde(mu[lo]), kde(mu[hi])):
        return 0.0
    return float(np.clip(w[lo], 0.0, 0.5))


def ccs_beta_schedule(fraction: float) -> float:
    """CCS hard cutoff rate for budget f (pruning rate 1 - f), after the CCS paper's tuned
    values (0 at low pruning rates, rising at high ones): 0 for f >= 0.7, then linear to 0.3 at
    f = 0.1, and 0.3 below."""
    f = check_fraction(fraction)
    t = (_CCS_F_HI - f) / (_CCS_F_HI - _CCS_F_LO)
    return float(_CCS_BETA_MAX * min(1.0, max(0.0, t)))


def beta_shape(fraction: float, c: float) -> tuple[float, float]:
    """(a, b) of the ``beta`` rule's density over normalised rank (1 = best) for budget f and
    concentration c: mode 1 - f/2 (the middle of the band top-k would keep) and a + b =
    2 + c (1 - f), i.e. a = 1 + (1 - f/2) c (1 - f), b = 1 + (f/2) c (1 - f). Small budgets
    concentrate near the best end (c = 14: a + b -> 16 as f -> 0, DUAL's a + b); larger ones
    move the mode to the middle and flatten (f = 1: uniform)."""
    f = check_fraction(fraction)
    kappa = float(c) * (1.0 - f)
    return 1.0 + (1.0 - f / 2.0) * kappa, 1.0 + (f / 2.0) * kappa


def _effective_fraction(labels: np.ndarray, fraction: float | None, per_class: int | None) -> float:
    if fraction is not None:
        return check_fraction(fraction)
    quotas = class_quotas(labels, per_class=per_class)
    return max(min(sum(quotas.values()) / max(labels.shape[0], 1), 1.0), 1e-12)


def resolve_params(rule: str, scores: Any, labels: Any, *, fraction: float | None = None,
                   per_class: int | None = None, keep: str = "top",
                   params: Mapping[str, Any] | None = None
                   ) -> tuple[dict[str, Any], tuple[str, ...]]:
    """(every parameter of ``rule`` as used, names of those chosen automatically): the
    explicit ``params`` (checked), the rule's defaults, and for the rest the automatic choice
    (:func:`auto_params`): q = the estimated noise rate q^ (:func:`estimate_noise_rate`),
    ccs beta = max(:func:`ccs_beta_schedule` (f), q^), mix alpha = (1 + q^) / 2. With
    ``per_class``, f is the share of all samples the quotas keep."""
    info = _rule(rule)
    given = check_params(rule, params)
    y = np.asarray(labels).reshape(-1)
    used: dict[str, Any] = {}
    auto: list[str] = []
    q_hat: float | None = None
    for p in info.params:
        if p.name in given:
            used[p.name] = given[p.name]
            continue
        if p.default is not None:
            used[p.name] = p.default
            continue
        if q_hat is None:
            q_hat = round(estimate_noise_rate(scores, keep=keep), 4)
        f = _effective_fraction(y, fraction, per_class)
        if p.name == "q":
            used["q"] = q_hat
        elif p.name == "beta":
            used["beta"] = round(max(ccs_beta_schedule(f), q_hat), 4)
        elif p.name == "alpha":
            used["alpha"] = round((1.0 + q_hat) / 2.0, 4)
        else:  # pragma: no cover - a registry entry without its automatic rule
            raise AssertionError(f"no automatic choice for {rule}.{p.name}")
        auto.append(p.name)
    return used, tuple(auto)


def auto_params(rule: str, scores: Any, labels: Any, *, fraction: float | None = None,
                per_class: int | None = None, keep: str = "top") -> dict[str, Any]:
    """Every parameter of ``rule``, chosen from the training ``scores`` (oriented by
    ``keep``) and the budget only: see :func:`resolve_params`. Deterministic."""
    return resolve_params(rule, scores, labels, fraction=fraction, per_class=per_class,
                          keep=keep)[0]


def _best_first(o: np.ndarray, ids: np.ndarray, members: np.ndarray) -> np.ndarray:
    """Scored ``members``, best (highest oriented score) first; ties to the lower index."""
    m = members[np.isfinite(o[members])]
    return m[np.lexsort((ids[m], -o[m]))]


def _uniform(rng: np.random.Generator, pool: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
    pool = pool[np.argsort(ids[pool], kind="stable")]  # draw from dataset-index order
    return rng.choice(pool, size=k, replace=False)


def select_by_rule(scores: Any, labels: Any, *, rule: str = "top", fraction: float | None = None,
                   per_class: int | None = None, keep: str = "top", seed: int = 0,
                   dataset_indices: Any = None,
                   params: Mapping[str, Any] | None = None) -> np.ndarray:
    """A class-balanced coreset by ``rule`` (:data:`RULES`) from ``scores``.

    Args:
        scores: [N] float scores (NaN = no score; never selected).
        labels: [N] int classes.
        rule: ``top`` (default, the paper's), ``ccs``, ``filtered``, ``band``, ``beta``, ``mix``.
        fraction / per_class: the quotas of :func:`cldfast.selection.select`.
        keep: the end of the score the rule treats as best, ``top`` or ``bottom``
            (``METHODS[name].rule_keep``).
        seed: seed of the random rules (``ccs``, ``filtered``, ``beta``, ``mix``).
        dataset_indices: [N] original dataset index of each entry (default 0..N-1).
        params: the rule's parameters; those left out are chosen by :func:`auto_params`
            (None: all automatic).

    Returns the selected original dataset indices, sorted int64. ValueError when a class has
    fewer scored samples than its quota, or on a bad rule, parameter or keep.
    """
    info = _rule(rule)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1)
    if y.shape != s.shape:
        raise ValueError(f"labels has {y.shape[0]} entries but scores has {s.shape[0]}")
    o = _oriented(s, keep)
    ids = check_dataset_indices(dataset_indices, s.shape[0])
    quotas = class_quotas(y, fraction=fraction, per_class=per_class)
    finite = np.isfinite(s)
    members_of = {c: np.flatnonzero(y == c) for c in quotas}
    for c, quota in quotas.items():
        m = members_of[c]
        check_scored(c, quota, int(finite[m].sum()), int(m.shape[0]), fraction=fraction,
                     per_class=per_class)
    used, _ = resolve_params(info.name, o, y, fraction=fraction, per_class=per_class,
                             params=params)
    if info.name == "top":
        return select(s, y, fraction=fraction, per_class=per_class, order=keep,
                      dataset_indices=ids, seed=seed)
    if info.name == "ccs":  # the worst end of the oriented score is the low one
        return ccs_select(o, y, fraction=fraction, per_class=per_class, hard="bottom",
                          beta=used["beta"], strata=used["k"], class_balanced=True,
                          dataset_indices=ids, seed=seed)
    if info.name == "beta":
        a, b = beta_shape(_effective_fraction(y, fraction, per_class), used["c"])
    rng = np.random.default_rng(seed)
    picked = []
    for c, quota in quotas.items():
        ranked = _best_first(o, ids, members_of[c])
        n = ranked.shape[0]
        if info.name == "filtered":  # drop the worst first, as ccs_select does
            n_drop = min(int(math.floor(used["q"] * n)), n - quota)
            worst_first = ranked[np.lexsort((ids[ranked], o[ranked]))]
            chosen = _uniform(rng, worst_first[n_drop:], ids, quota)
        elif info.name == "band":
            dist = np.abs(o[ranked] - np.median(o[ranked])) if n else np.zeros(0)
            chosen = ranked[np.lexsort((ids[ranked], dist))[:quota]]
        elif info.name == "beta":
            u = 1.0 - (np.arange(n) + 0.5) / max(n, 1)  # normalised rank: 1 = best
            log_w = (a - 1.0) * np.log(u) + (b - 1.0) * np.log1p(-u)
            # Weighted sampling without replacement (successive draws proportional to w) as
            # the quota smallest keys E / w, E ~ Exp(1) (Efraimidis & Spirakis), in log space.
            key = np.log(rng.exponential(size=n)) - log_w
            chosen = ranked[np.lexsort((ids[ranked], key))[:quota]]
        else:  # mix
            n_top = int(math.floor(used["alpha"] * quota + 0.5))
            rest = _uniform(rng, ranked[n_top:], ids, quota - n_top)
            chosen = np.concatenate([ranked[:n_top], rest])
        picked.append(ids[chosen])
    out = np.concatenate(picked) if picked else np.zeros(0, np.int64)
    return np.sort(out.astype(np.int64))


def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def rules_help(width: int = 88) -> str:
    """The rules and their parameters, one block each (``cldfast select --help``)."""
    import textwrap

    def wrap(text: str, indent: str, more: str) -> list[str]:
        return textwrap.wrap(text, width, initial_indent=indent, subsequent_indent=more)

    lines = ["selection rules (--rule NAME; parameters as --rule-param key=value):"]
    for r in RULES.values():
        lines += wrap(f"{r.name}: {r.description} [{r.source}]", "  ", "      ")
        for p in r.params:
            default = "automatic" if p.default is None else f"default {_fmt(p.default)}"
            rng = {"share": "in [0, 1)", "count": "integer >= 1", "nonneg": ">= 0"}[p.kind]
            lines += wrap(f"{p.name} ({rng}, {default}): {p.help}", "      ", "        ")
    return "\n".join(lines)
