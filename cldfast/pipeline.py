"""The Python API behind the CLI: track a proxy, select a coreset, train a model, or run
the whole pipeline. Each function takes plain arguments and writes into an output folder;
the CLI only parses arguments and calls these."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from . import distributed as ddist
from ._extras import PIPELINE, require_all
from ._core import __version__
from .data import DatasetBundle, load_dataset, split_train_val
from .io import ScoresFile, load_indices, load_scores, save_indices, save_scores, write_json
from .selection import select
from .tracker import CLDTracker
from .training import BatchRecorder, Recipe, Tracking, fit

require_all(PIPELINE, "cldfast.pipeline")  # torchvision, tqdm, matplotlib, scikit-learn

log = logging.getLogger("cldfast")

__all__ = ["DataSpec", "PruneSpec", "tracked_epochs", "track", "select_coreset", "train", "run",
           "RunResult"]


@dataclass
class DataSpec:
    """Which dataset to load (see :func:`cldfast.data.load_dataset`)."""

    dataset: str = "auto"
    data_path: str | None = None
    download: bool = False
    image_size: int | None = None

    def load(self) -> DatasetBundle:
        return load_dataset(self.dataset, self.data_path, download=self.download,
                            image_size=self.image_size)


def tracked_epochs(epochs: int, track_epochs: int | None, track_every: int) -> list[int]:
    """0-based epochs whose end is a CLD checkpoint: every ``track_every``-th of the first
    ``track_epochs`` (default: all), counted from the last one backwards so the final
    tracked epoch is always a checkpoint."""
    k = epochs if track_epochs is None else int(track_epochs)
    if not 1 <= k <= epochs:
        raise ValueError(f"track_epochs must be in [1, epochs={epochs}]; got {track_epochs}")
    if int(track_every) < 1:
        raise ValueError(f"track_every must be >= 1; got {track_every}")
    chosen = list(range(k - 1, -1, -int(track_every)))[::-1]
    if len(chosen) < 3:
        log.warning("only %d checkpoints feed CLD (need at least 3 for a score); raise "
                    "--track-epochs or lower --track-every", len(chosen))
    return chosen


def track(data: DataSpec | DatasetBundle, out: str | Path, *, arch: str = "small-cnn",
          recipe: Recipe | None = None, val_fraction: float = 0.1, loss_source: str = "eval",
          track_epochs: int | None = None, track_every: int = 1, per_class: bool = True,
          precision: str = "float64", resume: bool = False, progress: bool = True,
          recorders: Sequence[BatchRecorder] = (),
          final_scores: Callable[[Any, DatasetBundle, np.ndarray], dict[str, np.ndarray]] | None = None,
          ) -> tuple[ScoresFile, dict[str, Any]]:
    """Train a proxy with CLDTracker and write ``out/scores.npz``.

    ``recorders`` watch the same training pass (e.g. other streaming scores); each one's
    ``scores()`` dict of [N] arrays is stored in the scores file's ``extra``, as is the dict
    returned by ``final_scores(model, bundle, train_indices)``, called once after training.
    Returns the scores file's contents and a metrics dict (timings, memory, accuracy).
    """
    recipe = recipe or Recipe()
    bundle = data if isinstance(data, DatasetBundle) else data.load()
    out = Path(out)
    train_idx, val_idx = split_train_val(bundle.train_targets, val_fraction, recipe.seed)
    if val_idx.size == 0:
        raise ValueError(f"val_fraction={val_fraction} leaves no validation samples; CLD needs some")
    labels = bundle.train_targets[train_idx]
    epochs = tracked_epochs(recipe.epochs, track_epochs, track_every)
    device = recipe.resolved_device()
    tracker = CLDTracker(labels, bundle.train_targets[val_idx], per_class=per_class, device=device,
                         precision=precision, num_classes=bundle.num_classes,
                         num_checkpoints=len(epochs))
    tracking = Tracking(tracker, loss_source, val_idx, epochs)
    log.info("tracking %s on %s: %d training / %d validation samples, checkpoints after epochs %s",
             arch, bundle.name, train_idx.size, val_idx.size, [e + 1 for e in epochs])
    run_config = {"role": "proxy", "val_fraction": val_fraction, "loss_source": loss_source,
                  "tracked_epochs": epochs, "per_class": per_class, "precision": precision}
    result = fit(bundle, train_idx, arch, recipe, tracking=tracking, stop_epoch=epochs[-1] + 1,
                 checkpoint=out / "checkpoints" / "proxy.pt", resume=resume, progress=progress,
                 desc="proxy", run_config=run_config, recorders=recorders)
    t_end = time.perf_counter()
    gathered = tracker.scores(gather="rank0")
    seconds_to_scores = time.perf_counter() - t_end
    num_differences = tracker.num_differences(gather="rank0")
    summary = tracker.summary()
    out_file = out / "scores.npz"
    if gathered is None:  # another rank than 0 under torch.distributed: rank 0 writes the file
        ddist.barrier()
        return load_scores(out_file), {"proxy_test_accuracy": result.test_accuracy}
    scores = gathered.double().cpu().numpy()
    meta = {
        "dataset": bundle.name, "fingerprint": bundle.fingerprint, "arch": arch,
        "epochs_trained": epochs[-1] + 1, "recipe_epochs": recipe.epochs,
        "tracked_epochs": [e + 1 for e in epochs], "loss_source": loss_source,
        "seed": recipe.seed, "val_fraction": val_fraction, "per_class": per_class,
        "precision": precision, "version": __version__, "num_classes": bundle.num_classes,
        "class_names": list(bundle.class_names), "proxy_test_accuracy": result.test_accuracy,
        "nonfinite_train_losses": summary["nonfinite_train_losses"],
        "nonfinite_val_losses": summary["nonfinite_val_losses"],
        "classes_without_validation": summary["classes_without_validation"],
    }
    extra = {"num_differences": num_differences.cpu().numpy()}
    for rec in recorders:
        extra.update(rec.scores())
    final_seconds = 0.0
    if final_scores is not None:
        t_final = time.perf_counter()
        extra.update(final_scores(result.model, bundle, train_idx))
        final_seconds = time.perf_counter() - t_final
    meta["world_size"] = tracker.world_size
    sf = ScoresFile(scores, labels.astype(np.int64), train_idx, val_idx, meta, extra=extra)
    save_scores(out_file, sf)
    ddist.barrier()
    metrics = {"proxy_test_accuracy": result.test_accuracy, "proxy_seconds": result.seconds,
               "tracking_seconds": result.tracking_seconds,
               "extra_forward_passes_over_train": result.extra_forward_passes,
               "seconds_from_training_end_to_scores": seconds_to_scores,
               "final_scores_seconds": final_seconds,
               "tracker_bytes": tracker.nbytes, "peak_rss_mb": result.peak_rss_mb,
               "peak_cuda_mb": result.peak_cuda_mb, "history": result.history,
               "scored_samples": int(np.isfinite(scores).sum())}
    log.info("scores written to %s (%d of %d samples scored)", out / "scores.npz",
             metrics["scored_samples"], scores.size)
    return sf, metrics


def select_coreset(scores: ScoresFile, *, fraction: float | None = None,
                   per_class: int | None = None, order: str = "top", class_balanced: bool = True,
                   seed: int = 0) -> np.ndarray:
    """Original dataset indices of a coreset chosen from a scores file."""
    return select(scores.scores, scores.labels, fraction=fraction, per_class=per_class, order=order,
                  class_balanced=class_balanced, dataset_indices=scores.train_indices, seed=seed)


@dataclass
class PruneSpec:
    """Dynamic data pruning of a training run (see :mod:`cldfast.pruning`).

    ``policy``: ``cld`` / ``cld-abs`` (live CLD of the run), ``infobatch`` or ``random``;
    ``saving``: target share of sample-passes saved (needed by every policy but
    ``infobatch``, which otherwise uses its own ``ratio``, default 0.5); ``delta``: the
    share of the epochs that may prune (InfoBatch's 0.875); ``loss_source``: the losses that
    feed the CLD policies' tracker (``train``: the kept samples' own training losses, free;
    ``eval``: an eval-mode pass over the whole training split every epoch, the paper's
    estimator, which costs a forward pass over all samples per epoch).
    """

    policy: str
    saving: float | None = None
    ratio: float | None = None
    delta: float = 0.875
    loss_source: str = "train"

    @property
    def uses_cld(self) -> bool:
        return self.policy in ("cld", "cld-abs")


def train(data: DataSpec | DatasetBundle, out: str | Path, *, arch: str = "small-cnn",
          recipe: Recipe | None = None, indices: np.ndarray | str | Path | None = None,
          exclude: np.ndarray | None = None, name: str = "train", resume: bool = False,
          progress: bool = True, prune: PruneSpec | str | None = None,
          val_indices: np.ndarray | None = None, val_fraction: float = 0.1) -> dict[str, Any]:
    """Train ``arch`` on the whole training set or on ``indices`` (original dataset indices,
    or an indices file), evaluate on the test split, write ``out/<name>_metrics.json``.

    With ``prune`` (a :class:`PruneSpec` or a policy name), every epoch trains on the plan of a
    dynamic pruner (:mod:`cldfast.pruning`); the metrics hold the sample-passes saved. The CLD
    policies track CLD over the training indices during the run, against ``val_indices``
    (original indices; default: a seeded ``val_fraction`` per class of the training indices,
    which are then not trained on), and write the run's CLD scores to
    ``out/<name>_scores.npz``: one run gives a trained model and a coreset.
    """
    recipe = recipe or Recipe()
    bundle = data if isinstance(data, DatasetBundle) else data.load()
    n = len(bundle.train_targets)
    if indices is None:
        idx = np.setdiff1d(np.arange(n), exclude) if exclude is not None else np.arange(n)
    elif isinstance(indices, (str, Path)):
        idx = load_indices(indices, n)
    else:
        idx = np.asarray(indices, dtype=np.int64)
    out = Path(out)
    spec = PruneSpec(prune) if isinstance(prune, str) else prune
    tracking, pruner, run_config = None, None, {}
    if spec is not None:
        from .pruning import make_pruner

        tracker = None
        if spec.uses_cld:
            if val_indices is None:
                keep, val_pos = split_train_val(bundle.train_targets[idx], val_fraction, recipe.seed)
                idx, val_idx = idx[keep], idx[val_pos]
            else:
                val_idx = np.asarray(val_indices, dtype=np.int64)
            if val_idx.size == 0:
                raise ValueError("CLD-guided pruning needs validation samples; got none "
                                 f"(val_fraction={val_fraction})")
            tracker = CLDTracker(bundle.train_targets[idx], bundle.train_targets[val_idx],
                                 device=recipe.resolved_device(), num_classes=bundle.num_classes,
                                 num_checkpoints=recipe.epochs)
            tracking = Tracking(tracker, spec.loss_source, val_idx, list(range(recipe.epochs)))
        pruner = make_pruner(spec.policy, num_samples=int(idx.size), epochs=recipe.epochs,
                             saving=spec.saving, ratio=spec.ratio, delta=spec.delta,
                             seed=recipe.seed, tracker=tracker)
        run_config["prune"] = asdict(spec)
    result = fit(bundle, idx, arch, recipe, checkpoint=out / "checkpoints" / f"{name}.pt",
                 resume=resume, progress=progress, desc=name, tracking=tracking, pruner=pruner,
                 run_config={"role": name, "indices_sum": int(idx.sum()), "count": int(idx.size),
                             **run_config})
    metrics = {"name": name, "arch": arch, "dataset": bundle.name, "train_samples": int(idx.size),
               "test_accuracy": result.test_accuracy, "seconds": result.seconds,
               "peak_rss_mb": result.peak_rss_mb, "peak_cuda_mb": result.peak_cuda_mb,
               "recipe": asdict(recipe), "history": result.history,
               "world_size": ddist.rank_world()[1]}
    if spec is not None:
        metrics["prune"] = {**asdict(spec), **result.prune,
                            "tracking_seconds": result.tracking_seconds,
                            "extra_forward_passes_over_train": result.extra_forward_passes}
    if tracking is not None:
        meta = {"dataset": bundle.name, "fingerprint": bundle.fingerprint, "arch": arch,
                "epochs_trained": recipe.epochs, "recipe_epochs": recipe.epochs,
                "tracked_epochs": list(range(1, recipe.epochs + 1)),
                "loss_source": spec.loss_source, "seed": recipe.seed, "per_class": True,
                "precision": "float64", "version": __version__, "num_classes": bundle.num_classes,
                "class_names": list(bundle.class_names), "pruned_run": spec.policy,
                "proxy_test_accuracy": result.test_accuracy}
        sf = _write_scores(tracking.tracker, bundle, idx, tracking.val_indices, meta,
                           out / f"{name}_scores.npz")
        if sf is not None:
            metrics["scores_file"] = str(out / f"{name}_scores.npz")
    if ddist.is_main():
        write_json(out / f"{name}_metrics.json", metrics)
    return metrics


def _write_scores(tracker: CLDTracker, bundle: DatasetBundle, train_idx: np.ndarray,
                  val_idx: np.ndarray, meta: dict[str, Any], path: Path) -> ScoresFile | None:
    """Gather the tracker's scores and write them as a scores file (rank 0 only; None on the
    other ranks)."""
    gathered = tracker.scores(gather="rank0")
    num_differences = tracker.num_differences(gather="rank0")
    summary = tracker.summary()
    if gathered is None:
        ddist.barrier()
        return None
    meta = {**meta, "world_size": tracker.world_size,
            "nonfinite_train_losses": summary["nonfinite_train_losses"],
            "nonfinite_val_losses": summary["nonfinite_val_losses"],
            "classes_without_validation": summary["classes_without_validation"]}
    sf = ScoresFile(gathered.double().cpu().numpy(), bundle.train_targets[train_idx].astype(np.int64),
                    train_idx, val_idx, meta,
                    extra={"num_differences": num_differences.cpu().numpy()})
    save_scores(path, sf)
    ddist.barrier()
    return sf


@dataclass
class RunResult:
    out: Path
    table: str
    metrics: dict[str, Any] = field(default_factory=dict)


def run(data: DataSpec | None = None, out: str | Path = "cldfast-out", *,
        proxy_arch: str = "small-cnn", arch: str | None = None, proxy_recipe: Recipe | None = None,
        recipe: Recipe | None = None, fractions: Sequence[float] = (0.1, 0.2, 0.3),
        compare_fraction: float | None = None, val_fraction: float = 0.1,
        loss_source: str = "eval", track_epochs: int | None = None, track_every: int = 1,
        per_class: bool = True, seeds: int = 2, resume: bool = False,
        progress: bool = True) -> RunResult:
    """The whole pipeline: track a proxy, select CLD and random coresets at ``fractions``
    and top / near-zero / most-negative CLD subsets at ``compare_fraction`` (default: the
    smallest fraction), train ``arch`` on each and on the full training split with ``seeds``
    retraining seeds (``recipe.seed + s``; random coresets are drawn afresh per seed), and
    write a table (mean ± std over the seeds), metrics.json and plots into ``out``."""
    from .plots import plot_accuracy_vs_fraction, plot_score_histograms

    data = data or DataSpec()
    bundle = data.load()
    out = Path(out)
    arch = arch or proxy_arch
    recipe = recipe or Recipe()
    proxy_recipe = proxy_recipe or recipe
    fractions = sorted(float(f) for f in fractions)
    for f in fractions:
        if not 0 < f <= 1:
            raise ValueError(f"fractions must be in (0, 1]; got {f}")
    if int(seeds) < 1:
        raise ValueError(f"seeds must be >= 1; got {seeds}")
    seeds = int(seeds)
    compare = float(compare_fraction) if compare_fraction is not None else fractions[0]
    t0 = time.perf_counter()
    scores, track_metrics = track(bundle, out, arch=proxy_arch, recipe=proxy_recipe,
                                  val_fraction=val_fraction, loss_source=loss_source,
                                  track_epochs=track_epochs, track_every=track_every,
                                  per_class=per_class, resume=resume, progress=progress)
    runs: list[tuple[str, str, float]] = [("full", "full", 1.0)]
    for f in fractions:
        runs.append((f"cld_top_{f:g}", "top", f))
        runs.append((f"random_{f:g}", "random", f))
    for order in ("zero", "bottom"):
        runs.append((f"cld_{order}_{compare:g}", order, compare))
    if f"cld_top_{compare:g}" not in {r[0] for r in runs}:
        runs.append((f"cld_top_{compare:g}", "top", compare))
    results: dict[str, dict[str, Any]] = {}
    for s in range(seeds):
        seed_recipe = replace(recipe, seed=recipe.seed + s)
        for name, order, f in runs:
            if order == "full":
                idx = scores.train_indices
            else:
                idx = select_coreset(scores, fraction=f, order=order, seed=recipe.seed + s)
                if ddist.is_main() and (s == 0 or order == "random"):
                    save_indices(out / "indices" / (f"{name}.npy" if order != "random" or s == 0
                                                    else f"{name}-s{s}.npy"), idx)
            run_name = name if s == 0 else f"{name}-s{s}"  # seed 0 keeps the old file names
            log.info("training %s on %s, seed %d (%d samples)", arch, name, seed_recipe.seed, idx.size)
            m = train(bundle, out / "runs", arch=arch, recipe=seed_recipe, indices=idx,
                      name=run_name, resume=resume, progress=progress)
            r = results.setdefault(name, {"order": order, "fraction": f, "samples": int(idx.size),
                                          "accuracies": [], "seconds": 0.0})
            r["accuracies"].append(m["test_accuracy"])
            r["seconds"] += m["seconds"]
    for r in results.values():
        acc = np.asarray(r["accuracies"], dtype=np.float64)
        r["test_accuracy"] = float(acc.mean())
        r["test_accuracy_std"] = float(acc.std(ddof=1)) if acc.size > 1 else float("nan")
    table = _result_table(results, fractions, compare, seeds, loss_source)
    if not ddist.is_main():
        return RunResult(out, table, {})
    plot_accuracy_vs_fraction(out / "plots" / "accuracy_vs_fraction.png", results, fractions,
                              title=f"{arch} on {bundle.name}: CLD vs random coresets "
                                    f"(proxy {proxy_arch}, {seeds} seed(s))")
    plot_score_histograms(out / "plots" / "cld_histograms.png", scores.scores, scores.labels,
                          scores.metadata.get("class_names") or None)
    metrics = {"dataset": bundle.name, "fingerprint": bundle.fingerprint, "proxy_arch": proxy_arch,
               "arch": arch, "version": __version__, "fractions": fractions,
               "compare_fraction": compare, "loss_source": loss_source, "seeds": seeds,
               "proxy_recipe": asdict(proxy_recipe), "recipe": asdict(recipe),
               "track": track_metrics, "results": results,
               "total_seconds": time.perf_counter() - t0}
    write_json(out / "metrics.json", metrics)
    (out / "results.md").write_text(table + "\n")
    return RunResult(out, table, metrics)


def _pm(r: dict[str, Any]) -> str:
    """Mean ± std (sample std over seeds) of a result's test accuracy, in %."""
    if len(r["accuracies"]) < 2:
        return f"{100 * r['test_accuracy']:.2f} % (1 seed)"
    return f"{100 * r['test_accuracy']:.2f} ± {100 * r['test_accuracy_std']:.2f} %"


def _result_table(results: dict[str, dict[str, Any]], fractions: Sequence[float],
                  compare: float, seeds: int = 1, loss_source: str = "eval") -> str:
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
    lines += ["", f"Subsets of equal size ({compare:g} of each class):", "",
              "| subset | test accuracy |", "|---|---|"]
    for label, key in (("top CLD", "top"), ("near-zero CLD", "zero"), ("most negative CLD", "bottom")):
        lines.append(f"| {label} | {_pm(results[f'cld_{key}_{compare:g}'])} |")
    if seeds < 2:
        lines += ["", "Single seed: differences of about 1 point between runs of the same "
                  "command are noise here (two runs measured -0.97 .. +0.40 points for CLD - "
                  "random); use --seeds 2 or more."]
    elif spreads:
        lines += ["", f"A difference smaller than the seed spread (std up to "
                  f"{100 * max(spreads):.2f} points here) is no difference."]
    return "\n".join(lines)
