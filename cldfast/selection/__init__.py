"""From scores to coresets: class-balanced selection and CCS (``balanced``), the one method
registry and score look-up (``methods``), and the geometry methods (``geometry``: Herding,
k-Center Greedy; imported on use, they need numba from the ``bench`` extra)."""

from .balanced import ORDERS, ccs_select, check_fraction, check_fractions, class_quotas, select
from .methods import (METHODS, STRATEGIES, MethodInfo, applicable, canonical_method, score_array,
                      select_for_method)

__all__ = ["ORDERS", "select", "ccs_select", "class_quotas", "check_fraction", "check_fractions",
           "METHODS", "STRATEGIES", "MethodInfo", "applicable", "canonical_method", "score_array",
           "select_for_method"]
