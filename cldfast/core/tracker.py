"""CLDTracker: streaming Correlation of Loss Differences inside a training loop.

The tracker folds every per-sample loss into Welford co-moment state as training runs, so the
CLD score of every training sample is ready when training ends, in O(N) memory that does not
grow with the number of epochs. ``docs/method.md`` in the project states the exact definition
and the observation rules.

Memory per training sample (``precision="float64"``, the default): the open epoch's loss
sum and observation count (float32, 8 B), five float64 co-moments (40 B), the previous
checkpoint's mean loss (float32, 4 B), the last observed checkpoint and the number of
differences (int32, 8 B) and the class label (int16, 2 B; int32 beyond 32767 classes):
62 bytes. ``precision="float32"`` stores the co-moments in float32: 42 bytes.

Under torch.distributed (detected when a process group with more than one rank is
initialised) every rank records only its own batches into a full-size open-epoch buffer
(8 B per sample) and owns the co-moment state of one shard of about N / W samples: at
``end_epoch`` one reduce-scatter hands each rank the summed losses and counts of its shard,
and one small all-reduce sums the validation losses and the error counters. Per rank that is
about 8 + 62 / W bytes per training sample (the open-epoch buffer, the shard's state and the
shard's slot of the reduce-scatter).
"""

from __future__ import annotations

import hashlib
import math
import warnings
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .. import _core
from .. import io as _io
from . import checks
from . import distributed as ddist
from . import kernels as _ops
from . import ops as _custom
from . import tracker_state
from .batch_recorder import TrackerRecorder
from .scores_file import tracker_scores_file
from .state import Stateful
from .tracker_state import STATE_FORMAT

__all__ = ["CLDTracker", "CLDWarning", "STATE_FORMAT"]


class CLDWarning(UserWarning):
    """Warnings about how CLD is computed for this data (e.g. classes without validation)."""


def _labels_digest(labels: torch.Tensor) -> str:
    return hashlib.sha256(labels.to(torch.int64).numpy().tobytes()).hexdigest()[:32]


def _history_rows(state: Mapping[str, Any]) -> int:
    """Rows of the validation history in use: checkpoints since the oldest one referred to."""
    return int(state["checkpoint"]) - int(state["history_base"])


def _int_list(values: Any) -> list[int]:
    return [int(x) for x in values]


def _float64_rows(rows: Any) -> torch.Tensor:
    return torch.as_tensor(rows, dtype=torch.float64).detach().cpu().clone()


class _FusedCrossEntropy(torch.autograd.Function):
    """Per-sample cross-entropy computed and recorded by one kernel; the backward is one more
    kernel, (softmax - onehot) * grad, from the rows' log-sum-exp saved by the forward. Rows
    with an out-of-range target (flagged for end_epoch) get a zero gradient: nothing indexes
    with them, so a bad target can neither fault the device nor bend another row's gradient.
    The eager form; compiled code runs the same kernels as custom operators
    (:func:`cldfast.core.ops.fused_cross_entropy`)."""

    @staticmethod
    def forward(ctx, logits, targets, index, tracker):  # noqa: D401 - autograd signature
        out, lse = _ops.record_ce(index, logits, targets, tracker._epoch, tracker.num_samples,
                                  tracker._flags)
        ctx.save_for_backward(logits, targets, lse)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        logits, targets, lse = ctx.saved_tensors
        return _custom.ce_grad(logits, targets, lse, grad_out), None, None, None


class CLDTracker(Stateful):
    """Streams per-sample losses into CLD scores.

    Args:
        train_labels: [N] integer class of each training sample, in the order of the
            positions that ``record`` receives (positions in the training split).
        val_labels: [Q] integer class of each validation sample.
        per_class: correlate with the mean validation loss of the sample's own class
            (default). ``False`` uses the mean over all of V for every sample.
        device: where the state lives and the kernels run: ``"cpu"`` (default), a CUDA
            device, or any other device torch can hold float64 tensors on. Where this build
            has no compiled kernels for it (a CPU-only build on a GPU machine, ROCm, XPU, ...)
            the torch twins of the kernels run instead, with one
            :class:`~cldfast.core.kernels.KernelFallbackWarning` (``CLDFAST_KERNELS``:
            cldfast.core.kernels).
        precision: ``"float64"`` (default) or ``"float32"`` co-moment accumulators.
        num_classes: number of classes; default ``max(label) + 1`` over both label sets.
        distributed: ``None`` (default) shards the state across the ranks of the default
            process group when one with more than one rank is initialised; ``False`` keeps a
            whole tracker in this process; ``True`` requires a process group.
        process_group: the group to use instead of the default one.
        num_checkpoints: optional total number of checkpoints; once that many are closed the
            tracker is finished and ``record`` / ``end_epoch`` raise instead of silently
            extending the trajectory.

    Usage, once per batch / epoch::

        tracker.record(indices, losses)                  # or record(indices, logits=, targets=)
        tracker.record_validation(val_losses)            # all of V, or with indices
        tracker.end_epoch()
        scores = tracker.scores()                        # [N], NaN = no score
    """

    state_key = "tracker"

    def __init__(self, train_labels: Any, val_labels: Any, *, per_class: bool = True,
                 device: str | torch.device | None = None, precision: str = "float64",
                 num_classes: int | None = None, distributed: bool | None = None,
                 process_group: Any = None, num_checkpoints: int | None = None) -> None:
        labels, val, num_classes = checks.tracker_labels(train_labels, val_labels, num_classes,
                                                         precision, num_checkpoints)
        self.num_checkpoints = None if num_checkpoints is None else int(num_checkpoints)
        self.device = checks.resolve_device(device)
        # The kernels' path on this device (native, or the torch twins with one
        # KernelFallbackWarning per device type); raises here rather than at the first record()
        # when CLDFAST_KERNELS=native and no compiled kernels cover the device.
        _ops.uses_native(self.device, stacklevel=2)
        self._group = process_group
        self.distributed, self.world_size, self.rank = ddist.discover(distributed, process_group)
        self.num_samples = int(labels.numel())
        self.num_val = int(val.numel())
        self.num_classes = num_classes
        self.per_class = bool(per_class)
        self.precision = precision
        # This rank's shard of the samples: [lo, hi), `chunk` wide except for the last ones.
        self._chunk = max(1, math.ceil(self.num_samples / self.world_size))
        self._lo = min(self.rank * self._chunk, self.num_samples)
        self._hi = min(self._lo + self._chunk, self.num_samples)
        val_counts = torch.bincount(val, minlength=self.num_classes)
        missing = ((torch.bincount(labels, minlength=self.num_classes) > 0)
                   & (val_counts == 0)).nonzero().flatten().tolist()
        self.classes_without_validation = missing
        if missing and self.per_class and self.rank == 0:
            shown = ", ".join(map(str, missing[:20])) + (" ..." if len(missing) > 20 else "")
            warnings.warn(
                f"{len(missing)} class(es) have training samples but no validation samples "
                f"(classes {shown}); their samples are correlated with the global validation "
                "trajectory instead", CLDWarning, stacklevel=2)
        self._declare_state(labels, val, val_counts > 0)
        self._staging: dict[torch.dtype, torch.Tensor] = {}  # device copies of CPU indices
        # record() inside a CUDA graph: a replay runs the kernels but not the Python that sets
        # _recorded, so record() also writes this device marker while a graph is captured.
        self._capture_marker = (torch.zeros((), dtype=torch.float64, device=self.device)
                                if self.device.type == "cuda" else None)
        self._captured = False  # record() was captured in a CUDA graph at least once

    def _declare_state(self, labels: torch.Tensor, val: torch.Tensor,
                       val_has_class: torch.Tensor) -> None:
        """Everything the tracker holds, declared once (cldfast.core.state): the checkpoint
        entries, their checks, the epoch reset, the cross-rank sums and ``nbytes`` follow."""
        dev, n, chunk, c = self.device, self._hi - self._lo, self._chunk, self.num_classes
        # Facts of the run: saved and compared on load. Labels are rebuilt from the
        # constructor's arguments and compared by digest (training) or value (validation).
        self.add_config("format", STATE_FORMAT, message=None)  # checked by tracker_state
        self.add_config("version", _core.__version__, message=None)
        for key in ("num_samples", "num_classes", "per_class", "precision"):
            self.add_config(key, getattr(self, key))
        self.add_config("world_size", self.world_size, message=None)  # tracker_state reshards
        self.add_config("rank", self.rank, message=None)
        self.add_config("num_checkpoints", self.num_checkpoints, message=None)
        self.add_config("train_labels_sha256", _labels_digest(labels),
                        message="tracker state was built for different train_labels (same N, "
                        "different classes): it belongs to another dataset or split")
        # int16 labels keep the per-sample state within 64 bytes; int32 beyond 32767 classes.
        label_dtype = torch.int16 if c <= 2**15 - 1 else torch.int32
        self.add_state("_labels", labels[self._lo:self._hi].to(label_dtype).to(dev), key=None)
        self.add_state("_val_labels", val.to(label_dtype).to(dev), key=None)
        self.add_config("val_labels", self._val_labels, message="tracker state was built for "
                        "different val_labels: it belongs to another validation split")
        self.add_state("_val_has_class", val_has_class.to(dev), key=None)
        # Progress and counters (the same on every rank but observed_per_checkpoint: its shard's).
        self.add_value("checkpoint", 0)
        self.add_value("nonfinite_train", 0, default=0, decode=int)
        self.add_value("nonfinite_val", 0, default=0, decode=int)
        self.add_value("observed_per_checkpoint", [], default=[], decode=_int_list)
        self.add_value("_recorded_any", False, key="recorded", default=False)
        self.add_value("_val_recorded", False, key="val_recorded", default=False, decode=bool)
        # The open epoch ([W, 2, chunk] float32 loss sums and counts), this rank's shard of it
        # after the reduce-scatter, and the shard's per-sample CLD state.
        self.add_state("_epoch", torch.zeros(self.world_size, 2, chunk, dtype=torch.float32,
                                             device=dev), key="epoch", reset=0.0)
        self.add_state("_shard", torch.zeros(2 * chunk, dtype=torch.float32, device=dev)
                       if self.distributed else None, key=None)
        self.add_state("_last", torch.zeros(n, dtype=torch.float32, device=dev), key="last")
        self.add_state("_i32", torch.zeros(2, n, dtype=torch.int32, device=dev), key="i32_state")
        self._i32[0].fill_(-1)  # last observed checkpoint: never
        self.add_state("_acc", torch.zeros(5, n, dtype=checks.PRECISIONS[self.precision],
                                           device=dev), key="acc")
        self.add_state("_flags", torch.zeros(_ops.NUM_FLAGS, dtype=torch.int64, device=dev),
                       key="flags", reset=0.0)
        # Open epoch's validation losses per validation sample: [2, Q] float64 sums and counts
        # of finite losses. A sample recorded several times (DistributedSampler padding, or two
        # ranks evaluating it) contributes the mean of its losses once, as training samples do.
        self.add_state("_val_samples", torch.zeros(2, self.num_val, dtype=torch.float64,
                                                   device=dev), key="val_samples", reset=0.0,
                       reduce="sum")
        self.add_state("_val_nonfinite", torch.zeros((), dtype=torch.int64, device=dev),
                       key="val_nonfinite", reset=0.0, reduce="sum", encode=int, default=0)
        # Validation loss per class at the checkpoints some sample may still be paired with:
        # row r holds checkpoint _history_base + r. Rows no sample refers to are dropped, so
        # with every sample seen every epoch this holds one or two rows, whatever the epochs.
        self.add_value("_history_base", 0, key="history_base", decode=int)
        self.add_state("_val_history", torch.zeros(4, c, dtype=torch.float64, device=dev),
                       key="val_history", rows=_history_rows)
        # Host copy of the validation row of every checkpoint, for reporting.
        self.add_value("_val_trajectory", torch.zeros(0, c, dtype=torch.float64),
                       key="val_trajectory", decode=_float64_rows)

    @property
    def shard(self) -> tuple[int, int]:
        """[lo, hi): the training positions whose CLD state this process holds."""
        return self._lo, self._hi

    # ------------------------------------------------------------------ recording
    def _stage(self, indices: torch.Tensor) -> torch.Tensor:
        """Copy CPU indices into a reused device buffer (no allocation once it is big enough).

        Reuse is safe without synchronisation: the copy and the kernels that read the buffer
        are ordered on the same stream. From pinned memory (DataLoader(pin_memory=True)) the
        copy is asynchronous.
        """
        if torch.compiler.is_compiling():  # the compiled graph allocates its own copy
            return indices.to(self.device, non_blocking=True)
        buf = self._staging.get(indices.dtype)
        n = indices.shape[0]
        if buf is None or buf.shape[0] < n:
            buf = torch.empty(max(n, 1024), dtype=indices.dtype, device=self.device)
            self._staging[indices.dtype] = buf
        out = buf[:n]
        out.copy_(indices, non_blocking=True)  # pageable memory is staged by CUDA first
        return out

    def _mark_if_captured(self) -> None:
        """Inside CUDA graph capture, note this epoch's record() on the device (see
        _capture_marker), where graph replays repeat it."""
        if self._capture_marker is not None and torch.cuda.is_current_stream_capturing():
            self._capture_marker.fill_(1.0)
            self._captured = True

    @property
    def _recorded_any(self) -> bool:
        """record() ran this epoch, eagerly, compiled or in a replayed CUDA graph (a host
        sync only for a tracker whose record() was captured in a graph)."""
        return self._recorded or (self._captured and bool(self._capture_marker))

    @_recorded_any.setter
    def _recorded_any(self, value: bool) -> None:
        self._recorded = bool(value)

    @property
    def checkpoint(self) -> int:
        """The number of checkpoints closed so far."""
        return self._checkpoint

    @checkpoint.setter
    def checkpoint(self, value: int) -> None:
        self._checkpoint = int(value)
        # A flag that changes once per run: compiled code that calls record() guards on it
        # rather than on the checkpoint number (which would recompile every epoch).
        self._all_closed = (self.num_checkpoints is not None
                            and self._checkpoint >= self.num_checkpoints)

    def _check_open(self, what: str) -> None:
        if self._all_closed:
            raise RuntimeError(f"{what} after the final checkpoint: this tracker was built for "
                               f"num_checkpoints={self.num_checkpoints} and all are closed; read "
                               "scores() or build a tracker with more checkpoints")

    def record(self, indices: Any, losses: torch.Tensor | None = None, *,
               logits: torch.Tensor | None = None,
               targets: torch.Tensor | None = None) -> torch.Tensor | None:
        """Record one batch of per-sample training losses into the open epoch.

        Args:
            indices: [B] int64/int32 positions in the training split (CPU or tracker device).
            losses: [B] per-sample losses (float32/float16/bfloat16/float64) on the tracker's
                device; any autograd graph is ignored.
            logits, targets: instead of ``losses``: [B, C] logits and [B] int64/int32 class
                ids. The per-sample cross-entropy is computed and recorded by one kernel and
                returned as a float32 [B] tensor that carries autograd back to ``logits``.

        Returns ``None`` for the ``losses`` form, the cross-entropy [B] for the fused form.
        Out-of-range indices or targets are flagged by the kernel and reported by
        :meth:`end_epoch`; non-finite losses are skipped and counted.

        Both forms can be captured by ``torch.compile`` (also ``fullgraph=True``): while dynamo
        traces, the kernels run as the custom operators of :mod:`cldfast.core.ops`, and
        indices are then tensors (CPU or the tracker's device). Both can also be captured in
        a CUDA graph (static index, loss or logits buffers on the tracker's device).
        """
        self._check_open("record()")
        compiling = torch.compiler.is_compiling()
        if (losses is None) == (logits is None):
            raise ValueError("record() takes either losses or logits= and targets=, not both/neither")
        index = checks.index_tensor(indices, self.device, self._stage)
        if losses is not None:
            if targets is not None:
                raise ValueError("targets= is only used with logits=")
            checks.check_losses(losses, index.shape[0], self.device)
            if compiling:
                _custom.record(index, losses.detach(), self._epoch, self.num_samples, self._flags)
            else:
                _ops.record(index, losses.detach(), self._epoch, self.num_samples, self._flags)
                self._mark_if_captured()
            self._recorded = True
            return None
        checks.check_logits(logits, targets, index.shape[0], self.device)
        self._recorded = True
        if compiling:
            return _custom.fused_cross_entropy(index, logits, targets, self._epoch,
                                               self.num_samples, self._flags)
        self._mark_if_captured()
        if logits.shape[1] > 0 and logits.stride(1) != 1:
            logits = logits.contiguous()
        if not (logits.requires_grad and torch.is_grad_enabled()):
            # No graph to build (an eval pass): skip the autograd machinery.
            return _ops.record_ce(index, logits, targets, self._epoch, self.num_samples,
                                  self._flags)[0]
        return _FusedCrossEntropy.apply(logits, targets, index, self)

    def record_validation(self, losses: torch.Tensor, indices: Any = None) -> None:
        """Record validation losses for the open epoch.

        Args:
            losses: [Q] losses of all of V in order, or [B] losses of the validation samples
                at ``indices`` (positions in V). Any device; non-finite values are skipped
                and counted in ``nonfinite_val``.
            indices: optional [B] int positions in the validation set.

        Each class's checkpoint value is the mean, over its validation samples with a finite
        loss this epoch, of each sample's mean loss. Under torch.distributed the losses of all
        ranks are combined, so ranks may split V between them; a sample recorded several times
        (on one rank or several, e.g. DistributedSampler padding) counts once, with the mean of
        its losses.

        It can be captured by ``torch.compile`` (also ``fullgraph=True``, e.g. inside a
        compiled evaluation step); there the range of ``indices`` is checked by an assertion
        in the graph instead of before anything is added.
        """
        self._check_open("record_validation()")
        checks.check_1d("val losses", losses)
        if not losses.is_floating_point():
            raise TypeError(f"val losses must be floating point; got {losses.dtype}")
        losses = losses.detach().to(self.device, torch.float64)
        pos = checks.val_positions(losses, indices, self.num_val, self.device)
        finite = torch.isfinite(losses)
        self._val_nonfinite += (~finite).sum()
        values = torch.where(finite, losses, torch.zeros_like(losses))
        if pos is None:
            self._val_samples[0] += values
            self._val_samples[1] += finite.to(torch.float64)
        else:
            self._val_samples[0].index_add_(0, pos, values)
            self._val_samples[1].index_add_(0, pos, finite.to(torch.float64))
        self._val_recorded = True

    # ------------------------------------------------------------------ epochs
    def _collective_checks(self) -> tuple[list[int], torch.Tensor, torch.Tensor, int]:
        """Counters and validation sums of the open epoch, summed over all ranks (one small
        all-reduce). Returns (flag counts, val_sum, val_count, val_nonfinite); nothing is
        changed."""
        slots = [_ops.BAD_INDEX_COUNT, _ops.NON_FINITE, _ops.BAD_TARGET_COUNT]
        opened = torch.tensor([float(self._recorded), float(self._val_recorded)],
                              dtype=torch.float64, device=self.device)
        if self._captured:  # replayed CUDA graphs set the device marker, not _recorded
            opened[0] += self._capture_marker
        val_samples, val_nonfinite, flags, opened = self.summed_states(
            [self._flags[slots], opened], group=self._group, distributed=self.distributed)
        host = torch.cat([flags, val_nonfinite.reshape(1), opened]).tolist()  # the one host sync
        counts = [int(v) for v in host[:3]]
        recorded, val_recorded = host[4] > 0, host[5] > 0
        if not recorded:
            raise RuntimeError("end_epoch() called but record() was not called since the last "
                               "checkpoint; record this epoch's training losses first")
        if not val_recorded:
            raise RuntimeError("end_epoch() needs this epoch's validation losses: call "
                               "record_validation() before end_epoch()")
        sums, seen = val_samples[0], val_samples[1]
        has = seen > 0
        cls = self._val_labels.long()
        val_sum = torch.zeros(self.num_classes, dtype=torch.float64, device=self.device)
        val_sum.index_add_(0, cls, torch.where(has, sums / seen.clamp_min(1), torch.zeros_like(sums)))
        val_count = torch.zeros(self.num_classes, dtype=torch.int64, device=self.device)
        val_count.index_add_(0, cls, has.to(torch.int64))
        return counts, val_sum, val_count, int(host[3])

    def _raise_flagged(self, counts: list[int]) -> None:
        if not (counts[0] or counts[2]):
            return
        local = self._flags[[_ops.BAD_INDEX_COUNT, _ops.FIRST_BAD_INDEX, _ops.BAD_TARGET_COUNT,
                             _ops.FIRST_BAD_TARGET]].tolist()
        where = "" if not self.distributed else f" (over all ranks; this is rank {self.rank})"
        if counts[0]:
            self._flags[_ops.BAD_INDEX_COUNT] = 0
            example = f", e.g. {local[1]}" if local[0] else " on other ranks"
            raise IndexError(
                f"record() received {counts[0]} index(es) outside [0, {self.num_samples}){example}"
                f"{where}; they were ignored. Indices must be positions in the training split the "
                "tracker was built for. The epoch is still open: call end_epoch() again to close it "
                "with the valid observations, or discard_epoch() to drop them")
        if counts[2]:
            self._flags[_ops.BAD_TARGET_COUNT] = 0
            example = f", e.g. {local[3]}" if local[2] else " on other ranks"
            raise IndexError(
                f"record(logits=, targets=) received {counts[2]} target(s) outside the logits' "
                f"class range{example}{where}; those rows were not recorded (their loss is NaN). "
                "The epoch is still open: end_epoch() again closes it, discard_epoch() drops it")

    def _validation_row(self, val_sum: torch.Tensor, val_count: torch.Tensor) -> torch.Tensor:
        missing = self._val_has_class & (val_count == 0)
        if bool(missing.any()):
            classes = missing.nonzero().flatten().tolist()
            raise RuntimeError(
                f"no finite validation loss was recorded this epoch for class(es) {classes[:20]}, "
                "which have validation samples; call record_validation() with losses of all of V")
        global_mean = val_sum.sum() / val_count.sum()
        if not self.per_class:
            return global_mean.expand(self.num_classes)
        per_class = val_sum / val_count.clamp_min(1)
        return torch.where(self._val_has_class, per_class, global_mean)

    def end_epoch(self) -> int:
        """Close the current checkpoint and fold its differences into the CLD state.

        Under torch.distributed every rank must call it (it runs the collectives). Returns
        the number of training samples of this process's shard observed in this epoch.
        Raises, leaving the epoch open and the state unchanged, when nothing was recorded,
        when validation losses are missing, or when ``record`` saw out-of-range indices or
        targets (on any rank).
        """
        self._check_open("end_epoch()")
        counts, val_sum, val_count, val_nonfinite = self._collective_checks()
        self._raise_flagged(counts)
        row = self._validation_row(val_sum, val_count)
        if self.distributed:
            ddist.reduce_scatter_sum(self._shard, self._epoch.reshape(-1), group=self._group)
            shard = self._shard.view(2, self._chunk)
        else:
            shard = self._epoch[0]
        t = self.checkpoint
        r = t - self._history_base
        if r >= self._val_history.shape[0]:
            grown = torch.zeros(2 * self._val_history.shape[0], self.num_classes,
                                dtype=torch.float64, device=self.device)
            grown[:r] = self._val_history[:r]
            self._val_history = grown
        self._val_history[r] = row
        self._val_trajectory = torch.cat([self._val_trajectory, row.to("cpu")[None]])
        # In one process the shard is the open-epoch buffer itself: the kernel clears it as it
        # reads it (one pass over the buffer instead of two).
        _ops.end_epoch(self._labels, self._val_history, self._history_base, t, shard, self._last,
                       self._i32, self._acc, self._flags, clear_epoch=not self.distributed)
        observed, oldest = self._flags[[_ops.OBSERVED, _ops.MIN_LAST_CHECKPOINT]].tolist()
        oldest = min(oldest, t)
        if oldest > self._history_base:
            keep = t + 1 - oldest
            self._val_history[:keep] = self._val_history[oldest - self._history_base: r + 1].clone()
            self._history_base = oldest
        self.nonfinite_train += counts[1]
        self.nonfinite_val += val_nonfinite
        self._clear_epoch(epoch_buffer=self.distributed)
        self.observed_per_checkpoint.append(int(observed))
        self.checkpoint = t + 1
        return int(observed)

    def _clear_epoch(self, epoch_buffer: bool = True) -> None:
        self.reset_states(None if epoch_buffer else ["_flags", "_val_samples", "_val_nonfinite"])
        self._recorded = False
        self._val_recorded = False
        if self._capture_marker is not None:
            self._capture_marker.zero_()

    def discard_epoch(self) -> None:
        """Drop everything recorded since the last checkpoint (training and validation)."""
        self._clear_epoch()

    # ------------------------------------------------------------------ results
    def _gather(self, local: torch.Tensor, gather: str | None) -> torch.Tensor | None:
        if not self.distributed or gather is None:
            return local
        if gather not in ("all", "rank0"):
            raise ValueError(f"gather must be 'all', 'rank0' or None; got {gather!r}")
        padded = torch.full((self._chunk,), float("nan") if local.is_floating_point() else 0,
                            dtype=local.dtype, device=local.device)
        padded[: local.shape[0]] = local
        if gather == "all":
            out = torch.empty(self.world_size * self._chunk, dtype=local.dtype, device=local.device)
            ddist.all_gather_flat(out, padded, group=self._group)
            return out[: self.num_samples]
        whole = ddist.gather_to_first(padded, group=self._group)
        return whole[: self.num_samples] if whole is not None else None

    def scores(self, gather: str | None = "all") -> torch.Tensor | None:
        """CLD score of every training sample: [N] in the accumulator dtype, on the tracker's
        device. NaN where a sample has fewer than 2 loss differences; 0 for a zero-variance
        series.

        Under torch.distributed: ``gather="all"`` (default) returns all N scores on every
        rank; ``"rank0"`` only on rank 0 (others get None); ``None`` returns this rank's
        shard (positions :attr:`shard`). Every rank must call it unless ``gather=None``.

        ``scores()`` is the CLD tensor wherever it appears (the tracker, the framework
        callbacks); the training-batch recorders (the baselines' recorders, the pruners,
        :class:`~cldfast.core.TrackerRecorder`) return their named [N] numpy arrays from
        ``score_arrays()``.
        """
        return self._gather(_ops.scores(self._i32, self._acc), gather)

    def num_differences(self, gather: str | None = "all") -> torch.Tensor | None:
        """[N] int32: loss differences folded in per sample (``gather`` as for :meth:`scores`)."""
        return self._gather(self._i32[1].clone(), gather)

    def train_labels(self, gather: str | None = "all") -> torch.Tensor | None:
        """[N] int32: the class of every training position (``gather`` as for :meth:`scores`)."""
        return self._gather(self._labels.to(torch.int32), gather)

    # ------------------------------------------------------------------ files
    def save(self, path: Any, *, train_indices: Any = None, val_indices: Any = None,
             metadata: Mapping[str, Any] | None = None,
             extra: Mapping[str, Any] | None = None) -> Any:
        """Write the scores to ``path`` as the scores file that ``cldfast select`` and
        ``cldfast export`` read (a .npz, written atomically by :func:`cldfast.io.save_scores`).

        Args:
            train_indices: [N] original dataset index of each training position (default:
                the positions themselves, i.e. the training split is the whole dataset).
            val_indices: [Q] original dataset indices of the validation samples (default:
                unknown, stored as -1).
            metadata: extra JSON-serialisable facts to store (dataset name, model, the loss
                source: "eval" for the paper's estimator, "train" for the approximation...).
            extra: further named [N] arrays (e.g. other per-sample scores).

        Under torch.distributed every rank must call it; rank 0 writes and returns the path,
        the others return None. The number of differences each score rests on is stored as
        the extra array ``num_differences``.
        """
        sf = tracker_scores_file(self, train_indices=train_indices, val_indices=val_indices,
                                 metadata={"source": "CLDTracker.save", **dict(metadata or {})},
                                 extra=extra)
        return None if sf is None else _io.save_scores(path, sf)

    # ------------------------------------------------------------------ deprecated
    def _as_recorder(self, old: str) -> TrackerRecorder:
        warnings.warn(f"CLDTracker.{old} is deprecated: wrap the tracker in "
                      "cldfast.core.TrackerRecorder(tracker) to use it as a BatchRecorder",
                      DeprecationWarning, stacklevel=3)
        return TrackerRecorder(self)

    def on_batch(self, positions: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor,
                 epoch: int) -> None:
        """Deprecated: :meth:`cldfast.core.TrackerRecorder.on_batch`."""
        self._as_recorder("on_batch()").on_batch(positions, logits, targets, epoch)

    def on_epoch_end(self, epoch: int) -> None:
        """Deprecated: :meth:`cldfast.core.TrackerRecorder.on_epoch_end`."""
        self._as_recorder("on_epoch_end()").on_epoch_end(epoch)

    def score_arrays(self) -> dict[str, np.ndarray]:
        """Deprecated: :meth:`cldfast.core.TrackerRecorder.score_arrays`."""
        return self._as_recorder("score_arrays()").score_arrays()

    @property
    def val_trajectory(self) -> torch.Tensor:
        """[checkpoints, C] float64 (CPU): the validation loss each class was correlated with,
        after the per-class / global choice and the fallback for classes without validation."""
        return self._val_trajectory.clone()

    def _extra_tensors(self) -> list[torch.Tensor]:
        # nbytes (cldfast.core.state): the declared buffers plus the host copy of the
        # validation trajectory and the staging buffers of CPU indices.
        return [self._val_trajectory, *self._staging.values()]

    def summary(self) -> dict[str, Any]:
        """Counts worth reporting next to the scores (this process's view; the observed
        counts are of its shard)."""
        return {
            "num_samples": self.num_samples,
            "num_val": self.num_val,
            "num_classes": self.num_classes,
            "checkpoints": self.checkpoint,
            "per_class": self.per_class,
            "precision": self.precision,
            "world_size": self.world_size,
            "rank": self.rank,
            "shard": list(self.shard),
            "nonfinite_train_losses": self.nonfinite_train,
            "nonfinite_val_losses": self.nonfinite_val,
            "classes_without_validation": list(self.classes_without_validation),
            "observed_per_checkpoint": list(self.observed_per_checkpoint),
            "nbytes": self.nbytes,
        }

    # ------------------------------------------------------------------ resume
    # state_dict(): every declared entry (see _declare_state and cldfast.core.state). Mid-epoch
    # state is included; under torch.distributed each rank saves its own shard.

    @staticmethod
    def consolidate_states(states: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """One whole-run state (``world_size=1``) from the states of all ranks of a
        distributed tracker (any order), loadable at any number of processes. Checks that
        they are the ranks 0..W-1 of one run at one checkpoint before combining anything."""
        return tracker_state.consolidate(states)

    def load_state_dict(self, state: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> None:
        """Restore a :meth:`state_dict`. Everything is checked before anything is changed.

        At any world size: ``state`` may be this rank's own state (saved by the same rank of
        the same number of processes), a whole-run state (``world_size == 1``: one process,
        or :meth:`consolidate_states` of every rank's state) or the list of every rank's
        states. A state saved by another number of processes is resharded: each rank takes
        its slice of the per-sample state, and the open epoch (sums, counts, validation
        losses, error counters) goes to rank 0, where ``end_epoch``'s collectives find it.
        """
        state = tracker_state.for_rank(state, rank=self.rank, world=self.world_size,
                                       num_samples=self.num_samples, shard=self.shard,
                                       chunk=self._chunk)
        t, base = int(state["checkpoint"]), int(state["history_base"])
        if self.num_checkpoints is not None and t > self.num_checkpoints:
            raise ValueError(f"tracker state has {t} checkpoints closed but this tracker was built "
                             f"for num_checkpoints={self.num_checkpoints}")
        if not 0 <= base <= t:
            raise ValueError(f"tracker state has history_base={base} outside [0, checkpoint={t}]")
        super().load_state_dict(state)
        if self._capture_marker is not None:
            self._capture_marker.zero_()

    def __repr__(self) -> str:
        dist_part = f", rank={self.rank}/{self.world_size}" if self.distributed else ""
        return (f"CLDTracker(num_samples={self.num_samples}, num_classes={self.num_classes}, "
                f"checkpoints={self.checkpoint}, per_class={self.per_class}, "
                f"precision={self.precision!r}, device={str(self.device)!r}{dist_part}, "
                f"nbytes={self.nbytes})")
