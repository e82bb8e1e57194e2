"""The contents of a tracker's scores file, gathered to rank 0: the scores, the number of
differences behind each, the labels and the facts of the run. :func:`cldfast.io.save_scores`
writes them (``CLDTracker.save``, ``cldfast.pipeline`` and the framework callbacks)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from .. import _core
from ..io import ScoresFile

if TYPE_CHECKING:
    from .tracker import CLDTracker

__all__ = ["tracker_scores_file"]


def tracker_scores_file(tracker: "CLDTracker", *, train_indices: Any = None,
                        val_indices: Any = None, metadata: Mapping[str, Any] | None = None,
                        extra: Mapping[str, Any] | None = None) -> ScoresFile | None:
    """The scores file of ``tracker`` (None on ranks other than 0: under torch.distributed
    every rank must call it). ``train_indices``: [N] original dataset index of each training
    position (default: the positions); ``val_indices``: [Q] original indices of the
    validation samples (default: unknown, -1); ``metadata`` is added to (and may override)
    the tracker's facts; ``extra``: further named [N] arrays, after ``num_differences``."""
    gather = "rank0" if tracker.distributed else "all"
    scores = tracker.scores(gather=gather)
    ndiff = tracker.num_differences(gather=gather)
    labels = tracker.train_labels(gather=gather)
    if scores is None:
        return None
    n, q = tracker.num_samples, tracker.num_val
    va = np.full(q, -1) if val_indices is None else np.asarray(val_indices)
    if va.shape != (q,) or va.dtype.kind not in "iu":
        raise ValueError(f"val_indices must be {q} integers; got shape {va.shape} "
                         f"and dtype {va.dtype}")
    summary = tracker.summary()
    meta = {"checkpoints": tracker.checkpoint, "per_class": tracker.per_class,
            "precision": tracker.precision, "version": _core.__version__,
            "num_classes": tracker.num_classes, "world_size": tracker.world_size,
            **{k: summary[k] for k in ("nonfinite_train_losses", "nonfinite_val_losses",
                                       "classes_without_validation")},
            **dict(metadata or {})}
    return ScoresFile(scores.double().cpu().numpy(), labels.cpu().numpy().astype(np.int64),
                      np.arange(n) if train_indices is None else np.asarray(train_indices),
                      va.astype(np.int64), meta,
                      {"num_differences": ndiff.cpu().numpy().astype(np.int64),
                       **{k: np.asarray(v) for k, v in (extra or {}).items()}})
