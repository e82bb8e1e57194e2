"""CLD tracking inside PyTorch Lightning: a ``Callback`` for ``Trainer.fit``.

The callback computes the paper's CLD by default: at the end of every tracked epoch it puts
the LightningModule in eval mode and, without gradients, computes the per-sample loss of every
training sample (from a loader over the training split in its own order, without
augmentation) and of every validation sample, and folds them into a :class:`CLDTracker`.
``mode="train"`` records instead the per-sample losses that ``training_step`` returns (no
extra pass; an approximation, see docs/method.md).

Batches: by default a batch is ``(inputs, targets, indices)`` with ``indices`` the positions
of the samples in the training split (or in the validation set), and the loss is the
cross-entropy of ``module(inputs)``. Pass ``batch_losses=fn`` with
``fn(module, batch) -> (indices, per_sample_losses)`` for anything else.

Under DDP every rank evaluates its shard and the callback all-gathers the losses, so every
rank holds the same, whole tracker: checkpoints (written by rank 0) restore all ranks, and
DistributedSampler's padded duplicates count once (the tracker's observation rule).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F

try:
    import lightning.pytorch as pl
except ImportError:  # the standalone package name
    try:
        import pytorch_lightning as pl
    except ImportError as exc:
        raise ImportError("cldfast.integrations.lightning needs PyTorch Lightning: "
                          "pip install lightning (or pip install 'cldfast[lightning]')") from exc

from ..core.tracker import CLDTracker
from ..core.distributed import gather_1d

__all__ = ["CLDCallback", "cross_entropy_losses"]

BatchLosses = Callable[[Any, Any], "tuple[torch.Tensor, torch.Tensor]"]


def cross_entropy_losses(module: Any, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The default ``batch_losses``: a batch ``(inputs, targets, indices)``; per-sample
    cross-entropy of ``module(inputs)``."""
    if not isinstance(batch, (list, tuple)) or len(batch) < 3:
        raise ValueError("CLDCallback's default batch_losses expects batches (inputs, targets, "
                         "indices); pass batch_losses=fn returning (indices, per_sample_losses) "
                         "for other batches")
    x, y, idx = batch[0], batch[1], batch[2]
    logits = module(x)
    # Half-precision logits are widened; float32 / float64 ones keep their precision.
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    return idx, F.cross_entropy(logits, y, reduction="none")


class CLDCallback(pl.Callback):
    """Track CLD during ``Trainer.fit``.

    Args:
        train_labels: [N] class of each training position.
        val_labels: [Q] class of each validation sample.
        train_eval_loader: loader over the training split in eval form (no augmentation),
            yielding batches with training positions; needed for ``mode="eval"``. Under DDP
            give each rank its shard (e.g. a DistributedSampler with shuffle=False).
        val_loader: loader over the validation set, batches with positions in V.
        mode: ``"eval"`` (default, the paper's CLD) or ``"train"``: ``training_step`` returns a
            dict with ``"indices"`` and ``"per_sample_losses"`` (and ``"loss"``) and those are
            recorded.
        batch_losses: ``fn(module, batch) -> (indices, per_sample_losses)`` for the eval and
            validation passes (default: :func:`cross_entropy_losses`).
        every_n_epochs: track every n-th epoch (checkpoint subsampling).
        scores_path: write the scores file (``CLDTracker.save``) here when training ends.
        train_indices: [N] original dataset indices stored in the scores file.
        per_class, precision: passed to :class:`CLDTracker`.
    """

    def __init__(self, train_labels: Any, val_labels: Any, *,
                 train_eval_loader: Iterable | None = None, val_loader: Iterable,
                 mode: str = "eval", batch_losses: BatchLosses = cross_entropy_losses,
                 every_n_epochs: int = 1, scores_path: str | Path | None = None,
                 train_indices: Any = None, per_class: bool = True,
                 precision: str = "float64") -> None:
        super().__init__()
        if mode not in ("eval", "train"):
            raise ValueError(f"mode must be 'eval' or 'train'; got {mode!r}")
        if mode == "eval" and train_eval_loader is None:
            raise ValueError("mode='eval' (the paper's CLD) needs train_eval_loader: a loader over "
                             "the training split without augmentation, yielding positions")
        if isinstance(every_n_epochs, bool) or not isinstance(every_n_epochs, int) or every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be an integer >= 1; got {every_n_epochs!r}")
        self.train_labels = torch.as_tensor(train_labels)
        self.val_labels = torch.as_tensor(val_labels)
        self.train_eval_loader = train_eval_loader
        self.val_loader = val_loader
        self.mode = mode
        self.batch_losses = batch_losses
        self.every_n_epochs = every_n_epochs
        self.scores_path = scores_path
        self.train_indices = train_indices
        self.per_class = per_class
        self.precision = precision
        self.tracker: CLDTracker | None = None
        self._pending_state: dict[str, Any] | None = None

    # ------------------------------------------------------------------ state
    def _ensure_tracker(self, device: torch.device) -> CLDTracker:
        if self.tracker is None:
            self.tracker = CLDTracker(self.train_labels, self.val_labels, per_class=self.per_class,
                                      precision=self.precision, device=device, distributed=False)
            if self._pending_state is not None:
                self.tracker.load_state_dict(self._pending_state)
                self._pending_state = None
        return self.tracker

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage == "fit":
            self._ensure_tracker(pl_module.device)

    def state_dict(self) -> dict[str, Any]:
        return {"tracker": self.tracker.state_dict() if self.tracker is not None else None}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = state_dict.get("tracker")
        if state is None:
            return
        if self.tracker is not None:
            self.tracker.load_state_dict(state)
        else:
            self._pending_state = state

    # ------------------------------------------------------------------ recording
    def _tracked(self, epoch: int) -> bool:
        return (epoch + 1) % self.every_n_epochs == 0

    def _record(self, idx: torch.Tensor, losses: torch.Tensor, *, validation: bool) -> None:
        tracker = self.tracker
        idx = gather_1d(torch.as_tensor(idx).to(tracker.device).long().reshape(-1))
        losses = gather_1d(losses.detach().to(tracker.device).reshape(-1))
        if validation:
            tracker.record_validation(losses.double(), idx)
        else:
            tracker.record(idx, losses)

    def _pass(self, pl_module: Any, loader: Iterable, *, validation: bool) -> None:
        for batch in loader:
            batch = pl_module.transfer_batch_to_device(batch, pl_module.device, 0)
            idx, losses = self.batch_losses(pl_module, batch)
            self._record(idx, losses, validation=validation)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.mode != "train" or not self._tracked(trainer.current_epoch):
            return
        if not isinstance(outputs, dict) or "indices" not in outputs or "per_sample_losses" not in outputs:
            raise ValueError("CLDCallback(mode='train') needs training_step to return a dict with "
                             "'loss', 'indices' and 'per_sample_losses'")
        self._ensure_tracker(pl_module.device)
        self._record(outputs["indices"], outputs["per_sample_losses"], validation=False)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.sanity_checking or not self._tracked(trainer.current_epoch):
            return
        tracker = self._ensure_tracker(pl_module.device)
        was_training = pl_module.training
        pl_module.eval()
        try:
            with torch.inference_mode():
                if self.mode == "eval":
                    self._pass(pl_module, self.train_eval_loader, validation=False)
                self._pass(pl_module, self.val_loader, validation=True)
        finally:
            pl_module.train(was_training)
        tracker.end_epoch()

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if self.scores_path is not None and trainer.is_global_zero and self.tracker is not None:
            self.tracker.save(self.scores_path, train_indices=self.train_indices,
                              metadata={"source": "cldfast.integrations.lightning.CLDCallback",
                                        "loss_source": self.mode,
                                        "every_n_epochs": self.every_n_epochs})

    # ------------------------------------------------------------------ results
    def scores(self) -> torch.Tensor:
        """[N] CLD scores (CPU, float64 by default); NaN where fewer than 2 differences."""
        if self.tracker is None:
            raise RuntimeError("no scores yet: the callback has not seen Trainer.fit")
        return self.tracker.scores().cpu()
