"""Your own sample ids (file names, database keys, UUIDs) for CLDTracker, which wants
positions 0..N-1 in the training split."""

from __future__ import annotations

from typing import Any, Hashable, Iterable, Sequence

import numpy as np
import torch

__all__ = ["IdMap"]


class IdMap:
    """A fixed, ordered set of sample ids and their positions.

    ``IdMap(ids)`` numbers the ids in the order given (position i holds ``ids[i]``), so build
    the tracker's ``train_labels`` in the same order. In the training loop, turn each batch's
    ids into positions with :meth:`positions`; after training, :meth:`ids_of` turns selected
    positions back into your ids::

        ids = cldfast.IdMap(file_names)                 # N ids, any hashable values
        tracker = cldfast.CLDTracker(labels_in_the_same_order, val_labels)
        tracker.record(ids.positions(batch["file"]), losses)
        keep = ids.ids_of(cldfast.select(tracker.scores().cpu().numpy(), labels, fraction=0.1))
    """

    def __init__(self, ids: Iterable[Hashable]) -> None:
        self._ids = list(ids)
        self._pos: dict[Hashable, int] = {}
        for i, key in enumerate(self._ids):
            try:
                first = self._pos.setdefault(key, i)
            except TypeError:
                raise TypeError(f"ids must be hashable (str, int, tuple, ...); id at position {i} "
                                f"is a {type(key).__name__}") from None
            if first != i:
                raise ValueError(f"ids must be unique; {key!r} is at positions {first} and {i}")

    def __len__(self) -> int:
        return len(self._ids)

    def __repr__(self) -> str:
        return f"IdMap({len(self)} ids)"

    def positions(self, batch: Iterable[Hashable]) -> torch.Tensor:
        """[B] int64 positions of the ids in ``batch`` (a list, tuple, numpy array or tensor)."""
        if isinstance(batch, torch.Tensor):
            batch = batch.tolist()
        elif isinstance(batch, np.ndarray):
            batch = batch.tolist()
        out = []
        for key in batch:
            try:
                out.append(self._pos[key])
            except KeyError:
                raise KeyError(f"id {key!r} is not one of the {len(self)} ids this IdMap was "
                               "built with") from None
            except TypeError:
                raise TypeError(f"ids must be hashable; got a {type(key).__name__} in the batch") from None
        return torch.tensor(out, dtype=torch.int64)

    def ids_of(self, positions: Sequence[int] | np.ndarray | torch.Tensor) -> list[Any]:
        """The ids at ``positions`` (e.g. the output of :func:`cldfast.select`)."""
        if isinstance(positions, torch.Tensor):
            positions = positions.tolist()
        elif isinstance(positions, np.ndarray):
            positions = positions.tolist()
        n = len(self)
        bad = [p for p in positions if not (isinstance(p, (int, np.integer)) and 0 <= p < n)]
        if bad:
            raise IndexError(f"positions must be integers in [0, {n}); got {bad[0]!r}")
        return [self._ids[p] for p in positions]
