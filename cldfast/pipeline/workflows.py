"""The workflows behind the CLI: track a proxy, select a coreset, train a model, or run the
whole pipeline. Each function takes plain arguments and writes into an output folder; every
default lives here (a recipe left out is the dataset's default recipe, see
:func:`cldfast.training.default_recipe`), and the CLI only parses arguments and calls these,
so ``cldfast.pipeline.run()`` from Python does what ``cldfast run`` does, with one exception:
``run(jobs=)`` defaults to 1 (retraining cells one after the other, in-process), as worker
processes would re-run a calling script that has no ``if __name__ == "__main__":`` guard,
while ``cldfast run`` chooses the number of jobs itself.

Your own objects go through the same functions: ``data`` may be a dataset name, a
:class:`DataSpec`, or a :class:`cldfast.data.DatasetBundle` built from your datasets with
:func:`cldfast.data.bundle_from_datasets`; ``arch`` / ``model`` may be an architecture name,
an ``nn.Module`` (each run starts from a copy of it) or a factory
``fn(num_classes, input_shape)``; the recipe chooses the optimizer (SGD or AdamW), the
schedule (multistep, cosine, one-cycle), warm-up epochs and label smoothing."""

from __future__ import annotations

import functools
import logging
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

from .._core import __version__
from .._extras import PIPELINE, require_all
from ..core import distributed as ddist
from ..core.tracker import CLDTracker
from ..data.datasets import DatasetBundle, canonical_name, is_embedded, load_dataset
from ..data.indexed import split_train_val
from ..io import (ScoresFile, atomic_write, load_indices, load_scores, save_indices, save_scores,
                  write_json)
from ..selection.balanced import DEFAULT_FRACTIONS, ORDERS, check_fractions, select
from ..selection.methods import METHODS, canonical_method, score_array
from ..selection.rules import RULES, resolve_params, select_by_rule
from ..training.checkpoints import Preempted
from ..training.loop import BatchRecorder, Tracking, fit
from ..training.models import model_name
from ..training.recipe import Recipe, default_recipe
from .report import plot_accuracy_vs_fraction, plot_score_histograms, run_table

require_all(PIPELINE, "cldfast.pipeline")  # torchvision, tqdm, matplotlib, scikit-learn

log = logging.getLogger("cldfast")

__all__ = ["DataSpec", "PruneSpec", "Selection", "tracked_epochs", "track", "select_coreset", "select_to_file",
           "train", "retrain_cell", "run", "RunResult", "load_data", "EMBEDDED_NOTE"]

# Said after `cldfast run` / pipeline.run on the embedded data: what the fidelity study found.
EMBEDDED_NOTE = (
    "Note: this quick run on the embedded Fashion-MNIST shows the pipeline working; it is not "
    "a setting where CLD is expected to beat random coresets. The fidelity study "
    "(benchmarks/RESULTS.md, 'Fidelity: when does CLD work?') found eval-mode top-CLD "
    "coresets below random class-balanced ones on this data at every proxy length (10-60 "
    "epochs), schedule, fraction (5-70 %) and retraining budget it tried, while eval-mode CLD "
    "does flag mislabeled samples (AUROC 0.82-0.84 with 20 % flipped labels). The "
    "selection-rules study (benchmarks/RESULTS.md, 'Selection rules'; 10 % budget) found no "
    "rule over CLD above random here, clean or with flipped labels; with 20 % / 40 % flipped "
    "labels, ccs over AUM (recorded by cldfast bench; cldfast select --method aum --rule ccs) "
    "beat random by +2.7 / +5.3 points. The paper's setting, where its claims were made "
    "(GPU, hours): cldfast run --dataset cifar100 --data-path DIR --proxy-arch resnet18 "
    "--epochs 164")


@dataclass
class DataSpec:
    """Which dataset to load (see :func:`cldfast.data.load_dataset`).

    For WebDataset shards (``dataset="webdataset"``): ``data_path`` is the training shards'
    pattern (``'shards/train-{000000..000146}.tar'``), ``index`` the index file of their keys
    and labels (read if it exists, else written by one listing pass), ``test_data_path`` the
    test shards' pattern and ``shuffle_buffer`` the samples in each loader worker's shuffle
    buffer (:func:`cldfast.data.load_webdataset`)."""

    dataset: str = "auto"
    data_path: str | None = None
    download: bool = False
    image_size: int | None = None
    index: str | None = None
    test_data_path: str | None = None
    shuffle_buffer: int | None = None

    def load(self) -> DatasetBundle:
        return load_dataset(self.dataset, self.data_path, download=self.download,
                            image_size=self.image_size, index=self.index,
                            test_data_path=self.test_data_path, shuffle_buffer=self.shuffle_buffer)


def load_data(data: "DataSpec | DatasetBundle | str | None") -> DatasetBundle:
    """A bundle from what the workflows accept as ``data``: None (the embedded data), a
    dataset name, a :class:`DataSpec`, or a :class:`DatasetBundle` (returned as is)."""
    if data is None:
        data = DataSpec()
    elif isinstance(data, str):
        data = DataSpec(data)
    if isinstance(data, DatasetBundle):
        return data
    if not isinstance(data, DataSpec):
        raise TypeError("data must be a dataset name, a cldfast.pipeline.DataSpec or a "
                        "cldfast.data.DatasetBundle (cldfast.data.bundle_from_datasets builds one "
                        f"from your datasets); got {type(data).__name__}")
    return data.load()


def _dataset_key(data: Any, bundle: DatasetBundle) -> str:
    """The registry name whose default recipe applies (``custom`` for user bundles)."""
    try:
        return canonical_name(bundle.name)
    except (TypeError, ValueError):
        return "custom"


def _split(bundle: DatasetBundle, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training split, validation split V) in original indices: the bundle's own V when it
    has one, else a seeded ``val_fraction`` per class."""
    if bundle.val_indices is not None:
        val = np.asarray(bundle.val_indices, dtype=np.int64)
        return np.setdiff1d(np.arange(len(bundle.train_targets)), val), val
    return split_train_val(bundle.train_targets, val_fraction, seed)


def tracked_epochs(epochs: int, track_epochs: int | None, track_every: int,
                   track_from: int = 0) -> list[int]:
    """0-based epochs whose end is a CLD checkpoint: every ``track_every``-th of the first
    ``track_epochs`` (default: all), counted from the last one backwards so the final
    tracked epoch is always a checkpoint, leaving out the first ``track_from`` epochs (so
    their loss differences do not feed CLD: the first checkpoint is the end of epoch
    ``track_from + 1`` or later)."""
    k = epochs if track_epochs is None else int(track_epochs)
    if not 1 <= k <= epochs:
        raise ValueError(f"track_epochs must be in [1, epochs={epochs}]; got {track_epochs}")
    if int(track_every) < 1:
        raise ValueError(f"track_every must be >= 1; got {track_every}")
    if not 0 <= int(track_from) < k:
        raise ValueError(f"track_from must be in [0, {k - 1}] (fewer than the {k} tracked "
                         f"epochs); got {track_from}")
    chosen = list(range(k - 1, int(track_from) - 1, -int(track_every)))[::-1]
    if len(chosen) < 3:
        log.warning("only %d checkpoints feed CLD (need at least 3 for a score); raise "
                    "track_epochs (--track-epochs), lower track_every (--track-every) or "
                    "track_from (--track-from)", len(chosen))
    return chosen


def track(data: DataSpec | DatasetBundle | str | None, out: str | Path, *,
          arch: Any = "small-cnn", model: Any = None,
          recipe: Recipe | None = None, val_fraction: float = 0.1, loss_source: str = "eval",
          track_epochs: int | None = None, track_every: int = 1, track_from: int = 0,
          per_class: bool = True, precision: str = "float64", resume: bool = False,
          progress: bool = True,
          recorders: Sequence[BatchRecorder] = (),
          final_scores: Callable[[Any, DatasetBundle, np.ndarray], dict[str, np.ndarray]] | None = None,
          ) -> tuple[ScoresFile, dict[str, Any]]:
    """Train a proxy with CLDTracker and write ``out/scores.npz``.

    ``arch`` / ``model`` (``model`` wins when given): an architecture name, an ``nn.Module``
    or a factory ``fn(num_classes, input_shape)``. ``recipe``: default the dataset's proxy
    recipe (:func:`cldfast.training.default_recipe`). V is the bundle's own validation split
    when it has one, else a seeded ``val_fraction`` per class of the training set.
    ``recorders`` watch the same training pass (e.g. other streaming scores); each one's
    ``score_arrays()`` dict of [N] arrays is stored in the scores file's ``extra``, as is the
    dict returned by ``final_scores(model, bundle, train_indices)``, called once after
    training. Writes ``out/scores.npz`` and ``out/track_metrics.json``; returns the scores
    file's contents and the metrics dict (timings, memory, accuracy).
    """
    bundle = load_data(data)
    arch = model if model is not None else arch
    recipe = recipe or default_recipe(_dataset_key(data, bundle), "proxy")
    out = Path(out)
    train_idx, val_idx = _split(bundle, val_fraction, recipe.seed)
    if val_idx.size == 0:
        raise ValueError(f"val_fraction={val_fraction} leaves no validation samples; CLD needs some")
    labels = bundle.train_targets[train_idx]
    epochs = tracked_epochs(recipe.epochs, track_epochs, track_every, track_from)
    device = recipe.resolved_device()
    tracker = CLDTracker(labels, bundle.train_targets[val_idx], per_class=per_class, device=device,
                         precision=precision, num_classes=bundle.num_classes,
                         num_checkpoints=len(epochs))
    tracking = Tracking(tracker, loss_source, val_idx, epochs)
    log.info("tracking %s on %s: %d training / %d validation samples, checkpoints after epochs %s",
             model_name(arch), bundle.name, train_idx.size, val_idx.size, [e + 1 for e in epochs])
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
        return load_scores(out_file), {"proxy_test_accuracy": result.test_accuracy,
                                       "history": result.history}
    scores = gathered.double().cpu().numpy()
    meta = {
        "dataset": bundle.name, "fingerprint": bundle.fingerprint, "arch": model_name(arch),
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
        # score_arrays() is the BatchRecorder method; recorders written before it have scores()
        extra.update(rec.score_arrays() if hasattr(rec, "score_arrays") else rec.scores())
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
    write_json(out / "track_metrics.json", metrics)
    log.info("scores written to %s (%d of %d samples scored)", out / "scores.npz",
             metrics["scored_samples"], scores.size)
    return sf, metrics


def _require_scored(sf: ScoresFile, values: np.ndarray, method: str) -> None:
    """Refuse a selection from ``values`` (``method``'s scores in ``sf``) when no sample has
    one, saying why as far as the file's metadata tells."""
    if np.isfinite(np.asarray(values, dtype=np.float64)).any():
        return
    meta = sf.metadata or {}
    if method in ("cld", "random"):  # random draws among the CLD-scored samples
        checkpoints = meta.get("checkpoints")
        if checkpoints is None and isinstance(meta.get("tracked_epochs"), (list, tuple)):
            checkpoints = len(meta["tracked_epochs"])
        if checkpoints is not None and int(checkpoints) < 3:
            why = (f"the proxy tracked {int(checkpoints)} checkpoint(s), 3 are needed (CLD "
                   "correlates at least 2 loss differences per sample); track more epochs")
        elif checkpoints is not None:
            why = (f"the proxy tracked {int(checkpoints)} checkpoints, but no sample has finite "
                   "losses at 3 of them (non-finite training losses: "
                   f"{meta.get('nonfinite_train_losses', 'not recorded')})")
        else:
            why = ("the file does not record how many checkpoints were tracked; CLD needs "
                   "finite losses at 3 or more checkpoints per sample")
        what = "a CLD score"
    else:
        why = f"its {method!r} array holds only NaN"
        what = f"a {method!r} score"
    raise ValueError(f"no sample has {what} ({values.shape[0]} samples in the file, all "
                     f"NaN): {why}. Nothing selected")


def select_coreset(scores: ScoresFile, *, fraction: float | None = None,
                   per_class: int | None = None, order: str = "top", class_balanced: bool = True,
                   seed: int = 0) -> np.ndarray:
    """Original dataset indices of a coreset chosen from a scores file by CLD. ValueError
    when no sample is scored, or a class has fewer scored samples than its quota
    (:func:`cldfast.selection.select`)."""
    _require_scored(scores, scores.scores, "cld")
    return select(scores.scores, scores.labels, fraction=fraction, per_class=per_class, order=order,
                  class_balanced=class_balanced, dataset_indices=scores.train_indices, seed=seed)


class Selection(NamedTuple):
    """What :func:`select_to_file` wrote: the file, the original dataset indices, the end of
    the score kept (``random`` for a uniform draw), the rule and its parameters (``auto``:
    the names chosen automatically)."""

    path: Path
    indices: np.ndarray
    order: str
    rule: str = "top"
    params: dict[str, Any] = {}
    auto: tuple[str, ...] = ()


def select_to_file(scores: str | Path, *, method: str = "cld", fraction: float | None = None,
                   per_class: int | None = None, order: str | None = None,
                   class_balanced: bool = True, seed: int = 0,
                   output: str | Path | None = None, rule: str = "top",
                   rule_params: dict[str, Any] | None = None) -> Selection:
    """Select a coreset from the scores file ``scores`` by ``method`` (CLD or any other
    stored score, :data:`cldfast.selection.METHODS`) and write its ORIGINAL dataset indices.

    ``order``: default the method's own end (top for CLD); the random method draws uniformly
    whatever ``order`` says. ``rule``: how the kept end is used (:data:`cldfast.selection.
    RULES`; ``top``, the paper's, by default), with ``rule_params`` (those left out are
    chosen from the training scores and the budget, :func:`cldfast.selection.auto_params`).
    ``output``: a .npy file, or .txt for one index per line; default beside the scores file,
    named after the selection (``indices_top_f0.1.npy``, ``indices_forgetting_top_k5_global.npy``,
    ``indices_random_f0.1.npy``, ``indices_ccs_f0.1.npy``, ...).

    ValueError, nothing written, when no sample has a score (e.g. a proxy that tracked fewer
    than 3 checkpoints), a class has fewer scored samples than its quota
    (:func:`cldfast.selection.select`), or the rule does not fit the request.
    """
    if not class_balanced and per_class is not None:
        raise ValueError("a global selection needs a fraction (a per-class count has no meaning "
                         "without classes)")
    info = METHODS[canonical_method(method)]
    rule_info = RULES.get(rule)
    if rule_info is None:
        raise ValueError(f"rule must be one of {', '.join(RULES)}; got {rule!r}")
    by_rule = rule != "top" or bool(rule_params)
    if by_rule:
        if not class_balanced:
            raise ValueError(f"rule {rule!r} is class-balanced; a global selection needs rule 'top'")
        if info.kind == "random":
            raise ValueError(f"rule {rule!r} needs a score; the random method has none")
    sf = load_scores(scores)
    # The top rule keeps the method's own end; the other rules its rule_keep end.
    order = order or (info.rule_keep if by_rule else info.order if info.order in ORDERS else "top")
    if info.kind == "random":
        order = "random"  # a uniform draw: no end of any score is kept
    values = score_array(sf, info.name)
    values = sf.scores if values is None else values  # random: uniform among CLD-scored samples
    _require_scored(sf, values, info.name)
    size = f"f{fraction:g}" if fraction is not None else f"k{per_class}"
    name = "indices" if info.name == "cld" else f"indices_{info.name}"
    params, auto = {}, ()
    if by_rule:
        if order not in ("top", "bottom"):
            raise ValueError(f"rule {rule!r} keeps the top or the bottom end of a score; got "
                             f"order {order!r}")
        params, auto = resolve_params(rule, values, sf.labels, fraction=fraction,
                                      per_class=per_class, keep=order, params=rule_params or {})
        idx = select_by_rule(values, sf.labels, rule=rule, fraction=fraction, per_class=per_class,
                             keep=order, seed=seed, dataset_indices=sf.train_indices,
                             params=params)
        end = "" if order == info.rule_keep else f"_{order}"  # another end than the default
        stem = f"{name}_{rule}{end}_{size}"
    else:
        idx = select(values, sf.labels, fraction=fraction, per_class=per_class, order=order,
                     class_balanced=class_balanced, dataset_indices=sf.train_indices, seed=seed)
        # random: the same draw as CLD's --order random
        stem = f"indices_random_{size}" if info.kind == "random" else f"{name}_{order}_{size}"
    path = Path(output) if output else Path(scores).with_name(
        f"{stem}{'' if class_balanced else '_global'}.npy")
    if path.suffix == ".txt":
        atomic_write(path, lambda p: np.savetxt(p, idx, fmt="%d"))
    else:
        save_indices(path, idx)
    return Selection(path, idx, order, rule, params, tuple(auto))


@dataclass
class PruneSpec:
    """Dynamic data pruning of a training run (see :mod:`cldfast.training.pruning`).

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


def train(data: DataSpec | DatasetBundle | str | None, out: str | Path, *, arch: Any = "small-cnn",
          model: Any = None, recipe: Recipe | None = None,
          indices: np.ndarray | str | Path | None = None, exclude: np.ndarray | None = None,
          scores: str | Path | None = None, fraction: float | None = None,
          per_class: int | None = None, order: str = "top", name: str = "train",
          resume: bool = False, progress: bool = True, prune: PruneSpec | str | None = None,
          val_indices: np.ndarray | None = None, val_fraction: float = 0.1) -> dict[str, Any]:
    """Train ``arch`` / ``model`` on the whole training set (less the bundle's own validation
    split, if it has one), on ``indices`` (original dataset indices, or an indices file), or on
    a CLD selection from the scores file ``scores`` (``fraction`` or ``per_class``, ``order``;
    the file must come from the same data); evaluate on the test split and write
    ``out/<name>_metrics.json``. ``recipe``: default the dataset's training recipe.

    With ``prune`` (a :class:`PruneSpec` or a policy name), every epoch trains on the plan of a
    dynamic pruner (:mod:`cldfast.training.pruning`); the metrics hold the sample-passes saved. The CLD
    policies track CLD over the training indices during the run, against ``val_indices``
    (original indices; default: a seeded ``val_fraction`` per class of the training indices,
    which are then not trained on), and write the run's CLD scores to
    ``out/<name>_scores.npz``: one run gives a trained model and a coreset.
    """
    bundle = load_data(data)
    arch = model if model is not None else arch
    recipe = recipe or default_recipe(_dataset_key(data, bundle), "train")
    n = len(bundle.train_targets)
    if scores is not None:
        if indices is not None:
            raise ValueError("give indices= or scores=, not both")
        if (fraction is None) == (per_class is None):
            raise ValueError("scores= needs exactly one of fraction= or per_class=")
        sf = load_scores(scores, fingerprint=bundle.fingerprint)
        indices = select_coreset(sf, fraction=fraction, per_class=per_class, order=order,
                                 seed=recipe.seed)
    elif fraction is not None or per_class is not None:
        raise ValueError("fraction= / per_class= select from a scores file: give scores=")
    if indices is None:
        held = exclude if exclude is not None else bundle.val_indices
        idx = np.setdiff1d(np.arange(n), held) if held is not None else np.arange(n)
    elif isinstance(indices, (str, Path)):
        idx = load_indices(indices, n)
    else:
        idx = np.asarray(indices, dtype=np.int64)
    out = Path(out)
    spec = PruneSpec(prune) if isinstance(prune, str) else prune
    if spec is not None and bundle.streamed:
        raise ValueError("dynamic pruning (prune= / --prune) needs a map-style dataset: a pruner "
                         "trains each epoch on a plan of positions, which streamed WebDataset "
                         "shards cannot serve; prune a map-style dataset, or train on a CLD "
                         "coreset of the shards (scores= / --scores)")
    tracking, pruner, run_config = None, None, {}
    if spec is not None:
        from ..training.pruning import make_pruner

        tracker = None
        if spec.uses_cld:
            if val_indices is None and bundle.val_indices is not None:
                val_indices = bundle.val_indices  # the data's own V (idx already leaves it out)
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
    metrics = {"name": name, "arch": model_name(arch), "dataset": bundle.name,
               "train_samples": int(idx.size),
               "test_accuracy": result.test_accuracy, "seconds": result.seconds,
               "peak_rss_mb": result.peak_rss_mb, "peak_cuda_mb": result.peak_cuda_mb,
               "recipe": asdict(recipe), "history": result.history,
               "world_size": ddist.rank_world()[1]}
    if spec is not None:
        metrics["prune"] = {**asdict(spec), **result.prune,
                            "tracking_seconds": result.tracking_seconds,
                            "extra_forward_passes_over_train": result.extra_forward_passes}
    if tracking is not None:
        meta = {"dataset": bundle.name, "fingerprint": bundle.fingerprint, "arch": model_name(arch),
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


def retrain_cell(bundle: DatasetBundle, out: str | Path, name: str,
                 select: Callable[[], np.ndarray], *, arch: Any, recipe: Recipe, seed: int,
                 indices_file: str | Path | None = None, resume: bool = False,
                 progress: bool = True) -> dict[str, Any]:
    """The one retraining cell behind :func:`run` and :func:`cldfast.pipeline.bench.bench`:
    the coreset ``select()`` (original dataset indices) is written to ``indices_file`` (rank
    0), then ``arch`` is trained on it with ``recipe`` at ``seed`` (:func:`train`: files
    ``out/<name>_metrics.json``, checkpoint ``out/checkpoints/<name>.pt``). Returns the
    training metrics plus ``samples`` and ``select_seconds``."""
    t0 = time.perf_counter()
    idx = np.asarray(select(), dtype=np.int64)
    if indices_file is not None and ddist.is_main():
        save_indices(indices_file, idx)
    select_seconds = time.perf_counter() - t0
    log.info("training %s on %s, seed %d (%d samples)", model_name(arch), name, seed, idx.size)
    m = train(bundle, out, arch=arch, recipe=replace(recipe, seed=seed), indices=idx, name=name,
              resume=resume, progress=progress)
    return {**m, "samples": int(idx.size), "select_seconds": select_seconds}


def _fixed_indices(indices: np.ndarray) -> np.ndarray:
    """A coreset chosen in the parent, handed to a retraining cell in a worker process."""
    return indices


# Per worker process: the bundle, loaded once by the pool's initializer, and whether the run
# is stopping (SIGTERM from the parent after another cell failed).
_WORKER_BUNDLE: DatasetBundle | None = None
_WORKER_STOPPING = False


class CellNotStarted(RuntimeError):
    """A retraining cell a worker did not start because the run was stopping."""


def _worker_sigterm(signum, frame) -> None:  # noqa: ARG001 - signal handler signature
    """A worker's SIGTERM outside a training loop (idle, between cells, loading data): the
    run is stopping, so no further cell starts. Within a training loop the loop's own
    handler checkpoints and stops it (:class:`cldfast.training.checkpoints.SigtermWatch`)."""
    global _WORKER_STOPPING
    _WORKER_STOPPING = True


def _cell_worker_init(data: Any, threads: int, log_file: str | None) -> None:
    global _WORKER_BUNDLE
    import signal

    import torch

    signal.signal(signal.SIGTERM, _worker_sigterm)
    torch.set_num_threads(threads)
    if log_file is not None:  # the run's log keeps every cell's epochs
        handler = logging.FileHandler(log_file)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    _WORKER_BUNDLE = load_data(data)


def _cell_worker(out: Path, name: str, indices: np.ndarray, kwargs: dict[str, Any]) -> dict[str, Any]:
    global _WORKER_STOPPING
    assert _WORKER_BUNDLE is not None
    if _WORKER_STOPPING:
        raise CellNotStarted(f"{name}: not started, the run is stopping")
    try:
        return retrain_cell(_WORKER_BUNDLE, out, name, functools.partial(_fixed_indices, indices),
                            progress=False, **kwargs)
    except Preempted:  # checkpointed on SIGTERM: the cells queued behind it do not start
        _WORKER_STOPPING = True
        raise


def _stop_cells(pool: Any, futures: Sequence[Any]) -> None:
    """After a failed cell (or Ctrl-C): drop the cells not started and stop the running ones
    now. Each running worker gets SIGTERM, on which its training loop writes a checkpoint
    (which ``--resume`` continues) and stops at the next batch boundary; a worker between
    cells or still loading data starts no further cell. SIGTERM is repeated every second
    until every running cell has ended, for a worker that was past its handler's reach (e.g.
    building its model) the first time; the workers' handlers make repeats harmless."""
    import signal
    from concurrent.futures import wait

    for fut in futures:
        fut.cancel()  # those not handed to a worker yet
    running = {fut for fut in futures if not fut.done()}
    while running:
        # ProcessPoolExecutor has no public API for its worker processes: `_processes`
        # (pid -> multiprocessing.Process) is private; without it the running cells end in
        # their own time, as pool.shutdown(wait=True) below waits for them.
        for proc in list((getattr(pool, "_processes", None) or {}).values()):
            if proc.exitcode is None:
                try:
                    os.kill(proc.pid, signal.SIGTERM)
                except (ProcessLookupError, OSError):
                    pass
        _, running = wait(running, timeout=1.0)
    pool.shutdown(wait=True, cancel_futures=True)


def available_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def retrain_jobs(data: Any, arch: Any, recipe: Recipe, cells: int, jobs: int | str | None) -> int:
    """How many retraining cells :func:`run` trains at once.

    ``jobs="auto"`` (or None; what ``cldfast run`` asks for when ``--jobs`` is left out): on
    the CPU in one process, with data that a worker can load by itself (a dataset name or
    :class:`DataSpec`) and an architecture given by name, as many as torch has threads (so
    ``cldfast --threads 1 run`` stays sequential), at most one per core and per cell; else 1
    (on a GPU, under torchrun). Small models do not use several cores fully within one
    training step, so cells side by side with one thread each train faster in total than one
    cell with every thread. ``jobs=N`` asks for N (at most one per cell); N > 1 is refused
    under torchrun (world size > 1), where every rank would train every cell and write the
    same files."""
    if jobs is not None and not (isinstance(jobs, str) and jobs == "auto"):
        if isinstance(jobs, bool) or not isinstance(jobs, (int, np.integer)) or int(jobs) < 1:
            raise ValueError(f"jobs must be >= 1 (an integer) or 'auto'; got {jobs!r}")
        world = ddist.rank_world()[1]
        if int(jobs) > 1 and world > 1:
            raise ValueError(f"--jobs {int(jobs)} (jobs={int(jobs)}) cannot be used under torchrun "
                             f"(world size {world}): every rank would train every retraining "
                             "cell and write the same files. Leave --jobs out (or give 1): the "
                             "ranks then train each cell together")
        return min(int(jobs), max(cells, 1))
    import torch

    reloadable = data is None or isinstance(data, (str, DataSpec))
    if (recipe.resolved_device().type != "cpu" or ddist.rank_world()[1] > 1 or not reloadable
            or not isinstance(arch, str)):
        return 1
    return max(1, min(torch.get_num_threads(), available_cores(), cells))


def _retrain_cells(bundle: DatasetBundle, data: Any, out: Path,
                   cells: list[tuple[str, np.ndarray | Callable[[], np.ndarray], dict[str, Any]]],
                   jobs: int, progress: bool) -> list[dict[str, Any]]:
    """Train ``cells`` (name, indices or a selector, retrain_cell keyword arguments) in
    order, or ``jobs`` at a time in worker processes (spawned; each loads ``data`` once and
    gets ``threads // jobs`` torch threads). Results in the order of ``cells``."""
    if jobs <= 1:
        return [retrain_cell(bundle, out, name, pick if callable(pick) else
                             functools.partial(_fixed_indices, pick), progress=progress, **kw)
                for name, pick, kw in cells]
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    import torch

    from ..training.evaluation import tqdm

    threads = max(1, torch.get_num_threads() // jobs)
    run_log = out.parent / "run.log"
    log.info("retraining %d cells, %d at a time (worker processes with %d torch thread(s) "
             "each)", len(cells), jobs, threads)
    chosen = [(name, np.asarray(pick() if callable(pick) else pick, dtype=np.int64), kw)
              for name, pick, kw in cells]
    results: list[dict[str, Any] | None] = [None] * len(chosen)
    with ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn"), initializer=_cell_worker_init,
                             initargs=(data if data is not None else DataSpec(), threads,
                                       str(run_log) if run_log.exists() else None)) as pool:
        futures = {pool.submit(_cell_worker, out, name, idx, kw): i
                   for i, (name, idx, kw) in enumerate(chosen)}
        try:
            with tqdm(total=len(chosen), desc="retraining cells", disable=not progress) as bar:
                for fut in as_completed(futures):
                    i = futures[fut]
                    results[i] = m = fut.result()
                    log.info("%s: test accuracy %.2f %% (%d samples)", chosen[i][0],
                             100 * m["test_accuracy"], m["samples"])
                    bar.update(1)
        except BaseException:
            # A failed cell (or Ctrl-C) ends the run at once: cells not started yet are
            # dropped, the running ones checkpoint and stop (SIGTERM); the finished cells and
            # those checkpoints serve --resume. Then the failure is reported.
            log.warning("a retraining cell failed or the run was interrupted: stopping the "
                        "running cells (each writes a checkpoint for --resume)")
            _stop_cells(pool, list(futures))
            raise
    return results  # type: ignore[return-value]


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


@dataclass
class RunResult:
    out: Path
    table: str
    metrics: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # said after the table (e.g. EMBEDDED_NOTE)


def run(data: DataSpec | DatasetBundle | str | None = None, out: str | Path = "cldfast-out", *,
        proxy_arch: Any = "small-cnn", arch: Any = None, proxy_recipe: Recipe | None = None,
        recipe: Recipe | None = None, fractions: Sequence[float] = DEFAULT_FRACTIONS,
        compare_fraction: float | None = None, val_fraction: float = 0.1,
        loss_source: str = "eval", track_epochs: int | None = None, track_every: int = 1,
        track_from: int = 0, per_class: bool = True, precision: str = "float64", seeds: int = 2,
        resume: bool = False,
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
    ``jobs=N`` or ``"auto"`` (:func:`retrain_jobs`; several on a multi-core CPU, the choice
    of ``cldfast run``) train them in spawned worker processes, which import the calling
    script again: call ``run`` under ``if __name__ == "__main__":`` then. Every cell is
    seeded on its own, so only float rounding depends on ``jobs``. ``rules``: further CLD
    coresets at every fraction by these selection rules (:data:`cldfast.selection.RULES`,
    automatic parameters; the random ones drawn afresh per seed), beside the paper's top-CLD
    ones, which stay."""
    bundle = load_data(data)
    key = _dataset_key(data, bundle)
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
    n_jobs = retrain_jobs(data, arch, recipe, seeds * len(runs), jobs)
    t0 = time.perf_counter()
    scores, track_metrics = track(bundle, out, arch=proxy_arch, recipe=proxy_recipe,
                                  val_fraction=val_fraction, loss_source=loss_source,
                                  track_epochs=track_epochs, track_every=track_every,
                                  track_from=track_from, per_class=per_class,
                                  precision=precision, resume=resume,
                                  progress=progress)
    cells = []
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
                pick = functools.partial(select_coreset, scores, fraction=f, order=order,
                                         seed=recipe.seed + s)
                # CLD coresets do not depend on the seed: one file; random ones, one per seed
                file = (out / "indices" / (f"{name}.npy" if s == 0 else f"{name}-s{s}.npy")
                        if (s == 0 or order == "random") else None)
            run_name = name if s == 0 else f"{name}-s{s}"  # seed 0 keeps the old file names
            cells.append((run_name, pick, dict(arch=arch, recipe=recipe, seed=recipe.seed + s,
                                               indices_file=file, resume=resume)))
    done = _retrain_cells(bundle, data, out / "runs", cells, n_jobs, progress)
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
               "proxy_arch": model_name(proxy_arch), "arch": model_name(arch), "version": __version__, "fractions": fractions,
               "compare_fraction": compare, "loss_source": loss_source, "seeds": seeds,
               "retrain_jobs": n_jobs,
               "proxy_recipe": asdict(proxy_recipe), "recipe": asdict(recipe),
               "track": track_metrics, "results": results,
               "total_seconds": time.perf_counter() - t0}
    write_json(out / "metrics.json", metrics)
    atomic_write(out / "results.md", lambda p: p.write_text(table + "\n"))
    return RunResult(out, table, metrics, notes)
