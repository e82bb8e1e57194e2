"""The ``track`` workflow: train a proxy while CLDTracker (and any other recorders) watch it,
and write the scores file ``out/scores.npz`` with ``out/track_metrics.json``.

Terms: a *tracked epoch* is an epoch whose end feeds CLD (:func:`tracked_epochs`); the
*resume checkpoint* ``out/checkpoints/proxy.pt`` is what ``resume=True`` continues from."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..core import distributed as ddist
from ..core.scores_file import tracker_scores_file
from ..core.tracker import CLDTracker
from ..data.datasets import DatasetBundle
from ..defaults import DEFAULT_ARCH, LOSS_SOURCE, PRECISION, VAL_FRACTION
from ..io import ScoresFile, load_scores, save_scores, write_json
from ..training.loop import BatchRecorder, Tracking, fit
from ..training.models import model_name
from ..training.recipe import Recipe, default_recipe
from .sources import DataSpec, load_data

log = logging.getLogger("cldfast")

__all__ = ["tracked_epochs", "track"]


def tracked_epochs(epochs: int, track_epochs: int | None, track_every: int,
                   track_from: int = 0) -> list[int]:
    """The tracked epochs (0-based; the end of each feeds CLD): every ``track_every``-th of
    the first ``track_epochs`` (default: all), counted from the last one backwards so that
    the last of them is always tracked, leaving out the first ``track_from`` epochs (so their
    loss differences do not feed CLD: the first tracked epoch is epoch ``track_from + 1``,
    1-based, or later)."""
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
        log.warning("only %d tracked epochs feed CLD (need at least 3 for a score); raise "
                    "track_epochs (--track-epochs), lower track_every (--track-every) or "
                    "track_from (--track-from)", len(chosen))
    return chosen


def track(data: DataSpec | DatasetBundle | str | None, out: str | Path, *,
          arch: Any = DEFAULT_ARCH, model: Any = None,
          recipe: Recipe | None = None, val_fraction: float = VAL_FRACTION,
          loss_source: str = LOSS_SOURCE,
          track_epochs: int | None = None, track_every: int = 1, track_from: int = 0,
          per_class: bool = True, precision: str = PRECISION, resume: bool = False,
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
    recipe = recipe or default_recipe(bundle.registry_name, "proxy")
    out = Path(out)
    train_idx, val_idx = bundle.split_train_val(val_fraction, recipe.seed)
    if val_idx.size == 0:
        raise ValueError(f"val_fraction={val_fraction} leaves no validation samples; CLD needs some")
    epochs = tracked_epochs(recipe.epochs, track_epochs, track_every, track_from)
    tracker = CLDTracker(bundle.train_targets[train_idx], bundle.train_targets[val_idx],
                         per_class=per_class, device=recipe.resolved_device(),
                         precision=precision, num_classes=bundle.num_classes,
                         num_checkpoints=len(epochs))
    tracking = Tracking(tracker, loss_source, val_idx, epochs)
    log.info("tracking %s on %s: %d training / %d validation samples, tracked epochs %s",
             model_name(arch), bundle.name, train_idx.size, val_idx.size, [e + 1 for e in epochs])
    run_config = {"role": "proxy", "val_fraction": val_fraction, "loss_source": loss_source,
                  "tracked_epochs": epochs, "per_class": per_class, "precision": precision}
    result = fit(bundle, train_idx, arch, recipe, tracking=tracking, stop_epoch=epochs[-1] + 1,
                 checkpoint=out / "checkpoints" / "proxy.pt", resume=resume, progress=progress,
                 desc="proxy", run_config=run_config, recorders=recorders)
    # The tracker adds its own facts (per_class, precision, counters, world size, ...).
    meta = {
        "dataset": bundle.name, "fingerprint": bundle.fingerprint, "arch": model_name(arch),
        "epochs_trained": epochs[-1] + 1, "recipe_epochs": recipe.epochs,
        "tracked_epochs": [e + 1 for e in epochs], "loss_source": loss_source,
        "seed": recipe.seed, "val_fraction": val_fraction,
        "class_names": list(bundle.class_names), "proxy_test_accuracy": result.test_accuracy,
    }
    t_end = time.perf_counter()
    sf = tracker_scores_file(tracker, train_indices=train_idx, val_indices=val_idx, metadata=meta)
    seconds_to_scores = time.perf_counter() - t_end
    out_file = out / "scores.npz"
    if sf is None:  # another rank than 0 under torch.distributed: rank 0 writes the file
        ddist.barrier()
        return load_scores(out_file), {"proxy_test_accuracy": result.test_accuracy,
                                       "history": result.history}
    for rec in recorders:
        sf.extra.update(rec.score_arrays())
    final_seconds = 0.0
    if final_scores is not None:
        t_final = time.perf_counter()
        sf.extra.update(final_scores(result.model, bundle, train_idx))
        final_seconds = time.perf_counter() - t_final
    save_scores(out_file, sf)
    ddist.barrier()
    scores = sf.scores
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
