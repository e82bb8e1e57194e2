"""Files cldfast writes and reads: atomic writes, the scores file, index files, checkpoints.

Every file is written to a temporary file in the same folder, fsynced, then renamed over the
target, so a crash at any moment leaves either the old file or the new one, never half of
one. Readers never unpickle: scores and indices are .npz/.npy read with allow_pickle=False,
checkpoints are read with torch.load(weights_only=True).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

__all__ = ["atomic_write", "save_scores", "load_scores", "ScoresFile", "save_indices",
           "load_indices", "save_checkpoint", "load_checkpoint", "write_json", "CorruptFileError"]

SCORES_FORMAT = 1


class CorruptFileError(ValueError):
    """A file cldfast wrote earlier cannot be read back (truncated, corrupted, wrong kind)."""


@contextlib.contextmanager
def _atomic_path(path: Path) -> Iterator[Path]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        # mkstemp creates 0600; give the file the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` then move the result to ``path`` atomically."""
    path = Path(path)
    with _atomic_path(path) as tmp:
        write(tmp)
    return path


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write(path, lambda p: p.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n"))


@dataclass
class ScoresFile:
    """Contents of a scores file (``cldfast track`` output).

    scores: [N] float64 CLD of each training-split sample (NaN = no score).
    labels: [N] int64 classes; train_indices: [N] original dataset index of each entry;
    val_indices: [Q] original indices of the validation split; metadata: dataset, arch,
    epochs, loss source, seed, version, fingerprint, ...; extra: further named [N] arrays.
    """

    scores: np.ndarray
    labels: np.ndarray
    train_indices: np.ndarray
    val_indices: np.ndarray
    metadata: dict[str, Any]
    extra: dict[str, np.ndarray] = field(default_factory=dict)


def save_scores(path: str | os.PathLike, scores: ScoresFile) -> Path:
    """Write a scores file: a plain .npz (numpy arrays plus a JSON metadata string). The one
    writer of scores files; the parts are checked first (nothing is written if one is wrong)."""
    n = scores.scores.shape[0]
    if scores.scores.ndim != 1:
        raise ValueError(f"scores must be 1-D [N]; got shape {scores.scores.shape}")
    if scores.labels.shape != (n,):
        raise ValueError(f"labels has shape {scores.labels.shape}; expected ({n},) like scores")
    tr, va = scores.train_indices, scores.val_indices
    if tr.shape != (n,) or tr.dtype.kind not in "iu":
        raise ValueError(f"train_indices must be {n} integers (the dataset index of each scored "
                         f"sample); got shape {tr.shape} and dtype {tr.dtype}")
    if va.ndim != 1 or va.dtype.kind not in "iu":
        raise ValueError(f"val_indices must be 1-D integer dataset indices; got shape "
                         f"{va.shape} and dtype {va.dtype}")
    for key, value in scores.extra.items():
        if np.shape(value) != (n,):
            raise ValueError(f"extra[{key!r}] has shape {np.shape(value)}; expected ({n},)")
    meta = {"format": SCORES_FORMAT, **scores.metadata}
    arrays = {"scores": scores.scores.astype(np.float64), "labels": scores.labels.astype(np.int64),
              "train_indices": scores.train_indices.astype(np.int64),
              "val_indices": scores.val_indices.astype(np.int64),
              "metadata": np.array(json.dumps(meta, sort_keys=True))}
    arrays.update({f"extra_{k}": np.asarray(v) for k, v in scores.extra.items()})

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)

    return atomic_write(path, write)


def load_scores(path: str | os.PathLike, *, fingerprint: str | None = None) -> ScoresFile:
    """Read a scores file; with ``fingerprint``, refuse one made from another dataset."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"scores file not found: {path} (write one with `cldfast track`)")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
        meta = json.loads(str(data.pop("metadata")))
    except Exception as exc:  # a damaged archive fails in zipfile, zlib, numpy or json
        raise CorruptFileError(f"{path}: not a readable cldfast scores file "
                               f"({type(exc).__name__}: {exc}); re-run `cldfast track`") from None
    missing = [k for k in ("scores", "labels", "train_indices", "val_indices") if k not in data]
    if missing or not isinstance(meta, dict):
        raise CorruptFileError(f"{path}: not a cldfast scores file (missing {missing or 'metadata'})")
    if meta.get("format") != SCORES_FORMAT:
        raise CorruptFileError(f"{path}: scores file format {meta.get('format')!r}; this cldfast "
                               f"reads format {SCORES_FORMAT}")
    n = data["scores"].shape
    if data["labels"].shape != n or data["train_indices"].shape != n or len(n) != 1:
        raise CorruptFileError(f"{path}: scores, labels and train_indices have different shapes")
    kinds = {"scores": "f", "labels": "iu", "train_indices": "iu", "val_indices": "iu"}
    for key, kind in kinds.items():
        if data[key].dtype.kind not in kind or data[key].ndim != 1:
            raise CorruptFileError(f"{path}: {key} has dtype {data[key].dtype} and shape "
                                   f"{data[key].shape}; expected a 1-D {'float' if kind == 'f' else 'integer'} array")
    if fingerprint is not None and meta.get("fingerprint") != fingerprint:
        raise ValueError(f"{path} was computed on another dataset (fingerprint "
                         f"{meta.get('fingerprint')} for {meta.get('dataset')!r}; this dataset's "
                         f"is {fingerprint}). Use the scores file made from this dataset.")
    extra = {k[len("extra_"):]: v for k, v in data.items() if k.startswith("extra_")}
    return ScoresFile(data["scores"], data["labels"], data["train_indices"], data["val_indices"],
                      meta, extra)


def save_indices(path: str | os.PathLike, indices: np.ndarray) -> Path:
    """Write original dataset indices as a .npy int64 vector."""
    arr = np.asarray(indices, dtype=np.int64)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.save(fh, arr, allow_pickle=False)

    return atomic_write(path, write)


def load_indices(path: str | os.PathLike, num_items: int) -> np.ndarray:
    """Read an indices file (.npy, or text with one index per line) and check it against a
    dataset of ``num_items`` items: integers in range, no duplicates."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"indices file not found: {path}")
    try:
        if path.suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
        else:
            arr = np.loadtxt(path, dtype=np.int64, ndmin=1)
    except Exception as exc:  # numpy raises many types for a damaged file
        raise CorruptFileError(f"{path}: not a readable indices file ({exc})") from None
    if not isinstance(arr, np.ndarray) or arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        got = f"{arr.dtype} {arr.shape}" if isinstance(arr, np.ndarray) else type(arr).__name__
        raise CorruptFileError(f"{path}: expected a 1-D integer vector; got {got}")
    arr = arr.astype(np.int64)
    bad = arr[(arr < 0) | (arr >= num_items)]
    if bad.size:
        raise ValueError(f"{path}: index {int(bad[0])} is outside the dataset's [0, {num_items}) "
                         f"({bad.size} such entries)")
    uniq, counts = np.unique(arr, return_counts=True)
    if uniq.size != arr.size:
        raise ValueError(f"{path}: index {int(uniq[counts > 1][0])} appears more than once "
                         f"({arr.size - uniq.size} duplicates)")
    return arr


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    return atomic_write(path, lambda p: torch.save(state, p))


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint not found: {path}") from None
    except Exception as exc:  # torch raises many types for damaged archives
        raise CorruptFileError(f"{path}: checkpoint cannot be read ({type(exc).__name__}: "
                               f"{str(exc).splitlines()[0] if str(exc) else ''}); delete it to "
                               "start over") from None
