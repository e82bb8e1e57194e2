"""A :class:`~cldfast.core.tracker.CLDTracker` as a :class:`cldfast.training.BatchRecorder`:
CLD from the training pass's own (train-mode) losses, the cheap approximation of the paper's
eval-mode estimator (``cldfast.training.fit(tracking=)`` runs that one)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from .tracker import CLDTracker

__all__ = ["TrackerRecorder"]


class TrackerRecorder:
    """Records every training batch's cross-entropy, from its (detached) logits, into
    ``tracker``. The loop still closes each tracked epoch: ``record_validation`` with the
    epoch's validation losses, then :meth:`on_epoch_end` (``end_epoch``).

    Its checkpoint state is the tracker's (``state_key`` ``"tracker"``)."""

    state_key = "tracker"

    def __init__(self, tracker: "CLDTracker") -> None:
        self.tracker = tracker

    def on_batch(self, positions: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor,
                 epoch: int) -> None:
        self.tracker.record(positions, logits=logits.detach(), targets=targets)

    def on_epoch_end(self, epoch: int) -> None:
        """Close the tracked epoch (``end_epoch``). Its validation losses must be in first;
        without them this raises rather than let two epochs run together (in
        ``cldfast.training.fit``, pass the tracker as ``tracking=`` instead, which runs the
        validation and eval-mode passes for it)."""
        self.tracker.end_epoch()

    def score_arrays(self) -> dict[str, np.ndarray]:
        """``{"cld": [N] float64, "num_differences": [N] int64}``."""
        return {"cld": self.tracker.scores().double().cpu().numpy(),
                "num_differences": self.tracker.num_differences().cpu().numpy().astype(np.int64)}

    def state_dict(self) -> dict[str, Any]:
        return self.tracker.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tracker.load_state_dict(state)
