"""Plain numpy reference of the CLD formula in SPEC.md, written independently of cldfast.

It keeps the whole trajectory (no streaming) and computes everything in float64 in two
passes, exactly as the formula reads:

    l_i(t)  = mean of sample i's finite observations at checkpoint t (absent if none)
    v_c(t)  = mean of the finite validation losses of class c at checkpoint t
    y_c(t)  = v_c(t) per class (global mean of V for classes without validation samples,
              or for every class when per_class=False)
    the differences of sample i run between consecutive checkpoints where it was observed,
    dx = l_i(t_k) - l_i(t_{k-1}), paired with dy = y_c(t_k) - y_c(t_{k-1})
    CLD_i = population Pearson(dx, dy); NaN with fewer than 2 differences; 0 if a variance is 0.
"""

from __future__ import annotations

import numpy as np


def pearson_population(x: np.ndarray, y: np.ndarray) -> float:
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.size < 2:
        return float("nan")
    dx = x - x.mean()
    dy = y - y.mean()
    vx = np.mean(dx * dx)
    vy = np.mean(dy * dy)
    if vx == 0.0 or vy == 0.0:
        return 0.0
    return float(np.mean(dx * dy) / np.sqrt(vx * vy))


def validation_trajectory(val_losses: list[np.ndarray], val_labels: np.ndarray,
                          train_labels: np.ndarray, per_class: bool) -> np.ndarray:
    """[T, C] effective validation loss per class; val_losses[t] is [Q] with NaN = skipped."""
    val_labels = np.asarray(val_labels)
    num_classes = int(max(np.max(train_labels), np.max(val_labels))) + 1
    out = np.zeros((len(val_losses), num_classes))
    for t, v in enumerate(val_losses):
        v = np.asarray(v, dtype=np.float64)
        ok = np.isfinite(v)
        global_mean = v[ok].mean()
        for c in range(num_classes):
            members = (val_labels == c)
            if per_class and members.any():
                out[t, c] = v[members & ok].mean()
            else:
                out[t, c] = global_mean
    return out


def cld_reference(observations: list[list[tuple[int, float]]], val_losses: list[np.ndarray],
                  train_labels: np.ndarray, val_labels: np.ndarray,
                  per_class: bool = True) -> np.ndarray:
    """CLD per training sample.

    observations[t]: the (index, loss) pairs recorded at checkpoint t (any order, repeats
    allowed, non-finite losses ignored). val_losses[t]: [Q] validation losses.
    """
    train_labels = np.asarray(train_labels)
    n = train_labels.shape[0]
    y = validation_trajectory(val_losses, val_labels, train_labels, per_class)
    values: list[dict[int, float]] = [dict() for _ in range(n)]  # sample -> {t: epoch mean}
    for t, obs in enumerate(observations):
        sums: dict[int, list[float]] = {}
        for i, loss in obs:
            if np.isfinite(loss):
                sums.setdefault(int(i), []).append(float(loss))
        for i, ls in sums.items():
            values[i][t] = float(np.mean(ls))
    scores = np.full(n, np.nan)
    for i in range(n):
        ts = sorted(values[i])
        if len(ts) < 3:
            continue
        c = train_labels[i]
        dx = [values[i][b] - values[i][a] for a, b in zip(ts, ts[1:])]
        dy = [y[b, c] - y[a, c] for a, b in zip(ts, ts[1:])]
        scores[i] = pearson_population(np.array(dx), np.array(dy))
    return scores


def cld_reference_dense(train_losses: np.ndarray, val_losses: np.ndarray, train_labels: np.ndarray,
                        val_labels: np.ndarray, per_class: bool = True) -> np.ndarray:
    """The same for full [T, N] / [T, Q] trajectories (NaN in train_losses = not observed)."""
    obs = [[(i, float(v)) for i, v in enumerate(row) if np.isfinite(v)] for row in train_losses]
    return cld_reference(obs, list(val_losses), train_labels, val_labels, per_class)
