"""The core: the streaming CLD tracker (its input checks in ``checks``, its saved state across
numbers of processes in ``tracker_state``, its scores file in ``scores_file``, its use as a
training-batch recorder in ``batch_recorder``), its kernel dispatch (``kernels``: the
compiled kernels where this build covers the device, their torch twins in ``kernels_torch``
elsewhere; ``ops``: the same kernels as torch custom operators, for torch.compile and CUDA
graphs), offline replay of stored trajectories, the state pattern shared with the other
per-sample objects (``state``), sample-id mapping, threads and every torch.distributed
collective. Depends on nothing else in cldfast but the compiled ``cldfast._core`` and
``cldfast.io``."""

from .batch_recorder import TrackerRecorder
from .ids import IdMap
from .kernels import KernelFallbackWarning
from .offline import AuthorsLosses, cld_from_trajectories, read_authors_pickle
from .state import Stateful
from .threads import check_cpu_contention, set_threads
from .tracker import CLDTracker, CLDWarning

__all__ = ["CLDTracker", "CLDWarning", "TrackerRecorder", "KernelFallbackWarning",
           "cld_from_trajectories", "read_authors_pickle", "AuthorsLosses", "IdMap", "Stateful",
           "set_threads", "check_cpu_contention"]
