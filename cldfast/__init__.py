"""cldfast: streaming CLD (Correlation of Loss Differences) coreset selection.

The public API: :class:`CLDTracker` (record losses in a training loop, read CLD scores when
training ends), :func:`cld_from_trajectories` and :func:`read_authors_pickle` (stored
trajectories), :func:`select` (class-balanced coresets in original dataset indices) and
:func:`build_info` (what this build was compiled with). The pipeline behind the `cldfast`
command is in :mod:`cldfast.pipeline`.
"""

from __future__ import annotations

from typing import Any

from . import _core
from ._core import __version__
from .ids import IdMap
from .offline import AuthorsLosses, cld_from_trajectories, read_authors_pickle
from .selection import ccs_select, select
from .threads import check_cpu_contention, set_threads
from .tracker import CLDTracker, CLDWarning

__all__ = [
    "__version__",
    "AuthorsLosses",
    "CLDTracker",
    "CLDWarning",
    "IdMap",
    "build_info",
    "cld_from_trajectories",
    "read_authors_pickle",
    "select",
    "ccs_select",
    "check_cpu_contention",
    "set_threads",
]


def build_info() -> dict[str, Any]:
    """What this installation of cldfast was compiled with.

    Keys: ``version``; ``cuda`` (bool: CUDA kernels compiled); ``cuda_architectures`` (list
    of compute capabilities, empty without CUDA); ``cuda_runtime`` (the CUDA runtime the
    kernels were built with, e.g. "13.0"); ``cuda_driver`` (the CUDA version of the driver
    found, None without one); ``cuda_compatible`` (whether the kernels can run on that driver);
    ``torch_cuda`` (the CUDA version torch was built for); ``openmp`` (bool); ``cpu_threads``
    (threads the CPU kernels use).
    """
    import torch

    from ._ops import cuda_versions

    archs = [a for a in str(_core.cuda_architectures).split(",") if a]
    return {
        "version": __version__,
        "cuda": bool(_core.with_cuda),
        "cuda_architectures": archs,
        **cuda_versions(),
        "torch_cuda": torch.version.cuda,
        "openmp": bool(_core.with_openmp),
        "cpu_threads": int(_core.cpu_num_threads()),
    }
