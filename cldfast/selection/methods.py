"""The one registry of selection methods, and the one score look-up.

:data:`METHODS` names every method ``cldfast select``, ``cldfast bench`` and the DeepCore
adapter know: the scores-file array it ranks, the end a selection keeps, the end CCS treats
as hard, and where the score comes from (see :mod:`cldfast.scores.recorders` for the
definitions). :func:`score_array` is the one place a method's values are read from a scores
file; :func:`method_coreset` turns a method, a strategy and a fraction into a coreset
(``select_for_method`` is its earlier name).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..defaults import CCS_BETA, CCS_STRATA
from ..io import ScoresFile
from .balanced import ccs_select, check_fraction, class_quotas, select_by_order
from .rules import RULES, select_by_rule

__all__ = ["MethodInfo", "METHODS", "canonical_method", "STRATEGIES", "RULE_STRATEGIES",
           "applicable", "score_array", "method_coreset", "select_for_method"]

#: ``rule-<name>``: a class-balanced coreset by the selection rule ``<name>``
#: (:mod:`cldfast.selection.rules`, automatic parameters) over the method's score; the
#: ``top`` rule is ``balanced``.
RULE_STRATEGIES = tuple(f"rule-{name}" for name in RULES if name != "top")
STRATEGIES = ("balanced", "global", "ccs") + RULE_STRATEGIES


@dataclass(frozen=True)
class MethodInfo:
    """One selection method.

    name: canonical name; key: the scores-file array it ranks (``"scores"`` = CLD, else an
    ``extra`` array; ``None`` for random); order: the end a selection keeps (``top``,
    ``bottom`` or ``random``); hard: the end CCS treats as hardest (``None``: CCS does not
    apply); kind: ``cld``, ``random``, ``recorded`` (training logits), ``final`` (one pass
    with the final model) or ``geometry`` (greedy on embeddings of that pass);
    passes: extra passes over the training split; reference: the paper.
    """

    name: str
    key: str | None
    order: str
    hard: str | None
    kind: str
    passes: int
    reference: str

    @property
    def rule_keep(self) -> str:
        """The end the selection rules (:mod:`cldfast.selection.rules`) treat as best: away
        from the hard end, where mislabeled and atypical samples gather (CLD: top, AUM: top,
        forgetting: bottom), so that ``ccs`` and ``filtered`` drop the hard end, as CCS does;
        the kept end for a score without a hard end. The ``top`` rule keeps :attr:`order`."""
        if self.hard is None:
            return self.order
        return "top" if self.hard == "bottom" else "bottom"


METHODS: dict[str, MethodInfo] = {m.name: m for m in (
    MethodInfo("cld", "scores", "top", "bottom", "cld", 0, "Nagaraj et al., TMLR 2025"),
    MethodInfo("random", None, "random", None, "random", 0, "uniform, seeded"),
    MethodInfo("forgetting", "forgetting", "top", "top", "recorded", 0, "Toneva et al., ICLR 2019"),
    MethodInfo("aum", "aum", "bottom", "bottom", "recorded", 0, "Pleiss et al., NeurIPS 2020"),
    MethodInfo("el2n", "el2n", "top", "top", "recorded", 0, "Paul et al., NeurIPS 2021"),
    MethodInfo("entropy", "entropy", "top", "top", "recorded", 0, "Coleman et al., ICLR 2020"),
    MethodInfo("margin", "margin", "bottom", "bottom", "recorded", 0, "Coleman et al., ICLR 2020"),
    MethodInfo("least-confidence", "least_confidence", "top", "top", "recorded", 0,
               "Coleman et al., ICLR 2020"),
    MethodInfo("variability", "variability", "top", "top", "recorded", 0,
               "Swayamdipta et al., EMNLP 2020"),
    MethodInfo("confidence", "confidence", "bottom", "bottom", "recorded", 0,
               "Swayamdipta et al., EMNLP 2020"),
    MethodInfo("grand", "grand", "top", "top", "final", 1, "Paul et al., NeurIPS 2021"),
    MethodInfo("herding", "herding", "top", None, "geometry", 1, "Welling, ICML 2009"),
    MethodInfo("kcenter", "kcenter", "top", None, "geometry", 1, "Sener & Savarese, ICLR 2018"),
)}

_ALIASES = {
    "uniform": "random", "forgetting-events": "forgetting", "leastconfidence": "least-confidence",
    "least_confidence": "least-confidence", "lc": "least-confidence",
    "cartography-variability": "variability", "cartography-confidence": "confidence",
    "k-center": "kcenter", "kcentergreedy": "kcenter", "k-center-greedy": "kcenter",
    "kcenter-greedy": "kcenter", "k_center": "kcenter",
}


def canonical_method(name: str) -> str:
    """The canonical name of a method (case-insensitive; e.g. ``kCenterGreedy`` -> ``kcenter``)."""
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in METHODS:
        raise ValueError(f"unknown method {name!r}; expected one of {', '.join(METHODS)}")
    return key


def applicable(method: str, strategy: str) -> bool:
    """Whether ``strategy`` makes sense for ``method`` (CCS and the selection rules need a
    difficulty score: not random, not the geometry methods' pick orders)."""
    needs_score = strategy == "ccs" or strategy in RULE_STRATEGIES
    return not (needs_score and METHODS[canonical_method(method)].hard is None)


def score_array(sf: ScoresFile, method: str, *, global_order: bool = False,
                hint: str | None = None) -> np.ndarray | None:
    """[N] values ``method`` ranks the scores file's training samples by (None for random).

    ``global_order``: a geometry method's pick order over all samples (``<key>_global``)
    instead of within each class. ``hint``: how to record the missing array, for the error.
    """
    info = METHODS[canonical_method(method)]
    if info.kind == "random":
        return None
    key = f"{info.key}_global" if (info.kind == "geometry" and global_order) else info.key
    if key == "scores":
        return sf.scores
    if key in sf.extra:
        return sf.extra[key]
    stored = ", ".join(sorted(k for k in sf.extra if k != "num_differences")) or "none"
    raise ValueError(f"the scores file has no {key!r} scores for method {info.name} (stored: "
                     f"cld, {stored}); {hint or f'record it with `cldfast bench --methods {info.name}`'}")


def method_coreset(sf: ScoresFile, method: str, strategy: str, fraction: float, *,
                   seed: int = 0, ccs_beta: float = CCS_BETA, ccs_strata: int = CCS_STRATA,
                   order: str | None = None) -> np.ndarray:
    """Original dataset indices of ``method``'s coreset from a scores file.

    ``balanced`` / ``global``: rank by the method's score and keep ``order`` (default: the
    method's own end, :data:`METHODS`), within each class or over all samples; random draws
    uniformly (seeded). ``ccs``: :func:`cldfast.selection.ccs_select` with the method's hard
    end. ``rule-<name>``: :func:`cldfast.selection.select_by_rule` with automatic parameters,
    treating the end away from the method's hard end as best (:attr:`MethodInfo.rule_keep`).
    Geometry methods use their stored pick order (``<name>_global`` for ``global``).
    """
    info = METHODS[canonical_method(method)]
    fraction = check_fraction(fraction)
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}; got {strategy!r}")
    if not applicable(info.name, strategy):
        raise ValueError(f"strategy {strategy!r} needs a difficulty score; {info.name} has none")
    balanced = strategy != "global"
    if info.kind == "random":
        return select_by_order(np.zeros(sf.labels.shape[0]), sf.labels, fraction=fraction,
                               order="random", class_balanced=balanced,
                               dataset_indices=sf.train_indices, seed=seed)
    scores = score_array(sf, info.name, global_order=not balanced,
                         hint="re-run the bench proxy with this method")
    if info.kind == "geometry":
        need = (sum(class_quotas(sf.labels, fraction=fraction).values()) if balanced
                else int(math.floor(fraction * sf.labels.shape[0] + 0.5)))
        if int(np.isfinite(scores).sum()) < need:
            raise ValueError(f"{info.key} holds picks for a smaller fraction than {fraction}; "
                             "re-run the bench proxy with this fraction")
    if strategy in RULE_STRATEGIES:
        return select_by_rule(scores, sf.labels, rule=strategy[len("rule-"):], fraction=fraction,
                              keep=info.rule_keep, seed=seed, dataset_indices=sf.train_indices)
    if strategy == "ccs":
        return ccs_select(scores, sf.labels, fraction=fraction, hard=info.hard, beta=ccs_beta,
                          strata=ccs_strata, dataset_indices=sf.train_indices, seed=seed)
    return select_by_order(scores, sf.labels, fraction=fraction, order=order or info.order,
                           class_balanced=balanced, dataset_indices=sf.train_indices, seed=seed)


#: The earlier name of :func:`method_coreset`, kept for existing code.
select_for_method = method_coreset
