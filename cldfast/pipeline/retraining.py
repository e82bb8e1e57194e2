"""The retraining-cell executor behind ``run`` and ``bench``: one cell is a coreset chosen
and a model trained on it (:func:`retrain_cell`); :func:`retrain_cells` trains a list of
them in order, or several at a time in spawned worker processes (:func:`retrain_jobs`
chooses how many), and stops the running ones at once when one fails. Every cell keeps a
resume checkpoint, so ``--resume`` continues an interrupted list."""

from __future__ import annotations

import functools
import logging
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..core import distributed as ddist
from ..core.threads import available_cores
from ..data.datasets import DatasetBundle
from ..io import save_indices
from ..training.checkpoints import Preempted
from ..training.models import model_name
from ..training.recipe import Recipe
from . import training
from .sources import DataSpec, load_data

log = logging.getLogger("cldfast")

__all__ = ["retrain_cell", "retrain_cells", "retrain_jobs", "available_cores", "CellNotStarted"]


def retrain_cell(bundle: DatasetBundle, out: str | Path, name: str,
                 pick: Callable[[], np.ndarray], *, arch: Any, recipe: Recipe, seed: int,
                 indices_file: str | Path | None = None, resume: bool = False,
                 progress: bool = True) -> dict[str, Any]:
    """The one retraining cell behind :func:`cldfast.pipeline.run` and
    :func:`cldfast.pipeline.bench.bench`: the coreset ``pick()`` (original dataset indices)
    is written to ``indices_file`` (rank 0), then ``arch`` is trained on it with ``recipe`` at
    ``seed`` (:func:`cldfast.pipeline.train`: files ``out/<name>_metrics.json``, resume
    checkpoint ``out/checkpoints/<name>.pt``). Returns the training metrics plus ``samples``
    and ``select_seconds``."""
    t0 = time.perf_counter()
    idx = np.asarray(pick(), dtype=np.int64)
    if indices_file is not None and ddist.is_main():
        save_indices(indices_file, idx)
    select_seconds = time.perf_counter() - t0
    log.info("training %s on %s, seed %d (%d samples)", model_name(arch), name, seed, idx.size)
    m = training.train(bundle, out, arch=arch, recipe=replace(recipe, seed=seed), indices=idx,
                       name=name, resume=resume, progress=progress)
    return {**m, "samples": int(idx.size), "select_seconds": select_seconds}


def _fixed_indices(indices: np.ndarray) -> np.ndarray:
    """A coreset chosen in the parent, handed to a retraining cell in a worker process."""
    return indices


# Per worker process: the bundle, loaded once by the pool's initializer, and whether the run
# is stopping (SIGTERM from the parent after another cell failed).
_WORKER_BUNDLE: DatasetBundle | None = None
_WORKER_STOPPING = False


class CellNotStarted(RuntimeError):
    """A retraining cell a worker did not start because the run was stopping."""


def _worker_sigterm(signum, frame) -> None:  # noqa: ARG001 - signal handler signature
    """A worker's SIGTERM outside a training loop (idle, between cells, loading data): the
    run is stopping, so no further cell starts. Within a training loop the loop's own
    handler writes a resume checkpoint and stops it
    (:class:`cldfast.training.checkpoints.SigtermWatch`)."""
    global _WORKER_STOPPING
    _WORKER_STOPPING = True


def _cell_worker_init(data: Any, threads: int, log_file: str | None) -> None:
    global _WORKER_BUNDLE
    import signal

    import torch

    signal.signal(signal.SIGTERM, _worker_sigterm)
    torch.set_num_threads(threads)
    if log_file is not None:  # the run's log keeps every cell's epochs
        handler = logging.FileHandler(log_file)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    _WORKER_BUNDLE = load_data(data)


def _cell_worker(out: Path, name: str, indices: np.ndarray, kwargs: dict[str, Any]) -> dict[str, Any]:
    global _WORKER_STOPPING
    assert _WORKER_BUNDLE is not None
    if _WORKER_STOPPING:
        raise CellNotStarted(f"{name}: not started, the run is stopping")
    try:
        return retrain_cell(_WORKER_BUNDLE, out, name, functools.partial(_fixed_indices, indices),
                            progress=False, **kwargs)
    except Preempted:  # resume checkpoint written on SIGTERM: the cells queued behind it
        # do not start
        _WORKER_STOPPING = True
        raise


def _stop_cells(pool: Any, futures: Sequence[Any]) -> None:
    """After a failed cell (or Ctrl-C): drop the cells not started and stop the running ones
    now. Each running worker gets SIGTERM, on which its training loop writes a resume
    checkpoint (which ``--resume`` continues) and stops at the next batch boundary; a worker between
    cells or still loading data starts no further cell. SIGTERM is repeated every second
    until every running cell has ended, for a worker that was past its handler's reach (e.g.
    building its model) the first time; the workers' handlers make repeats harmless."""
    import signal
    from concurrent.futures import wait

    for fut in futures:
        fut.cancel()  # those not handed to a worker yet
    running = {fut for fut in futures if not fut.done()}
    while running:
        # ProcessPoolExecutor has no public API for its worker processes: `_processes`
        # (pid -> multiprocessing.Process) is private; without it the running cells end in
        # their own time, as pool.shutdown(wait=True) below waits for them.
        for proc in list((getattr(pool, "_processes", None) or {}).values()):
            if proc.exitcode is None:
                try:
                    os.kill(proc.pid, signal.SIGTERM)
                except (ProcessLookupError, OSError):
                    pass
        _, running = wait(running, timeout=1.0)
    pool.shutdown(wait=True, cancel_futures=True)


def retrain_jobs(data: Any, arch: Any, recipe: Recipe, cells: int, jobs: int | str | None) -> int:
    """How many retraining cells :func:`cldfast.pipeline.run` trains at once.

    ``jobs="auto"`` (or None; what ``cldfast run`` asks for when ``--jobs`` is left out): on
    the CPU in one process, with data that a worker can load by itself (a dataset name or
    :class:`DataSpec`) and an architecture given by name, as many as torch has threads (so
    ``cldfast --threads 1 run`` stays sequential), at most one per core and per cell; else 1
    (on a GPU, under torchrun). Small models do not use several cores fully within one
    training step, so cells side by side with one thread each train faster in total than one
    cell with every thread. ``jobs=N`` asks for N (at most one per cell); N > 1 is refused
    under torchrun (world size > 1), where every rank would train every cell and write the
    same files."""
    if jobs is not None and not (isinstance(jobs, str) and jobs == "auto"):
        if isinstance(jobs, bool) or not isinstance(jobs, (int, np.integer)) or int(jobs) < 1:
            raise ValueError(f"jobs must be >= 1 (an integer) or 'auto'; got {jobs!r}")
        world = ddist.rank_world()[1]
        if int(jobs) > 1 and world > 1:
            raise ValueError(f"--jobs {int(jobs)} (jobs={int(jobs)}) cannot be used under torchrun "
                             f"(world size {world}): every rank would train every retraining "
                             "cell and write the same files. Leave --jobs out (or give 1): the "
                             "ranks then train each cell together")
        return min(int(jobs), max(cells, 1))
    import torch

    reloadable = data is None or isinstance(data, (str, DataSpec))
    if (recipe.resolved_device().type != "cpu" or ddist.rank_world()[1] > 1 or not reloadable
            or not isinstance(arch, str)):
        return 1
    return max(1, min(torch.get_num_threads(), available_cores(), cells))


def retrain_cells(bundle: DatasetBundle, data: Any, out: Path,
                  cells: list[tuple[str, np.ndarray | Callable[[], np.ndarray], dict[str, Any]]],
                  jobs: int, progress: bool) -> list[dict[str, Any]]:
    """Train ``cells`` (name, indices or a selector, retrain_cell keyword arguments) in
    order, or ``jobs`` at a time in worker processes (spawned; each loads ``data`` once and
    gets ``threads // jobs`` torch threads). Results in the order of ``cells``."""
    if jobs <= 1:
        return [retrain_cell(bundle, out, name, pick if callable(pick) else
                             functools.partial(_fixed_indices, pick), progress=progress, **kw)
                for name, pick, kw in cells]
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    import torch

    from ..training.evaluation import tqdm

    threads = max(1, torch.get_num_threads() // jobs)
    run_log = out.parent / "run.log"
    log.info("retraining %d cells, %d at a time (worker processes with %d torch thread(s) "
             "each)", len(cells), jobs, threads)
    chosen = [(name, np.asarray(pick() if callable(pick) else pick, dtype=np.int64), kw)
              for name, pick, kw in cells]
    results: list[dict[str, Any] | None] = [None] * len(chosen)
    with ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn"), initializer=_cell_worker_init,
                             initargs=(data if data is not None else DataSpec(), threads,
                                       str(run_log) if run_log.exists() else None)) as pool:
        futures = {pool.submit(_cell_worker, out, name, idx, kw): i
                   for i, (name, idx, kw) in enumerate(chosen)}
        try:
            with tqdm(total=len(chosen), desc="retraining cells", disable=not progress) as bar:
                for fut in as_completed(futures):
                    i = futures[fut]
                    results[i] = m = fut.result()
                    log.info("%s: test accuracy %.2f %% (%d samples)", chosen[i][0],
                             100 * m["test_accuracy"], m["samples"])
                    bar.update(1)
        except BaseException:
            # A failed cell (or Ctrl-C) ends the run at once: cells not started yet are
            # dropped, the running ones write a resume checkpoint and stop (SIGTERM); the
            # finished cells and those checkpoints serve --resume. Then the failure is reported.
            log.warning("a retraining cell failed or the run was interrupted: stopping the "
                        "running cells (each writes a resume checkpoint for --resume)")
            _stop_cells(pool, list(futures))
            raise
    return results  # type: ignore[return-value]
