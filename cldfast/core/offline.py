"""CLD from stored loss trajectories, and a reader for the authors' pickled losses.

Trajectories are replayed through the same kernels as :class:`cldfast.CLDTracker`, so offline
and streaming scores agree exactly. NaN entries in a trajectory mean "not observed at that
checkpoint" and follow the tracker's missing-observation rule.
"""

from __future__ import annotations

import io
import os
import pickle
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .tracker import CLDTracker

__all__ = ["cld_from_trajectories", "AuthorsLosses", "read_authors_pickle"]


def cld_from_trajectories(train_losses: Any, val_losses: Any, train_labels: Any, val_labels: Any,
                          *, per_class: bool = True, precision: str = "float64",
                          device: str | torch.device = "cpu",
                          num_classes: int | None = None) -> np.ndarray:
    """CLD scores from full trajectories.

    Args:
        train_losses: [T, N] loss of every training sample at every checkpoint (NaN = not
            observed then).
        val_losses: [T, Q] loss of every validation sample at every checkpoint.
        train_labels: [N] int classes; val_labels: [Q] int classes.
        per_class, precision, device, num_classes: as for :class:`CLDTracker`.

    Returns a float64 numpy array [N]; NaN where a sample has fewer than 2 differences.
    """
    train = torch.as_tensor(np.asarray(train_losses, dtype=np.float64))
    val = torch.as_tensor(np.asarray(val_losses, dtype=np.float64))
    if train.dim() != 2:
        raise ValueError(f"train_losses must be 2-D [checkpoints, samples]; got shape {tuple(train.shape)}")
    if val.dim() != 2:
        raise ValueError(f"val_losses must be 2-D [checkpoints, val samples]; got shape {tuple(val.shape)}")
    if train.shape[0] != val.shape[0]:
        raise ValueError(f"train_losses has {train.shape[0]} checkpoints but val_losses has {val.shape[0]}")
    tracker = CLDTracker(train_labels, val_labels, per_class=per_class, device=device,
                         precision=precision, num_classes=num_classes)
    if train.shape[1] != tracker.num_samples:
        raise ValueError(f"train_losses has {train.shape[1]} samples per checkpoint but "
                         f"train_labels has {tracker.num_samples}")
    dev = tracker.device
    for t in range(train.shape[0]):
        row = train[t]
        seen = torch.isfinite(row).nonzero().flatten()
        if seen.numel() == 0:
            raise ValueError(f"train_losses row {t} has no finite loss: every checkpoint needs "
                             "at least one observation")
        tracker.record(seen.to(dev), row[seen].to(dev))
        tracker.record_validation(val[t].to(dev))
        tracker.end_epoch()
    return tracker.scores().double().cpu().numpy()


@dataclass
class AuthorsLosses:
    """Loss trajectories in the layout of the authors' loss pickle, as typed arrays."""

    train_losses: np.ndarray  # [T, N] float32
    val_losses: np.ndarray    # [T, Q] float32
    train_labels: np.ndarray  # [N] int64
    val_labels: np.ndarray    # [Q] int64

    def scores(self, **kwargs: Any) -> np.ndarray:
        """CLD of this trajectory set (keyword arguments as :func:`cld_from_trajectories`)."""
        return cld_from_trajectories(self.train_losses, self.val_losses, self.train_labels,
                                     self.val_labels, **kwargs)


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Unpickles containers, numbers and numpy arrays only: a loss file cannot run code."""

    _ALLOWED = {
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("builtins", "list"), ("builtins", "dict"), ("builtins", "tuple"),
        ("collections", "OrderedDict"), ("collections", "defaultdict"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numbers, lists, "
                                     "dicts and numpy arrays are accepted")


def _stack_epochs(path: str, key: str, value: Any) -> np.ndarray:
    try:
        rows = [np.asarray(epoch, dtype=np.float32).reshape(-1) for epoch in value]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: {key!r} must be a list of per-epoch loss lists ({exc})") from None
    if not rows:
        raise ValueError(f"{path}: {key!r} holds no epochs")
    lengths = {r.shape[0] for r in rows}
    if len(lengths) != 1:
        raise ValueError(f"{path}: {key!r} epochs have different lengths {sorted(lengths)}")
    return np.stack(rows)


def _labels(path: str, key: str, value: Any, expected: int) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype == object or arr.ndim not in (1, 2):
        try:
            arr = np.stack([np.asarray(e).reshape(-1) for e in value])
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: {key!r} must be a label list or per-epoch label lists ({exc})") from None
    if arr.ndim == 2:  # per-epoch copies of the same labels
        if not (arr == arr[:1]).all():
            raise ValueError(f"{path}: {key!r} differs between epochs; the sample order must be fixed")
        arr = arr[0]
    if arr.shape[0] != expected:
        raise ValueError(f"{path}: {key!r} has {arr.shape[0]} labels but the losses have {expected} samples")
    return arr.astype(np.int64)


def read_authors_pickle(path: str | os.PathLike) -> AuthorsLosses:
    """Read the authors' loss pickle: a dict with per-epoch lists ``tr_loss`` and
    ``val_loss`` and the labels ``tr_lbl`` and ``val_lbl`` (one list, or one per epoch).

    Only plain containers, numbers and numpy arrays are unpickled; anything else is refused.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            data = _ArraysOnlyUnpickler(io.BufferedReader(fh)).load()
    except FileNotFoundError:
        raise FileNotFoundError(f"loss pickle not found: {path}") from None
    except Exception as exc:  # a damaged pickle fails in many ways; none may escape raw
        raise ValueError(f"{path}: not a readable loss pickle ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a dict with tr_loss, val_loss, tr_lbl, val_lbl; "
                         f"got {type(data).__name__}")
    missing = [k for k in ("tr_loss", "val_loss", "tr_lbl", "val_lbl") if k not in data]
    if missing:
        raise ValueError(f"{path}: missing keys {missing}; found {sorted(map(str, data))}")
    train = _stack_epochs(path, "tr_loss", data["tr_loss"])
    val = _stack_epochs(path, "val_loss", data["val_loss"])
    if train.shape[0] != val.shape[0]:
        raise ValueError(f"{path}: tr_loss has {train.shape[0]} epochs but val_loss has {val.shape[0]}")
    return AuthorsLosses(train, val, _labels(path, "tr_lbl", data["tr_lbl"], train.shape[1]),
                         _labels(path, "val_lbl", data["val_lbl"], val.shape[1]))
