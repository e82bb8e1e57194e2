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
rank holds the same, whole tracker: resume checkpoints (written by rank 0) restore all ranks, and
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
from ..defaults import PRECISION
from .adapter import CLDAdapter

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
            give each rank its shard with as many batches on every rank (e.g. a
            DistributedSampler(shuffle=False), which pads); workers and pinned memory are
            the loader's own.
        val_loader: loader over the validation set, batches with positions in V.
        mode: ``"eval"`` (default, the paper's CLD) or ``"train"``: ``training_step`` returns a
            dict with ``"indices"`` and ``"per_sample_losses"`` (and ``"loss"``) and those are
            recorded.
        batch_losses: ``fn(module, batch) -> (indices, per_sample_losses)`` for the eval and
            validation passes (default: :func:`cross_entropy_losses`).
        every_n_epochs: track every n-th epoch (the others do not feed CLD).
        scores_path: write the scores file (``CLDTracker.save``) here when training ends.
        train_indices: [N] original dataset indices stored in the scores file.
        per_class, precision: passed to :class:`CLDTracker`.
        name: distinguishes two callbacks with the same settings in one Trainer (their
            state in a resume checkpoint is keyed by :attr:`state_key`, built from these arguments).

    Resume: the callback's state (tracker, epochs handled) goes into Lightning's (resume)
    checkpoints and ``Trainer.fit(ckpt_path=...)`` restores it, at any number of processes; a
    resumed fit gives the scores of an uninterrupted one, or raises (a checkpoint without the
    callback's state, or of another point of training). Each tracked epoch logs
    ``cld/checkpoints`` (tracked epochs closed), ``cld/scored_fraction`` and the non-finite
    loss counts through ``LightningModule.log``; the end of training logs the scores' summary to the Trainer's
    loggers. The eval pass shows a progress bar when the Trainer shows one.
    """

    def __init__(self, train_labels: Any, val_labels: Any, *,
                 train_eval_loader: Iterable | None = None, val_loader: Iterable,
                 mode: str = "eval", batch_losses: BatchLosses = cross_entropy_losses,
                 every_n_epochs: int = 1, scores_path: str | Path | None = None,
                 train_indices: Any = None, per_class: bool = True,
                 precision: str = PRECISION, name: str | None = None) -> None:
        super().__init__()
        self.core = CLDAdapter(train_labels, val_labels, mode=mode, every_n_epochs=every_n_epochs,
                               scores_path=scores_path, train_indices=train_indices,
                               per_class=per_class, precision=precision,
                               source="cldfast.integrations.lightning.CLDCallback")
        if mode == "eval" and train_eval_loader is None:
            raise ValueError("mode='eval' (the paper's CLD) needs train_eval_loader: a loader over "
                             "the training split without augmentation, yielding positions")
        self.train_eval_loader = train_eval_loader
        self.val_loader = val_loader
        self.batch_losses = batch_losses
        self.name = name

    @property
    def state_key(self) -> str:
        return self._generate_state_key(mode=self.core.mode, per_class=self.core.per_class,
                                        every_n_epochs=self.core.every_n_epochs,
                                        precision=self.core.precision, name=self.name)

    @property
    def tracker(self) -> CLDTracker | None:
        return self.core.tracker

    # ------------------------------------------------------------------ state
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage == "fit":
            self.core.ensure_tracker(pl_module.device)

    def state_dict(self) -> dict[str, Any]:
        return self.core.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "tracker" in state_dict and "epochs_done" not in state_dict:
            # Written by cldfast 0.1 (the tracker only): the epochs handled follow from its
            # count of tracked epochs.
            tracker = state_dict["tracker"]
            if tracker is None:
                return
            state_dict = {"mode": self.core.mode, "every_n_epochs": self.core.every_n_epochs,
                          "epochs_done": int(tracker["checkpoint"]) * self.core.every_n_epochs,
                          "tracker": tracker}
        self.core.load_state_dict(state_dict)

    # ------------------------------------------------------------------ recording
    def _passes(self, trainer: Any, pl_module: Any) -> Callable[[], None]:
        progress = trainer.progress_bar_callback is not None

        def losses(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
            return self.batch_losses(pl_module, pl_module.transfer_batch_to_device(
                batch, pl_module.device, 0))

        def run() -> None:
            was_training = pl_module.training
            pl_module.eval()
            try:
                with torch.inference_mode():
                    if self.core.mode == "eval":
                        self.core.run_pass(self.train_eval_loader, losses, validation=False,
                                           progress=progress, desc="CLD eval pass (training split)")
                    self.core.run_pass(self.val_loader, losses, validation=True,
                                       progress=progress, desc="CLD eval pass (validation)")
            finally:
                pl_module.train(was_training)
        return run

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self.core.resume_check(trainer.current_epoch, pl_module.device,
                               self._passes(trainer, pl_module),
                               where=str(getattr(trainer, "ckpt_path", None) or "the checkpoint"))

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.core.mode != "train" or not self.core.tracked(trainer.current_epoch):
            return
        if not isinstance(outputs, dict) or "indices" not in outputs or "per_sample_losses" not in outputs:
            raise ValueError("CLDCallback(mode='train') needs training_step to return a dict with "
                             "'loss', 'indices' and 'per_sample_losses'")
        self.core.ensure_tracker(pl_module.device)
        self.core.record(outputs["indices"], outputs["per_sample_losses"])

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.sanity_checking:
            return
        metrics = self.core.close_epoch(trainer.current_epoch, pl_module.device,
                                        self._passes(trainer, pl_module))
        if metrics:
            # Equal on every process (the tracker is whole everywhere): no sync needed.
            pl_module.log_dict(metrics, on_step=False, on_epoch=True, sync_dist=False)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.is_global_zero:
            summary = self.core.final_metrics()
            for logger in trainer.loggers:
                logger.log_metrics(summary, step=trainer.global_step)
        self.core.save_scores(writer=trainer.is_global_zero)

    # ------------------------------------------------------------------ results
    def scores(self) -> torch.Tensor:
        """[N] CLD scores (CPU, float64 by default); NaN where fewer than 2 differences."""
        return self.core.scores()
