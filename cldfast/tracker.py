"""CLDTracker: streaming Correlation of Loss Differences inside a training loop.

The tracker folds every per-sample loss into Welford co-moment state as training runs, so the
CLD score of every training sample is ready when training ends, in O(N) memory that does not
grow with the number of epochs. See ``shared/SPEC.md`` (summarised in the README) for the
exact definition and observation rules.

Memory per training sample (``precision="float64"``, the default): five float64 co-moments
(40 B), the open epoch's loss sum and the previous checkpoint's mean loss (float32, 8 B), the
open epoch's observation count, the last observed checkpoint and the number of differences
(int32, 12 B) and the class label (int32, 4 B): 64 bytes. ``precision="float32"`` stores the
co-moments in float32: 44 bytes.
"""

from __future__ import annotations

import warnings
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from . import _core, _ops

__all__ = ["CLDTracker", "CLDWarning", "STATE_FORMAT"]

# Version of the state_dict layout; bump when it changes incompatibly.
STATE_FORMAT = 1

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


class _FusedCrossEntropy(torch.autograd.Function):
    """Per-sample cross-entropy computed and recorded by one kernel; backward = softmax - onehot."""

    @staticmethod
    def forward(ctx, logits, targets, index, tracker):  # noqa: D401 - autograd signature
        out = _ops.record_ce(index, logits, targets, tracker._f32, tracker._i32, tracker._flags)
        ctx.save_for_backward(logits, targets)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        logits, targets = ctx.saved_tensors
        grad = torch.softmax(logits.float(), dim=1)
        rows = torch.arange(grad.shape[0], device=grad.device)
        grad[rows, targets.long()] -= 1.0
        grad.mul_(grad_out.to(grad.dtype).unsqueeze(1))
        return grad.to(logits.dtype), None, None, None


class CLDTracker:
    """Streams per-sample losses into CLD scores.

    Args:
        train_labels: [N] integer class of each training sample, in the order of the
            positions that ``record`` receives (positions in the training split).
        val_labels: [Q] integer class of each validation sample.
        per_class: correlate with the mean validation loss of the sample's own class
            (default). ``False`` uses the mean over all of V for every sample.
        device: where the state lives and the kernels run (``"cpu"`` or a CUDA device).
        precision: ``"float64"`` (default) or ``"float32"`` co-moment accumulators.
        num_classes: number of classes; default ``max(label) + 1`` over both label sets.

    Usage, once per batch / epoch::

        tracker.record(indices, losses)                  # or record(indices, logits=, targets=)
        tracker.record_validation(val_losses)            # all of V, or with indices
        tracker.end_epoch()
        scores = tracker.scores()                        # [N], NaN = no score
    """

    def __init__(self, train_labels: Any, val_labels: Any, *, per_class: bool = True,
                 device: str | torch.device | None = None, precision: str = "float64",
                 num_classes: int | None = None) -> None:
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
        self.device = torch.device(device if device is not None else "cpu")
        if self.device.type == "cuda":
            _ops._require_cuda_build(self.device)
            if not torch.cuda.is_available():
                raise RuntimeError(f"device={str(self.device)!r} was asked for but torch sees no "
                                   "CUDA GPU here; use device='cpu'")
            if self.device.index is None:
                self.device = torch.device("cuda", torch.cuda.current_device())
        elif self.device.type != "cpu":
            raise ValueError(f"device must be 'cpu' or a CUDA device; got {self.device}")

        self.num_samples = int(labels.numel())
        self.num_val = int(val.numel())
        self.num_classes = int(num_classes)
        self.per_class = bool(per_class)
        self.precision = precision
        self.checkpoint = 0  # checkpoints closed so far
        self.nonfinite_train = 0
        self.nonfinite_val = 0
        self.observed_per_checkpoint: list[int] = []

        train_counts = torch.bincount(labels, minlength=self.num_classes)
        val_counts = torch.bincount(val, minlength=self.num_classes)
        missing = ((train_counts > 0) & (val_counts == 0)).nonzero().flatten().tolist()
        self.classes_without_validation = missing
        if missing and self.per_class:
            shown = ", ".join(map(str, missing[:20])) + (" ..." if len(missing) > 20 else "")
            warnings.warn(
                f"{len(missing)} class(es) have training samples but no validation samples "
                f"(classes {shown}); their samples are correlated with the global validation "
                "trajectory instead", CLDWarning, stacklevel=2)

        dev = self.device
        acc_dtype = _PRECISIONS[precision]
        n = self.num_samples
        # int16 labels keep the per-sample state within 64 bytes; int32 beyond 32767 classes.
        label_dtype = torch.int16 if self.num_classes <= 2**15 - 1 else torch.int32
        self._labels = labels.to(label_dtype).to(dev)
        self._val_labels = val.to(label_dtype).to(dev)
        self._val_has_class = (val_counts > 0).to(dev)
        self._f32 = torch.zeros(2, n, dtype=torch.float32, device=dev)
        self._i32 = torch.zeros(3, n, dtype=torch.int32, device=dev)
        self._i32[1].fill_(-1)  # last observed checkpoint: never
        self._acc = torch.zeros(5, n, dtype=acc_dtype, device=dev)
        self._flags = torch.zeros(_ops.NUM_FLAGS, dtype=torch.int64, device=dev)
        self._val_sum = torch.zeros(self.num_classes, dtype=torch.float64, device=dev)
        self._val_count = torch.zeros(self.num_classes, dtype=torch.int64, device=dev)
        # Validation loss per class at the checkpoints some sample may still be paired with:
        # row r holds checkpoint _history_base + r. Rows no sample refers to are dropped, so
        # with every sample seen every epoch this holds one or two rows, whatever the epochs.
        self._val_history = torch.zeros(4, self.num_classes, dtype=torch.float64, device=dev)
        self._history_base = 0
        self._val_trajectory: list[torch.Tensor] = []  # host copy per checkpoint, for reporting
        self._staging: dict[torch.dtype, torch.Tensor] = {}  # device copies of CPU indices
        self._recorded = False
        self._val_recorded = False

    # ------------------------------------------------------------------ recording
    def _index_tensor(self, indices: Any, name: str = "indices") -> torch.Tensor:
        if not isinstance(indices, torch.Tensor):
            indices = torch.as_tensor(np.asarray(indices))
        if indices.dtype not in _ops.INDEX_CODES:
            raise TypeError(f"{name} must be an int64 or int32 tensor; got {indices.dtype}")
        if indices.dim() != 1:
            raise ValueError(f"{name} must be 1-D [batch]; got shape {tuple(indices.shape)}")
        if indices.device != self.device:
            if indices.device.type == "cpu":
                return self._stage(indices)
            else:
                raise ValueError(f"{name} is on {indices.device} but the tracker is on {self.device}; "
                                 "indices may be on the CPU or on the tracker's device")
        return indices

    def _stage(self, indices: torch.Tensor) -> torch.Tensor:
        """Copy CPU indices into a reused device buffer (no allocation once it is big enough).

        Reuse is safe without synchronisation: the copy and the kernels that read the buffer
        are ordered on the same stream. From pinned memory (DataLoader(pin_memory=True)) the
        copy is asynchronous.
        """
        buf = self._staging.get(indices.dtype)
        n = indices.shape[0]
        if buf is None or buf.shape[0] < n:
            buf = torch.empty(max(n, 1024), dtype=indices.dtype, device=self.device)
            self._staging[indices.dtype] = buf
        out = buf[:n]
        out.copy_(indices, non_blocking=True)  # pageable memory is staged by CUDA first
        return out

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
        """
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
            _ops.record(index, losses.detach(), self._f32, self._i32, self._flags)
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
        if logits.shape[1] > 0 and logits.stride(1) != 1:
            logits = logits.contiguous()
        self._recorded = True
        return _FusedCrossEntropy.apply(logits, targets, index, self)

    def record_validation(self, losses: torch.Tensor, indices: Any = None) -> None:
        """Record validation losses for the open epoch.

        Args:
            losses: [Q] losses of all of V in order, or [B] losses of the validation samples
                at ``indices`` (positions in V). Any device; non-finite values are skipped
                and counted in ``nonfinite_val``.
            indices: optional [B] int positions in the validation set.

        Each class's checkpoint value is the mean of the finite losses recorded for it.
        """
        _check_1d("val losses", losses)
        if not losses.is_floating_point():
            raise TypeError(f"val losses must be floating point; got {losses.dtype}")
        losses = losses.detach().to(self.device, torch.float64)
        if indices is None:
            if losses.shape[0] != self.num_val:
                raise ValueError(f"record_validation got {losses.shape[0]} losses without indices; "
                                 f"expected all {self.num_val} validation samples, or pass indices")
            cls = self._val_labels.long()
        else:
            idx = torch.as_tensor(indices).to(self.device)
            if idx.dtype not in _ops.INDEX_CODES or idx.dim() != 1:
                raise TypeError(f"val indices must be a 1-D int64/int32 tensor; got {idx.dtype} "
                                f"with shape {tuple(idx.shape)}")
            if idx.shape[0] != losses.shape[0]:
                raise ValueError(f"val losses has {losses.shape[0]} entries but indices has {idx.shape[0]}")
            if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.num_val):
                bad = idx[(idx < 0) | (idx >= self.num_val)][0]
                raise IndexError(f"val index {int(bad)} is out of range [0, {self.num_val})")
            cls = self._val_labels[idx.long()].long()
        finite = torch.isfinite(losses)
        self.nonfinite_val += int((~finite).sum())
        self._val_sum.index_add_(0, cls, torch.where(finite, losses, torch.zeros_like(losses)))
        self._val_count.index_add_(0, cls, finite.to(torch.int64))
        self._val_recorded = True

    # ------------------------------------------------------------------ epochs
    def _raise_flagged(self, flags: list[int]) -> None:
        if flags[_ops.BAD_INDEX_COUNT]:
            count, first = flags[_ops.BAD_INDEX_COUNT], flags[_ops.FIRST_BAD_INDEX]
            self._flags[_ops.BAD_INDEX_COUNT] = 0
            raise IndexError(
                f"record() received {count} index(es) outside [0, {self.num_samples}), e.g. {first}; "
                "they were ignored. Indices must be positions in the training split the tracker "
                "was built for. The epoch is still open: call end_epoch() again to close it with "
                "the valid observations, or discard_epoch() to drop them")
        if flags[_ops.BAD_TARGET_COUNT]:
            count, first = flags[_ops.BAD_TARGET_COUNT], flags[_ops.FIRST_BAD_TARGET]
            self._flags[_ops.BAD_TARGET_COUNT] = 0
            raise IndexError(
                f"record(logits=, targets=) received {count} target(s) outside the logits' "
                f"class range, e.g. {first}; those rows were not recorded (their loss is NaN). "
                "The epoch is still open: end_epoch() again closes it, discard_epoch() drops it")

    def _validation_row(self) -> torch.Tensor:
        missing = self._val_has_class & (self._val_count == 0)
        if bool(missing.any()):
            classes = missing.nonzero().flatten().tolist()
            raise RuntimeError(
                f"no finite validation loss was recorded this epoch for class(es) {classes[:20]}, "
                "which have validation samples; call record_validation() with losses of all of V")
        total = self._val_count.sum()
        global_mean = self._val_sum.sum() / total
        if not self.per_class:
            return global_mean.expand(self.num_classes)
        per_class = self._val_sum / self._val_count.clamp_min(1)
        return torch.where(self._val_has_class, per_class, global_mean)

    def end_epoch(self) -> int:
        """Close the current checkpoint and fold its differences into the CLD state.

        Returns the number of training samples observed in this epoch. Raises, leaving the
        epoch open and the state unchanged, when nothing was recorded, when validation losses
        are missing, or when ``record`` saw out-of-range indices or targets.
        """
        if not self._recorded:
            raise RuntimeError("end_epoch() called but record() was not called since the last "
                               "checkpoint; record this epoch's training losses first")
        if not self._val_recorded or int(self._val_count.sum()) == 0:
            raise RuntimeError("end_epoch() needs this epoch's validation losses: call "
                               "record_validation() before end_epoch()")
        flags = self._flags.tolist()  # the one host synchronisation per epoch
        self._raise_flagged(flags)
        row = self._validation_row()
        t = self.checkpoint
        r = t - self._history_base
        if r >= self._val_history.shape[0]:
            grown = torch.zeros(2 * self._val_history.shape[0], self.num_classes,
                                dtype=torch.float64, device=self.device)
            grown[:r] = self._val_history[:r]
            self._val_history = grown
        self._val_history[r] = row
        self._val_trajectory.append(row.to('cpu', copy=True))
        _ops.end_epoch(self._labels, self._val_history, self._history_base, t, self._f32,
                       self._i32, self._acc, self._flags)
        flags = self._flags.tolist()
        observed = flags[_ops.OBSERVED]
        oldest = min(flags[_ops.MIN_LAST_CHECKPOINT], t)
        if oldest > self._history_base:
            keep = t + 1 - oldest
            self._val_history[:keep] = self._val_history[oldest - self._history_base: r + 1].clone()
            self._history_base = oldest
        self.nonfinite_train += flags[_ops.NON_FINITE]
        self._flags.zero_()
        self._val_sum.zero_()
        self._val_count.zero_()
        self._recorded = False
        self._val_recorded = False
        self.observed_per_checkpoint.append(int(observed))
        self.checkpoint = t + 1
        return int(observed)

    def discard_epoch(self) -> None:
        """Drop everything recorded since the last checkpoint (training and validation)."""
        self._f32[0].zero_()
        self._i32[0].zero_()
        nonfinite = int(self._flags[_ops.NON_FINITE])
        self._flags.zero_()
        del nonfinite  # discarded observations are not reported either
        self._val_sum.zero_()
        self._val_count.zero_()
        self._recorded = False
        self._val_recorded = False

    # ------------------------------------------------------------------ results
    def scores(self) -> torch.Tensor:
        """CLD score of every training sample: [N] in the accumulator dtype, on the tracker's
        device. NaN where a sample has fewer than 2 loss differences; 0 for a zero-variance
        series."""
        return _ops.scores(self._i32, self._acc)

    def num_differences(self) -> torch.Tensor:
        """[N] int32: loss differences folded in per sample."""
        return self._i32[2].clone()

    @property
    def val_trajectory(self) -> torch.Tensor:
        """[checkpoints, C] float64 (CPU): the validation loss each class was correlated with,
        after the per-class / global choice and the fallback for classes without validation."""
        if not self._val_trajectory:
            return torch.zeros(0, self.num_classes, dtype=torch.float64)
        return torch.stack(self._val_trajectory)

    @property
    def nbytes(self) -> int:
        """Bytes held by the tracker's buffers (per-sample state, labels, validation state)."""
        tensors = (self._labels, self._val_labels, self._val_has_class, self._f32, self._i32,
                   self._acc, self._flags, self._val_sum, self._val_count, self._val_history,
                   *self._val_trajectory)
        return int(sum(t.numel() * t.element_size() for t in tensors))

    def summary(self) -> dict[str, Any]:
        """Counts worth reporting next to the scores."""
        return {
            "num_samples": self.num_samples,
            "num_val": self.num_val,
            "num_classes": self.num_classes,
            "checkpoints": self.checkpoint,
            "per_class": self.per_class,
            "precision": self.precision,
            "nonfinite_train_losses": self.nonfinite_train,
            "nonfinite_val_losses": self.nonfinite_val,
            "classes_without_validation": list(self.classes_without_validation),
            "observed_per_checkpoint": list(self.observed_per_checkpoint),
            "nbytes": self.nbytes,
        }

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume, as CPU tensors and plain Python values (a snapshot:
        later updates do not change it). Mid-epoch state is included."""
        return {
            "format": STATE_FORMAT,
            "version": _core.__version__,
            "num_samples": self.num_samples,
            "num_classes": self.num_classes,
            "per_class": self.per_class,
            "precision": self.precision,
            "checkpoint": self.checkpoint,
            "nonfinite_train": self.nonfinite_train + int(self._flags[_ops.NON_FINITE]),
            "nonfinite_val": self.nonfinite_val,
            "observed_per_checkpoint": list(self.observed_per_checkpoint),
            "recorded": self._recorded,
            "val_recorded": self._val_recorded,
            "train_labels": self._labels.cpu().clone(),
            "val_labels": self._val_labels.cpu().clone(),
            "f32_state": self._f32.cpu().clone(),
            "i32_state": self._i32.cpu().clone(),
            "acc": self._acc.cpu().clone(),
            "val_sum": self._val_sum.cpu().clone(),
            "val_count": self._val_count.cpu().clone(),
            "history_base": self._history_base,
            "val_history": self._val_history[: self.checkpoint - self._history_base].cpu().clone(),
            "val_trajectory": self.val_trajectory,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict`. Everything is checked before anything is changed."""
        required = ("format", "num_samples", "num_classes", "per_class", "precision", "checkpoint",
                    "train_labels", "val_labels", "f32_state", "i32_state", "acc", "val_sum",
                    "val_count", "val_history")
        missing = [k for k in required if k not in state]
        if missing:
            raise KeyError(f"tracker state is missing {missing}; is it a CLDTracker.state_dict()?")
        if state["format"] != STATE_FORMAT:
            raise ValueError(f"tracker state has format {state['format']} (cldfast "
                             f"{state.get('version', '?')}); this cldfast reads format {STATE_FORMAT}")
        for key, mine in (("num_samples", self.num_samples), ("num_classes", self.num_classes),
                          ("per_class", self.per_class), ("precision", self.precision)):
            if state[key] != mine:
                raise ValueError(f"tracker state has {key}={state[key]!r} but this tracker has "
                                 f"{key}={mine!r}")
        n, t = self.num_samples, int(state["checkpoint"])
        base = int(state.get("history_base", 0))
        if not 0 <= base <= t:
            raise ValueError(f"tracker state has history_base={base} outside [0, checkpoint={t}]")
        shapes = {"f32_state": ((2, n), torch.float32), "i32_state": ((3, n), torch.int32),
                  "acc": ((5, n), _PRECISIONS[self.precision]),
                  "val_sum": ((self.num_classes,), torch.float64),
                  "val_count": ((self.num_classes,), torch.int64),
                  "val_history": ((t - base, self.num_classes), torch.float64)}
        for key, (shape, dtype) in shapes.items():
            v = state[key]
            if not isinstance(v, torch.Tensor) or tuple(v.shape) != shape or v.dtype != dtype:
                got = (tuple(v.shape), v.dtype) if isinstance(v, torch.Tensor) else type(v).__name__
                raise ValueError(f"tracker state {key!r} should be {dtype} {shape}; got {got}")
        if not torch.equal(state["train_labels"].cpu().long(), self._labels.cpu().long()):
            raise ValueError("tracker state was built for different train_labels (same N, "
                             "different classes): it belongs to another dataset or split")
        if not torch.equal(state["val_labels"].cpu().long(), self._val_labels.cpu().long()):
            raise ValueError("tracker state was built for different val_labels: it belongs to "
                             "another validation split")
        dev = self.device
        self._f32.copy_(state["f32_state"])
        self._i32.copy_(state["i32_state"])
        self._acc.copy_(state["acc"])
        self._val_sum.copy_(state["val_sum"])
        self._val_count.copy_(state["val_count"])
        self._val_history = torch.zeros(max(4, t - base), self.num_classes, dtype=torch.float64,
                                        device=dev)
        self._val_history[: t - base] = state["val_history"].to(dev)
        self._history_base = base
        trajectory = state.get("val_trajectory")
        self._val_trajectory = list(trajectory) if trajectory is not None else []
        self._flags.zero_()
        self.checkpoint = t
        self.nonfinite_train = int(state.get("nonfinite_train", 0))
        self.nonfinite_val = int(state.get("nonfinite_val", 0))
        self.observed_per_checkpoint = [int(x) for x in state.get("observed_per_checkpoint", [])]
        self._recorded = bool(state.get("recorded", False))
        self._val_recorded = bool(state.get("val_recorded", False))

    def __repr__(self) -> str:
        return (f"CLDTracker(num_samples={self.num_samples}, num_classes={self.num_classes}, "
                f"checkpoints={self.checkpoint}, per_class={self.per_class}, "
                f"precision={self.precision!r}, device={str(self.device)!r}, nbytes={self.nbytes})")
