"""Geometry-based coreset selection on embeddings: k-Center Greedy and Herding.

Both are greedy: the first ``k`` picks do not depend on the budget, so one run up to the
largest budget yields the selection for every smaller one. Neither ever builds an N x N
distance matrix: k-Center Greedy keeps one running minimum-distance vector [N] and Herding
one running sum [D], so each pick costs O(N * D) time and the whole run O(N) extra memory
beyond the embeddings (k-Center Greedy runs on 1.28M ImageNet embeddings; its time is
O(N * k * D), as for any exact k-center greedy).

Two backends with the same results (up to float rounding on near-ties):

* numpy arrays: numba kernels, distances accumulated in float64, on one thread. (Not
  ``parallel=True``: once numba's OpenMP threading layer has run, torch's CPU operators in
  the same process ran many times slower, and the bench retrains right after selecting.)
* torch tensors, on the GPU or on the CPU with torch's own threads: one matrix-vector
  product per pick, ``||x||^2 - 2 x.c + ||c||^2`` in float32, still without an N x N matrix.
  The bench hands CUDA embeddings to this path.

Definitions:

* k-Center Greedy (Sener & Savarese 2018; DeepCore's ``kCenterGreedy``): start from one
  seeded random point, then repeatedly add the point farthest (Euclidean) from its nearest
  chosen center. Ties go to the lower position.
* Herding (Welling 2009; Chen et al. 2010, as used for coresets by DeepCore): at step t
  (0-based) add the unchosen point x that brings the mean of the chosen points closest to the
  mean mu of all points, i.e. minimises ||(t + 1) mu - S_t - x|| where S_t is the sum of the
  t points chosen so far. (DeepCore's ``herding`` code takes the argmax of that distance;
  cldfast follows the published definition.) Ties go to the lower position.

:func:`greedy_scores` turns a greedy order into a score array that
:func:`cldfast.selection.select` understands: the sample picked at step t gets ``-t`` (so
``order="top"`` takes the earliest picks) and samples never picked get NaN.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

try:
    from numba import njit

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - numba is a declared dependency
    HAVE_NUMBA = False

__all__ = ["GEOMETRY_METHODS", "kcenter_greedy", "herding", "greedy_order", "greedy_scores"]

GEOMETRY_METHODS = ("kcenter", "herding")


# --------------------------------------------------------------------------------------------
# numba kernels (CPU)
# --------------------------------------------------------------------------------------------

if HAVE_NUMBA:

    @njit(cache=True)
    def _update_min_dist(x, center, mins):  # x: [N, D] f32, center: [D] f32, mins: [N] f64
        n, d = x.shape
        for i in range(n):
            if mins[i] < 0.0:  # already a center
                continue
            acc = 0.0
            for j in range(d):
                diff = np.float64(x[i, j]) - np.float64(center[j])
                acc += diff * diff
            if acc < mins[i]:
                mins[i] = acc

    @njit(cache=True)
    def _argmax_first(v):
        best = 0
        best_val = v[0]
        for i in range(1, v.shape[0]):
            if v[i] > best_val:
                best_val = v[i]
                best = i
        return best

    @njit(cache=True)
    def _kcenter_numba(x, budget, first):
        n = x.shape[0]
        order = np.empty(budget, dtype=np.int64)
        mins = np.full(n, np.inf)
        p = first
        for t in range(budget):
            order[t] = p
            mins[p] = -1.0
            if t == budget - 1:
                break
            _update_min_dist(x, x[p], mins)
            p = _argmax_first(mins)
        return order

    @njit(cache=True)
    def _herding_dist(x, target, chosen, out):  # out[i] = ||target - x_i||^2, +inf if chosen
        n, d = x.shape
        for i in range(n):
            if chosen[i]:
                out[i] = np.inf
                continue
            acc = 0.0
            for j in range(d):
                diff = target[j] - np.float64(x[i, j])
                acc += diff * diff
            out[i] = acc

    @njit(cache=True)
    def _herding_numba(x, budget):
        n, d = x.shape
        mu = np.zeros(d)
        for i in range(n):
            for j in range(d):
                mu[j] += x[i, j]
        mu /= n
        total = np.zeros(d)
        chosen = np.zeros(n, dtype=np.bool_)
        dist = np.empty(n)
        order = np.empty(budget, dtype=np.int64)
        for t in range(budget):
            target = (t + 1) * mu - total
            _herding_dist(x, target, chosen, dist)
            best = 0
            best_val = dist[0]
            for i in range(1, n):
                if dist[i] < best_val:
                    best_val = dist[i]
                    best = i
            order[t] = best
            chosen[best] = True
            for j in range(d):
                total[j] += x[best, j]
        return order


# --------------------------------------------------------------------------------------------
# torch versions (any device)
# --------------------------------------------------------------------------------------------

@torch.no_grad()
def _kcenter_torch(x: torch.Tensor, budget: int, first: int) -> np.ndarray:
    x = x.float()
    sq = (x * x).sum(1)
    mins = torch.full((x.shape[0],), float("inf"), dtype=torch.float32, device=x.device)
    order = torch.empty(budget, dtype=torch.int64, device=x.device)
    p = torch.tensor(first, device=x.device)
    for t in range(budget):
        order[t] = p
        mins[p] = -1.0
        if t == budget - 1:
            break
        c = x[p]
        d = (sq - 2.0 * (x @ c) + sq[p]).clamp_min_(0.0)
        d = torch.where(mins < 0, mins, d)
        mins = torch.minimum(mins, d)
        p = torch.argmax(mins)  # first maximum, stays on the device (no sync per step)
    return order.cpu().numpy()


@torch.no_grad()
def _herding_torch(x: torch.Tensor, budget: int) -> np.ndarray:
    x = x.float()
    sq = (x * x).sum(1)
    mu = x.double().mean(0)
    total = torch.zeros_like(mu)
    chosen = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    order = torch.empty(budget, dtype=torch.int64, device=x.device)
    inf = torch.tensor(float("inf"), device=x.device)
    for t in range(budget):
        target = ((t + 1) * mu - total).float()
        d = sq - 2.0 * (x @ target) + (target * target).sum()
        p = torch.argmin(torch.where(chosen, inf, d))
        order[t] = p
        chosen[p] = True
        total += x[p].double()
    return order.cpu().numpy()


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------

def _check_matrix(x: Any, name: str = "embeddings") -> np.ndarray | torch.Tensor:
    if isinstance(x, torch.Tensor):
        if x.dim() != 2 or x.shape[0] == 0:
            raise ValueError(f"{name} must be a non-empty 2-D [N, D] tensor; got shape {tuple(x.shape)}")
        return x.detach()
    arr = np.asarray(x)
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty 2-D [N, D] array; got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise TypeError(f"{name} must hold floats; got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def _check_budget(budget: int, n: int) -> int:
    b = int(budget)
    if b != budget or b < 0:
        raise ValueError(f"budget must be a non-negative integer; got {budget}")
    return min(b, n)


def kcenter_greedy(embeddings: Any, budget: int, *, seed: int = 0, first: int | None = None) -> np.ndarray:
    """k-Center Greedy order of ``budget`` points.

    Args:
        embeddings: float [N, D] numpy array (numba backend) or torch tensor (any device).
        budget: number of points to pick (capped at N).
        seed: draws the first center uniformly (``numpy.random.default_rng(seed)``).
        first: position of the first center instead of a random one.

    Returns int64 [min(budget, N)] positions, in the order they were picked.
    """
    x = _check_matrix(embeddings)
    n = int(x.shape[0])
    b = _check_budget(budget, n)
    if b == 0:
        return np.zeros(0, np.int64)
    start = int(np.random.default_rng(seed).integers(n)) if first is None else int(first)
    if not 0 <= start < n:
        raise ValueError(f"first must be a position in [0, {n}); got {first}")
    if isinstance(x, torch.Tensor):
        return _kcenter_torch(x, b, start)
    if not HAVE_NUMBA:  # pragma: no cover
        return _kcenter_torch(torch.from_numpy(x), b, start)
    return _kcenter_numba(x, b, start)


def herding(embeddings: Any, budget: int) -> np.ndarray:
    """Herding order of ``budget`` points (see the module docstring).

    Args:
        embeddings: float [N, D] numpy array (numba backend) or torch tensor (any device).
        budget: number of points to pick (capped at N).

    Returns int64 [min(budget, N)] positions, in the order they were picked.
    """
    x = _check_matrix(embeddings)
    b = _check_budget(budget, int(x.shape[0]))
    if b == 0:
        return np.zeros(0, np.int64)
    if isinstance(x, torch.Tensor):
        return _herding_torch(x, b)
    if not HAVE_NUMBA:  # pragma: no cover
        return _herding_torch(torch.from_numpy(x), b)
    return _herding_numba(x, b)


def greedy_order(method: str, embeddings: Any, budget: int, *, seed: int = 0) -> np.ndarray:
    """Dispatch to :func:`kcenter_greedy` or :func:`herding` by name."""
    if method == "kcenter":
        return kcenter_greedy(embeddings, budget, seed=seed)
    if method == "herding":
        return herding(embeddings, budget)
    raise ValueError(f"geometry method must be one of {', '.join(GEOMETRY_METHODS)}; got {method!r}")


def greedy_scores(method: str, embeddings: Any, labels: Any, *, fraction: float = 1.0,
                  class_balanced: bool = True, seed: int = 0) -> np.ndarray:
    """Greedy picks as a score array for :func:`cldfast.selection.select`.

    Runs ``method`` within every class up to its quota ``round(fraction * n_c)`` (half up,
    as :func:`cldfast.selection.class_quotas`), or over all samples up to
    ``round(fraction * N)`` when ``class_balanced=False``. The sample picked at step t
    (0-based, within its class or globally) gets the score ``-t``; the others get NaN. Select
    with ``order="top"`` and the same ``class_balanced`` at any fraction up to ``fraction``.

    Args:
        embeddings: float [N, D] (numpy or torch).
        labels: int [N] classes.
        fraction: the largest fraction that will be selected.
        seed: first center of k-Center Greedy (class c uses ``seed + c``).

    Returns float64 [N].
    """
    from .balanced import check_fraction, class_quotas

    x = _check_matrix(embeddings)
    y = np.asarray(labels).reshape(-1)
    n = int(x.shape[0])
    if y.shape[0] != n:
        raise ValueError(f"labels has {y.shape[0]} entries but embeddings has {n} rows")
    f = float(fraction)
    check_fraction(f)
    out = np.full(n, np.nan)
    if not class_balanced:
        order = greedy_order(method, x, int(math.floor(f * n + 0.5)), seed=seed)
        out[order] = -np.arange(order.shape[0], dtype=np.float64)
        return out
    for c, quota in class_quotas(y, fraction=f).items():
        members = np.flatnonzero(y == c)
        sub = x[torch.from_numpy(members).to(x.device)] if isinstance(x, torch.Tensor) else x[members]
        order = greedy_order(method, sub, quota, seed=seed + int(c))
        out[members[order]] = -np.arange(order.shape[0], dtype=np.float64)
    return out
