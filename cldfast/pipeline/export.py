"""Scores that travel: a scores file written out as CSV, or as the authors' per-class ranking
pickle that their ``train_on_coresets.py`` reads."""

from __future__ import annotations

import csv
import io as _stdio
import math
import os
import pickle
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..io import ScoresFile, atomic_write

__all__ = ["export_csv", "export_authors", "authors_ranking"]


def _check_len(name: str, values: Sequence[Any] | None, n: int) -> None:
    if values is not None and len(values) != n:
        raise ValueError(f"{name} has {len(values)} entries; expected {n} (one per scored sample)")


def export_csv(sf: ScoresFile, path: str | os.PathLike, *,
               file_paths: Sequence[str] | None = None,
               class_names: Sequence[str] | None = None) -> Path:
    """One row per training sample: ``dataset_index``, ``file_path`` (with ``file_paths``,
    one per scored sample), ``label``, ``class_name`` (with ``class_names``, indexed by
    label), ``cld`` (empty when the sample has no score), ``num_differences`` when stored, and
    every other per-sample score in the file, in name order. Floats keep full precision
    (``repr``), so the file reads back to the same values."""
    n = sf.scores.shape[0]
    _check_len("file_paths", file_paths, n)
    extras = {k: v for k, v in sf.extra.items() if np.asarray(v).shape == (n,)}
    ndiff = extras.pop("num_differences", None)
    header = ["dataset_index"] + (["file_path"] if file_paths is not None else []) + ["label"]
    header += (["class_name"] if class_names is not None else []) + ["cld"]
    header += (["num_differences"] if ndiff is not None else []) + sorted(extras)
    if class_names is not None and n and int(sf.labels.max()) >= len(class_names):
        raise ValueError(f"class_names has {len(class_names)} names but labels go up to "
                         f"{int(sf.labels.max())}")

    def fmt(v: Any) -> str:
        if isinstance(v, (float, np.floating)):
            return "" if math.isnan(v) else repr(float(v))
        return str(int(v)) if isinstance(v, (int, np.integer)) else str(v)

    buf = _stdio.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    cols = [sf.train_indices] + ([list(file_paths)] if file_paths is not None else []) + [sf.labels]
    if class_names is not None:
        cols.append([class_names[int(c)] for c in sf.labels])
    cols.append(sf.scores)
    if ndiff is not None:
        cols.append(ndiff)
    cols += [extras[k] for k in sorted(extras)]
    for row in zip(*cols):
        w.writerow([fmt(v) for v in row])
    text = buf.getvalue()
    return atomic_write(path, lambda p: p.write_text(text))


def authors_ranking(sf: ScoresFile) -> dict[str, np.ndarray]:
    """The authors' layout: for each class (key ``str(class)``), the original dataset indices
    of its scored training samples from the highest CLD to the lowest (ties: lower index
    first). Samples without a score are left out, as cldfast's selection never picks them, so
    the first k entries of each class are what ``cldfast select --per-class k`` keeps (which
    refuses a k above a class's scored count, where the authors' script takes fewer)."""
    out: dict[str, np.ndarray] = {}
    for c in np.unique(sf.labels):
        members = np.flatnonzero((sf.labels == c) & ~np.isnan(sf.scores))
        order = np.lexsort((sf.train_indices[members], -sf.scores[members]))
        out[str(int(c))] = sf.train_indices[members][order].astype(np.int64)
    return out


def export_authors(sf: ScoresFile, path: str | os.PathLike) -> Path:
    """Write :func:`authors_ranking` as a pickle (the layout of the authors'
    ``CLD_indices_sorted_<dataset>_<arch>.pkl``; their ``train_on_coresets.py`` keeps the
    first k entries of each class)."""
    data = pickle.dumps(authors_ranking(sf), protocol=pickle.HIGHEST_PROTOCOL)
    return atomic_write(path, lambda p: p.write_bytes(data))


def authors_filename(sf: ScoresFile) -> str:
    """The authors' file name for the rankings of a scores file."""
    return (f"CLD_indices_sorted_{sf.metadata.get('dataset', 'data')}_"
            f"{sf.metadata.get('arch', 'model')}.pkl")


def image_folder_paths(sf: ScoresFile, root: str | os.PathLike) -> list[str]:
    """The file path of every scored sample, for scores over an ImageFolder at ``root``."""
    from torchvision.datasets import ImageFolder

    samples = ImageFolder(str(root)).samples
    if sf.train_indices.size and int(sf.train_indices.max()) >= len(samples):
        raise ValueError(f"image folder {root} has {len(samples)} images but the scores refer "
                         f"to index {int(sf.train_indices.max())}")
    return [samples[int(i)][0] for i in sf.train_indices]
