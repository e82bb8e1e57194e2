"""The core: the streaming CLD tracker, its kernel dispatch (``kernels``, with the torch
twins in ``kernels_torch``), offline replay of stored trajectories, the state pattern shared
with the other recorders, sample-id mapping, threads and every torch.distributed collective.
Depends on nothing else in cldfast but the compiled ``cldfast._core`` and ``cldfast.io``."""

from .ids import IdMap
from .offline import AuthorsLosses, cld_from_trajectories, read_authors_pickle
from .state import Stateful
from .threads import check_cpu_contention, set_threads
from .tracker import CLDTracker, CLDWarning

__all__ = ["CLDTracker", "CLDWarning", "cld_from_trajectories", "read_authors_pickle",
           "AuthorsLosses", "IdMap", "Stateful", "set_threads", "check_cpu_contention"]
