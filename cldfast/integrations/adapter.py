"""The framework-independent core of the Lightning and Hugging Face callbacks.

:class:`CLDAdapter` owns everything the two callbacks share: building the
:class:`~cldfast.CLDTracker`, which epochs are tracked, the eval-mode passes over the
training split and V (losses all-gathered under torch.distributed, so every process holds
the same whole tracker), closing a tracked epoch, the metrics reported to the framework's
logger, the resumable state and writing the scores file. The framework classes only
translate their hooks into these calls, as Lightning's own callbacks do.

Epoch accounting. ``epochs_done`` counts the epochs whose end the adapter has handled
(tracked or not) and goes into the saved state. On resume the framework says how many
epochs its resume checkpoint finished; :meth:`CLDAdapter.resume_check` compares the two,
runs the eval pass of an epoch whose end the resume checkpoint was written just before (the
restored model is that epoch's final model), and refuses anything else. A resumed run therefore gives the
scores of an uninterrupted one, or an error; never a silently restarted tracker.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch

from ..core import distributed as ddist
from ..core.tracker import CLDTracker
from ..defaults import PRECISION

__all__ = ["CLDAdapter", "MODES", "STATE_VERSION"]

log = logging.getLogger("cldfast")

MODES = ("eval", "train")
STATE_VERSION = 1  # layout of CLDAdapter.state_dict()

# fn(batch) -> (positions [B], per-sample losses [B]) for one batch of an eval pass.
BatchLosses = Callable[[Any], "tuple[torch.Tensor, torch.Tensor]"]


def _check_every(every_n_epochs: Any) -> int:
    if isinstance(every_n_epochs, bool) or not isinstance(every_n_epochs, int) or every_n_epochs < 1:
        raise ValueError(f"every_n_epochs must be an integer >= 1; got {every_n_epochs!r}")
    return every_n_epochs


class CLDAdapter:
    """Tracker, passes, state and scores file of one CLD callback.

    Args:
        train_labels: [N] class of each training position.
        val_labels: [Q] class of each validation sample.
        mode: ``"eval"`` (the paper's CLD: an eval-mode pass over the training split after
            each tracked epoch) or ``"train"`` (the training pass's own losses).
        every_n_epochs: track every n-th epoch (epochs n-1, 2n-1, ... 0-based).
        scores_path: where :meth:`save_scores` writes the scores file (None: nowhere).
        train_indices: [N] original dataset indices stored in the scores file.
        per_class, precision: passed to :class:`CLDTracker`.
        source: names the callback in the scores file's metadata.
    """

    def __init__(self, train_labels: Any, val_labels: Any, *, mode: str = "eval",
                 every_n_epochs: int = 1, scores_path: str | Path | None = None,
                 train_indices: Any = None, per_class: bool = True, precision: str = PRECISION,
                 source: str = "cldfast.integrations") -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}; got {mode!r}")
        self.train_labels = torch.as_tensor(train_labels)
        self.val_labels = torch.as_tensor(val_labels)
        self.mode = mode
        self.every_n_epochs = _check_every(every_n_epochs)
        self.scores_path = scores_path
        self.train_indices = train_indices
        self.per_class = per_class
        self.precision = precision
        self.source = source
        self.tracker: CLDTracker | None = None
        self.epochs_done = 0  # epochs whose end was handled (tracked or not)
        self._pending: Mapping[str, Any] | None = None  # state loaded before the tracker exists
        self.restored = False  # whether a saved state was loaded

    # ------------------------------------------------------------------ tracker
    def tracked(self, epoch: int) -> bool:
        """Whether 0-based ``epoch`` is a tracked epoch (its end feeds CLD)."""
        return (int(epoch) + 1) % self.every_n_epochs == 0

    @property
    def open_epoch(self) -> int:
        """The 0-based epoch being trained now (the first whose end is not handled)."""
        return self.epochs_done

    def ensure_tracker(self, device: torch.device | str) -> CLDTracker:
        """The tracker, built on ``device`` at first use (with any state loaded before)."""
        if self.tracker is None:
            # Whole on every process (losses are all-gathered), so that any rank's state
            # restores any rank at any world size.
            self.tracker = CLDTracker(self.train_labels, self.val_labels, per_class=self.per_class,
                                      precision=self.precision, device=device, distributed=False)
            if self._pending is not None:
                self.tracker.load_state_dict(self._pending)
                self._pending = None
        return self.tracker

    def record(self, positions: Any, losses: torch.Tensor, *, validation: bool = False) -> None:
        """Record one batch (this process's share; gathered from every process first)."""
        tracker = self.tracker
        if tracker is None:
            raise RuntimeError("the CLD tracker is not built yet: call ensure_tracker first")
        idx = ddist.gather_1d(torch.as_tensor(positions).to(tracker.device).long().reshape(-1))
        vals = ddist.gather_1d(losses.detach().to(tracker.device).reshape(-1))
        if validation:
            tracker.record_validation(vals.double(), idx)
        else:
            tracker.record(idx, vals)

    # ------------------------------------------------------------------ passes
    def run_pass(self, loader: Iterable, batch_losses: BatchLosses, *, validation: bool,
                 progress: bool = False, desc: str = "CLD eval pass") -> None:
        """Record the per-sample losses of every batch of ``loader`` (model already in eval
        mode, no gradients). Under torch.distributed every process must have as many batches
        (every batch's losses are gathered): a loader that does not is refused before any
        forward pass."""
        rank, world = ddist.rank_world()
        if world > 1:
            try:
                mine = float(len(loader))  # type: ignore[arg-type]
            except TypeError:
                mine = -1.0  # no length: cannot be checked
            counts = ddist.values_across(mine)
            if min(counts) >= 0 and len(set(counts)) > 1:
                raise RuntimeError(
                    f"{desc}: the processes hold different numbers of batches "
                    f"({[int(c) for c in counts]}); every process must run every batch of an "
                    "eval pass (its losses are gathered). Use a "
                    "DistributedSampler(shuffle=False, drop_last=False), which pads")
        bar = _progress(loader, desc, enabled=progress and rank == 0)
        for batch in bar:
            positions, losses = batch_losses(batch)
            self.record(positions, losses, validation=validation)

    def close_epoch(self, epoch: int, device: torch.device | str,
                    passes: Callable[[], None]) -> dict[str, float] | None:
        """The end of 0-based ``epoch``: for a tracked epoch run ``passes()`` (which records
        the eval-mode training losses in eval mode and V's losses) and close the tracked
        epoch in the tracker. Returns the metrics to log (None for an untracked epoch)."""
        epoch = int(epoch)
        if epoch < self.epochs_done:
            return None  # this epoch's end was handled already (the state was saved after it)
        if epoch > self.epochs_done:
            raise RuntimeError(
                f"CLD callback: the end of epoch {epoch + 1} was reached but the tracker has "
                f"handled {self.epochs_done} epoch(s): the ends of epochs "
                f"{list(range(self.epochs_done + 1, epoch + 1))} were never seen. Resume from a "
                "checkpoint that holds the callback's state of the same step")
        metrics = None
        if self.tracked(epoch):
            tracker = self.ensure_tracker(device)
            passes()
            tracker.end_epoch()
            metrics = self.epoch_metrics()
        self.epochs_done = epoch + 1
        return metrics

    def resume_check(self, epochs_finished: int, device: torch.device | str,
                     passes: Callable[[], None], *, where: str) -> None:
        """After the framework restored a resume checkpoint that finished ``epochs_finished``
        epochs: check that the restored CLD state belongs to it. One written after the last
        step of an epoch but before that epoch's end hook (Hugging Face's step-based saving)
        is one epoch behind: its eval pass runs now, on the restored (final) model."""
        epochs_finished = int(epochs_finished)
        if not self.restored and self.epochs_done:
            raise RuntimeError(
                f"this CLD callback already tracked a training run ({self.epochs_done} epochs); "
                "a callback tracks one run: make a new one for the next")
        if epochs_finished == 0 and not self.restored:
            return
        if not self.restored:
            raise RuntimeError(
                f"training resumed after {epochs_finished} epoch(s) from {where}, which holds no "
                "CLD tracker state: the scores would rest on the epochs after the resume only. "
                "Resume from a checkpoint written with the CLD callback in place, or start over")
        if self.epochs_done == epochs_finished:
            return
        if self.epochs_done == epochs_finished - 1:
            log.info("CLD callback: the checkpoint at %s was written before the end-of-epoch "
                     "hook of epoch %d; running its eval pass now", where, epochs_finished)
            self.close_epoch(epochs_finished - 1, device, passes)
            return
        raise RuntimeError(
            f"the CLD tracker state restored from {where} has handled {self.epochs_done} "
            f"epoch(s) but the checkpoint finished {epochs_finished}: they belong to different "
            "points of training. Resume from a checkpoint whose CLD state was written with it")

    # ------------------------------------------------------------------ reporting
    def epoch_metrics(self) -> dict[str, float]:
        """What a tracked epoch reports: tracked epochs closed so far (``cld/checkpoints``, the
        tracker's ``checkpoint`` count), share of samples scored (>= 2
        differences), non-finite losses skipped so far."""
        tracker = self.tracker
        scored = tracker.num_differences() >= 2
        return {"cld/checkpoints": float(tracker.checkpoint),
                "cld/scored_fraction": float(scored.double().mean()),
                "cld/nonfinite_train_losses": float(tracker.nonfinite_train),
                "cld/nonfinite_val_losses": float(tracker.nonfinite_val)}

    def final_metrics(self) -> dict[str, float]:
        """The scores' summary at the end of training (NaN statistics when none is scored)."""
        if self.tracker is None:
            return {}
        s = self.tracker.scores().double().cpu().numpy()
        ok = s[np.isfinite(s)]
        stats = {"mean": ok.mean(), "median": np.median(ok), "std": ok.std(),
                 "positive_fraction": (ok > 0).mean(), "negative_fraction": (ok < 0).mean()} \
            if ok.size else dict.fromkeys(("mean", "median", "std", "positive_fraction",
                                           "negative_fraction"), math.nan)
        return {**self.epoch_metrics(), **{f"cld/score_{k}": float(v) for k, v in stats.items()}}

    # ------------------------------------------------------------------ state and files
    def state_dict(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "mode": self.mode, "every_n_epochs": self.every_n_epochs,
                "epochs_done": self.epochs_done,
                "tracker": self.tracker.state_dict() if self.tracker is not None else self._pending}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` (checked against this callback's settings first)."""
        if not isinstance(state, Mapping) or "epochs_done" not in state:
            raise ValueError("CLD callback state must be a dict from its state_dict(); got "
                             f"{type(state).__name__} without 'epochs_done'")
        if int(state.get("version", 0)) > STATE_VERSION:
            raise ValueError(f"CLD callback state has version {state['version']}; this cldfast "
                             f"reads version {STATE_VERSION} or older")
        for key, mine in (("mode", self.mode), ("every_n_epochs", self.every_n_epochs)):
            if state.get(key) != mine:
                raise ValueError(f"CLD callback state was saved with {key}={state.get(key)!r}; "
                                 f"this callback has {key}={mine!r}")
        if state["tracker"] is not None:
            if self.tracker is not None:
                self.tracker.load_state_dict(state["tracker"])
            else:
                # Checked now (labels, N, format) with a CPU tracker; loaded on the device later.
                probe = CLDTracker(self.train_labels, self.val_labels, per_class=self.per_class,
                                   precision=self.precision, distributed=False)
                probe.load_state_dict(state["tracker"])
                self._pending = state["tracker"]
        self.epochs_done = int(state["epochs_done"])
        self.restored = True

    def save_scores(self, *, writer: bool, metadata: Mapping[str, Any] | None = None) -> Any:
        """Write the scores file to ``scores_path`` (on the process where ``writer``)."""
        if self.scores_path is None or self.tracker is None or not writer:
            return None
        meta = {"source": self.source, "loss_source": self.mode,
                "every_n_epochs": self.every_n_epochs, "epochs": self.epochs_done,
                "world_size": ddist.rank_world()[1], **dict(metadata or {})}
        return self.tracker.save(self.scores_path, train_indices=self.train_indices, metadata=meta)

    def scores(self) -> torch.Tensor:
        """[N] CLD scores (CPU); NaN where a sample has fewer than 2 differences."""
        if self.tracker is None:
            raise RuntimeError("no scores yet: the CLD callback has not seen training")
        return self.tracker.scores().cpu()


def _progress(loader: Iterable, desc: str, *, enabled: bool) -> Iterable:
    if not enabled:
        return loader
    try:  # both frameworks depend on tqdm; the tracker alone does not
        from tqdm.auto import tqdm
    except ImportError:
        return loader
    return tqdm(loader, desc=desc, leave=False, dynamic_ncols=True)
