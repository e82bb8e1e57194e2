"""CPU threads for torch and for cldfast's kernels, and a check for a busy machine.

On a machine with few cores, a training run whose OpenMP threads outnumber the idle cores
slows down far more than its share: the threads of one parallel region wait at every barrier
for a peer that the scheduler has parked behind another process, so a run with fewer
threads than cores, down to 1, can be many times faster than one with every core
(README, Performance).
"""

from __future__ import annotations

import os
import warnings

import torch

from .. import _core

__all__ = ["set_threads", "check_cpu_contention", "available_cores"]


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity), not all the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def set_threads(n: int) -> None:
    """Use ``n`` threads for torch's CPU operations and for cldfast's CPU kernels."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"threads must be an integer >= 1; got {n!r}")
    torch.set_num_threads(n)
    _core.cpu_set_num_threads(n)


def check_cpu_contention(threads: int | None = None, *, warn: bool = True) -> str | None:
    """Warn when other processes already keep the cores busy and ``threads`` (default:
    torch's current setting) > 1 would oversubscribe them. Returns the message, or None when
    the machine looks free enough. Uses the 1-minute load average, so call it before starting
    heavy work in this process."""
    threads = torch.get_num_threads() if threads is None else int(threads)
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return None
    cores = available_cores()
    if threads <= 1 or load + threads <= cores + 0.5:
        return None
    msg = (f"the CPU is busy: load average {load:.1f} on {cores} core(s), and this run uses "
           f"{threads} threads. With more threads than idle cores, OpenMP threads wait for "
           "descheduled peers and CPU training can run many times slower; use --threads 1 "
           "(or cldfast.set_threads(1)), or wait for the other work to finish")
    if warn:
        warnings.warn(msg, RuntimeWarning, stacklevel=2)
    return msg
