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
import torch.distributed as dist

from .. import _core
from . import distributed as ddist
from . import kernels as _ops
from . import ops as _custom
from .state import Stateful

__all__ = ["CLDTracker", "CLDWarning", "STATE_FORMAT"]

# Version of the state_dict layout; bump when it changes incompatibly.
STATE_FORMAT = 3
_REQUIRED_KEYS = ("format", "num_samples", "num_classes", "per_class", "precision", "world_size",
                  "rank", "checkpoint", "train_labels_sha256", "val_labels", "epoch", "flags",
                  "last", "i32_state", "acc", "val_samples", "history_base", "val_history")
# Keys whose value is this rank's part of the run (combined by consolidate_states).
_SHARDED_KEYS = ("epoch", "flags", "last", "i32_state", "acc", "val_samples", "val_nonfinite",
                 "history_base", "val_history", "observed_per_checkpoint", "recorded",
                 "val_recorded")

_PRECISIONS = {"float64": torch.float64, "float32": torch.float32}


class CLDWarning(UserWarning):
    """Warnings about how CLD is computed for this data (e.g. classes without validation)."""


def _as_label_tensor(name: str, labels: Any) -> torch.Tensor:
    """Checks a label vector and returns it as a CPU int64 tensor."""
    if isinstance(labels, torch.Tensor):
        t = labels.detach().cpu()
    else:
        arr = np.asarray(labels)
        if arr.dtype == object:
            raise TypeError(f"{name} must be a 1-D sequence of integer class ids; got objects")
        t = torch.from_numpy(np.ascontiguousarray(arr))
    if t.dim() != 1:
        raise ValueError(f"{name} must be 1-D [num_samples]; got shape {tuple(t.shape)}")
    if t.numel() == 0:
        return t.to(torch.int64)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        if t.is_floating_point() and bool((t == t.round()).all()) and bool(t.isfinite().all()):
            t = t.to(torch.int64)
        else:
            raise TypeError(f"{name} must hold integer class ids; got dtype {t.dtype} with "
                            "non-integer values")
    t = t.to(torch.int64)
    if int(t.min()) < 0:
        bad = int(t[t < 0][0])
        raise ValueError(f"{name} must hold class ids >= 0; found {bad} at position "
                         f"{int((t < 0).nonzero()[0])}")
    return t


def _check_1d(name: str, t: Any, expected_len: int | None = None) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(t).__name__}")
    if t.dim() != 1:
        hint = " (use reduction='none' to get per-sample losses)" if t.dim() == 0 else ""
        raise ValueError(f"{name} must be 1-D [batch]; got shape {tuple(t.shape)}{hint}")
    if expected_len is not None and t.shape[0] != expected_len:
        raise ValueError(f"{name} has {t.shape[0]} entries but indices has {expected_len}")
    return t


def _resolve_device(device: str | torch.device | None) -> torch.device:
    """The tracker's device, with its index made explicit (``cuda`` -> ``cuda:0``, ``mps`` ->
    ``mps:0``), so that it compares equal to the device of the tensors created on it. Any
    device type torch can allocate float64 on is accepted; the kernels' dispatch picks the
    native kernels or their torch twins for it."""
    dev = torch.device(device if device is not None else "cpu")
    if dev.type == "meta":
        raise ValueError("device='meta' holds no data; the tracker needs a device that computes "
                         "(e.g. 'cpu' or 'cuda')")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={str(dev)!r} was asked for but torch sees no CUDA GPU here; "
                           "use device='cpu'")
    backend = getattr(torch, dev.type, None)
    available = getattr(backend, "is_available", None)
    if dev.type != "cpu" and callable(available) and not available():
        raise RuntimeError(f"device={str(dev)!r} was asked for but torch sees no {dev.type} "
                           "device here; use device='cpu'")
    try:
        probe = torch.zeros(1, dtype=torch.float64, device=dev)
    except (RuntimeError, TypeError, NotImplementedError, AssertionError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RuntimeError(
            f"device={str(dev)!r}: torch cannot hold a float64 tensor there ({first}); the "
            "tracker keeps its validation losses in float64, so track on the CPU (the model "
            "may stay on its device: pass the losses with .cpu())") from exc
    return probe.device


# torch renamed the single-tensor collectives; use whichever this torch has.


def _labels_digest(labels: torch.Tensor) -> str:
    return hashlib.sha256(labels.to(torch.int64).numpy().tobytes()).hexdigest()[:32]


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

    def __init__(self, train_labels: Any, val_labels: Any, *, per_class: bool = True,
                 device: str | torch.device | None = None, precision: str = "float64",
                 num_classes: int | None = None, distributed: bool | None = None,
                 process_group: Any = None, num_checkpoints: int | None = None) -> None:
        labels = _as_label_tensor("train_labels", train_labels)
        val = _as_label_tensor("val_labels", val_labels)
        if labels.numel() == 0:
            raise ValueError("train_labels is empty: the tracker needs at least one training sample")
        if val.numel() == 0:
            raise ValueError("val_labels is empty: CLD correlates with validation losses, so the "
                             "validation set needs at least one sample")
        seen = int(max(int(labels.max()), int(val.max()))) + 1
        if num_classes is None:
            num_classes = seen
        elif int(num_classes) < seen:
            raise ValueError(f"num_classes={num_classes} but the labels contain class {seen - 1}")
        if labels.numel() >= 2**31 - 1:
            raise ValueError(f"at most 2**31 - 2 training samples are supported; got {labels.numel()}")
        if precision not in _PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(_PRECISIONS)}; got {precision!r}")
        if num_checkpoints is not None and int(num_checkpoints) < 1:
            raise ValueError(f"num_checkpoints must be >= 1; got {num_checkpoints}")
        self.num_checkpoints = None if num_checkpoints is None else int(num_checkpoints)
        self.device = _resolve_device(device)
        # The kernels' path on this device (native, or the torch twins with one
        # KernelFallbackWarning per device type); raises here rather than at the first record()
        # when CLDFAST_KERNELS=native and no compiled kernels cover the device.
        _ops.uses_native(self.device, stacklevel=2)

        self._group = process_group
        if distributed is None:
            distributed = (dist.is_available() and dist.is_initialized()
                           and dist.get_world_size(process_group) > 1)
        elif distributed and not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("distributed=True but torch.distributed has no initialised process "
                               "group; call torch.distributed.init_process_group first")
        self.distributed = bool(distributed)
        self.world_size = dist.get_world_size(process_group) if self.distributed else 1
        self.rank = dist.get_rank(process_group) if self.distributed else 0

        self.num_samples = int(labels.numel())
        self.num_val = int(val.numel())
        self.num_classes = int(num_classes)
        self.per_class = bool(per_class)
        self.precision = precision
        self.checkpoint = 0
        self.nonfinite_train = 0
        self.nonfinite_val = 0
        self.observed_per_checkpoint: list[int] = []  # samples of this shard seen per checkpoint

        train_counts = torch.bincount(labels, minlength=self.num_classes)
        val_counts = torch.bincount(val, minlength=self.num_classes)
        missing = ((train_counts > 0) & (val_counts == 0)).nonzero().flatten().tolist()
        self.classes_without_validation = missing
        if missing and self.per_class and self.rank == 0:
            shown = ", ".join(map(str, missing[:20])) + (" ..." if len(missing) > 20 else "")
            warnings.warn(
                f"{len(missing)} class(es) have training samples but no validation samples "
                f"(classes {shown}); their samples are correlated with the global validation "
                "trajectory instead", CLDWarning, stacklevel=2)

        dev = self.device
        acc_dtype = _PRECISIONS[precision]
        # This rank's shard of the samples: [lo, hi), `chunk` wide except for the last ones.
        self._chunk = max(1, math.ceil(self.num_samples / self.world_size))
        self._lo = min(self.rank * self._chunk, self.num_samples)
        self._hi = min(self._lo + self._chunk, self.num_samples)
        n = self._hi - self._lo
        self._digest = _labels_digest(labels)
        # int16 labels keep the per-sample state within 64 bytes; int32 beyond 32767 classes.
        label_dtype = torch.int16 if self.num_classes <= 2**15 - 1 else torch.int32
        # Every buffer is declared once (cldfast.core.state): checkpoint key, epoch reset and
        # cross-rank sum follow from the declaration. Labels are rebuilt from the constructor's
        # arguments and checked by digest, so they are not saved.
        self.add_state("_labels", labels[self._lo:self._hi].to(label_dtype).to(dev), key=None)
        self.add_state("_val_labels", val.to(label_dtype).to(dev), key=None)
        self.add_state("_val_has_class", (val_counts > 0).to(dev), key=None)
        self.add_state("_epoch", torch.zeros(self.world_size, 2, self._chunk, dtype=torch.float32,
                                             device=dev), key="epoch", reset=0.0)
        self.add_state("_shard", torch.zeros(2 * self._chunk, dtype=torch.float32, device=dev)
                       if self.distributed else None, key=None)
        self.add_state("_last", torch.zeros(n, dtype=torch.float32, device=dev), key="last")
        self.add_state("_i32", torch.zeros(2, n, dtype=torch.int32, device=dev), key="i32_state")
        self._i32[0].fill_(-1)  # last observed checkpoint: never
        self.add_state("_acc", torch.zeros(5, n, dtype=acc_dtype, device=dev), key="acc")
        self.add_state("_flags", torch.zeros(_ops.NUM_FLAGS, dtype=torch.int64, device=dev),
                       key="flags", reset=0.0)
        # Open epoch's validation losses per validation sample: [2, Q] float64 sums and counts
        # of finite losses. A sample recorded several times (DistributedSampler padding, or two
        # ranks evaluating it) contributes the mean of its losses once, as training samples do.
        self.add_state("_val_samples", torch.zeros(2, self.num_val, dtype=torch.float64, device=dev),
                       key="val_samples", reset=0.0, reduce="sum")
        self.add_state("_val_nonfinite", torch.zeros((), dtype=torch.int64, device=dev), key=None,
                       reset=0.0, reduce="sum")
        # Validation loss per class at the checkpoints some sample may still be paired with:
        # row r holds checkpoint _history_base + r. Rows no sample refers to are dropped, so
        # with every sample seen every epoch this holds one or two rows, whatever the epochs.
        self._val_history = torch.zeros(4, self.num_classes, dtype=torch.float64, device=dev)
        self._history_base = 0
        self._val_trajectory: list[torch.Tensor] = []  # host copy per checkpoint, for reporting
        self._staging: dict[torch.dtype, torch.Tensor] = {}  # device copies of CPU indices
        self._recorded = False
        self._val_recorded = False
        # record() inside a CUDA graph: a replay runs the kernels but not the Python that sets
        # _recorded, so record() also writes this device marker while a graph is captured.
        self._capture_marker = (torch.zeros((), dtype=torch.float64, device=dev)
                                if dev.type == "cuda" else None)
        self._captured = False  # record() was captured in a CUDA graph at least once

    @property
    def shard(self) -> tuple[int, int]:
        """[lo, hi): the training positions whose CLD state this process holds."""
        return self._lo, self._hi

    # ------------------------------------------------------------------ recording
    def _index_tensor(self, indices: Any, name: str = "indices") -> torch.Tensor:
        if not isinstance(indices, torch.Tensor) and torch.compiler.is_compiling():
            indices = torch.as_tensor(indices)  # no numpy in a traced graph; dtype checked below
        if not isinstance(indices, torch.Tensor):
            arr = np.asarray(indices)
            if arr.size == 0:
                arr = arr.astype(np.int64)  # an empty list has no integer dtype of its own
            if arr.dtype.kind not in "iu":
                example = arr.reshape(-1)[0] if arr.size else None
                raise TypeError(
                    f"{name} must be integer positions in the training split (0..N-1); got "
                    f"{arr.dtype} values such as {example!r}. To use your own sample ids, map "
                    "them with cldfast.IdMap(all_ids).positions(batch_ids)")
            indices = torch.from_numpy(np.ascontiguousarray(arr)).to(torch.int64)
        if indices.dtype not in _ops.INDEX_CODES:
            raise TypeError(f"{name} must be an int64 or int32 tensor of positions in the "
                            f"training split; got {indices.dtype} (use .long(), or "
                            "cldfast.IdMap for your own ids)")
        if indices.dim() != 1:
            raise ValueError(f"{name} must be 1-D [batch]; got shape {tuple(indices.shape)}")
        if indices.device != self.device:
            if indices.device.type == "cpu":
                return self._stage(indices)
            raise ValueError(f"{name} is on {indices.device} but the tracker is on {self.device}; "
                             "indices may be on the CPU or on the tracker's device")
        return indices

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

    def _was_recorded(self) -> bool:
        """record() ran this epoch, eagerly, compiled or in a replayed CUDA graph (a host
        sync only for a tracker whose record() was captured in a graph)."""
        return self._recorded or (self._captured and bool(self._capture_marker))

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

    def _check_device(self, name: str, t: torch.Tensor) -> None:
        if t.device != self.device:
            raise ValueError(f"{name} is on {t.device} but the tracker is on {self.device}; "
                             f"create the tracker with device={str(t.device)!r} or move {name}")

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
        index = self._index_tensor(indices)
        if losses is not None:
            if targets is not None:
                raise ValueError("targets= is only used with logits=")
            _check_1d("losses", losses, index.shape[0])
            if losses.dtype not in _ops.FLOAT_CODES:
                raise TypeError(f"losses must be float32, float16, bfloat16 or float64; got {losses.dtype}")
            self._check_device("losses", losses)
            if compiling:
                _custom.record(index, losses.detach(), self._epoch, self.num_samples, self._flags)
            else:
                _ops.record(index, losses.detach(), self._epoch, self.num_samples, self._flags)
                self._mark_if_captured()
            self._recorded = True
            return None
        if targets is None:
            raise ValueError("record(indices, logits=...) also needs targets=")
        if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
            shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise ValueError(f"logits must be a 2-D tensor [batch, classes]; got {shape}")
        if logits.dtype not in _ops.FLOAT_CODES:
            raise TypeError(f"logits must be float32, float16, bfloat16 or float64; got {logits.dtype}")
        if logits.shape[0] != index.shape[0]:
            raise ValueError(f"logits has {logits.shape[0]} rows but indices has {index.shape[0]}")
        self._check_device("logits", logits)
        _check_1d("targets", targets, index.shape[0])
        if targets.dtype not in _ops.INDEX_CODES:
            raise TypeError(f"targets must be int64 or int32 class ids; got {targets.dtype}")
        self._check_device("targets", targets)
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
        _check_1d("val losses", losses)
        if not losses.is_floating_point():
            raise TypeError(f"val losses must be floating point; got {losses.dtype}")
        losses = losses.detach().to(self.device, torch.float64)
        if indices is None:
            if losses.shape[0] != self.num_val:
                raise ValueError(f"record_validation got {losses.shape[0]} losses without indices; "
                                 f"expected all {self.num_val} validation samples, or pass indices")
            pos = None
        else:
            idx = torch.as_tensor(indices)
            if idx.dtype not in _ops.INDEX_CODES or idx.dim() != 1:
                raise TypeError(f"val indices must be a 1-D int64/int32 tensor; got {idx.dtype} "
                                f"with shape {tuple(idx.shape)}")
            if idx.shape[0] != losses.shape[0]:
                raise ValueError(f"val losses has {losses.shape[0]} entries but indices has {idx.shape[0]}")
            if torch.compiler.is_compiling():  # no host sync in a graph: checked where it runs
                torch._assert_async(((idx >= 0) & (idx < self.num_val)).all(),
                                    f"val index out of range [0, {self.num_val})")
            elif idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.num_val):
                bad = idx[(idx < 0) | (idx >= self.num_val)][0]
                raise IndexError(f"val index {int(bad)} is out of range [0, {self.num_val})")
            pos = idx.to(self.device).long()
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
        self._val_trajectory.append(row.to("cpu", copy=True))
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
        """
        return self._gather(_ops.scores(self._i32, self._acc), gather)

    def num_differences(self, gather: str | None = "all") -> torch.Tensor | None:
        """[N] int32: loss differences folded in per sample (``gather`` as for :meth:`scores`)."""
        return self._gather(self._i32[1].clone(), gather)

    # ------------------------------------------------------------------ BatchRecorder
    def on_batch(self, positions: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor,
                 epoch: int) -> None:
        """The :class:`cldfast.training.BatchRecorder` hook: record the batch's cross-entropy
        from its (detached) logits, i.e. train-mode losses. Used as a recorder the tracker
        still needs the loop to close each checkpoint with ``record_validation`` and
        ``end_epoch``; ``cldfast.training.fit`` does that (and the paper's eval-mode losses)
        through its ``tracking=`` argument."""
        self.record(positions, logits=logits.detach(), targets=targets)

    def on_epoch_end(self, epoch: int) -> None:
        """The BatchRecorder hook: close the checkpoint (``end_epoch``). The epoch's
        validation losses must be in first (``record_validation``); without them this raises
        rather than let two epochs run together."""
        # Under torch.distributed end_epoch checks for validation losses on all ranks together
        # (a rank with an empty validation shard may have none); one process checks here.
        if not self._val_recorded and not self.distributed:
            raise RuntimeError(
                f"CLDTracker.on_epoch_end({epoch}): no validation losses were recorded this "
                "epoch. Used as a BatchRecorder, the tracker needs record_validation() before "
                "on_epoch_end(); in cldfast.training.fit pass it as tracking= instead of in "
                "recorders=, which runs the validation (and eval-mode) passes for it")
        self.end_epoch()

    def score_arrays(self) -> dict[str, np.ndarray]:
        """The recorder view of the results: ``{"cld": [N], "num_differences": [N]}``."""
        return {"cld": self.scores().double().cpu().numpy(),
                "num_differences": self.num_differences().cpu().numpy().astype(np.int64)}

    def save(self, path: Any, *, train_indices: Any = None, val_indices: Any = None,
             metadata: Mapping[str, Any] | None = None,
             extra: Mapping[str, Any] | None = None) -> Any:
        """Write the scores to ``path`` as the scores file that ``cldfast select`` and
        ``cldfast export`` read (a .npz, written atomically).

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
        from .. import io as _io  # the file format lives with the other readers and writers

        scores = self.scores(gather="rank0" if self.distributed else "all")
        ndiff = self.num_differences(gather="rank0" if self.distributed else "all")
        labels = self._gather(self._labels.to(torch.int32), "rank0" if self.distributed else "all")
        if self.distributed and self.rank != 0:
            return None
        n = self.num_samples
        tr = np.arange(n) if train_indices is None else np.asarray(train_indices)
        if tr.shape != (n,) or tr.dtype.kind not in "iu":
            raise ValueError(f"train_indices must be {n} integers (one per training position); "
                             f"got shape {tr.shape} and dtype {tr.dtype}")
        va = np.full(self.num_val, -1) if val_indices is None else np.asarray(val_indices)
        if va.shape != (self.num_val,) or va.dtype.kind not in "iu":
            raise ValueError(f"val_indices must be {self.num_val} integers; got shape {va.shape} "
                             f"and dtype {va.dtype}")
        arrays = {"num_differences": ndiff.cpu().numpy().astype(np.int64)}
        for key, value in (extra or {}).items():
            arr = np.asarray(value)
            if arr.shape != (n,):
                raise ValueError(f"extra[{key!r}] has shape {arr.shape}; expected ({n},)")
            arrays[key] = arr
        meta = {"source": "CLDTracker.save", "checkpoints": self.checkpoint,
                "per_class": self.per_class, "precision": self.precision,
                "version": _core.__version__, "num_classes": self.num_classes,
                "nonfinite_train_losses": self.nonfinite_train,
                "nonfinite_val_losses": self.nonfinite_val, **dict(metadata or {})}
        return _io.save_scores(path, _io.ScoresFile(
            scores.cpu().numpy().astype(np.float64), labels.cpu().numpy().astype(np.int64),
            tr.astype(np.int64), va.astype(np.int64), meta, arrays))

    @property
    def val_trajectory(self) -> torch.Tensor:
        """[checkpoints, C] float64 (CPU): the validation loss each class was correlated with,
        after the per-class / global choice and the fallback for classes without validation."""
        if not self._val_trajectory:
            return torch.zeros(0, self.num_classes, dtype=torch.float64)
        return torch.stack(self._val_trajectory)

    def _extra_tensors(self) -> list[torch.Tensor]:
        # nbytes (cldfast.core.state): the declared buffers plus these (epoch buffer, shard
        # state, labels, validation state and the host copy of the validation trajectory).
        return [self._val_history, *self._val_trajectory, *self._staging.values()]

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
    def state_dict(self) -> dict[str, Any]:
        """Everything this process needs to resume, as CPU tensors and plain Python values
        (a snapshot: later updates do not change it). Mid-epoch state is included. Under
        torch.distributed each rank saves its own and reloads it with the same world size."""
        return {
            "format": STATE_FORMAT,
            "version": _core.__version__,
            "num_samples": self.num_samples,
            "num_classes": self.num_classes,
            "per_class": self.per_class,
            "precision": self.precision,
            "world_size": self.world_size,
            "rank": self.rank,
            "num_checkpoints": self.num_checkpoints,
            "checkpoint": self.checkpoint,
            "nonfinite_train": self.nonfinite_train,
            "nonfinite_val": self.nonfinite_val,
            "observed_per_checkpoint": list(self.observed_per_checkpoint),
            "recorded": self._was_recorded(),
            "val_recorded": self._val_recorded,
            "train_labels_sha256": self._digest,
            "val_labels": self._val_labels.cpu().clone(),
            **self.saved_states(),  # epoch, flags, last, i32_state, acc, val_samples
            "val_nonfinite": int(self._val_nonfinite),
            "history_base": self._history_base,
            "val_history": self._val_history[: self.checkpoint - self._history_base].cpu().clone(),
            "val_trajectory": self.val_trajectory,
        }

    @staticmethod
    def _check_format(state: Mapping[str, Any]) -> None:
        if "format" in state and state["format"] != STATE_FORMAT:
            raise ValueError(f"tracker state has format {state['format']} (cldfast "
                             f"{state.get('version', '?')}); this cldfast reads format {STATE_FORMAT}")
        missing = [k for k in _REQUIRED_KEYS if k not in state]
        if missing:
            raise KeyError(f"tracker state is missing {missing}; is it a CLDTracker.state_dict()?")

    @classmethod
    def consolidate_states(cls, states: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """One whole-run state (``world_size=1``) from the states of all ranks of a
        distributed tracker (any order), loadable at any number of processes. Checks that
        they are the ranks 0..W-1 of one run at one checkpoint before combining anything."""
        states = list(states)
        for s in states:
            if not isinstance(s, Mapping):
                raise TypeError(f"each rank's tracker state must be a dict; got {type(s).__name__}")
            cls._check_format(s)
        world = int(states[0]["world_size"])
        ranks = sorted(int(s["rank"]) for s in states)
        if ranks != list(range(world)) or any(int(s["world_size"]) != world for s in states):
            raise ValueError(f"consolidating tracker states needs exactly one state of each rank "
                             f"0..W-1 of one run; got ranks {ranks} of world sizes "
                             f"{sorted({int(s['world_size']) for s in states})}")
        states.sort(key=lambda s: int(s["rank"]))
        first = states[0]
        for key in ("num_samples", "num_classes", "per_class", "precision", "checkpoint",
                    "train_labels_sha256", "num_checkpoints"):
            values = {repr(s.get(key)) for s in states}
            if len(values) > 1:
                raise ValueError(f"tracker states of one run disagree on {key!r}: {sorted(values)}")
        if world == 1:
            return dict(first)
        n = int(first["num_samples"])
        chunk = max(1, math.ceil(n / world))
        # Open epoch: each rank holds a full-size [W, 2, chunk] buffer of its own batches.
        epoch = sum(s["epoch"].to(torch.float64) for s in states)
        epoch = epoch.permute(1, 0, 2).reshape(2, world * chunk)[:, :n]
        flags = torch.zeros_like(first["flags"])
        for count, first_bad in ((_ops.BAD_INDEX_COUNT, _ops.FIRST_BAD_INDEX),
                                 (_ops.BAD_TARGET_COUNT, _ops.FIRST_BAD_TARGET)):
            flagged = [s["flags"] for s in states if int(s["flags"][count])]
            flags[count] = sum(int(f[count]) for f in flagged)
            if flagged:
                flags[first_bad] = flagged[0][first_bad]
        flags[_ops.NON_FINITE] = sum(int(s["flags"][_ops.NON_FINITE]) for s in states)
        # Every rank keeps the validation rows its own samples still refer to: the rank with
        # the oldest base holds the rows all of them need (rows are equal across ranks).
        oldest = min(states, key=lambda s: int(s["history_base"]))
        observed = [list(map(int, s.get("observed_per_checkpoint", []))) for s in states]
        return {
            **{k: v for k, v in first.items() if k not in _SHARDED_KEYS},
            "world_size": 1, "rank": 0,
            "epoch": epoch.to(torch.float32).reshape(1, 2, n).contiguous(),
            "flags": flags,
            "last": torch.cat([s["last"] for s in states]),
            "i32_state": torch.cat([s["i32_state"] for s in states], dim=1),
            "acc": torch.cat([s["acc"] for s in states], dim=1),
            "val_samples": sum(s["val_samples"] for s in states),
            "val_nonfinite": sum(int(s.get("val_nonfinite", 0)) for s in states),
            "history_base": int(oldest["history_base"]),
            "val_history": oldest["val_history"],
            "observed_per_checkpoint": [sum(c) for c in zip(*observed)] if observed[0] else [],
            "recorded": any(bool(s.get("recorded", False)) for s in states),
            "val_recorded": any(bool(s.get("val_recorded", False)) for s in states),
        }

    def _reshard(self, whole: Mapping[str, Any]) -> dict[str, Any]:
        """This rank's part of a whole-run state (see :meth:`load_state_dict`)."""
        n = self.num_samples
        if int(whole["num_samples"]) != n:
            raise ValueError(f"tracker state has num_samples={whole['num_samples']!r} but this "
                             f"tracker has num_samples={n!r}")
        lo, hi, chunk, world = self._lo, self._hi, self._chunk, self.world_size
        for key, want in (("epoch", (1, 2, n)), ("last", (n,)), ("i32_state", (2, n)),
                          ("acc", (5, n))):
            got = whole[key]
            if not isinstance(got, torch.Tensor) or tuple(got.shape) != want:
                shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
                raise ValueError(f"whole-run tracker state {key!r} should have shape {want}; "
                                 f"got {shape}")
        first = self.rank == 0
        epoch = torch.zeros(world, 2, chunk, dtype=torch.float32)
        flags = torch.zeros_like(whole["flags"])
        val_samples = torch.zeros_like(whole["val_samples"])
        if first:  # the open epoch goes to rank 0; end_epoch's reduce-scatter spreads it
            flat = torch.zeros(2, world * chunk, dtype=torch.float32)
            flat[:, :n] = whole["epoch"][0]
            epoch = flat.reshape(2, world, chunk).permute(1, 0, 2).contiguous()
            flags, val_samples = whole["flags"], whole["val_samples"]
        observed = list(whole.get("observed_per_checkpoint", []))
        return {
            **whole, "world_size": world, "rank": self.rank,
            "epoch": epoch, "flags": flags, "val_samples": val_samples,
            "val_nonfinite": int(whole.get("val_nonfinite", 0)) if first else 0,
            "last": whole["last"][lo:hi], "i32_state": whole["i32_state"][:, lo:hi],
            "acc": whole["acc"][:, lo:hi],
            # Counts per checkpoint are sums over the ranks' shards: rank 0 keeps the run's.
            "observed_per_checkpoint": observed if first else [0] * len(observed),
        }

    def load_state_dict(self, state: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> None:
        """Restore a :meth:`state_dict`. Everything is checked before anything is changed.

        At any world size: ``state`` may be this rank's own state (saved by the same rank of
        the same number of processes), a whole-run state (``world_size == 1``: one process,
        or :meth:`consolidate_states` of every rank's state) or the list of every rank's
        states. A state saved by another number of processes is resharded: each rank takes
        its slice of the per-sample state, and the open epoch (sums, counts, validation
        losses, error counters) goes to rank 0, where ``end_epoch``'s collectives find it.
        """
        if not isinstance(state, Mapping):
            if isinstance(state, Sequence) and not isinstance(state, (str, bytes)) and state:
                state = self.consolidate_states(state)
            else:
                raise TypeError(f"tracker state must be a dict from CLDTracker.state_dict() (or "
                                f"the list of every rank's); got {type(state).__name__}")
        self._check_format(state)
        if (state["world_size"], state["rank"]) != (self.world_size, self.rank):
            if int(state["world_size"]) != 1:
                raise ValueError(
                    f"tracker state was saved by rank {state['rank']} of {state['world_size']} "
                    f"processes; this is rank {self.rank} of {self.world_size}. Pass every "
                    f"rank's state (a list of {state['world_size']}) to load it at another "
                    "number of processes, or CLDTracker.consolidate_states(states)")
            state = self._reshard(state)
        for key, mine in (("num_samples", self.num_samples), ("num_classes", self.num_classes),
                          ("per_class", self.per_class), ("precision", self.precision)):
            if state[key] != mine:
                raise ValueError(f"tracker state has {key}={state[key]!r} but this tracker has "
                                 f"{key}={mine!r}")
        t, base = int(state["checkpoint"]), int(state["history_base"])
        if self.num_checkpoints is not None and t > self.num_checkpoints:
            raise ValueError(f"tracker state has {t} checkpoints closed but this tracker was built "
                             f"for num_checkpoints={self.num_checkpoints}")
        if not 0 <= base <= t:
            raise ValueError(f"tracker state has history_base={base} outside [0, checkpoint={t}]")
        self.check_saved(state, "tracker")
        v, shape = state["val_history"], (t - base, self.num_classes)
        if not isinstance(v, torch.Tensor) or tuple(v.shape) != shape or v.dtype != torch.float64:
            got = (tuple(v.shape), v.dtype) if isinstance(v, torch.Tensor) else type(v).__name__
            raise ValueError(f"tracker state 'val_history' should be torch.float64 {shape}; got {got}")
        if state["train_labels_sha256"] != self._digest:
            raise ValueError("tracker state was built for different train_labels (same N, "
                             "different classes): it belongs to another dataset or split")
        if not torch.equal(state["val_labels"].cpu().long(), self._val_labels.cpu().long()):
            raise ValueError("tracker state was built for different val_labels: it belongs to "
                             "another validation split")
        dev = self.device
        self.load_saved(state)
        self._val_nonfinite.fill_(int(state.get("val_nonfinite", 0)))
        self._val_history = torch.zeros(max(4, t - base), self.num_classes, dtype=torch.float64,
                                        device=dev)
        self._val_history[: t - base] = state["val_history"].to(dev)
        self._history_base = base
        trajectory = state.get("val_trajectory")
        self._val_trajectory = list(trajectory) if trajectory is not None else []
        self.checkpoint = t
        self.nonfinite_train = int(state.get("nonfinite_train", 0))
        self.nonfinite_val = int(state.get("nonfinite_val", 0))
        self.observed_per_checkpoint = [int(x) for x in state.get("observed_per_checkpoint", [])]
        self._recorded = bool(state.get("recorded", False))
        self._val_recorded = bool(state.get("val_recorded", False))
        if self._capture_marker is not None:
            self._capture_marker.zero_()

    def __repr__(self) -> str:
        dist_part = f", rank={self.rank}/{self.world_size}" if self.distributed else ""
        return (f"CLDTracker(num_samples={self.num_samples}, num_classes={self.num_classes}, "
                f"checkpoints={self.checkpoint}, per_class={self.per_class}, "
                f"precision={self.precision!r}, device={str(self.device)!r}{dist_part}, "
                f"nbytes={self.nbytes})")
