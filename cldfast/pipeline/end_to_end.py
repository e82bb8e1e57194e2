"""The ``run`` workflow, the whole pipeline end to end: track a proxy, select CLD and random
coresets, retrain on each with several seeds (:mod:`cldfast.pipeline.retraining`), and write the
result table, metrics.json and plots."""

from __future__ import annotations

import functools
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .._core import __version__
from ..core import distributed as ddist
from ..data.datasets import DatasetBundle, is_embedded
from ..defaults import (DEFAULT_ARCH, LOSS_SOURCE, PRECISION, RUN_FRACTIONS, RUN_OUT, RUN_SEEDS,
                        VAL_FRACTION)
from ..io import ScoresFile, atomic_write, write_json
from ..selection.balanced import check_fractions
from ..selection.rules import RULES, select_by_rule
from ..training.models import model_name
from ..training.recipe import Recipe, default_recipe
from . import retraining, tracking
from .coresets import cld_coreset
from .findings import EMBEDDED_NOTE
from .report import plot_accuracy_vs_fraction, plot_score_histograms, run_table
from .sources import DataSpec, load_data

__all__ = ["RunResult", "run"]


@dataclass
class RunResult:
    out: Path
    table: str
    metrics: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # said after the table (e.g. EMBEDDED_NOTE)


def _run_cells(fractions: Sequence[float], compare: float,
               rules: Sequence[str] = ()) -> list[tuple[str, str, float]]:
    """The coresets :func:`run` trains on, per seed: (name, order or ``rule:NAME``, fraction)."""
    runs: list[tuple[str, str, float]] = [("full", "full", 1.0)]
    for f in fractions:
        runs.append((f"cld_top_{f:g}", "top", f))
        runs.append((f"random_{f:g}", "random", f))
        runs += [(f"cld_{rule}_{f:g}", f"rule:{rule}", f) for rule in rules if rule != "top"]
    for order in ("zero", "bottom"):
        runs.append((f"cld_{order}_{compare:g}", order, compare))
    if f"cld_top_{compare:g}" not in {r[0] for r in runs}:
        runs.append((f"cld_top_{compare:g}", "top", compare))
    return runs


def run(data: DataSpec | DatasetBundle | str | None = None, out: str | Path = RUN_OUT, *,
        proxy_arch: Any = DEFAULT_ARCH, arch: Any = None, proxy_recipe: Recipe | None = None,
        recipe: Recipe | None = None, fractions: Sequence[float] = RUN_FRACTIONS,
        compare_fraction: float | None = None, val_fraction: float = VAL_FRACTION,
        loss_source: str = LOSS_SOURCE, track_epochs: int | None = None, track_every: int = 1,
        track_from: int = 0, per_class: bool = True, precision: str = PRECISION,
        seeds: int = RUN_SEEDS, resume: bool = False,
        jobs: int | str | None = 1, progress: bool = True,
        rules: Sequence[str] = ()) -> RunResult:
    """The whole pipeline: track a proxy, select CLD and random coresets at ``fractions``
    and top / near-zero / most-negative CLD subsets at ``compare_fraction`` (default: the
    smallest fraction), train ``arch`` on each and on the full training split with ``seeds``
    retraining seeds (``recipe.seed + s``; random coresets are drawn afresh per seed), and
    write a table (mean ± std over the seeds), metrics.json and plots into ``out``.

    Defaults are the dataset's (:func:`cldfast.training.default_recipe`): on the embedded
    data a 10-epoch proxy and 8-epoch retrainings, the same as ``cldfast run``. ``jobs``:
    retraining cells trained at once (default 1: one after the other, in this process).
    ``jobs=N`` or ``"auto"`` (:func:`cldfast.pipeline.retraining.retrain_jobs`; several on a
    multi-core CPU, the choice of ``cldfast run``) train them in spawned worker processes,
    which import the calling script again: call ``run`` under ``if __name__ ==
    "__main__":`` then. Every cell is
    seeded on its own, so only float rounding depends on ``jobs``. ``rules``: further CLD
    coresets at every fraction by these selection rules (:data:`cldfast.selection.RULES`,
    automatic parameters; the random ones drawn afresh per seed), beside the paper's top-CLD
    ones, which stay."""
    bundle = load_data(data)
    key = bundle.registry_name
    out = Path(out)
    arch = arch if arch is not None else proxy_arch
    # Defaults: the dataset's recipes (a given recipe also trains the proxy, as before).
    proxy_recipe = proxy_recipe or recipe or default_recipe(key, "proxy")
    recipe = recipe or default_recipe(key, "train")
    fractions = check_fractions(fractions)
    if int(seeds) < 1:
        raise ValueError(f"seeds must be >= 1; got {seeds}")
    seeds = int(seeds)
    compare = float(compare_fraction) if compare_fraction is not None else fractions[0]
    unknown = [r for r in rules if r not in RULES]
    if unknown:
        raise ValueError(f"rules: unknown {unknown}; expected some of {', '.join(RULES)}")
    runs = _run_cells(fractions, compare, rules)
    # Before the proxy is tracked: a refused jobs value costs nothing.
    n_jobs = retraining.retrain_jobs(data, arch, recipe, seeds * len(runs), jobs)
    t0 = time.perf_counter()
    scores, track_metrics = tracking.track(bundle, out, arch=proxy_arch, recipe=proxy_recipe,
                                           val_fraction=val_fraction, loss_source=loss_source,
                                           track_epochs=track_epochs, track_every=track_every,
                                           track_from=track_from, per_class=per_class,
                                           precision=precision, resume=resume,
                                           progress=progress)
    specs = _cell_specs(scores, runs, seeds, out, arch, recipe, resume)
    done = retraining.retrain_cells(bundle, data, out / "runs", specs, n_jobs, progress)
    results = _results(runs, done, seeds)
    table = run_table(results, fractions, compare, seeds, loss_source, rules)
    notes = [EMBEDDED_NOTE] if is_embedded(bundle.name) else []
    if not ddist.is_main():
        return RunResult(out, table, {}, notes)
    plot_accuracy_vs_fraction(out / "plots" / "accuracy_vs_fraction.png", results, fractions,
                              title=f"{model_name(arch)} on {bundle.name}: CLD vs random coresets "
                                    f"(proxy {model_name(proxy_arch)}, {seeds} seed(s))")
    plot_score_histograms(out / "plots" / "cld_histograms.png", scores.scores, scores.labels,
                          scores.metadata.get("class_names") or None)
    metrics = {"dataset": bundle.name, "fingerprint": bundle.fingerprint,
               "proxy_arch": model_name(proxy_arch), "arch": model_name(arch),
               "version": __version__, "fractions": fractions,
               "compare_fraction": compare, "loss_source": loss_source, "seeds": seeds,
               "retrain_jobs": n_jobs,
               "proxy_recipe": asdict(proxy_recipe), "recipe": asdict(recipe),
               "track": track_metrics, "results": results,
               "total_seconds": time.perf_counter() - t0}
    write_json(out / "metrics.json", metrics)
    atomic_write(out / "results.md", lambda p: p.write_text(table + "\n"))
    return RunResult(out, table, metrics, notes)


def _cell_specs(scores: ScoresFile, runs: list[tuple[str, str, float]], seeds: int, out: Path,
                arch: Any, recipe: Recipe, resume: bool) -> list[tuple[str, Any, dict[str, Any]]]:
    """The retraining cells of :func:`run` for :func:`cldfast.pipeline.retraining.retrain_cells`:
    (name, indices or a selector, retrain_cell keyword arguments), seed by seed."""
    specs = []
    for s in range(seeds):
        for name, order, f in runs:
            if order == "full":
                pick, file = scores.train_indices, None
            elif order.startswith("rule:"):
                rule = order[len("rule:"):]
                pick = functools.partial(select_by_rule, scores.scores, scores.labels, rule=rule,
                                         fraction=f, seed=recipe.seed + s,
                                         dataset_indices=scores.train_indices)
                file = (out / "indices" / (f"{name}.npy" if s == 0 else f"{name}-s{s}.npy")
                        if (s == 0 or RULES[rule].random) else None)
            else:
                pick = functools.partial(cld_coreset, scores, fraction=f, order=order,
                                         seed=recipe.seed + s)
                # CLD coresets do not depend on the seed: one file; random ones, one per seed
                file = (out / "indices" / (f"{name}.npy" if s == 0 else f"{name}-s{s}.npy")
                        if (s == 0 or order == "random") else None)
            run_name = name if s == 0 else f"{name}-s{s}"  # seed 0 keeps the old file names
            specs.append((run_name, pick, dict(arch=arch, recipe=recipe, seed=recipe.seed + s,
                                               indices_file=file, resume=resume)))
    return specs


def _results(runs: list[tuple[str, str, float]], done: list[dict[str, Any]],
             seeds: int) -> dict[str, dict[str, Any]]:
    """Per coreset of :func:`run`: its accuracies over the seeds, their mean and sample std."""
    results: dict[str, dict[str, Any]] = {}
    for s in range(seeds):
        for (name, order, f), m in zip(runs, done[s * len(runs):(s + 1) * len(runs)]):
            r = results.setdefault(name, {"order": order, "fraction": f, "samples": m["samples"],
                                          "accuracies": [], "seconds": 0.0})
            r["accuracies"].append(m["test_accuracy"])
            r["seconds"] += m["seconds"]
    for r in results.values():
        acc = np.asarray(r["accuracies"], dtype=np.float64)
        r["test_accuracy"] = float(acc.mean())
        r["test_accuracy_std"] = float(acc.std(ddof=1)) if acc.size > 1 else float("nan")
    return results
