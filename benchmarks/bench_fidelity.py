"""Fidelity of train mode: CLD from the training pass's own losses vs an eval-mode pass.

cldfast's default (``loss_source="train"``) records the per-sample losses the training forward
pass already computes: the model changes between batches and the inputs are augmented. The
authors (and ``loss_source="eval"``) run a separate eval-mode pass over the training split
after every epoch. This script measures how far that moves the scores and the coresets.

One proxy run on the embedded data (cldfast.training.fit, SGD recipe of the authors) feeds
two trackers at once, so the only difference between them is where the losses come from:

  eval   the eval-mode pass over the training split after every epoch (Tracking, "eval");
  train  the same run's training-pass losses (per-sample cross-entropy of every training
         batch's logits, recorded by a BatchRecorder into a second CLDTracker) against the
         same per-class validation trajectory.

Reported: Spearman correlation of the two score vectors (over all samples, and the mean
within classes, where selection ranks), the overlap of their class-balanced top-10 % and
top-30 % coresets (cldfast.selection.select), and the test accuracy of a model retrained on
each coreset, and on a random class-balanced coreset of the same size, for 3 seeds
(cldfast.pipeline.train). A second eval-mode proxy run with another seed gives the
run-to-run Spearman of the authors' own method, the scale against which the train/eval
difference is read (--no-seed-floor skips it).

    python benchmarks/bench_fidelity.py              # writes the 'fidelity' section
    python benchmarks/bench_fidelity.py --smoke --no-write
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _results import RESULTS, markdown_table, write_section  # noqa: E402
from bench_selection import load_bundle, set_threads, spearman  # noqa: E402

from cldfast import CLDTracker  # noqa: E402
from cldfast.data import split_train_val  # noqa: E402
from cldfast.pipeline import train as train_model  # noqa: E402
from cldfast.selection import select  # noqa: E402
from cldfast.training import Recipe, Tracking, fit  # noqa: E402


class TrainLossRecorder:
    """Train-mode CLD inside an eval-mode run: records every training batch's per-sample
    cross-entropy into its own tracker, and closes each epoch against the per-class
    validation means the eval-mode tracker recorded for that epoch (read lazily, once the
    run's validation pass is done: at the next batch, or by :meth:`finish`)."""

    def __init__(self, labels: np.ndarray, num_classes: int, eval_tracker: CLDTracker):
        # One "validation sample" per class, whose loss is that class's mean validation loss.
        self.tracker = CLDTracker(labels, np.arange(num_classes), num_classes=num_classes)
        self.eval_tracker = eval_tracker
        self.pending = False

    def _close(self) -> None:
        if self.pending:
            self.tracker.record_validation(self.eval_tracker.val_trajectory[-1])
            self.tracker.end_epoch()
            self.pending = False

    def on_batch(self, positions, logits, targets, epoch: int) -> None:
        self._close()
        self.tracker.record(positions, F.cross_entropy(logits.float(), targets, reduction="none"))

    def on_epoch_end(self, epoch: int) -> None:
        self.pending = True

    def finish(self) -> None:
        self._close()

    def scores(self) -> dict[str, np.ndarray]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def proxy_scores(bundle, train_idx, val_idx, recipe: Recipe, arch: str, with_train: bool):
    """One eval-mode proxy run; returns (eval scores, train scores or None, seconds)."""
    labels = bundle.train_targets[train_idx]
    tracker = CLDTracker(labels, bundle.train_targets[val_idx], num_classes=bundle.num_classes)
    recorders = [TrainLossRecorder(labels, bundle.num_classes, tracker)] if with_train else []
    t0 = time.perf_counter()
    fit(bundle, train_idx, arch, recipe, tracking=Tracking(tracker, "eval", val_idx,
                                                           list(range(recipe.epochs))),
        evaluate_test=False, progress=False, desc="proxy", recorders=recorders)
    for rec in recorders:
        rec.finish()
    seconds = time.perf_counter() - t0
    s_eval = tracker.scores().double().numpy()
    s_train = recorders[0].tracker.scores().double().numpy() if recorders else None
    return s_eval, s_train, seconds


def within_class_spearman(a: np.ndarray, b: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean([spearman(a[labels == c], b[labels == c]) for c in np.unique(labels)]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--proxy-epochs", type=int, default=10, help="proxy epochs (default: %(default)s)")
    ap.add_argument("--retrain-epochs", type=int, default=5,
                    help="epochs of each retraining (default: %(default)s)")
    ap.add_argument("--fractions", default="0.1,0.3", help="coreset fractions (default: %(default)s)")
    ap.add_argument("--seeds", type=int, default=3, help="retraining seeds (default: %(default)s)")
    ap.add_argument("--arch", default="small-cnn")
    ap.add_argument("--subset", type=int, default=0, help="first N training items only (0: all)")
    ap.add_argument("--test-subset", type=int, default=0, help="first N test items only (0: all)")
    ap.add_argument("--no-random", action="store_true", help="skip the random-coreset retrainings")
    ap.add_argument("--no-seed-floor", action="store_true",
                    help="skip the second eval-mode proxy run with another seed (run-to-run Spearman)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads (0: torch's default; default: %(default)s)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: 1,500 samples, 3+1 epochs, 1 seed")
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    ap.add_argument("--results", default=str(RESULTS), help="file to write the section into")
    args = ap.parse_args(argv)
    if args.smoke:
        args.proxy_epochs, args.retrain_epochs, args.seeds = 3, 1, 1
        args.subset, args.test_subset = 1500, 500
    set_threads(args.threads)
    fractions = [float(f) for f in args.fractions.split(",")]
    t_start = time.perf_counter()

    bundle = load_bundle(args.subset, args.test_subset)
    train_idx, val_idx = split_train_val(bundle.train_targets, 0.1, 0)
    labels = bundle.train_targets[train_idx]
    proxy = Recipe(epochs=args.proxy_epochs, device="cpu", seed=0)
    print(f"fidelity: proxy run, {args.proxy_epochs} epochs, {train_idx.size:,} samples", flush=True)
    s_eval, s_train, proxy_s = proxy_scores(bundle, train_idx, val_idx, proxy, args.arch, True)
    rho = spearman(s_train, s_eval)
    rho_c = within_class_spearman(s_train, s_eval, labels)
    floor_txt = ""
    if not args.no_seed_floor:
        print("fidelity: second eval-mode proxy run (seed 1)", flush=True)
        s_eval1, _, _ = proxy_scores(bundle, train_idx, val_idx,
                                     Recipe(epochs=args.proxy_epochs, device="cpu", seed=1),
                                     args.arch, False)
        floor_txt = (f" For scale: two eval-mode proxy runs with seeds 0 and 1 agree to Spearman "
                     f"{spearman(s_eval, s_eval1):.3f} (within classes "
                     f"{within_class_spearman(s_eval, s_eval1, labels):.3f}).")

    coresets: dict[tuple[str, float], np.ndarray] = {}
    overlap_rows = []
    for f in fractions:
        a = select(s_train, labels, fraction=f, dataset_indices=train_idx)
        b = select(s_eval, labels, fraction=f, dataset_indices=train_idx)
        coresets[("train", f)], coresets[("eval", f)] = a, b
        shared = np.intersect1d(a, b).size
        overlap_rows.append([f"{f:g}", f"{a.size:,}", f"{shared:,}", f"{100 * shared / a.size:.1f} %",
                             f"{100 * f:.0f} %"])

    kinds = ["train", "eval"] + ([] if args.no_random else ["random"])
    acc: dict[tuple[str, float], list[float]] = {(k, f): [] for k in kinds for f in fractions}
    retrain = Recipe(epochs=args.retrain_epochs, device="cpu")
    with tempfile.TemporaryDirectory(prefix="cldfast-bench-fidelity-") as tmp:
        for seed in range(args.seeds):
            for f in fractions:
                for kind in kinds:
                    if kind == "random":
                        idx = select(s_eval, labels, fraction=f, order="random",
                                     dataset_indices=train_idx, seed=seed)
                    else:
                        idx = coresets[(kind, f)]
                    print(f"fidelity: retrain seed {seed}, {kind} coreset {f:g} ({idx.size:,} samples)",
                          flush=True)
                    recipe = Recipe(epochs=retrain.epochs, device="cpu", seed=seed)
                    m = train_model(bundle, Path(tmp) / f"{kind}{f:g}s{seed}", arch=args.arch,
                                    recipe=recipe, indices=idx, name="run", progress=False)
                    acc[(kind, f)].append(100 * m["test_accuracy"])
    minutes = (time.perf_counter() - t_start) / 60

    def mean_std(xs: list[float]) -> str:
        return f"{statistics.mean(xs):.2f} ± {statistics.stdev(xs):.2f}" if len(xs) > 1 else f"{xs[0]:.2f}"

    acc_rows, verdict = [], []
    names = {"train": "CLD, train mode (default)", "eval": "CLD, eval mode (authors')",
             "random": "random, class-balanced"}
    for f in fractions:
        for kind in kinds:
            acc_rows.append([f"{f:g}", names[kind], mean_std(acc[(kind, f)]),
                             ", ".join(f"{a:.2f}" for a in acc[(kind, f)])])
        d = [t - e for t, e in zip(acc[("train", f)], acc[("eval", f)])]
        sd = f" (per-seed differences {', '.join(f'{x:+.2f}' for x in d)})"
        verdict.append(f"- {f:g} coreset: train mode {statistics.mean(d):+.2f} points vs eval mode"
                       f"{sd}" + ("; random" + f" {statistics.mean(acc[('random', f)]) - statistics.mean(acc[('eval', f)]):+.2f} "
                                 "points vs eval mode" if "random" in kinds else "") + ".")
    data_name = f"the first {args.subset:,} items of the embedded data" if args.subset else \
        "the embedded Fashion-MNIST"
    body = f"""\
Config: {data_name}, {train_idx.size:,} training + {val_idx.size:,} validation samples \
(10 % per class, seed 0); proxy {args.arch}, {args.proxy_epochs} epochs ({proxy_s / 60:.1f} min, \
both trackers fed by the same run); retraining {args.arch}, {args.retrain_epochs} epochs, \
seeds 0..{args.seeds - 1}, on the class-balanced top-CLD coresets; test accuracy on the \
{len(bundle.test_targets):,}-image test split; CPU, {args.threads or 'default'} torch thread(s); \
{minutes:.1f} min in all.

Scores: Spearman(train mode, eval mode) = {rho:.3f} over all samples, {rho_c:.3f} on average \
within a class.{floor_txt}

{markdown_table(["fraction", "coreset size", "in both coresets", "overlap", "overlap of two random coresets (expected)"], overlap_rows)}

{markdown_table(["fraction", "coreset", "test accuracy % (mean ± std)", "per seed"], acc_rows)}

{chr(10).join(verdict)}
"""
    print(body)
    if not args.no_write:
        write_section("fidelity", "Fidelity: train-mode vs eval-mode CLD", "benchmarks/bench_fidelity.py",
                      body, Path(args.results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
