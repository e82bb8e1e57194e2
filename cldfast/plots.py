"""The PNG plots of `cldfast run`: accuracy against coreset fraction, and CLD histograms."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .io import atomic_write  # noqa: E402


def _save(fig, path: Path) -> None:
    atomic_write(path, lambda p: fig.savefig(p, dpi=130, bbox_inches="tight", format="png"))
    plt.close(fig)


def plot_accuracy_vs_fraction(path: str | Path, results: dict[str, dict[str, Any]],
                              fractions: Sequence[float], title: str = "") -> None:
    """Test accuracy of CLD and random coresets against the coreset fraction, with the
    full-data accuracy as a reference line."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    xs = [100 * f for f in fractions]
    cld = [100 * results[f"cld_top_{f:g}"]["test_accuracy"] for f in fractions]
    rnd = [100 * results[f"random_{f:g}"]["test_accuracy"] for f in fractions]
    ax.plot(xs, cld, "o-", color="tab:blue", lw=2, label="CLD (top, class-balanced)")
    ax.plot(xs, rnd, "s--", color="tab:gray", lw=2, label="random (class-balanced)")
    full = 100 * results["full"]["test_accuracy"]
    ax.axhline(full, color="black", lw=1, ls=":", label=f"full training split ({full:.1f} %)")
    for x, c, r in zip(xs, cld, rnd):
        # The higher of the two values is labelled above its marker, the lower one below.
        for y, color, above in ((c, "tab:blue", c >= r), (r, "tab:gray", r > c)):
            ax.annotate(f"{y:.1f}", (x, y), textcoords="offset points",
                        xytext=(0, 7 if above else -14), ha="center", fontsize=8, color=color)
    ax.set_xlabel("coreset size (% of each class)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_xticks(xs)
    ax.margins(y=0.12)  # room for the value labels above and below the markers
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower right", fontsize=9)
    _save(fig, Path(path))


def plot_score_histograms(path: str | Path, scores: np.ndarray, labels: np.ndarray,
                          class_names: Sequence[str] | None = None, max_classes: int = 20) -> None:
    """One CLD histogram per class (the first ``max_classes`` classes), shared axes."""
    classes = np.unique(labels)[:max_classes]
    cols = min(5, len(classes))
    rows = math.ceil(len(classes) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.1 * rows), sharex=True, sharey=True,
                             squeeze=False)
    bins = np.linspace(-1, 1, 41)
    for ax, c in zip(axes.flat, classes):
        s = scores[(labels == c) & np.isfinite(scores)]
        ax.hist(s, bins=bins, color="tab:blue", alpha=0.85)
        ax.axvline(0, color="black", lw=0.8)
        if s.size:
            ax.axvline(np.median(s), color="tab:red", lw=1, ls="--")
        name = class_names[c] if class_names is not None and c < len(class_names) else f"class {c}"
        ax.set_title(f"{name} (n={s.size})", fontsize=9)
        ax.grid(alpha=0.2)
    for ax in list(axes.flat)[len(classes):]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("CLD")
    for ax in axes[:, 0]:
        ax.set_ylabel("samples")
    fig.suptitle("CLD score per class (red dashed: median)", fontsize=11)
    fig.tight_layout()
    _save(fig, Path(path))
