"""Loss trajectories kept beside the streaming CLD state, for studies of the estimator.

:class:`cldfast.CLDTracker` folds every loss into O(N) state and forgets it. A study of CLD
itself (which checkpoints to track, how the estimators compare, what the per-class
validation trajectories look like) needs the losses of every checkpoint:
:class:`TrajectoryTracker` is a tracker that also keeps them, one dense row per checkpoint,
so that the same run gives the streamed scores and the trajectories to replay through
:func:`cldfast.cld_from_trajectories` (e.g. every 2nd checkpoint only).

It is used wherever a tracker is (``cldfast.training.Tracking``, a hand-written loop):
every loss that reaches the tracker through :meth:`~TrajectoryTracker.record` (both forms)
and :meth:`~TrajectoryTracker.record_validation` is kept too.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..core.tracker import CLDTracker

__all__ = ["TrajectoryTracker"]


def _as_numpy(values: Any) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)


class TrajectoryTracker(CLDTracker):
    """A :class:`~cldfast.CLDTracker` that also keeps the losses of every checkpoint.

    Takes the tracker's arguments and computes the same scores. In addition, each
    :meth:`end_epoch` closes one row of :meth:`train_losses` and of :meth:`val_losses`:
    the mean of the finite losses recorded for each sample since the previous checkpoint
    (the tracker's own rule for a sample recorded several times in an epoch), as float32,
    NaN where the sample had no finite loss. With every sample recorded once per
    checkpoint, the rows hold the recorded float32 losses as they were.

    Costs 4 bytes per training and validation sample per checkpoint in host memory, on top
    of the tracker's O(N) state: meant for studies, not for training at scale. One process
    only (refused under torch.distributed, where each rank sees only its own batches). The
    rows are not part of :meth:`state_dict`: a run resumed from a checkpoint keeps only the
    rows closed after it resumed.

    Example::

        tracker = TrajectoryTracker(train_labels, val_labels)
        ...  # record / record_validation / end_epoch as with CLDTracker
        L, V = tracker.train_losses(), tracker.val_losses()   # [T, N], [T, Q]
        every_2nd = cldfast.cld_from_trajectories(L[1::2], V[1::2], train_labels, val_labels)
    """

    def __init__(self, train_labels: Any, val_labels: Any, **kwargs: Any) -> None:
        super().__init__(train_labels, val_labels, **kwargs)
        if self.distributed:
            raise ValueError("TrajectoryTracker keeps dense trajectories in one process; under "
                             "torch.distributed use CLDTracker (distributed=False to override "
                             "the detection on a single rank)")
        # Open checkpoint: float64 sums and counts of the finite losses per sample.
        self._open_train = np.zeros((2, self.num_samples), dtype=np.float64)
        self._open_val = np.zeros((2, self.num_val), dtype=np.float64)
        self._train_rows: list[np.ndarray] = []
        self._val_rows: list[np.ndarray] = []

    @staticmethod
    def _add(open_sums: np.ndarray, indices: Any, losses: Any) -> None:
        idx = _as_numpy(indices).astype(np.int64, copy=False).reshape(-1)
        val = _as_numpy(losses).astype(np.float64, copy=False).reshape(-1)
        # Out-of-range positions are left to the tracker, which reports them at end_epoch().
        ok = np.isfinite(val) & (idx >= 0) & (idx < open_sums.shape[1])
        np.add.at(open_sums[0], idx[ok], val[ok])
        np.add.at(open_sums[1], idx[ok], 1.0)

    @staticmethod
    def _close(open_sums: np.ndarray) -> np.ndarray:
        total, count = open_sums
        row = np.full(total.shape, np.nan, dtype=np.float32)
        seen = count > 0
        row[seen] = (total[seen] / count[seen]).astype(np.float32)
        open_sums[:] = 0.0
        return row

    def record(self, indices: Any, losses: torch.Tensor | None = None, *,
               logits: torch.Tensor | None = None,
               targets: torch.Tensor | None = None) -> torch.Tensor | None:
        """:meth:`CLDTracker.record`, keeping the losses (in the fused form: the returned
        cross-entropy)."""
        out = super().record(indices, losses, logits=logits, targets=targets)
        self._add(self._open_train, indices, losses if losses is not None else out)
        return out

    def record_validation(self, losses: torch.Tensor, indices: Any = None) -> None:
        """:meth:`CLDTracker.record_validation`, keeping the losses."""
        super().record_validation(losses, indices)
        where = np.arange(self.num_val) if indices is None else indices
        self._add(self._open_val, where, losses)

    def end_epoch(self) -> int:
        """:meth:`CLDTracker.end_epoch`, then close the checkpoint's rows."""
        out = super().end_epoch()
        self._train_rows.append(self._close(self._open_train))
        self._val_rows.append(self._close(self._open_val))
        return out

    def discard_epoch(self) -> None:
        """:meth:`CLDTracker.discard_epoch`: also drops the open checkpoint's losses."""
        super().discard_epoch()
        self._open_train[:] = 0.0
        self._open_val[:] = 0.0

    @property
    def num_rows(self) -> int:
        """Checkpoints closed so far (rows of :meth:`train_losses`)."""
        return len(self._train_rows)

    def train_losses(self) -> np.ndarray:
        """[checkpoints, N] float32: each training sample's loss per closed checkpoint
        (NaN: not recorded then). A new array."""
        if not self._train_rows:
            return np.zeros((0, self.num_samples), dtype=np.float32)
        return np.stack(self._train_rows)

    def val_losses(self) -> np.ndarray:
        """[checkpoints, Q] float32: each validation sample's loss per closed checkpoint
        (NaN: not recorded then). A new array."""
        if not self._val_rows:
            return np.zeros((0, self.num_val), dtype=np.float32)
        return np.stack(self._val_rows)
