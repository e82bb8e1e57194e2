"""cldfast: streaming CLD (Correlation of Loss Differences) coreset selection.

The public API: :class:`CLDTracker` (record losses in a training loop, read CLD scores when
training ends), :func:`cld_from_trajectories` and :func:`read_authors_pickle` (stored
trajectories), :func:`select_by_order` (class-balanced coresets in original dataset
indices; :func:`select` is its earlier name) and
:func:`build_info` (what this build was compiled with, and which kernels each device
runs). The pipeline behind the `cldfast` command is in :mod:`cldfast.pipeline`;
docs/design.md maps the subpackages (core, data, scores, selection, training, pipeline, cli,
integrations) and the data path through them.
"""

from __future__ import annotations

from . import _core
from ._core import __version__
from .core import (AuthorsLosses, CLDTracker, CLDWarning, IdMap, KernelFallbackWarning,
                   check_cpu_contention, cld_from_trajectories, read_authors_pickle, set_threads)
from .core.kernels import build_info
from .selection.balanced import ccs_select, select, select_by_order

__all__ = [
    "__version__",
    "AuthorsLosses",
    "CLDTracker",
    "CLDWarning",
    "IdMap",
    "KernelFallbackWarning",
    "build_info",
    "cld_from_trajectories",
    "read_authors_pickle",
    "select_by_order",
    "select",
    "ccs_select",
    "check_cpu_contention",
    "set_threads",
]
