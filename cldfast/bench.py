"""`cldfast bench`: CLD against the standard coreset baselines, from one proxy run.

One proxy is trained with CLD tracking while every trajectory-based baseline of
:mod:`cldfast.baselines` is recorded from the same training logits; GraNd, Herding and
k-Center Greedy share one eval pass of the final proxy. Then, for every method x strategy x
fraction x seed, a coreset is selected and the target model is retrained on it
(:func:`cldfast.pipeline.train`; retraining seed = ``recipe.seed + s``, the proxy is shared).
Writes into ``out``:

* ``scores.npz``: CLD and every baseline score (``extra_<name>``), ``proxy.json``;
* ``cells/<method>-<strategy>-f<fraction>-s<seed>.json``: one finished retraining each,
  written atomically; a re-run skips the cells already there (cells written with other
  settings are refused), and the proxy resumes from its checkpoint;
* ``indices/*.npy`` (original dataset indices of every coreset), ``runs/`` (per-run metrics);
* ``bench.md``, ``bench.json`` and ``bench_accuracy.png`` (test accuracy against the
  fraction, one line per method, error bars = std over seeds, the full-data accuracy as a
  reference band).

Strategies: ``balanced`` (rank within each class and keep ``round(f * n_c)``, the default),
``global`` (rank over all samples) and ``ccs`` (coverage-centric stratified sampling over all
samples, :func:`cldfast.selection.ccs_select`; not for random or the geometry methods).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ._core import __version__
from .baselines import (METHODS, canonical_method, default_el2n_epoch, make_final_scores,
                        recorders_for_training)
from .data import DatasetBundle
from . import distributed as ddist
from .io import ScoresFile, load_scores, save_indices, write_json
from .selection import ccs_select, class_quotas, select
from .training import Recipe

log = logging.getLogger("cldfast")

__all__ = ["STRATEGIES", "DEFAULT_METHODS", "BenchResult", "bench", "select_for_method",
           "register", "main"]

STRATEGIES = ("balanced", "global", "ccs")
DEFAULT_METHODS = ("cld", "random", "forgetting", "el2n", "aum", "entropy", "kcenter")


@dataclass
class BenchResult:
    out: Path
    table: str
    metrics: dict[str, Any] = field(default_factory=dict)


def _parse_methods(methods: str | Sequence[str]) -> list[str]:
    items = methods.split(",") if isinstance(methods, str) else list(methods)
    items = [str(m).strip() for m in items if str(m).strip()]
    if any(m.lower() == "all" for m in items):
        return list(METHODS)
    out: list[str] = []
    for m in items:
        c = canonical_method(m)
        if c not in out:
            out.append(c)
    if not out:
        raise ValueError("methods is empty; give at least one of " + ", ".join(METHODS))
    return out


def _parse_strategies(strategies: str | Sequence[str]) -> list[str]:
    items = strategies.split(",") if isinstance(strategies, str) else list(strategies)
    out: list[str] = []
    for s in (str(x).strip().lower() for x in items):
        if not s:
            continue
        if s not in STRATEGIES:
            raise ValueError(f"unknown strategy {s!r}; expected one of {', '.join(STRATEGIES)}")
        if s not in out:
            out.append(s)
    if not out:
        raise ValueError("strategies is empty; give at least one of " + ", ".join(STRATEGIES))
    return out


def applicable(method: str, strategy: str) -> bool:
    """Whether ``strategy`` makes sense for ``method`` (CCS needs a difficulty score)."""
    return not (strategy == "ccs" and METHODS[method].hard is None)


def select_for_method(sf: ScoresFile, method: str, strategy: str, fraction: float, *,
                      seed: int = 0, ccs_beta: float = 0.1, ccs_strata: int = 50) -> np.ndarray:
    """Original dataset indices of ``method``'s coreset from a bench scores file.

    ``balanced`` / ``global``: rank by the method's score and keep its default end
    (:data:`cldfast.baselines.METHODS`), within each class or over all samples; random draws
    uniformly (seeded). ``ccs``: :func:`cldfast.selection.ccs_select` with the method's hard
    end. Geometry methods use their stored pick order (``<name>_global`` for ``global``).
    """
    info = METHODS[canonical_method(method)]
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}; got {strategy!r}")
    if not applicable(info.name, strategy):
        raise ValueError(f"strategy 'ccs' needs a difficulty score; {info.name} has none")
    balanced = strategy != "global"
    if info.kind == "random":
        return select(np.zeros(sf.labels.shape[0]), sf.labels, fraction=fraction, order="random",
                      class_balanced=balanced, dataset_indices=sf.train_indices, seed=seed)
    key = info.key if not (info.kind == "geometry" and strategy == "global") else f"{info.key}_global"
    if key == "scores":
        scores = sf.scores
    elif key in sf.extra:
        scores = sf.extra[key]
    else:
        raise ValueError(f"the scores file has no {key!r} array (method {info.name}); re-run the "
                         "bench proxy with this method")
    if info.kind == "geometry":
        need = (sum(class_quotas(sf.labels, fraction=fraction).values()) if balanced
                else int(math.floor(fraction * sf.labels.shape[0] + 0.5)))
        if int(np.isfinite(scores).sum()) < need:
            raise ValueError(f"{key} holds picks for a smaller fraction than {fraction}; re-run "
                             "the bench proxy with this fraction")
    if strategy == "ccs":
        return ccs_select(scores, sf.labels, fraction=fraction, hard=info.hard, beta=ccs_beta,
                          strata=ccs_strata, dataset_indices=sf.train_indices, seed=seed)
    return select(scores, sf.labels, fraction=fraction, order=info.order, class_balanced=balanced,
                  dataset_indices=sf.train_indices, seed=seed)


def _needed_keys(methods: Sequence[str], strategies: Sequence[str]) -> list[str]:
    keys = []
    for m in methods:
        info = METHODS[m]
        if info.key not in (None, "scores"):
            keys.append(info.key)
        if info.kind == "geometry" and "global" in strategies:
            keys.append(f"{info.key}_global")
    return keys


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _cell_name(method: str, strategy: str, fraction: float, seed: int) -> str:
    return f"{method}-{strategy}-f{fraction:g}-s{seed}"


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def _proxy(bundle: DatasetBundle, out: Path, cfg: dict[str, Any], methods: list[str],
           strategies: list[str], max_fraction: float, proxy_recipe: Recipe,
           progress: bool) -> tuple[ScoresFile, dict[str, Any]]:
    """Run (or reuse) the proxy; returns the scores file and proxy.json's content."""
    from .pipeline import track

    keys = _needed_keys(methods, strategies)
    geometry = [m for m in methods if METHODS[m].kind == "geometry"]
    info_path = out / "proxy.json"
    if info_path.is_file() and (out / "scores.npz").is_file():
        info = json.loads(info_path.read_text())
        if info.get("config") == cfg:
            sf = load_scores(out / "scores.npz", fingerprint=bundle.fingerprint)
            geo_ok = not geometry or info["costs"].get("geometry_fraction", 0.0) >= max_fraction
            if all(k in sf.extra for k in keys) and geo_ok:
                log.info("bench: reusing the proxy run in %s", out)
                return sf, info
    from .data import split_train_val

    costs: dict[str, Any] = {}
    train_idx, _ = split_train_val(bundle.train_targets, cfg["val_fraction"], proxy_recipe.seed)
    n_train_split = int(train_idx.size)
    recorders = recorders_for_training(n_train_split, cfg["proxy_epochs_trained"], cfg["el2n_epoch"])
    final = make_final_scores(methods, batch_size=proxy_recipe.eval_batch_size,
                              workers=proxy_recipe.workers, amp=proxy_recipe.amp,
                              geometry_fraction=max_fraction, geometry_global="global" in strategies,
                              seed=proxy_recipe.seed, progress=progress, costs=costs)
    sf, metrics = track(bundle, out, arch=cfg["proxy_arch"], recipe=proxy_recipe,
                        val_fraction=cfg["val_fraction"], loss_source=cfg["loss_source"],
                        track_epochs=cfg["track_epochs"], track_every=cfg["track_every"],
                        per_class=cfg["per_class"], precision=cfg["precision"], resume=True,
                        progress=progress, recorders=recorders, final_scores=final)
    costs["recorders"] = {r.name: {"seconds": r.seconds, "bytes": r.nbytes} for r in recorders}
    info = {"config": cfg, "metrics": {k: v for k, v in metrics.items() if k != "history"},
            "history": metrics.get("history", []), "costs": costs,
            "num_train": n_train_split}
    if ddist.is_main():
        write_json(info_path, info)
    return sf, info


def _method_cost(method: str, info: dict[str, Any], n: int) -> dict[str, Any]:
    """Selection cost of one method on top of the shared proxy training."""
    m, costs = info["metrics"], info["costs"]
    rec = costs.get("recorders", {})
    kind = METHODS[method].kind
    if kind == "random":
        return {"extra_passes": 0, "seconds": 0.0, "state_bytes": 0, "note": "no proxy needed"}
    if kind == "cld":
        return {"extra_passes": int(m.get("extra_forward_passes_over_train", 0)),
                "seconds": float(m.get("tracking_seconds", 0.0)),
                "state_bytes": int(m.get("tracker_bytes", 0)),
                "note": "validation passes + epoch-end updates; per-sample record fused into training"}
    if kind == "recorded":
        name = {"forgetting": "forgetting", "aum": "aum", "el2n": "el2n", "entropy": "uncertainty",
                "margin": "uncertainty", "least-confidence": "uncertainty",
                "variability": "cartography", "confidence": "cartography"}[method]
        r = rec.get(name, {})
        return {"extra_passes": 0, "seconds": float(r.get("seconds", 0.0)),
                "state_bytes": int(r.get("bytes", 0)),
                "note": f"recorded from the training logits ({name} recorder)"}
    pass_s = float(costs.get("final_pass_seconds", 0.0))
    if kind == "final":
        return {"extra_passes": 1, "seconds": pass_s, "state_bytes": 8 * n,
                "note": "one eval pass of the final proxy (shared with herding / kcenter)"}
    own = float(costs.get(f"{method}_seconds", 0.0)) + float(costs.get(f"{method}_global_seconds", 0.0))
    return {"extra_passes": 1, "seconds": pass_s + own,
            "state_bytes": int(costs.get("embedding_bytes", 0)) + 8 * n,
            "note": f"shared eval pass ({pass_s:.1f} s) + greedy ({own:.1f} s) on "
                    f"{costs.get('embedding_dim', '?')}-d embeddings"}


def bench(data: Any = None, out: str | Path = "cldfast-bench", *,
          methods: str | Sequence[str] = DEFAULT_METHODS, fractions: Sequence[float] = (0.1, 0.3, 0.5),
          seeds: int = 3, strategies: str | Sequence[str] = ("balanced",),
          proxy_arch: str = "small-cnn", arch: str | None = None,
          proxy_recipe: Recipe | None = None, recipe: Recipe | None = None,
          val_fraction: float = 0.1, loss_source: str = "eval", track_epochs: int | None = None,
          track_every: int = 1, per_class: bool = True, precision: str = "float64",
          el2n_epoch: int | None = None, ccs_beta: float = 0.1, ccs_strata: int = 50,
          full: bool = True, full_seeds: int | None = None, progress: bool = True) -> BenchResult:
    """Compare coreset methods from one proxy run; see the module docstring.

    Args:
        data: a :class:`cldfast.pipeline.DataSpec` or a loaded :class:`DatasetBundle`
            (default: the embedded data).
        methods: names from :data:`cldfast.baselines.METHODS` (or ``"all"``), a list or a
            comma-separated string.
        fractions: coreset fractions in (0, 1].
        seeds: retrainings per cell (seed ``recipe.seed + s`` for s < seeds); random and CCS
            selections are drawn with the same seed.
        strategies: ``balanced``, ``global``, ``ccs`` (see the module docstring).
        proxy_arch / arch: the tracked model and the retrained one (default: the proxy's).
        proxy_recipe / recipe: training recipes of the proxy and of each retraining.
        el2n_epoch: 1-based epoch of EL2N (default :func:`cldfast.baselines.default_el2n_epoch`).
        ccs_beta / ccs_strata: CCS hard cutoff rate and number of strata.
        full: also retrain on the whole training split (the reference line).
        full_seeds: seeds of that reference (default: ``seeds``; it is the most expensive cell).

    Returns a :class:`BenchResult` with the markdown table and everything in ``bench.json``.
    """
    from .pipeline import DataSpec, tracked_epochs, train

    t_start = time.perf_counter()
    data = data if data is not None else DataSpec()
    bundle = data if isinstance(data, DatasetBundle) else data.load()
    out = Path(out)
    methods_l = _parse_methods(methods)
    strategies_l = _parse_strategies(strategies)
    fracs = sorted({float(f) for f in fractions})
    if not fracs or any(not 0.0 < f <= 1.0 for f in fracs):
        raise ValueError(f"fractions must be in (0, 1]; got {list(fractions)}")
    if int(seeds) < 1:
        raise ValueError(f"seeds must be >= 1; got {seeds}")
    seeds = int(seeds)
    full_seeds = seeds if full_seeds is None else int(full_seeds)
    if full and full_seeds < 1:
        raise ValueError(f"full_seeds must be >= 1; got {full_seeds}")
    recipe = recipe or Recipe()
    proxy_recipe = proxy_recipe or recipe
    arch = arch or proxy_arch
    stop = tracked_epochs(proxy_recipe.epochs, track_epochs, track_every)[-1] + 1
    el2n = default_el2n_epoch(stop) if el2n_epoch is None else int(el2n_epoch)
    if not 1 <= el2n <= stop:
        raise ValueError(f"el2n_epoch must be in [1, {stop}] (the epochs the proxy trains); got {el2n_epoch}")
    cfg = {"dataset": bundle.name, "fingerprint": bundle.fingerprint, "proxy_arch": proxy_arch,
           "proxy_recipe": asdict(proxy_recipe), "val_fraction": float(val_fraction),
           "loss_source": loss_source, "track_epochs": track_epochs, "track_every": int(track_every),
           "per_class": bool(per_class), "precision": precision, "el2n_epoch": el2n,
           "proxy_epochs_trained": stop}
    cfg = json.loads(json.dumps(cfg))  # tuples -> lists, as read back from proxy.json
    sf, proxy_info = _proxy(bundle, out, cfg, methods_l, strategies_l, fracs[-1], proxy_recipe, progress)
    n = int(sf.scores.shape[0])

    lines = [(m, s) for s in strategies_l for m in methods_l if applicable(m, s)]
    skipped = [(m, s) for s in strategies_l for m in methods_l if not applicable(m, s)]
    for m, s in skipped:
        log.info("bench: %s has no difficulty score; strategy %s skipped for it", m, s)
    cells: dict[str, dict[str, Any]] = {}
    base_cell_cfg = {"proxy": _digest(cfg), "arch": arch, "ccs": [float(ccs_beta), int(ccs_strata)]}

    def run_cell(name: str, method: str, strategy: str, fraction: float, s: int) -> dict[str, Any]:
        r = replace(recipe, seed=recipe.seed + s)
        cell_cfg = {**base_cell_cfg, "recipe": asdict(r), "method": method, "strategy": strategy,
                    "fraction": fraction}
        if strategy != "ccs":
            cell_cfg.pop("ccs")
        digest = _digest(cell_cfg)
        path = out / "cells" / f"{name}.json"
        if path.is_file():
            cell = json.loads(path.read_text())
            if cell.get("config_digest") != digest:
                raise ValueError(f"{path} was written by a bench with other settings (arch, recipe, "
                                 "proxy or CCS options); use another --out or delete that folder")
            return cell
        t0 = time.perf_counter()
        if method == "full":
            idx = sf.train_indices.copy()
        else:
            idx = select_for_method(sf, method, strategy, fraction, seed=recipe.seed + s,
                                    ccs_beta=ccs_beta, ccs_strata=ccs_strata)
            if ddist.is_main():
                save_indices(out / "indices" / f"{name}.npy", idx)
        select_s = time.perf_counter() - t0
        log.info("bench: training %s on %s (%d samples)", arch, name, idx.size)
        m = train(bundle, out / "runs", arch=arch, recipe=r, indices=idx, name=name, resume=True,
                  progress=progress)
        cell = {"name": name, "method": method, "strategy": strategy, "fraction": fraction,
                "seed_index": s, "seed": r.seed, "samples": int(idx.size),
                "test_accuracy": m["test_accuracy"], "train_seconds": m["seconds"],
                "select_seconds": select_s, "config_digest": digest, "config": cell_cfg}
        if ddist.is_main():
            write_json(path, cell)
        ckpt = out / "runs" / "checkpoints" / f"{name}.pt"
        if ckpt.exists():  # the cell file now holds the result; the checkpoint only costs disk
            ckpt.unlink()
        return cell

    for s in range(max(seeds, full_seeds if full else 0)):
        if full and s < full_seeds:
            name = f"full-s{s}"
            cells[name] = run_cell(name, "full", "full", 1.0, s)
        if s >= seeds:
            continue
        for f in fracs:
            for method, strategy in lines:
                name = _cell_name(method, strategy, f, s)
                cells[name] = run_cell(name, method, strategy, f, s)

    if not ddist.is_main():  # rank 0 aggregates and writes the outputs
        return BenchResult(out, "", {})
    results = _aggregate(cells, lines, fracs, seeds, full_seeds if full else 0)
    costs = {m: _method_cost(m, proxy_info, n) for m in methods_l}
    for m in costs:
        sel = [c["select_seconds"] for c in cells.values() if c["method"] == m]
        costs[m]["select_seconds_mean"] = float(np.mean(sel)) if sel else 0.0
    pm = proxy_info["metrics"]
    metrics = {
        "dataset": bundle.name, "fingerprint": bundle.fingerprint, "version": __version__,
        "proxy_arch": proxy_arch, "arch": arch, "fractions": fracs, "seeds": seeds,
        "methods": methods_l, "strategies": strategies_l, "full_seeds": full_seeds if full else 0,
        "skipped": [{"method": m, "strategy": s} for m, s in skipped],
        "proxy_recipe": asdict(proxy_recipe), "recipe": asdict(recipe), "proxy": cfg,
        "proxy_metrics": pm, "proxy_costs": proxy_info["costs"], "num_train": n,
        "num_val": int(sf.val_indices.size), "ccs": {"beta": ccs_beta, "strata": ccs_strata},
        "selection_cost": costs, "results": results, "cells": cells,
        "seconds": time.perf_counter() - t_start,
    }
    table = bench_table(metrics)
    write_json(out / "bench.json", metrics)
    from .io import atomic_write

    atomic_write(out / "bench.md", lambda p: p.write_text(table + "\n"))
    plot_bench(out / "bench_accuracy.png", metrics)
    return BenchResult(out, table, metrics)


def _line_label(method: str, strategy: str) -> str:
    return method if strategy == "balanced" else f"{method} ({strategy})"


def _aggregate(cells: dict[str, dict[str, Any]], lines: list[tuple[str, str]], fracs: list[float],
               seeds: int, full_seeds: int) -> dict[str, Any]:
    res: dict[str, Any] = {"lines": []}
    if full_seeds:
        accs = [cells[f"full-s{s}"]["test_accuracy"] for s in range(full_seeds)]
        mean, std = _mean_std(accs)
        res["full"] = {"mean": mean, "std": std, "accuracies": accs,
                       "samples": cells["full-s0"]["samples"]}
    for method, strategy in lines:
        per = {}
        for f in fracs:
            cs = [cells[_cell_name(method, strategy, f, s)] for s in range(seeds)]
            accs = [c["test_accuracy"] for c in cs]
            mean, std = _mean_std(accs)
            per[f"{f:g}"] = {"mean": mean, "std": std, "accuracies": accs, "samples": cs[0]["samples"]}
        res["lines"].append({"label": _line_label(method, strategy), "method": method,
                             "strategy": strategy, "fractions": per})
    return res


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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .io import atomic_write

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


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------

def _methods_arg(text: str) -> list[str]:
    try:
        return _parse_methods(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _strategies_arg(text: str) -> list[str]:
    try:
        return _parse_strategies(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _beta_arg(text: str) -> float:
    try:
        b = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    if not 0.0 <= b < 1.0:
        raise argparse.ArgumentTypeError(f"CCS beta must be in [0, 1); got {text}")
    return b


def register(subparsers: Any) -> Callable[[argparse.Namespace], int]:
    """Add the ``bench`` subcommand to ``subparsers`` (from ``add_subparsers``); returns its
    handler ``handler(args) -> int``."""
    from .cli import (_add_data, _add_output, _add_recipe, _add_tracking, _fractions,
                      _positive_int)
    from .models import ARCHS

    method_help = ", ".join(f"{name} ({info.order})" for name, info in METHODS.items())
    p = subparsers.add_parser(
        "bench", help="compare CLD with coreset baselines from one proxy run",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train one proxy while tracking CLD and recording every trajectory-based "
                    "baseline from the same training logits (forgetting, AUM, EL2N, entropy / "
                    "margin / least confidence, cartography); GraNd, Herding and k-Center Greedy "
                    "share one eval pass of the final proxy. Then select a coreset for every "
                    "method x strategy x fraction x seed, retrain --arch on it and write "
                    "OUT/bench.md, OUT/bench.json and OUT/bench_accuracy.png (mean ± std test "
                    "accuracy, selection cost per method). Finished cells are cached in "
                    "OUT/cells/ and the proxy checkpoints every epoch: re-running the same command "
                    "continues where it stopped (--resume is implied).",
        epilog="Methods and the end each keeps: " + method_help + ". Definitions: "
               "cldfast/baselines.py. Example: cldfast bench --methods "
               "cld,random,forgetting,el2n,aum,entropy,kcenter --fractions 0.1,0.3,0.5 --seeds 3")
    p.add_argument("--methods", type=_methods_arg, default=list(DEFAULT_METHODS),
                   help="comma-separated methods, or 'all' (default: %s)" % ",".join(DEFAULT_METHODS))
    p.add_argument("--fractions", type=_fractions, default=[0.1, 0.3, 0.5],
                   help="coreset fractions, comma-separated (default: 0.1,0.3,0.5)")
    p.add_argument("--seeds", type=_positive_int, default=3,
                   help="retrainings per cell, seeds --seed + 0..N-1 (default: %(default)s)")
    p.add_argument("--strategies", type=_strategies_arg, default=["balanced"],
                   help="balanced (rank within each class, default), global (rank over all "
                        "samples), ccs (coverage-centric stratified sampling, Zheng et al. 2023); "
                        "comma-separated")
    p.add_argument("--proxy-arch", default="small-cnn", metavar="ARCH",
                   help=f"model that is tracked (default: %(default)s; named: {', '.join(ARCHS)})")
    p.add_argument("--arch", metavar="ARCH", help="model retrained on the coresets (default: --proxy-arch)")
    p.add_argument("--el2n-epoch", type=_positive_int, metavar="E",
                   help="1-based epoch whose training logits give EL2N (default: 10 %% of the "
                        "proxy's epochs, at least 2)")
    p.add_argument("--ccs-beta", type=_beta_arg, default=0.1,
                   help="CCS: fraction of the hardest samples dropped first (default: %(default)s)")
    p.add_argument("--ccs-strata", type=_positive_int, default=50,
                   help="CCS: number of score strata (default: %(default)s)")
    p.add_argument("--no-full", action="store_true",
                   help="skip the full-training-split reference runs")
    p.add_argument("--full-seeds", type=_positive_int, metavar="N",
                   help="seeds of the full-training-split reference (default: --seeds)")
    _add_data(p)
    _add_recipe(p, proxy=True)
    _add_tracking(p)
    _add_output(p, "cldfast-bench")
    return _handler


def _handler(args: argparse.Namespace) -> int:
    from .cli import _data, _recipe

    result = bench(_data(args), args.out, methods=args.methods, fractions=args.fractions,
                   seeds=args.seeds, strategies=args.strategies, proxy_arch=args.proxy_arch,
                   arch=args.arch, proxy_recipe=_recipe(args, "proxy_epochs"), recipe=_recipe(args),
                   val_fraction=args.val_fraction, loss_source=args.loss_source,
                   track_epochs=args.track_epochs, track_every=args.track_every,
                   per_class=not args.global_val, precision=args.precision,
                   el2n_epoch=args.el2n_epoch, ccs_beta=args.ccs_beta, ccs_strata=args.ccs_strata,
                   full=not args.no_full, full_seeds=args.full_seeds, progress=not args.quiet)
    print(result.table)
    print(f"\nOutputs in {result.out}/: bench.md, bench.json, bench_accuracy.png, scores.npz, "
          "cells/, indices/, runs/")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m cldfast.bench ...``: the same as ``cldfast bench ...``."""
    from .cli import _setup_logging

    parser = argparse.ArgumentParser(prog="cldfast")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    handler = register(sub)
    args = parser.parse_args(["bench", *(sys.argv[1:] if argv is None else argv)])
    _setup_logging(Path(args.out), "bench")
    try:
        return handler(args)
    except (ValueError, FileNotFoundError, IndexError, TypeError) as exc:
        print(f"cldfast bench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cldfast bench: interrupted; run the same command again to continue", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
