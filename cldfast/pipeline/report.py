"""Rendering, in one place: the markdown tables and PNG plots of `cldfast run` and
`cldfast bench` (numbers in, text and files out; nothing here trains or selects)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..io import atomic_write  # noqa: E402
from ..selection.methods import METHODS  # noqa: E402

__all__ = ["mean_std", "run_table", "bench_table", "line_label", "plot_accuracy_vs_fraction",
           "plot_score_histograms", "plot_bench"]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def line_label(method: str, strategy: str) -> str:
    return method if strategy == "balanced" else f"{method} ({strategy})"


def _pm(r: dict[str, Any]) -> str:
    """Mean ± std (sample std over seeds) of a result's test accuracy, in %."""
    if len(r["accuracies"]) < 2:
        return f"{100 * r['test_accuracy']:.2f} % (1 seed)"
    return f"{100 * r['test_accuracy']:.2f} ± {100 * r['test_accuracy_std']:.2f} %"


def run_table(results: dict[str, dict[str, Any]], fractions: Sequence[float],
                  compare: float, seeds: int = 1, loss_source: str = "eval",
                  rules: Sequence[str] = ()) -> str:
    full = results["full"]
    estimator = ("eval mode, the paper's CLD" if loss_source == "eval"
                 else "train mode, an approximation of the paper's CLD")
    lines = [f"CLD estimator: {estimator}. Test accuracy, mean ± std over {seeds} retraining "
             f"seed(s).", "",
             f"Full training split ({full['samples']} samples): {_pm(full)}", "",
             "| fraction | samples | CLD (top) | random | CLD - random (per seed) |",
             "|---|---|---|---|---|"]
    spreads = []
    for f in fractions:
        top, rnd = results[f"cld_top_{f:g}"], results[f"random_{f:g}"]
        d = [100 * (a - b) for a, b in zip(top["accuracies"], rnd["accuracies"])]
        spreads += [x for x in (top.get("test_accuracy_std"), rnd.get("test_accuracy_std"))
                    if x is not None and np.isfinite(x)]
        lines.append(f"| {f:g} | {top['samples']} | {_pm(top)} | {_pm(rnd)} | "
                     f"{np.mean(d):+.2f} ({', '.join(f'{x:+.2f}' for x in d)}) |")
    rules = [r for r in rules if r != "top"]
    if rules:
        lines += ["", "Selection rules over CLD (automatic parameters; docs/method.md):", "",
                  "| fraction | rule | test accuracy | rule - random (per seed) |",
                  "|---|---|---|---|"]
        for f in fractions:
            rnd = results[f"random_{f:g}"]
            for rule in rules:
                r = results[f"cld_{rule}_{f:g}"]
                d = [100 * (a - b) for a, b in zip(r["accuracies"], rnd["accuracies"])]
                lines.append(f"| {f:g} | {rule} | {_pm(r)} | {np.mean(d):+.2f} "
                             f"({', '.join(f'{x:+.2f}' for x in d)}) |")
    lines += ["", f"Subsets of equal size ({compare:g} of each class):", "",
              "| subset | test accuracy |", "|---|---|"]
    for label, key in (("top CLD", "top"), ("near-zero CLD", "zero"), ("most negative CLD", "bottom")):
        lines.append(f"| {label} | {_pm(results[f'cld_{key}_{compare:g}'])} |")
    if seeds < 2:
        lines += ["", "Single seed: a difference between CLD and random coresets may be no "
                  "more than run-to-run noise; use --seeds 2 or more to see the seed spread."]
    elif spreads:
        lines += ["", f"A difference smaller than the seed spread (std up to "
                  f"{100 * max(spreads):.2f} points here) is no difference."]
    return "\n".join(lines)


def _fmt_bytes(b: int) -> str:
    return "0" if b == 0 else f"{b / 2**20:.2f}"


def bench_table(metrics: dict[str, Any]) -> str:
    """The markdown of ``bench.md`` from ``bench.json``'s content."""
    fracs = metrics["fractions"]
    res = metrics["results"]
    seeds = metrics["seeds"]
    pm = metrics["proxy_metrics"]
    pr = metrics["proxy_recipe"]
    r = metrics["recipe"]
    out = [f"{metrics['arch']} retrained on coresets of {metrics['dataset']} "
           f"({metrics['num_train']} training samples, {metrics['num_val']} held out for CLD's "
           f"validation); proxy {metrics['proxy_arch']}, {metrics['proxy']['proxy_epochs_trained']} "
           f"epochs ({pm['proxy_seconds']:.0f} s, proxy test accuracy "
           f"{100 * pm['proxy_test_accuracy']:.2f} %); retraining {r['epochs']} epochs, batch "
           f"{r['batch_size']}, lr {r['lr']:g}. Test accuracy in %, mean ± std over {seeds} "
           f"retraining seed{'s' if seeds > 1 else ''}; bold: best mean per fraction.", ""]
    if "full" in res:
        fu = res["full"]
        k = len(fu["accuracies"])
        out += [f"Full training split ({fu['samples']} samples): {100 * fu['mean']:.2f} ± "
                f"{100 * fu['std']:.2f} % ({k} seed{'s' if k > 1 else ''})", ""]
    best = {}
    for f in fracs:
        vals = [ln["fractions"][f"{f:g}"]["mean"] for ln in res["lines"]]
        best[f] = max(vals) if vals else None
    head = "| method | " + " | ".join(f"{100 * f:g} %" for f in fracs) + \
           " | extra passes | selection time (s) | state (MB) |"
    out += [head, "|---" * (len(fracs) + 4) + "|"]
    for ln in res["lines"]:
        cost = metrics["selection_cost"][ln["method"]]
        cols = []
        for f in fracs:
            c = ln["fractions"][f"{f:g}"]
            txt = f"{100 * c['mean']:.2f} ± {100 * c['std']:.2f}"
            cols.append(f"**{txt}**" if best[f] is not None and c["mean"] == best[f] else txt)
        out.append(f"| {ln['label']} | " + " | ".join(cols) +
                   f" | {cost['extra_passes']} | {cost['seconds'] + cost['select_seconds_mean']:.2f} | "
                   f"{_fmt_bytes(cost['state_bytes'])} |")
    out += ["", "Selection cost is on top of the one shared proxy training "
            f"({pm['proxy_seconds']:.0f} s, peak RSS {pm['peak_rss_mb']:.0f} MB): extra passes over "
            "the training split; time spent computing the scores (recorders: their host time "
            "during training; CLD: validation passes and epoch-end updates; GraNd / geometry: "
            "the shared final pass plus their own work) plus the selection itself; state: "
            "memory of the per-sample state (geometry: the embeddings)."]
    if metrics.get("skipped"):
        out.append("Skipped (no difficulty score for CCS): " +
                   ", ".join(f"{d['method']} ({d['strategy']})" for d in metrics["skipped"]) + ".")
    return "\n".join(out)


_COLORS = {"cld": "black", "random": "tab:gray", "forgetting": "tab:green", "aum": "tab:red",
           "el2n": "tab:purple", "entropy": "tab:brown", "margin": "tab:pink",
           "least-confidence": "tab:olive", "variability": "tab:cyan", "confidence": "navy",
           "grand": "tab:blue", "herding": "goldenrod", "kcenter": "tab:orange"}


def plot_bench(path: str | Path, metrics: dict[str, Any]) -> None:
    """Test accuracy against coreset fraction, one line per method (the shape of the CLD
    paper's Figure 2), error bars = std over seeds, full-data accuracy as a band."""
    fracs = metrics["fractions"]
    res = metrics["results"]
    xs = np.array([100 * f for f in fracs])
    fig, ax = plt.subplots(figsize=(7.6, 4.8))
    markers = "osD^v<>pXh*P"
    names = list(METHODS)
    styles = {"balanced": "-", "global": "--", "ccs": ":"}
    n_lines = len(res["lines"])
    span = float(xs.max() - xs.min()) if xs.size > 1 else 10.0
    width = min(0.012 * span, 0.25 * span / max(n_lines, 1))  # spread the error bars
    for i, ln in enumerate(res["lines"]):
        mean = np.array([100 * ln["fractions"][f"{f:g}"]["mean"] for f in fracs])
        std = np.array([100 * ln["fractions"][f"{f:g}"]["std"] for f in fracs])
        is_cld = ln["method"] == "cld"
        k = names.index(ln["method"])
        color = _COLORS.get(ln["method"], "tab:blue")
        offset = (i - (n_lines - 1) / 2) * width
        ax.errorbar(xs + offset, mean, yerr=std, label=ln["label"], color=color,
                    marker=markers[k % len(markers)], ms=6.5 if is_cld else 4.5,
                    lw=2.6 if is_cld else 1.3, capsize=3, zorder=5 if is_cld else 3,
                    ls=(0, (4, 2)) if ln["method"] == "random" and ln["strategy"] == "balanced"
                    else styles.get(ln["strategy"], "-"))
    if "full" in res:
        fm, fs = 100 * res["full"]["mean"], 100 * res["full"]["std"]
        ax.axhline(fm, color="black", lw=1, ls=":", label=f"full training split ({fm:.1f} %)")
        ax.axhspan(fm - fs, fm + fs, color="black", alpha=0.08, lw=0)
    ax.set_xlabel("coreset size (% of the training split)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_xticks(xs)
    ax.grid(alpha=0.3)
    ax.set_title(f"{metrics['arch']} on {metrics['dataset']}: coreset methods from one "
                 f"{metrics['proxy_arch']} proxy run\n(mean ± std over {metrics['seeds']} seeds)",
                 fontsize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8,
              ncol=2 if n_lines > 18 else 1, frameon=False)
    atomic_write(Path(path), lambda p: fig.savefig(p, dpi=130, bbox_inches="tight", format="png"))
    plt.close(fig)




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
