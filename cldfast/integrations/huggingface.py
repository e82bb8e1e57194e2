"""CLD tracking inside the Hugging Face ``Trainer``: a ``TrainerCallback`` (and, for train-mode
losses, a ``Trainer`` subclass).

``CLDTrainerCallback`` computes the paper's CLD: at the end of every tracked epoch it puts the
model in eval mode and computes, without gradients, the per-sample cross-entropy of every
training sample (from ``train_eval_dataset``: the training split without augmentation) and
of every validation sample, and folds them into a :class:`CLDTracker`. Samples are dicts
(as ``datasets`` and most HF pipelines produce) holding the model's inputs, ``labels`` and
an integer column with the sample's position in its split (``index_column``, default
``"cld_index"``); the callback removes that column before calling the model.

Under multi-process training (``torchrun`` / ``accelerate launch``), every process evaluates
its shard (a padded DistributedSampler split, so every process runs as many batches, as
FSDP / ZeRO-3 need) and the losses are all-gathered, so every process holds the same whole
tracker. The eval loaders use the Trainer's data settings: ``dataloader_num_workers``,
``dataloader_pin_memory``, ``dataloader_persistent_workers``, ``dataloader_prefetch_factor``
and its collator.

Resume: at every save the tracker's state goes into the ``checkpoint-<step>`` directory
(``cld_tracker.pt``), and ``Trainer.train(resume_from_checkpoint=...)`` restores it (at any
number of processes); epochs are counted from the ``TrainerState``. A resumed run gives the
scores of an uninterrupted one, or raises: never a silently restarted tracker.

``CLDTrainer`` records instead the per-sample losses of the training forward pass (no extra
pass; an approximation, see docs/method.md). Its batches must keep ``index_column``, so it
needs ``TrainingArguments(remove_unused_columns=False)`` and refuses to start otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import math
import os

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

try:
    from transformers import Trainer, TrainerCallback
except ImportError as exc:
    raise ImportError("cldfast.integrations.huggingface needs transformers: pip install "
                      "transformers (or pip install 'cldfast[hf]')") from exc

from ..core import distributed as ddist
from ..core.tracker import CLDTracker
from ..defaults import PRECISION
from ..io import load_checkpoint, save_checkpoint
from .adapter import CLDAdapter

__all__ = ["CLDTrainerCallback", "CLDTrainer", "STATE_FILE"]

STATE_FILE = "cld_tracker.pt"  # in each checkpoint-<step> directory


def _logits(model: Any, inputs: dict[str, Any]) -> torch.Tensor:
    out = model(**inputs)
    return out["logits"] if isinstance(out, dict) or hasattr(out, "keys") else out.logits


def _epochs_finished(state: Any) -> int:
    """Whole epochs behind the TrainerState (its ``epoch`` is fractional mid-epoch)."""
    return int(math.floor((state.epoch or 0.0) + 1e-9))


class CLDTrainerCallback(TrainerCallback):
    """Track CLD during ``Trainer.train``.

    Args:
        train_labels: [N] class of each training position.
        val_labels: [Q] class of each validation sample.
        train_eval_dataset: map-style dataset of dicts over the training split, without
            augmentation (needed unless ``mode="train"``).
        val_dataset: map-style dataset of dicts over the validation set.
        data_collator: turns a list of samples into a batch dict (default: the Trainer's).
        batch_size: batch size of the eval passes.
        index_column: the column holding each sample's position in its split.
        mode: ``"eval"`` (default, the paper's CLD) or ``"train"`` (use with CLDTrainer).
        every_n_epochs: track every n-th epoch.
        scores_path: write the scores file there when training ends (process 0).
        train_indices: [N] original dataset indices for the scores file.
        per_class, precision: passed to :class:`CLDTracker`.

    Logging: each tracked epoch's ``cld/*`` metrics (tracked epochs closed, share of samples
    scored, non-finite losses) and the final scores' summary go into ``TrainerState.log_history``
    (``trainer_state.json``) and into the Trainer's next log, which reaches the reporting
    integrations (TensorBoard, W&B) when the callback runs before them: register it with
    :meth:`attach` (``CLDTrainer`` does). The eval pass shows a progress bar unless
    ``disable_tqdm``.
    """

    def __init__(self, train_labels: Any, val_labels: Any, *, val_dataset: Any,
                 train_eval_dataset: Any = None, data_collator: Callable | None = None,
                 batch_size: int = 256, index_column: str = "cld_index", mode: str = "eval",
                 every_n_epochs: int = 1, scores_path: str | Path | None = None,
                 train_indices: Any = None, per_class: bool = True,
                 precision: str = PRECISION) -> None:
        self.core = CLDAdapter(train_labels, val_labels, mode=mode, every_n_epochs=every_n_epochs,
                               scores_path=scores_path, train_indices=train_indices,
                               per_class=per_class, precision=precision,
                               source="cldfast.integrations.huggingface")
        if mode == "eval" and train_eval_dataset is None:
            raise ValueError("mode='eval' (the paper's CLD) needs train_eval_dataset: the training "
                             "split without augmentation")
        if isinstance(batch_size, bool) or int(batch_size) < 1:
            raise ValueError(f"batch_size must be an integer >= 1; got {batch_size!r}")
        self.train_eval_dataset = train_eval_dataset
        self.val_dataset = val_dataset
        self.data_collator = data_collator
        self.batch_size = int(batch_size)
        self.index_column = index_column
        self.resume_from: str | None = None  # set by CLDTrainer.train / by hand
        self._epoch = 0  # the epoch in progress, from the TrainerState at on_epoch_begin
        self._pending_logs: dict[str, float] = {}

    @property
    def tracker(self) -> CLDTracker | None:
        return self.core.tracker

    @property
    def mode(self) -> str:
        return self.core.mode

    def attach(self, trainer: Trainer) -> Trainer:
        """Put this callback first in ``trainer``'s callbacks, before the reporting
        integrations, so that its metrics reach them with the Trainer's next log."""
        handler = trainer.callback_handler
        if self in handler.callbacks:
            handler.callbacks.remove(self)
        handler.callbacks.insert(0, self)
        return trainer

    def tracked(self, epoch: int) -> bool:
        return self.core.tracked(epoch)

    def record(self, idx: torch.Tensor, losses: torch.Tensor, *, validation: bool) -> None:
        self.core.record(idx, losses, validation=validation)

    # ------------------------------------------------------------------ eval passes
    def _loader(self, dataset: Any, collator: Callable, args: Any) -> DataLoader:
        """The Trainer's data settings; a padded DistributedSampler split under several
        processes (equal batch counts; the repeats count once in the tracker)."""
        rank, world = ddist.rank_world()
        sampler = (torch.utils.data.DistributedSampler(dataset, num_replicas=world, rank=rank,
                                                       shuffle=False, drop_last=False)
                   if world > 1 else None)
        workers = int(getattr(args, "dataloader_num_workers", 0) or 0)
        extra = {}
        if workers > 0:
            extra["persistent_workers"] = bool(getattr(args, "dataloader_persistent_workers", False))
            prefetch = getattr(args, "dataloader_prefetch_factor", None)
            if prefetch is not None:
                extra["prefetch_factor"] = int(prefetch)
        return DataLoader(dataset, batch_size=self.batch_size, sampler=sampler,
                          collate_fn=collator, num_workers=workers,
                          pin_memory=bool(getattr(args, "dataloader_pin_memory", False))
                          and torch.cuda.is_available(), **extra)

    def _batch_losses(self, model: Any, device: torch.device) -> Callable[[Any], tuple]:
        def losses(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
            batch = dict(batch)
            if self.index_column not in batch or "labels" not in batch:
                raise KeyError(f"CLDTrainerCallback needs each sample to hold 'labels' and the "
                               f"index column {self.index_column!r}; got {sorted(batch)}")
            idx = batch.pop(self.index_column)
            labels = batch.pop("labels").to(device)
            inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v
                      for k, v in batch.items()}
            logits = _logits(model, inputs)
            # Half-precision logits are widened; float32 / float64 ones keep their precision.
            if logits.dtype in (torch.float16, torch.bfloat16):
                logits = logits.float()
            return idx, F.cross_entropy(logits, labels, reduction="none")
        return losses

    def _passes(self, args: Any, state: Any, model: Any, kwargs: dict[str, Any]) -> Callable[[], None]:
        collator = self.data_collator or _default_collator(kwargs)
        progress = not getattr(args, "disable_tqdm", False) and state.is_local_process_zero

        def run() -> None:
            device = next(model.parameters()).device
            losses = self._batch_losses(model, device)
            was_training = model.training
            model.eval()
            try:
                with torch.inference_mode():
                    if self.core.mode == "eval":
                        self.core.run_pass(self._loader(self.train_eval_dataset, collator, args),
                                           losses, validation=False, progress=progress,
                                           desc="CLD eval pass (training split)")
                    self.core.run_pass(self._loader(self.val_dataset, collator, args), losses,
                                       validation=True, progress=progress,
                                       desc="CLD eval pass (validation)")
            finally:
                model.train(was_training)
        return run

    # ------------------------------------------------------------------ Trainer events
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        device = next(model.parameters()).device
        where = self._restore(args, state) if state.global_step > 0 else "a fresh start"
        self.core.resume_check(_epochs_finished(state), device,
                               self._passes(args, state, model, kwargs), where=where)
        self.core.ensure_tracker(device)

    def on_epoch_begin(self, args, state, control, **kwargs):
        self._epoch = _epochs_finished(state)

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        metrics = self.core.close_epoch(self._epoch, next(model.parameters()).device,
                                        self._passes(args, state, model, kwargs))
        if metrics:
            self._report(state, metrics)
            control.should_log = True

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is not None and self._pending_logs:
            logs.update(self._pending_logs)
            self._pending_logs = {}

    def on_save(self, args, state, control, **kwargs):
        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if args.should_save and os.path.isdir(folder):
            save_checkpoint(os.path.join(folder, STATE_FILE),
                            {"global_step": state.global_step, "callback": self.core.state_dict()})

    def on_train_end(self, args, state, control, **kwargs):
        self._report(state, self.core.final_metrics())
        self.core.save_scores(writer=state.is_world_process_zero)

    def _report(self, state: Any, metrics: dict[str, float]) -> None:
        if not metrics:
            return
        self._pending_logs.update(metrics)
        state.log_history.append({**metrics, "epoch": state.epoch, "step": state.global_step})

    def _restore(self, args: Any, state: Any) -> str:
        """Load the tracker state of the checkpoint the Trainer resumed from; returns where
        it was found (or, when none was, the places looked at, for resume_check's error)."""
        candidates = [self.resume_from, getattr(args, "resume_from_checkpoint", None),
                      os.path.join(args.output_dir, f"checkpoint-{state.global_step}")]
        looked = []
        for folder in candidates:
            if not isinstance(folder, (str, os.PathLike)):
                continue
            path = os.path.join(folder, STATE_FILE)
            looked.append(path)
            if not os.path.exists(path):
                continue
            saved = load_checkpoint(path)
            if int(saved.get("global_step", -1)) != state.global_step:
                continue
            self.core.load_state_dict(saved["callback"])
            return path
        return " or ".join(looked) + f" (step {state.global_step})"

    def scores(self) -> torch.Tensor:
        """[N] CLD scores (CPU); NaN where fewer than 2 differences."""
        return self.core.scores()


def _default_collator(kwargs: dict[str, Any]) -> Callable:
    from transformers import default_data_collator

    # The Trainer's own collator, unwrapped from the column-removing wrapper that would drop
    # the index column (remove_unused_columns).
    collate = getattr(kwargs.get("train_dataloader"), "collate_fn", None)
    collate = getattr(collate, "data_collator", collate)
    return collate or default_data_collator


class CLDTrainer(Trainer):
    """A ``Trainer`` whose training loss is the mean per-sample cross-entropy and whose
    per-sample losses go to the :class:`CLDTrainerCallback` (``mode="train"``) among its
    callbacks. Needs ``remove_unused_columns=False`` so that the index column reaches it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cbs = [c for c in self.callback_handler.callbacks if isinstance(c, CLDTrainerCallback)]
        if len(cbs) != 1 or cbs[0].mode != "train":
            raise ValueError("CLDTrainer needs exactly one CLDTrainerCallback(mode='train') in "
                             "callbacks=")
        if self.args.remove_unused_columns:
            raise ValueError("CLDTrainer needs TrainingArguments(remove_unused_columns=False): the "
                             f"index column {cbs[0].index_column!r} must reach compute_loss")
        cbs[0].attach(self)
        self.cld = cbs[0]

    def train(self, resume_from_checkpoint: Any = None, *args: Any, **kwargs: Any):
        if isinstance(resume_from_checkpoint, (str, os.PathLike)):
            self.cld.resume_from = str(resume_from_checkpoint)
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, **kwargs):
        inputs = dict(inputs)
        if self.cld.index_column not in inputs:
            raise KeyError(f"batch has no {self.cld.index_column!r} column; keep it in the dataset "
                           "and set remove_unused_columns=False")
        idx = inputs.pop(self.cld.index_column)
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        losses = F.cross_entropy(outputs["logits"].float(), labels, reduction="none")
        if model.training and self.cld.tracked(self.cld.core.open_epoch):
            self.cld.core.ensure_tracker(losses.device)
            self.cld.record(idx, losses, validation=False)
        loss = losses.mean()
        return (loss, outputs) if return_outputs else loss
