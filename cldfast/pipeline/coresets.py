"""The selection workflow: a coreset from a scores file. :func:`cld_coreset` picks by CLD
from a loaded file; :func:`write_coreset` (``cldfast select``) reads a file, picks by any
stored method and selection rule, and writes the coreset's original dataset indices.

``select_coreset`` and ``select_to_file`` are the earlier names of the two functions and
stay importable."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ..io import ScoresFile, atomic_write, load_scores, save_indices
from ..selection.balanced import ORDERS, select_by_order
from ..selection.methods import METHODS, canonical_method, score_array
from ..selection.rules import RULES, resolve_params, select_by_rule

__all__ = ["Selection", "cld_coreset", "write_coreset", "select_coreset", "select_to_file"]


def _require_scored(sf: ScoresFile, values: np.ndarray, method: str) -> None:
    """Refuse a selection from ``values`` (``method``'s scores in ``sf``) when no sample has
    one, saying why as far as the file's metadata tells."""
    if np.isfinite(np.asarray(values, dtype=np.float64)).any():
        return
    meta = sf.metadata or {}
    if method in ("cld", "random"):  # random draws among the CLD-scored samples
        checkpoints = meta.get("checkpoints")  # the file's count of tracked epochs
        if checkpoints is None and isinstance(meta.get("tracked_epochs"), (list, tuple)):
            checkpoints = len(meta["tracked_epochs"])
        if checkpoints is not None and int(checkpoints) < 3:
            why = (f"the proxy tracked {int(checkpoints)} epoch(s), 3 are needed (CLD "
                   "correlates at least 2 loss differences per sample); track more epochs")
        elif checkpoints is not None:
            why = (f"the proxy tracked {int(checkpoints)} epochs, but no sample has finite "
                   "losses at the end of 3 of them (non-finite training losses: "
                   f"{meta.get('nonfinite_train_losses', 'not recorded')})")
        else:
            why = ("the file does not record how many epochs were tracked; CLD needs "
                   "finite losses at the end of 3 or more tracked epochs per sample")
        what = "a CLD score"
    else:
        why = f"its {method!r} array holds only NaN"
        what = f"a {method!r} score"
    raise ValueError(f"no sample has {what} ({values.shape[0]} samples in the file, all "
                     f"NaN): {why}. Nothing selected")


def cld_coreset(scores: ScoresFile, *, fraction: float | None = None,
                per_class: int | None = None, order: str = "top", class_balanced: bool = True,
                seed: int = 0) -> np.ndarray:
    """Original dataset indices of the CLD coreset of a loaded scores file (the ``order``
    end of each class's CLD ranking; ``select_coreset`` is this function's earlier name).
    ValueError when no sample is scored, or a class has fewer scored samples than its quota
    (:func:`cldfast.selection.select_by_order`)."""
    _require_scored(scores, scores.scores, "cld")
    return select_by_order(scores.scores, scores.labels, fraction=fraction, per_class=per_class,
                           order=order, class_balanced=class_balanced,
                           dataset_indices=scores.train_indices, seed=seed)


class Selection(NamedTuple):
    """What :func:`write_coreset` wrote: the file, the original dataset indices, the end of
    the score kept (``random`` for a uniform draw), the rule and its parameters (``auto``:
    the names chosen automatically)."""

    path: Path
    indices: np.ndarray
    order: str
    rule: str = "top"
    params: dict[str, Any] = {}
    auto: tuple[str, ...] = ()


def write_coreset(scores: str | Path, *, method: str = "cld", fraction: float | None = None,
                  per_class: int | None = None, order: str | None = None,
                  class_balanced: bool = True, seed: int = 0,
                  output: str | Path | None = None, rule: str = "top",
                  rule_params: dict[str, Any] | None = None) -> Selection:
    """Select a coreset from the scores file ``scores`` by ``method`` (CLD or any other
    stored score, :data:`cldfast.selection.METHODS`) and write its ORIGINAL dataset indices:
    what ``cldfast select`` does (``select_to_file`` is this function's earlier name).

    ``order``: default the method's own end (top for CLD); the random method draws uniformly
    whatever ``order`` says. ``rule``: how the kept end is used (:data:`cldfast.selection.
    RULES`; ``top``, the paper's, by default), with ``rule_params`` (those left out are
    chosen from the training scores and the budget, :func:`cldfast.selection.auto_params`).
    ``output``: a .npy file, or .txt for one index per line; default beside the scores file,
    named after the selection (``indices_top_f0.1.npy``, ``indices_forgetting_top_k5_global.npy``,
    ``indices_random_f0.1.npy``, ``indices_ccs_f0.1.npy``, ...).

    ValueError, nothing written, when no sample has a score (e.g. a proxy that tracked fewer
    than 3 epochs), a class has fewer scored samples than its quota
    (:func:`cldfast.selection.select_by_order`), or the rule does not fit the request.
    """
    if not class_balanced and per_class is not None:
        raise ValueError("a global selection needs a fraction (a per-class count has no meaning "
                         "without classes)")
    info = METHODS[canonical_method(method)]
    rule_info = RULES.get(rule)
    if rule_info is None:
        raise ValueError(f"rule must be one of {', '.join(RULES)}; got {rule!r}")
    by_rule = rule != "top" or bool(rule_params)
    if by_rule:
        if not class_balanced:
            raise ValueError(f"rule {rule!r} is class-balanced; a global selection needs rule 'top'")
        if info.kind == "random":
            raise ValueError(f"rule {rule!r} needs a score; the random method has none")
    sf = load_scores(scores)
    # The top rule keeps the method's own end; the other rules its rule_keep end.
    order = order or (info.rule_keep if by_rule else info.order if info.order in ORDERS else "top")
    if info.kind == "random":
        order = "random"  # a uniform draw: no end of any score is kept
    values = score_array(sf, info.name)
    values = sf.scores if values is None else values  # random: uniform among CLD-scored samples
    _require_scored(sf, values, info.name)
    size = f"f{fraction:g}" if fraction is not None else f"k{per_class}"
    name = "indices" if info.name == "cld" else f"indices_{info.name}"
    params, auto = {}, ()
    if by_rule:
        if order not in ("top", "bottom"):
            raise ValueError(f"rule {rule!r} keeps the top or the bottom end of a score; got "
                             f"order {order!r}")
        params, auto = resolve_params(rule, values, sf.labels, fraction=fraction,
                                      per_class=per_class, keep=order, params=rule_params or {})
        idx = select_by_rule(values, sf.labels, rule=rule, fraction=fraction, per_class=per_class,
                             keep=order, seed=seed, dataset_indices=sf.train_indices,
                             params=params)
        end = "" if order == info.rule_keep else f"_{order}"  # another end than the default
        stem = f"{name}_{rule}{end}_{size}"
    else:
        idx = select_by_order(values, sf.labels, fraction=fraction, per_class=per_class,
                              order=order, class_balanced=class_balanced,
                              dataset_indices=sf.train_indices, seed=seed)
        # random: the same draw as CLD's --order random
        stem = f"indices_random_{size}" if info.kind == "random" else f"{name}_{order}_{size}"
    path = Path(output) if output else Path(scores).with_name(
        f"{stem}{'' if class_balanced else '_global'}.npy")
    if path.suffix == ".txt":
        atomic_write(path, lambda p: np.savetxt(p, idx, fmt="%d"))
    else:
        save_indices(path, idx)
    return Selection(path, idx, order, rule, params, tuple(auto))


#: The earlier name of :func:`cld_coreset`, kept for existing code.
select_coreset = cld_coreset
#: The earlier name of :func:`write_coreset`, kept for existing code.
select_to_file = write_coreset
