"""The public hooks of :func:`cldfast.training.fit` and what they receive.

A training run calls its callbacks in one fixed order; every hook gets the run's
:class:`FitContext` (public, documented; never the loop's own objects)::

    on_fit_start(ctx)                       after the model is built and a checkpoint restored
    for each epoch:
        on_train_batch(ctx, batch)          every training batch (TrainBatch: positions,
                                            detached logits, targets, gathered over ranks)
        -- end of the epoch's batches: the learning-rate schedule steps --
        on_epoch_end(ctx, epoch)            in the order the callbacks were given:
            1. CLD tracking (:class:`cldfast.training.Tracking`): the eval pass, then the
               tracked epoch is closed (``record_validation``, ``end_epoch``)
            2. the recorders (their ``on_epoch_end``), which therefore see the closed epoch
            3. callbacks passed to ``fit(callbacks=...)``
        -- the resume checkpoint of the epoch is written --
    on_fit_end(ctx)                         after the last epoch, before the test pass

``on_epoch_end`` may return a dict of floats: it is merged into the epoch's log entry (the
run's ``history``). A callback with ``state_dict`` / ``load_state_dict`` is saved in every
resume checkpoint under its ``state_key`` (a string unique within the run) and restored on
resume. :class:`BatchRecorder` and :class:`PrunerLike` declare what the recorders and the
pruners provide; the loop adapts them to these hooks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

__all__ = ["FitContext", "TrainBatch", "Callback", "BatchRecorder", "PrunerLike"]


@dataclass
class FitContext:
    """What a hook may read (and, for ``result``'s counters, update) about the run.

    bundle: the :class:`cldfast.data.DatasetBundle`; train_indices: int64 [M] original
    dataset indices trained on (positions index into it); recipe: the resolved
    :class:`cldfast.training.Recipe`; model: the model (not the DDP wrapper); device;
    rank / world: this process under torch.distributed (0 / 1 otherwise); progress: whether
    this process shows progress bars; epoch: the current 0-based epoch (-1 before the first);
    stop_epoch: the epoch the run stops at; result: the :class:`FitResult` being filled.
    """

    bundle: Any
    train_indices: np.ndarray
    recipe: Any
    model: torch.nn.Module
    device: torch.device
    rank: int
    world: int
    progress: bool
    result: Any
    stop_epoch: int = 0
    epoch: int = -1


@dataclass
class TrainBatch:
    """One training batch as the hooks see it: positions (int64 [B], in the training split),
    detached logits [B, C], targets [B]; under torch.distributed every rank's batch."""

    positions: torch.Tensor
    logits: torch.Tensor
    targets: torch.Tensor
    epoch: int


class Callback:
    """Base class of :func:`cldfast.training.fit`'s callbacks: override the hooks you need
    (see the module docstring for their order). ``state_key``: the key of this callback's
    state in resume checkpoints (default: the class name); give two callbacks of one class
    different keys."""

    state_key: str | None = None

    def on_fit_start(self, ctx: FitContext) -> None:
        pass

    def on_train_batch(self, ctx: FitContext, batch: TrainBatch) -> None:
        pass

    def on_epoch_end(self, ctx: FitContext, epoch: int) -> dict[str, float] | None:
        return None

    def on_fit_end(self, ctx: FitContext) -> None:
        pass


@runtime_checkable
class BatchRecorder(Protocol):
    """Something that watches the training pass, e.g. a streaming baseline score.

    ``on_batch`` gets the positions (CPU or device int64 [B], positions in the training
    split), the detached logits [B, C] and the targets [B] of every training batch;
    ``on_epoch_end`` is called after each epoch (0-based), once the epoch's tracked CLD
    epoch is closed. ``state_dict`` / ``load_state_dict`` go into the resume checkpoint
    (under ``state_key`` when the recorder has one, else its class name), so a resumed run
    continues them. The recorders of :mod:`cldfast.scores.recorders`, a tracker in train
    mode (:class:`cldfast.core.TrackerRecorder`) and the pruners of
    :mod:`cldfast.training.pruning` are BatchRecorders.
    """

    def on_batch(self, positions: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor,
                 epoch: int) -> None: ...

    def on_epoch_end(self, epoch: int) -> None: ...

    def score_arrays(self) -> dict[str, np.ndarray]:
        """Named [N] score arrays (stored in the scores file by :func:`cldfast.pipeline.track`)."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@runtime_checkable
class PrunerLike(Protocol):
    """What :func:`cldfast.training.fit` needs of a pruner (see
    :class:`cldfast.training.pruning.Pruner`): each epoch trains on ``sampler(epoch, rank,
    world_size)``'s positions, each sample's loss multiplied by ``loss_weights(positions,
    device)``; with ``needs_batches`` it also watches the batches as a BatchRecorder;
    ``history[-1]["kept"]`` of ``num_samples`` is logged; ``summary()`` ends in
    ``FitResult.prune``; its state goes into the resume checkpoint."""

    needs_batches: bool
    num_samples: int
    history: list

    def sampler(self, epoch: int, rank: int = 0, world_size: int = 1) -> Any: ...

    def loss_weights(self, positions: torch.Tensor, device: torch.device) -> torch.Tensor: ...

    def summary(self) -> dict[str, Any]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def state_keys(objects: list[Any]) -> list[str]:
    """Each object's checkpoint key: its ``state_key`` or class name; duplicates refused."""
    keys = [getattr(o, "state_key", None) or type(o).__name__ for o in objects]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        raise ValueError(f"two recorders or callbacks share the state_key {dup}; give each a "
                         "distinct state_key attribute so resume checkpoints tell them apart")
    return keys


