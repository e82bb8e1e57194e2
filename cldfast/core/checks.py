"""The tracker's input checks: its constructor's arguments, the device, and the batches that
``record`` / ``record_validation`` receive. Each raises with what was expected and how to fix
it, before anything is recorded."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from . import kernels as _ops

__all__ = ["label_tensor", "tracker_labels", "resolve_device", "check_1d", "check_device",
           "index_tensor", "check_losses", "check_logits", "val_positions", "PRECISIONS"]

PRECISIONS = {"float64": torch.float64, "float32": torch.float32}


def label_tensor(name: str, labels: Any) -> torch.Tensor:
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


def tracker_labels(train_labels: Any, val_labels: Any, num_classes: int | None, precision: str,
                   num_checkpoints: int | None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The tracker's arguments checked: (train labels, validation labels, number of classes)."""
    labels = label_tensor("train_labels", train_labels)
    val = label_tensor("val_labels", val_labels)
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
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}; got {precision!r}")
    if num_checkpoints is not None and int(num_checkpoints) < 1:
        raise ValueError(f"num_checkpoints must be >= 1; got {num_checkpoints}")
    return labels, val, int(num_classes)


def resolve_device(device: str | torch.device | None) -> torch.device:
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


def check_1d(name: str, t: Any, expected_len: int | None = None) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(t).__name__}")
    if t.dim() != 1:
        hint = " (use reduction='none' to get per-sample losses)" if t.dim() == 0 else ""
        raise ValueError(f"{name} must be 1-D [batch]; got shape {tuple(t.shape)}{hint}")
    if expected_len is not None and t.shape[0] != expected_len:
        raise ValueError(f"{name} has {t.shape[0]} entries but indices has {expected_len}")
    return t


def check_device(name: str, t: torch.Tensor, device: torch.device) -> None:
    if t.device != device:
        raise ValueError(f"{name} is on {t.device} but the tracker is on {device}; "
                         f"create the tracker with device={str(t.device)!r} or move {name}")


def index_tensor(indices: Any, device: torch.device,
                 stage: Callable[[torch.Tensor], torch.Tensor],
                 name: str = "indices") -> torch.Tensor:
    """Training positions as a 1-D int64/int32 tensor on ``device`` (CPU ones through
    ``stage``, the tracker's reused device buffer)."""
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
    if indices.device != device:
        if indices.device.type == "cpu":
            return stage(indices)
        raise ValueError(f"{name} is on {indices.device} but the tracker is on {device}; "
                         "indices may be on the CPU or on the tracker's device")
    return indices


def check_losses(losses: Any, batch: int, device: torch.device) -> None:
    """``record(indices, losses)``: [B] float losses on the tracker's device."""
    check_1d("losses", losses, batch)
    if losses.dtype not in _ops.FLOAT_CODES:
        raise TypeError(f"losses must be float32, float16, bfloat16 or float64; got {losses.dtype}")
    check_device("losses", losses, device)


def check_logits(logits: Any, targets: Any, batch: int, device: torch.device) -> None:
    """``record(indices, logits=, targets=)``: [B, C] float logits, [B] int class ids."""
    if targets is None:
        raise ValueError("record(indices, logits=...) also needs targets=")
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"logits must be a 2-D tensor [batch, classes]; got {shape}")
    if logits.dtype not in _ops.FLOAT_CODES:
        raise TypeError(f"logits must be float32, float16, bfloat16 or float64; got {logits.dtype}")
    if logits.shape[0] != batch:
        raise ValueError(f"logits has {logits.shape[0]} rows but indices has {batch}")
    check_device("logits", logits, device)
    check_1d("targets", targets, batch)
    if targets.dtype not in _ops.INDEX_CODES:
        raise TypeError(f"targets must be int64 or int32 class ids; got {targets.dtype}")
    check_device("targets", targets, device)


def val_positions(losses: torch.Tensor, indices: Any, num_val: int,
                  device: torch.device) -> torch.Tensor | None:
    """``record_validation``'s positions in V on ``device`` (None: ``losses`` is all of V).
    Under torch.compile the range is asserted in the graph instead of checked here."""
    if indices is None:
        if losses.shape[0] != num_val:
            raise ValueError(f"record_validation got {losses.shape[0]} losses without indices; "
                             f"expected all {num_val} validation samples, or pass indices")
        return None
    idx = torch.as_tensor(indices)
    if idx.dtype not in _ops.INDEX_CODES or idx.dim() != 1:
        raise TypeError(f"val indices must be a 1-D int64/int32 tensor; got {idx.dtype} "
                        f"with shape {tuple(idx.shape)}")
    if idx.shape[0] != losses.shape[0]:
        raise ValueError(f"val losses has {losses.shape[0]} entries but indices has {idx.shape[0]}")
    if torch.compiler.is_compiling():  # no host sync in a graph: checked where it runs
        torch._assert_async(((idx >= 0) & (idx < num_val)).all(),
                            f"val index out of range [0, {num_val})")
    elif idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= num_val):
        bad = idx[(idx < 0) | (idx >= num_val)][0]
        raise IndexError(f"val index {int(bad)} is out of range [0, {num_val})")
    return idx.to(device).long()
