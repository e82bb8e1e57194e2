"""Resumable runs: per-epoch checkpoint files (one per rank under torch.distributed, committed
by a manifest), SIGTERM turned into a checkpoint at the next batch boundary, and the config
a resumed run must match. A run resumes at any number of processes: see
:meth:`Checkpoints.latest` and ``cldfast.training.loop``."""

from __future__ import annotations

import json
import re
import signal
import threading
from pathlib import Path
from typing import Any

import numpy as np

from ..core import distributed as ddist
from ..io import load_checkpoint, save_checkpoint, write_json

__all__ = ["Checkpoints", "Preempted", "SigtermWatch", "jsonable", "load_checkpoint",
           "save_checkpoint"]


class Checkpoints:
    """Per-epoch checkpoint files. One process: one file, replaced atomically. Several ranks:
    one file per rank and epoch, then (after a barrier) rank 0 commits the epoch in
    ``<name>.manifest.json``; files of older epochs are deleted only after that."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rank, self.world = ddist.rank_world()
        self.manifest = path.with_name(path.name + ".manifest.json")

    def _rank_file(self, tag: str, rank: int | None = None, world: int | None = None) -> Path:
        rank = self.rank if rank is None else rank
        world = self.world if world is None else world
        return self.path.with_name(f"{self.path.stem}.rank{rank}-of-{world}.{tag}{self.path.suffix}")

    def latest(self) -> tuple[list[Path], int] | None:
        """The checkpoint to resume from: ``(files, world_size)`` (None: start afresh).

        Written by as many processes as this run has: ``[this rank's file]``. Written by
        another number (an elastic or requeued job): every rank's file of that run, in rank
        order, which the caller combines (the tracker reshards its state)."""
        if self.manifest.exists():
            try:
                info = json.loads(self.manifest.read_text())
                tag, world = str(info["tag"]), int(info["world_size"])
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{self.manifest}: unreadable checkpoint manifest ({exc})") from None
        elif self.path.exists():
            tag, world = "", 1
        else:
            return None
        if world == 1:
            return [self.path], 1
        if world == self.world:
            return [self._rank_file(tag)], world
        files = [self._rank_file(tag, rank, world) for rank in range(world)]
        missing = [f.name for f in files if not f.exists()]
        if missing:
            raise FileNotFoundError(f"{self.manifest} commits {tag!r} of {world} processes but "
                                    f"{missing} are missing; the checkpoint cannot be resumed")
        return files, world

    def save(self, tag: str, state: dict[str, Any]) -> None:
        """Write ``state`` as the checkpoint ``tag`` (e.g. ``epoch3``, ``epoch3-batch120``)."""
        if self.world == 1:
            save_checkpoint(self.path, state)
            if self.manifest.exists():  # an earlier run at another world size: now this one
                write_json(self.manifest, {"tag": "", "world_size": 1})
                self._remove_other_worlds()
            return
        save_checkpoint(self._rank_file(tag), state)
        ddist.barrier()
        if self.rank == 0:
            write_json(self.manifest, {"tag": tag, "world_size": self.world})
            self._remove_other_worlds()
        ddist.barrier()
        for old in self.path.parent.glob(f"{self.path.stem}.rank{self.rank}-of-{self.world}.*"):
            if old != self._rank_file(tag):
                old.unlink(missing_ok=True)

    def _remove_other_worlds(self) -> None:
        """After a commit: files of an earlier run at another number of processes."""
        if self.world > 1:
            self.path.unlink(missing_ok=True)
        pattern = re.compile(rf"{re.escape(self.path.stem)}\.rank\d+-of-(\d+)\..*")
        for old in self.path.parent.glob(f"{self.path.stem}.rank*"):
            found = pattern.fullmatch(old.name)
            if found and int(found.group(1)) != self.world:
                old.unlink(missing_ok=True)


class Preempted(SystemExit):
    """Raised after SIGTERM once a checkpoint is on disk; exit status 143 (128 + SIGTERM)."""

    def __init__(self, where: str) -> None:
        super().__init__(143)
        self.where = where


class SigtermWatch:
    """Turns SIGTERM into a request to checkpoint and stop at the next batch boundary.

    Under torch.distributed the ranks agree (a one-element all-reduce every ``every``
    batches and at the end of an epoch), so that all of them stop after the same batch.
    """

    def __init__(self, every: int = 20) -> None:
        self.requested = False
        self.every = every
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:  # noqa: ARG002 - signal handler signature
        self.requested = True

    def close(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def agreed(self, batch: int | None = None) -> bool:
        """Whether to stop now; ``batch`` is the 0-based batch just finished (None: epoch end)."""
        if ddist.rank_world()[1] == 1:
            return self.requested
        if batch is not None and (batch + 1) % self.every:
            return False
        return ddist.sum_across([float(self.requested)])[0] > 0


def jsonable(obj: Any) -> Any:
    """Config values as plain lists/dicts/scalars, so they compare equal after torch.save."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj
