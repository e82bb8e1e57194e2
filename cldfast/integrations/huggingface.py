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
its shard and the losses are all-gathered, so every process holds the same whole tracker.

``CLDTrainer`` records instead the per-sample losses of the training forward pass (no extra
pass; an approximation, see docs/method.md). Its batches must keep ``index_column``, so it
needs ``TrainingArguments(remove_unused_columns=False)`` and refuses to start otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

try:
    from transformers import Trainer, TrainerCallback
except ImportError as exc:
    raise ImportError("cldfast.integrations.huggingface needs transformers: pip install "
                      "transformers (or pip install 'cldfast[hf]')") from exc

from ..core.tracker import CLDTracker
from ..core.distributed import gather_1d, shard_indices

__all__ = ["CLDTrainerCallback", "CLDTrainer"]


def _logits(model: Any, inputs: dict[str, Any]) -> torch.Tensor:
    out = model(**inputs)
    return out["logits"] if isinstance(out, dict) or hasattr(out, "keys") else out.logits


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
    """

    def __init__(self, train_labels: Any, val_labels: Any, *, val_dataset: Any,
                 train_eval_dataset: Any = None, data_collator: Callable | None = None,
                 batch_size: int = 256, index_column: str = "cld_index", mode: str = "eval",
                 every_n_epochs: int = 1, scores_path: str | Path | None = None,
                 train_indices: Any = None, per_class: bool = True,
                 precision: str = "float64") -> None:
        if mode not in ("eval", "train"):
            raise ValueError(f"mode must be 'eval' or 'train'; got {mode!r}")
        if mode == "eval" and train_eval_dataset is None:
            raise ValueError("mode='eval' (the paper's CLD) needs train_eval_dataset: the training "
                             "split without augmentation")
        if isinstance(every_n_epochs, bool) or not isinstance(every_n_epochs, int) or every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be an integer >= 1; got {every_n_epochs!r}")
        self.train_labels = torch.as_tensor(train_labels)
        self.val_labels = torch.as_tensor(val_labels)
        self.train_eval_dataset = train_eval_dataset
        self.val_dataset = val_dataset
        self.data_collator = data_collator
        self.batch_size = int(batch_size)
        self.index_column = index_column
        self.mode = mode
        self.every_n_epochs = every_n_epochs
        self.scores_path = scores_path
        self.train_indices = train_indices
        self.per_class = per_class
        self.precision = precision
        self.tracker: CLDTracker | None = None
        self._epoch = 0

    def ensure_tracker(self, device: torch.device) -> CLDTracker:
        if self.tracker is None:
            self.tracker = CLDTracker(self.train_labels, self.val_labels, per_class=self.per_class,
                                      precision=self.precision, device=device, distributed=False)
        return self.tracker

    def tracked(self, epoch: int) -> bool:
        return (epoch + 1) % self.every_n_epochs == 0

    def record(self, idx: torch.Tensor, losses: torch.Tensor, *, validation: bool) -> None:
        tracker = self.tracker
        idx = gather_1d(torch.as_tensor(idx).to(tracker.device).long().reshape(-1))
        losses = gather_1d(losses.detach().float().to(tracker.device).reshape(-1))
        if validation:
            tracker.record_validation(losses.double(), idx)
        else:
            tracker.record(idx, losses)

    def _pass(self, model: Any, dataset: Any, collator: Callable, *, validation: bool) -> None:
        device = next(model.parameters()).device
        loader = DataLoader(torch.utils.data.Subset(dataset, shard_indices(len(dataset))),
                            batch_size=self.batch_size, collate_fn=collator)
        for batch in loader:
            batch = dict(batch)
            if self.index_column not in batch or "labels" not in batch:
                raise KeyError(f"CLDTrainerCallback needs each sample to hold 'labels' and the "
                               f"index column {self.index_column!r}; got {sorted(batch)}")
            idx = batch.pop(self.index_column)
            labels = batch.pop("labels").to(device)
            inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            losses = F.cross_entropy(_logits(model, inputs).float(), labels, reduction="none")
            self.record(idx, losses, validation=validation)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.ensure_tracker(next(model.parameters()).device)

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        epoch = self._epoch
        self._epoch += 1
        if not self.tracked(epoch):
            return
        tracker = self.ensure_tracker(next(model.parameters()).device)
        collator = self.data_collator or _default_collator(kwargs)
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode():
                if self.mode == "eval":
                    self._pass(model, self.train_eval_dataset, collator, validation=False)
                self._pass(model, self.val_dataset, collator, validation=True)
        finally:
            model.train(was_training)
        tracker.end_epoch()

    def on_train_end(self, args, state, control, **kwargs):
        if self.scores_path is not None and state.is_world_process_zero and self.tracker is not None:
            self.tracker.save(self.scores_path, train_indices=self.train_indices,
                              metadata={"source": "cldfast.integrations.huggingface",
                                        "loss_source": self.mode,
                                        "every_n_epochs": self.every_n_epochs})

    def scores(self) -> torch.Tensor:
        """[N] CLD scores (CPU); NaN where fewer than 2 differences."""
        if self.tracker is None:
            raise RuntimeError("no scores yet: the callback has not seen Trainer.train")
        return self.tracker.scores().cpu()


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
        self.cld = cbs[0]

    def compute_loss(self, model, inputs, return_outputs=False, **kwargs):
        inputs = dict(inputs)
        if self.cld.index_column not in inputs:
            raise KeyError(f"batch has no {self.cld.index_column!r} column; keep it in the dataset "
                           "and set remove_unused_columns=False")
        idx = inputs.pop(self.cld.index_column)
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        losses = F.cross_entropy(outputs["logits"].float(), labels, reduction="none")
        if model.training and self.cld.tracked(self.cld._epoch):
            self.cld.ensure_tracker(losses.device)
            self.cld.record(idx, losses, validation=False)
        loss = losses.mean()
        return (loss, outputs) if return_outputs else loss
