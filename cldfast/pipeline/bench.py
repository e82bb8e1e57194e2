"""`cldfast bench`: CLD against the standard coreset baselines, from one proxy run.

One proxy is trained with CLD tracking while every trajectory-based baseline of
:mod:`cldfast.scores.recorders` is recorded from the same training logits; GraNd, Herding and
k-Center Greedy share one eval pass of the final proxy. Then, for every method x strategy x
fraction x seed, a coreset is selected and the target model is retrained on it
(:func:`cldfast.pipeline.train`; retraining seed = ``recipe.seed + s``, the proxy is shared).
Writes into ``out``:

* ``scores.npz``: CLD and every baseline score (``extra_<name>``), ``proxy.json``;
* ``cells/<method>-<strategy>-f<fraction>-s<seed>.json``: one finished retraining each,
  written atomically; a re-run skips the cells already there (cells written with other
  settings are refused), and the proxy resumes from its resume checkpoint;
* ``indices/*.npy`` (original dataset indices of every coreset), ``runs/`` (per-run metrics);
* ``bench.md``, ``bench.json`` and ``bench_accuracy.png`` (test accuracy against the
  fraction, one line per method, error bars = std over seeds, the full-data accuracy as a
  reference band).

Strategies: ``balanced`` (rank within each class and keep ``round(f * n_c)``, the default),
``global`` (rank over all samples), ``ccs`` (coverage-centric stratified sampling over all
samples, :func:`cldfast.selection.ccs_select`; not for random or the geometry methods) and
``rule-<name>`` for every selection rule beyond top-k (``rule-ccs``, ``rule-filtered``,
``rule-band``, ``rule-beta``, ``rule-mix``: :func:`cldfast.selection.select_by_rule` over the
method's score with automatic parameters, within each class; also not for random or the
geometry methods).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .._core import __version__
from ..core import distributed as ddist
from ..defaults import (BENCH_FRACTIONS, BENCH_METHODS, BENCH_OUT, BENCH_SEEDS, CCS_BETA, CCS_STRATA,
                        DEFAULT_ARCH, LOSS_SOURCE, PRECISION, VAL_FRACTION)
from ..data.datasets import DatasetBundle
from ..io import ScoresFile, atomic_write, load_scores, write_json
from ..scores.final import make_final_scores
from ..scores.recorders import default_el2n_epoch, recorders_for_training
from ..selection.balanced import check_fractions
from ..selection.methods import (METHODS, STRATEGIES, applicable, canonical_method, method_coreset,
                                select_for_method)
from ..selection.rules import RULES
from ..training.models import model_name
from ..training.recipe import Recipe, default_recipe
from . import retraining, tracking
from .report import bench_table, line_label, mean_std, plot_bench
from .sources import load_data

log = logging.getLogger("cldfast")

__all__ = ["STRATEGIES", "DEFAULT_METHODS", "BenchResult", "bench", "method_coreset",
           "select_for_method", "parse_methods", "parse_strategies", "bench_table", "plot_bench"]

DEFAULT_METHODS = BENCH_METHODS  # the methods compared by default


@dataclass
class BenchResult:
    out: Path
    table: str
    metrics: dict[str, Any] = field(default_factory=dict)


def parse_methods(methods: str | Sequence[str]) -> list[str]:
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


def _as_list(items: str | Sequence[str]) -> list[str]:
    return items.split(",") if isinstance(items, str) else list(items)


def rule_strategies(rules: str | Sequence[str]) -> list[str]:
    """The strategies of selection rules: ``rule-<name>`` (``top`` is ``balanced``)."""
    names = [str(r).strip().lower() for r in _as_list(rules) if str(r).strip()]
    unknown = [r for r in names if r not in RULES]
    if unknown:
        raise ValueError(f"rules: unknown {unknown}; expected some of {', '.join(RULES)}")
    return ["balanced" if r == "top" else f"rule-{r}" for r in names]


def parse_strategies(strategies: str | Sequence[str]) -> list[str]:
    items = _as_list(strategies)
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


def _proxy(bundle: DatasetBundle, out: Path, cfg: dict[str, Any], methods: list[str],
           strategies: list[str], max_fraction: float, proxy_recipe: Recipe,
           progress: bool, proxy_model: Any = None) -> tuple[ScoresFile, dict[str, Any]]:
    """Run (or reuse) the proxy; returns the scores file and proxy.json's content."""
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
    costs: dict[str, Any] = {}
    train_idx, _ = bundle.split_train_val(cfg["val_fraction"], proxy_recipe.seed)
    n_train_split = int(train_idx.size)
    recorders = recorders_for_training(n_train_split, cfg["proxy_epochs_trained"], cfg["el2n_epoch"])
    final = make_final_scores(methods, batch_size=proxy_recipe.eval_batch_size,
                              workers=proxy_recipe.workers, amp=proxy_recipe.amp,
                              geometry_fraction=max_fraction, geometry_global="global" in strategies,
                              seed=proxy_recipe.seed, progress=progress, costs=costs)
    sf, metrics = tracking.track(bundle, out, arch=proxy_model, recipe=proxy_recipe,
                                 val_fraction=cfg["val_fraction"], loss_source=cfg["loss_source"],
                                 track_epochs=cfg["track_epochs"], track_every=cfg["track_every"],
                                 track_from=cfg.get("track_from", 0), per_class=cfg["per_class"],
                                 precision=cfg["precision"], resume=True,
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


def bench(data: Any = None, out: str | Path = BENCH_OUT, *,
          methods: str | Sequence[str] = BENCH_METHODS,
          fractions: Sequence[float] = BENCH_FRACTIONS, seeds: int = BENCH_SEEDS,
          strategies: str | Sequence[str] = ("balanced",),
          proxy_arch: str = DEFAULT_ARCH, arch: str | None = None,
          proxy_recipe: Recipe | None = None, recipe: Recipe | None = None,
          val_fraction: float = VAL_FRACTION, loss_source: str = LOSS_SOURCE,
          track_epochs: int | None = None, track_every: int = 1, track_from: int = 0,
          per_class: bool = True, precision: str = PRECISION, rules: Sequence[str] = (),
          el2n_epoch: int | None = None, ccs_beta: float = CCS_BETA, ccs_strata: int = CCS_STRATA,
          full: bool = True, full_seeds: int | None = None, progress: bool = True) -> BenchResult:
    """Compare coreset methods from one proxy run; see the module docstring.

    Args:
        data: a :class:`cldfast.pipeline.DataSpec` or a loaded :class:`DatasetBundle`
            (default: the embedded data).
        methods: names from :data:`cldfast.selection.METHODS` (or ``"all"``), a list or a
            comma-separated string.
        fractions: coreset fractions in (0, 1].
        seeds: retrainings per cell (seed ``recipe.seed + s`` for s < seeds); random and CCS
            selections are drawn with the same seed.
        strategies: ``balanced``, ``global``, ``ccs``, ``rule-<name>`` (see the module
            docstring).
        rules: selection rules (:data:`cldfast.selection.RULES`) added as ``rule-<name>``
            strategies (``top`` is ``balanced``).
        proxy_arch / arch: the tracked model and the retrained one (default: the proxy's).
        proxy_recipe / recipe: training recipes of the proxy and of each retraining.
        el2n_epoch: 1-based epoch of EL2N (default :func:`cldfast.scores.default_el2n_epoch`).
        ccs_beta / ccs_strata: CCS hard cutoff rate and number of strata.
        full: also retrain on the whole training split (the reference line).
        full_seeds: seeds of that reference (default: ``seeds``; it is the most expensive cell).

    Returns a :class:`BenchResult` with the markdown table and everything in ``bench.json``.
    """
    t_start = time.perf_counter()
    bundle = load_data(data)
    key = bundle.registry_name
    out = Path(out)
    methods_l = parse_methods(methods)
    strategies_l = parse_strategies(_as_list(strategies) + rule_strategies(rules))
    fracs = check_fractions(fractions)
    seeds, full_seeds = _seed_counts(seeds, full, full_seeds)
    # Defaults: the dataset's recipes (a given recipe also trains the proxy, as before).
    proxy_recipe = proxy_recipe or recipe or default_recipe(key, "proxy")
    recipe = recipe or default_recipe(key, "train")
    # workers="auto" resolved for this data, as the training loop records it: the cache keys
    # of cells on the embedded data stay those of workers=0.
    proxy_recipe, recipe = proxy_recipe.resolved(bundle.train), recipe.resolved(bundle.train)
    arch = arch if arch is not None else proxy_arch
    cfg = _proxy_config(bundle, proxy_arch, proxy_recipe, val_fraction, loss_source, track_epochs,
                        track_every, track_from, per_class, precision, el2n_epoch)
    sf, proxy_info = _proxy(bundle, out, cfg, methods_l, strategies_l, fracs[-1], proxy_recipe,
                            progress, proxy_model=proxy_arch)
    n = int(sf.scores.shape[0])

    lines = [(m, s) for s in strategies_l for m in methods_l if applicable(m, s)]
    skipped = [(m, s) for s in strategies_l for m in methods_l if not applicable(m, s)]
    for m, s in skipped:
        log.info("bench: %s has no difficulty score; strategy %s skipped for it", m, s)
    run_cell = _CellRunner(bundle, out, sf, arch, recipe, _digest(cfg), float(ccs_beta),
                           int(ccs_strata), progress)
    cells = _all_cells(run_cell, lines, fracs, seeds, full_seeds)

    if not ddist.is_main():  # rank 0 aggregates and writes the outputs
        return BenchResult(out, "", {})
    results = _aggregate(cells, lines, fracs, seeds, full_seeds)
    costs = _selection_costs(methods_l, proxy_info, n, cells)
    pm = proxy_info["metrics"]
    metrics = {
        "dataset": bundle.name, "fingerprint": bundle.fingerprint, "version": __version__,
        "proxy_arch": model_name(proxy_arch), "arch": model_name(arch), "fractions": fracs,
        "seeds": seeds, "methods": methods_l, "strategies": strategies_l, "full_seeds": full_seeds,
        "skipped": [{"method": m, "strategy": s} for m, s in skipped],
        "proxy_recipe": asdict(proxy_recipe), "recipe": asdict(recipe), "proxy": cfg,
        "proxy_metrics": pm, "proxy_costs": proxy_info["costs"], "num_train": n,
        "num_val": int(sf.val_indices.size), "ccs": {"beta": ccs_beta, "strata": ccs_strata},
        "selection_cost": costs, "results": results, "cells": cells,
        "seconds": time.perf_counter() - t_start,
    }
    return _written(out, metrics)


def _seed_counts(seeds: int, full: bool, full_seeds: int | None) -> tuple[int, int]:
    if int(seeds) < 1:
        raise ValueError(f"seeds must be >= 1; got {seeds}")
    full_seeds = int(seeds) if full_seeds is None else int(full_seeds)
    if full and full_seeds < 1:
        raise ValueError(f"full_seeds must be >= 1; got {full_seeds}")
    return int(seeds), (full_seeds if full else 0)  # 0: no full-split reference


def _all_cells(run_cell: Any, lines: list[tuple[str, str]], fracs: list[float], seeds: int,
               full_seeds: int) -> dict[str, dict[str, Any]]:
    """Every cell, seed by seed (the full-split reference first at each of its seeds)."""
    cells: dict[str, dict[str, Any]] = {}
    for s in range(max(seeds, full_seeds)):
        if s < full_seeds:
            cells[f"full-s{s}"] = run_cell(f"full-s{s}", "full", "full", 1.0, s)
        if s >= seeds:
            continue
        for f in fracs:
            for method, strategy in lines:
                name = _cell_name(method, strategy, f, s)
                cells[name] = run_cell(name, method, strategy, f, s)
    return cells


def _written(out: Path, metrics: dict[str, Any]) -> BenchResult:
    """Writes bench.json, bench.md and bench_accuracy.png into ``out``."""
    table = bench_table(metrics)
    write_json(out / "bench.json", metrics)
    atomic_write(out / "bench.md", lambda p: p.write_text(table + "\n"))
    plot_bench(out / "bench_accuracy.png", metrics)
    return BenchResult(out, table, metrics)


def _proxy_config(bundle: DatasetBundle, proxy_arch: Any, proxy_recipe: Recipe,
                  val_fraction: float, loss_source: str, track_epochs: int | None,
                  track_every: int, track_from: int, per_class: bool, precision: str,
                  el2n_epoch: int | None) -> dict[str, Any]:
    """What identifies the bench's proxy run (its cache key in ``proxy.json``), checked."""
    epochs = tracking.tracked_epochs(proxy_recipe.epochs, track_epochs, track_every, track_from)
    stop = epochs[-1] + 1
    el2n = default_el2n_epoch(stop) if el2n_epoch is None else int(el2n_epoch)
    if not 1 <= el2n <= stop:
        raise ValueError(f"el2n_epoch must be in [1, {stop}] (the epochs the proxy trains); "
                         f"got {el2n_epoch}")
    cfg = {"dataset": bundle.name, "fingerprint": bundle.fingerprint,
           "proxy_arch": model_name(proxy_arch),
           "proxy_recipe": proxy_recipe.identity(), "val_fraction": float(val_fraction),
           "loss_source": loss_source, "track_epochs": track_epochs, "track_every": int(track_every),
           "per_class": bool(per_class), "precision": precision, "el2n_epoch": el2n,
           "proxy_epochs_trained": stop}
    if track_from:  # only when set: the proxies cached by earlier versions keep their key
        cfg["track_from"] = int(track_from)
    return json.loads(json.dumps(cfg))  # tuples -> lists, as read back from proxy.json


@dataclass
class _CellRunner:
    """One bench cell: a cached result from ``out/cells/<name>.json`` when its settings match,
    else the coreset of a method x strategy x fraction retrained at one seed
    (:func:`cldfast.pipeline.retraining.retrain_cell`), then cached."""

    bundle: DatasetBundle
    out: Path
    sf: ScoresFile
    arch: Any
    recipe: Recipe
    proxy_digest: str
    ccs_beta: float
    ccs_strata: int
    progress: bool

    def __call__(self, name: str, method: str, strategy: str, fraction: float,
                 s: int) -> dict[str, Any]:
        out, sf, recipe = self.out, self.sf, self.recipe
        r = replace(recipe, seed=recipe.seed + s)
        cell_cfg = {"proxy": self.proxy_digest, "arch": model_name(self.arch),
                    "ccs": [self.ccs_beta, self.ccs_strata], "recipe": r.identity(),
                    "method": method, "strategy": strategy, "fraction": fraction}
        if strategy != "ccs":
            cell_cfg.pop("ccs")
        digest = _digest(cell_cfg)
        path = out / "cells" / f"{name}.json"
        if path.is_file():
            cell = json.loads(path.read_text())
            if cell.get("config_digest") != digest:
                raise ValueError(f"{path} was written by a bench with other settings (arch, recipe, "
                                 "proxy or CCS options); use another output folder (--out) or "
                                 "delete that folder")
            return cell
        if method == "full":
            pick = sf.train_indices.copy
        else:
            def pick():
                return method_coreset(sf, method, strategy, fraction, seed=recipe.seed + s,
                                      ccs_beta=self.ccs_beta, ccs_strata=self.ccs_strata)
        file = None if method == "full" else out / "indices" / f"{name}.npy"
        m = retraining.retrain_cell(self.bundle, out / "runs", name, pick, arch=self.arch,
                                    recipe=recipe, seed=r.seed, indices_file=file, resume=True,
                                    progress=self.progress)
        cell = {"name": name, "method": method, "strategy": strategy, "fraction": fraction,
                "seed_index": s, "seed": r.seed, "samples": m["samples"],
                "test_accuracy": m["test_accuracy"], "train_seconds": m["seconds"],
                "select_seconds": m["select_seconds"], "config_digest": digest, "config": cell_cfg}
        if ddist.is_main():
            write_json(path, cell)
        ckpt = out / "runs" / "checkpoints" / f"{name}.pt"
        if ckpt.exists():  # the cell file now holds the result; the resume checkpoint only costs disk
            ckpt.unlink()
        return cell


def _selection_costs(methods: Sequence[str], proxy_info: dict[str, Any], n: int,
                     cells: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per method: its selection cost on top of the shared proxy, and its mean selection time."""
    costs = {m: _method_cost(m, proxy_info, n) for m in methods}
    for m in costs:
        sel = [c["select_seconds"] for c in cells.values() if c["method"] == m]
        costs[m]["select_seconds_mean"] = float(np.mean(sel)) if sel else 0.0
    return costs


def _aggregate(cells: dict[str, dict[str, Any]], lines: list[tuple[str, str]], fracs: list[float],
               seeds: int, full_seeds: int) -> dict[str, Any]:
    res: dict[str, Any] = {"lines": []}
    if full_seeds:
        accs = [cells[f"full-s{s}"]["test_accuracy"] for s in range(full_seeds)]
        mean, std = mean_std(accs)
        res["full"] = {"mean": mean, "std": std, "accuracies": accs,
                       "samples": cells["full-s0"]["samples"]}
    for method, strategy in lines:
        per = {}
        for f in fracs:
            cs = [cells[_cell_name(method, strategy, f, s)] for s in range(seeds)]
            accs = [c["test_accuracy"] for c in cs]
            mean, std = mean_std(accs)
            per[f"{f:g}"] = {"mean": mean, "std": std, "accuracies": accs, "samples": cs[0]["samples"]}
        res["lines"].append({"label": line_label(method, strategy), "method": method,
                             "strategy": strategy, "fractions": per})
    return res
