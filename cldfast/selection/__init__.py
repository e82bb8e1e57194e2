"""From scores to coresets: class-balanced selection by an end of the ranking
(:func:`select_by_order`, earlier ``select``) and CCS (``balanced``), the one method registry,
score look-up and a method's coreset from a scores file (``methods``: :func:`method_coreset`,
earlier ``select_for_method``), the selection rules beyond top-k (``rules``:
CCS, noise-filtered random, a median band, DUAL-style Beta sampling, a top/random mix), and the geometry methods (``geometry``: Herding,
k-Center Greedy; imported on use, they need numba from the ``bench`` extra)."""

from .balanced import (ORDERS, ccs_select, check_fraction, check_fractions, class_quotas, select,
                       select_by_order)
from .methods import (METHODS, STRATEGIES, MethodInfo, applicable, canonical_method,
                      method_coreset, score_array, select_for_method)
from .rules import RULES, RuleInfo, RuleParam, auto_params, estimate_noise_rate, select_by_rule

__all__ = ["ORDERS", "select_by_order", "select", "ccs_select", "class_quotas", "check_fraction",
           "check_fractions", "METHODS", "STRATEGIES", "MethodInfo", "applicable",
           "canonical_method", "score_array", "method_coreset", "select_for_method", "RULES",
           "RuleInfo", "RuleParam", "select_by_rule", "auto_params", "estimate_noise_rate"]
