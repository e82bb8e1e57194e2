"""The ``train`` workflow: a model trained on the whole training split, on a coreset (an
indices file, or a CLD selection from a scores file), or with dynamic pruning
(:class:`PruneSpec`), evaluated on the test split; writes ``out/<name>_metrics.json`` and
keeps its resume checkpoint in ``out/checkpoints/<name>.pt``."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core import distributed as ddist
from ..core.scores_file import tracker_scores_file
from ..core.tracker import CLDTracker
from ..data.datasets import DatasetBundle
from ..data.indexed import split_train_val
from ..defaults import DEFAULT_ARCH, INFOBATCH_DELTA, PRUNE_LOSS_SOURCE, VAL_FRACTION
from ..io import load_indices, load_scores, save_scores, write_json
from ..training.loop import Tracking, fit
from ..training.models import model_name
from ..training.recipe import Recipe, default_recipe
from .coresets import cld_coreset
from .sources import DataSpec, load_data

__all__ = ["PruneSpec", "train"]


@dataclass
class PruneSpec:
    """Dynamic data pruning of a training run (see :mod:`cldfast.training.pruning`).

    ``policy``: ``cld`` / ``cld-abs`` (live CLD of the run), ``infobatch`` or ``random``;
    ``saving``: target share of sample-passes saved (needed by every policy but
    ``infobatch``, which otherwise uses its own ``ratio``, default 0.5); ``delta``: the
    share of the epochs that may prune (InfoBatch's schedule); ``loss_source``: the losses that
    feed the CLD policies' tracker (``train``: the kept samples' own training losses, free;
    ``eval``: an eval-mode pass over the whole training split every epoch, the paper's
    estimator, which costs a forward pass over all samples per epoch). Defaults:
    :mod:`cldfast.defaults`.
    """

    policy: str
    saving: float | None = None
    ratio: float | None = None
    delta: float = INFOBATCH_DELTA
    loss_source: str = PRUNE_LOSS_SOURCE

    @property
    def uses_cld(self) -> bool:
        return self.policy in ("cld", "cld-abs")


def train(data: DataSpec | DatasetBundle | str | None, out: str | Path, *, arch: Any = DEFAULT_ARCH,
          model: Any = None, recipe: Recipe | None = None,
          indices: np.ndarray | str | Path | None = None, exclude: np.ndarray | None = None,
          scores: str | Path | None = None, fraction: float | None = None,
          per_class: int | None = None, order: str = "top", name: str = "train",
          resume: bool = False, progress: bool = True, prune: PruneSpec | str | None = None,
          val_indices: np.ndarray | None = None,
          val_fraction: float = VAL_FRACTION) -> dict[str, Any]:
    """Train ``arch`` / ``model`` on the whole training set (less the bundle's own validation
    split, if it has one), on ``indices`` (original dataset indices, or an indices file), or on
    a CLD selection from the scores file ``scores`` (``fraction`` or ``per_class``, ``order``;
    the file must come from the same data); evaluate on the test split and write
    ``out/<name>_metrics.json``. ``recipe``: default the dataset's training recipe.

    With ``prune`` (a :class:`PruneSpec` or a policy name), every epoch trains on the plan of a
    dynamic pruner (:mod:`cldfast.training.pruning`); the metrics hold the sample-passes saved. The CLD
    policies track CLD over the training indices during the run (every epoch is a tracked
    epoch), against ``val_indices`` (original indices; default: a seeded ``val_fraction`` per
    class of the training indices, which are then not trained on), and write the run's CLD
    scores to ``out/<name>_scores.npz``: one run gives a trained model and a coreset.
    """
    bundle = load_data(data)
    arch = model if model is not None else arch
    recipe = recipe or default_recipe(bundle.registry_name, "train")
    idx = _training_indices(bundle, indices, exclude, scores, fraction, per_class, order,
                            recipe.seed)
    out = Path(out)
    spec = PruneSpec(prune) if isinstance(prune, str) else prune
    tracking, pruner, run_config = None, None, {}
    if spec is not None:
        idx, tracking, pruner = _pruning(spec, bundle, idx, recipe, val_indices, val_fraction)
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
        _write_pruned_run_scores(bundle, out, name, arch, recipe, spec, idx, tracking, result,
                                 metrics)
    if ddist.is_main():
        write_json(out / f"{name}_metrics.json", metrics)
    return metrics


def _training_indices(bundle: DatasetBundle, indices: Any, exclude: Any, scores: Any,
                      fraction: float | None, per_class: int | None, order: str,
                      seed: int) -> np.ndarray:
    """The original indices :func:`train` trains on (see its docstring)."""
    n = len(bundle.train_targets)
    if scores is not None:
        if indices is not None:
            raise ValueError("give indices= or scores=, not both")
        if (fraction is None) == (per_class is None):
            raise ValueError("scores= needs exactly one of fraction= or per_class=")
        sf = load_scores(scores, fingerprint=bundle.fingerprint)
        indices = cld_coreset(sf, fraction=fraction, per_class=per_class, order=order, seed=seed)
    elif fraction is not None or per_class is not None:
        raise ValueError("fraction= / per_class= select from a scores file: give scores=")
    if indices is None:
        held = exclude if exclude is not None else bundle.val_indices
        return np.setdiff1d(np.arange(n), held) if held is not None else np.arange(n)
    if isinstance(indices, (str, Path)):
        return load_indices(indices, n)
    return np.asarray(indices, dtype=np.int64)


def _pruning(spec: PruneSpec, bundle: DatasetBundle, idx: np.ndarray, recipe: Recipe,
             val_indices: Any, val_fraction: float) -> tuple[np.ndarray, Tracking | None, Any]:
    """The pruner of a pruned run, and for the CLD policies the tracking of every epoch
    against V (split off ``idx`` when neither ``val_indices`` nor the bundle gives one).
    Returns (the indices trained on, the tracking or None, the pruner)."""
    from ..training.pruning import make_pruner

    if bundle.streamed:
        raise ValueError("dynamic pruning (prune= / --prune) needs a map-style dataset: a pruner "
                         "trains each epoch on a plan of positions, which streamed WebDataset "
                         "shards cannot serve; prune a map-style dataset, or train on a CLD "
                         "coreset of the shards (scores= / --scores)")
    tracker, tracking = None, None
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
    return idx, tracking, pruner


def _write_pruned_run_scores(bundle: DatasetBundle, out: Path, name: str, arch: Any,
                             recipe: Recipe, spec: PruneSpec, idx: np.ndarray,
                             tracking: Tracking, result: Any, metrics: dict[str, Any]) -> None:
    """The CLD scores of a pruned run, tracked over ``idx``, as ``out/<name>_scores.npz``
    (rank 0 writes it; its path goes into ``metrics``)."""
    meta = {"dataset": bundle.name, "fingerprint": bundle.fingerprint, "arch": model_name(arch),
            "epochs_trained": recipe.epochs, "recipe_epochs": recipe.epochs,
            "tracked_epochs": list(range(1, recipe.epochs + 1)),
            "loss_source": spec.loss_source, "seed": recipe.seed,
            "class_names": list(bundle.class_names), "pruned_run": spec.policy,
            "proxy_test_accuracy": result.test_accuracy}
    sf = tracker_scores_file(tracking.tracker, train_indices=idx,
                             val_indices=tracking.val_indices, metadata=meta)
    if sf is not None:  # rank 0 writes the file
        save_scores(out / f"{name}_scores.npz", sf)
        metrics["scores_file"] = str(out / f"{name}_scores.npz")
    ddist.barrier()
