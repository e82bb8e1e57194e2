"""The index contract of cldfast, in one place.

Three index spaces exist (docs/design.md): the ORIGINAL dataset index (what every file
cldfast writes holds), the POSITION in a subset such as the training split (what a tracker
over that subset is indexed by), and a rank's SHARD of positions under torch.distributed.
:func:`split_train_val` returns original indices; :class:`IndexedSubset` serves the samples
at those indices and reports each one's position (``subset.indices[position]`` maps back);
:class:`IndexedDataset` reports the original index itself, for a tracker over a whole dataset.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..defaults import VAL_FRACTION

__all__ = ["IndexedDataset", "IndexedSubset", "as_index_array", "split_train_val", "make_loader"]


# --------------------------------------------------------------------------------------------
# Index-tracking wrappers
# --------------------------------------------------------------------------------------------

def as_index_array(name: str, indices: Any, length: int) -> np.ndarray:
    arr = np.asarray(indices)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D; got shape {arr.shape}")
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name} must hold integer dataset indices; got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi >= length:
        bad = lo if lo < 0 else hi
        raise IndexError(f"{name} holds index {bad}, outside [0, {length}) for a dataset of "
                         f"{length} items")
    return arr


class IndexedDataset(Dataset):
    """Wraps a dataset so that item ``i`` is ``(x, y, i)``.

    Use it where the tracker's index space is the whole dataset. For a split (e.g. the
    training part of :func:`split_train_val`), use :class:`IndexedSubset`, which yields
    positions within the split instead.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Any, Any, int]:
        x, y = self.dataset[index]
        return x, y, int(index)


class IndexedSubset(Dataset):
    """The items of ``dataset`` at ``indices``, each tagged with its position in ``indices``.

    Item ``k`` is ``(x, y, k)`` where ``(x, y) = dataset[indices[k]]``: ``k`` is the position
    in the subset (what a tracker over the subset is indexed by), and ``self.indices[k]`` is
    the original dataset index it came from.

    Args:
        dataset: any map-style dataset yielding ``(x, y)``.
        indices: int [M], ORIGINAL dataset indices (e.g. from :func:`split_train_val`).
    """

    def __init__(self, dataset: Dataset, indices: Any) -> None:
        self.dataset = dataset
        arr = as_index_array("indices", indices, len(dataset))  # type: ignore[arg-type]
        arr.flags.writeable = False
        self._indices = arr

    @property
    def indices(self) -> np.ndarray:
        """int64 [M], read-only: original dataset index of every position."""
        return self._indices

    def __len__(self) -> int:
        return int(self._indices.shape[0])

    def __getitem__(self, position: int) -> tuple[Any, Any, int]:
        x, y = self.dataset[int(self._indices[position])]
        if position < 0:
            position += len(self)
        return x, y, int(position)


# --------------------------------------------------------------------------------------------
# Splits and loaders
# --------------------------------------------------------------------------------------------

def split_train_val(targets: Any, val_fraction: float = VAL_FRACTION,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Seeded per-class split of a training set into training and validation parts.

    Each class c with n_c samples puts ``round(val_fraction * n_c)`` of them into validation
    (halves round up), but at least 1 when n_c >= 2 and ``val_fraction > 0``, and never all
    n_c, so every class keeps a training sample. Which samples go is drawn with
    ``numpy.random.default_rng(seed)``, class by class in ascending label order.

    Args:
        targets: int [N], the label of every item of the dataset.
        val_fraction: in [0, 1); 0 gives an empty validation part.
        seed: seed of the draw.

    Returns:
        ``(train_indices, val_indices)``: sorted int64 arrays of ORIGINAL dataset indices,
        disjoint, together covering ``range(N)``.
    """
    try:
        fraction = float(val_fraction)
    except (TypeError, ValueError):
        raise TypeError(f"val_fraction must be a number in [0, 1); got {val_fraction!r}") from None
    if not (0.0 <= fraction < 1.0):
        raise ValueError(f"val_fraction must be in [0, 1); got {val_fraction!r}")
    labels = np.asarray(targets)
    if labels.ndim != 1:
        raise ValueError(f"targets must be 1-D [num_samples]; got shape {labels.shape}")
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"targets must hold integer class ids; got dtype {labels.dtype}")

    rng = np.random.default_rng(seed)
    is_val = np.zeros(labels.shape[0], dtype=bool)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        n_c = members.shape[0]
        k = int(np.floor(fraction * n_c + 0.5))
        if fraction > 0 and n_c >= 2:
            k = max(k, 1)
        k = min(k, n_c - 1)
        if k > 0:
            is_val[rng.permutation(members)[:k]] = True
    return np.flatnonzero(~is_val).astype(np.int64), np.flatnonzero(is_val).astype(np.int64)


def _seed_worker(worker_id: int) -> None:
    # torch seeds each worker from the loader's generator; derive numpy's seed from it so
    # that any numpy randomness in a transform is reproducible too.
    np.random.seed(torch.initial_seed() % 2**32)


def make_loader(dataset: Dataset, batch_size: int, *, shuffle: bool, num_workers: int = 0,
                seed: int = 0, pin_memory: Optional[bool] = None,
                drop_last: bool = False, sampler: Any = None) -> DataLoader:
    """A DataLoader whose shuffling order (and worker seeds) follow ``seed``.

    Args:
        dataset: the dataset to serve.
        batch_size: items per batch, >= 1.
        shuffle: reshuffle every epoch (with a generator seeded by ``seed``).
        num_workers: worker processes; > 0 keeps them alive across epochs.
        seed: seed of the loader's generator.
        pin_memory: pin host memory for faster copies; defaults to
            ``torch.cuda.is_available()``.
        drop_last: drop the last incomplete batch.
        sampler: e.g. a DistributedSampler; then ``shuffle`` must be False (the sampler
            shuffles).

    With ``num_workers=0`` random augmentation draws from torch's global generator, so seed
    it (``torch.manual_seed``) for a fully reproducible run.
    """
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    if int(num_workers) < 0:
        raise ValueError(f"num_workers must be >= 0; got {num_workers}")
    generator = torch.Generator()
    generator.manual_seed(int(seed))
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    return DataLoader(
        dataset,
        batch_size=int(batch_size),
        shuffle=bool(shuffle) if sampler is None else None,
        sampler=sampler,
        num_workers=int(num_workers),
        generator=generator,
        pin_memory=bool(pin_memory),
        drop_last=bool(drop_last),
        persistent_workers=int(num_workers) > 0,
        worker_init_fn=_seed_worker if int(num_workers) > 0 else None,
    )
