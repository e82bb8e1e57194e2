"""`cldfast` command line: run | track | select | export | train | bench | info. A thin shell over
cldfast.pipeline and cldfast.bench; every option maps to an argument of the Python API."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import numpy as np

from . import build_info
from ._core import __version__
from .data import DATASETS
from .io import CorruptFileError, load_scores, save_indices
from .models import ARCHS
from .selection import ORDERS
from .training import LOSS_SOURCES, Preempted, Recipe

log = logging.getLogger("cldfast")

EMBEDDED = ("auto", "fashion-mnist", "fashion_mnist", "fmnist", "digits")
# Epochs when --epochs is not given: a quick recipe for the embedded data, the authors'
# recipes otherwise (docs/method.md: CIFAR 164 epochs, ImageNet 90).
DEFAULT_EPOCHS = {"embedded": 8, "imagefolder": 90, "other": 164}
DEFAULT_PROXY_EPOCHS_EMBEDDED = 10
# Printed after `cldfast run` on the embedded data: what the fidelity study measured there.
EMBEDDED_NOTE = (
    "Note: this quick run on the embedded Fashion-MNIST shows the pipeline working; it is not "
    "a setting where CLD is expected to beat random coresets. The fidelity study "
    "(benchmarks/RESULTS.md, 'Fidelity: when does CLD work?') found eval-mode top-CLD "
    "coresets below random class-balanced ones on this data at every proxy length (10-60 "
    "epochs), schedule, fraction (5-70 %) and retraining budget it tried, while eval-mode CLD does flag mislabeled samples (AUROC 0.82-0.84 "
    "with 20 % flipped labels). The paper's setting, where its claims were made (GPU, hours): "
    "cldfast run --dataset cifar100 --data-path DIR --proxy-arch resnet18 --epochs 164")


def _fraction(text: str) -> float:
    try:
        f = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None
    if not 0.0 < f <= 1.0:
        raise argparse.ArgumentTypeError(f"fraction must be in (0, 1]; got {text}")
    return f


def _fractions(text: str) -> list[float]:
    return [_fraction(t) for t in text.split(",") if t.strip()]


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def _val_fraction(text: str) -> float:
    try:
        f = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}") from None
    if not 0.0 < f < 1.0:
        raise argparse.ArgumentTypeError(f"validation fraction must be in (0, 1); got {text}")
    return f


def _milestones(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated epochs like 81,121; got {text!r}") from None


def _add_data(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="auto", metavar="NAME",
                   help=f"one of {', '.join(DATASETS)} (default: auto = Fashion-MNIST from "
                        "/usr/share/datasets/fashion-mnist, else scikit-learn's digits)")
    g.add_argument("--data-path", metavar="DIR",
                   help="folder of the data: Fashion-MNIST IDX files, the CIFAR torchvision "
                        "folder, or an ImageFolder root holding train/ and val/")
    g.add_argument("--download", action="store_true",
                   help="CIFAR only: download into --data-path if missing (never done otherwise)")
    g.add_argument("--image-size", type=_positive_int, metavar="PX",
                   help="ImageFolder crop size (default 224)")


def _add_recipe(p: argparse.ArgumentParser, proxy: bool = False) -> None:
    g = p.add_argument_group("training recipe (defaults: the authors' CIFAR recipe, docs/method.md: SGD + Nesterov + multistep)")
    g.add_argument("--epochs", type=_positive_int, metavar="E",
                   help="epochs (default: 8 on the embedded data, 164 on CIFAR, 90 on ImageFolder)")
    if proxy:
        g.add_argument("--proxy-epochs", type=_positive_int, metavar="E",
                       help="epochs of the proxy run (default: 10 on the embedded data, else --epochs)")
    g.add_argument("--batch-size", type=_positive_int, default=128, help="default: %(default)s")
    g.add_argument("--lr", type=float, default=0.1, help="initial learning rate (default: %(default)s)")
    g.add_argument("--momentum", type=float, default=0.9, help="default: %(default)s")
    g.add_argument("--no-nesterov", action="store_true", help="plain momentum instead of Nesterov")
    g.add_argument("--weight-decay", type=float, default=5e-4, help="default: %(default)s")
    g.add_argument("--milestones", type=_milestones, metavar="E1,E2",
                   help="epochs where the lr is multiplied by --gamma (default: at 81/164 and "
                        "121/164 of the epochs)")
    g.add_argument("--gamma", type=float, default=0.1, help="default: %(default)s")
    g.add_argument("--workers", type=int, default=0,
                   help="data-loader worker processes (default: %(default)s)")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    g.add_argument("--no-amp", action="store_true",
                   help="disable bfloat16 autocast of the training pass on CUDA")
    g.add_argument("--eval-amp", action="store_true",
                   help="bfloat16 autocast of the eval passes on CUDA (faster; off by default "
                        "because it moves eval-mode losses, and so CLD scores, beyond float "
                        "rounding)")
    g.add_argument("--seed", type=int, default=0,
                   help="seed of the split, shuffling, initialisation (default: %(default)s)")
    g.add_argument("--sync-bn", action="store_true",
                   help="under torchrun: convert BatchNorm layers to SyncBatchNorm")


def _add_tracking(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("CLD tracking")
    g.add_argument("--val-fraction", type=_val_fraction, default=0.1,
                   help="per-class validation split of the training set (default: %(default)s; "
                        "the authors use 0.01 for ImageNet)")
    g.add_argument("--loss-source", choices=LOSS_SOURCES, default="eval",
                   help="eval (default, the paper's CLD): losses of the model in eval mode, "
                        "without augmentation, over the training split at every tracked "
                        "checkpoint (one fast batched pass that also serves the validation "
                        "split). train: the training forward pass's own losses, no extra pass; "
                        "an APPROXIMATION that ranks samples almost independently of eval mode "
                        "(Spearman -0.02 to 0.15 on Fashion-MNIST) and loses most of CLD's "
                        "signal for mislabeled samples (AUROC 0.60 vs 0.92 with 20%% flipped "
                        "labels); see benchmarks/RESULTS.md, Fidelity")
    g.add_argument("--track-epochs", type=_positive_int, metavar="K",
                   help="only the first K epochs feed CLD; the proxy stops there")
    g.add_argument("--track-every", type=_positive_int, default=1, metavar="M",
                   help="use every M-th epoch as a checkpoint, counted back from the last "
                        "(default: %(default)s); in eval mode it divides the eval passes by M")
    g.add_argument("--global-val", action="store_true",
                   help="correlate with the mean validation loss over all classes instead of "
                        "the sample's own class")
    g.add_argument("--precision", choices=("float64", "float32"), default="float64",
                   help="tracker accumulator precision (default: %(default)s)")


def _add_output(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--out", default=default, metavar="DIR", help="output folder (default: %(default)s)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the checkpoints in --out (same options required)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cldfast",
        description="Coreset selection with CLD (Correlation of Loss Differences), streamed "
                    "during training. `cldfast run` with no arguments runs the whole pipeline "
                    "on the embedded Fashion-MNIST data.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Each subcommand has its own --help.")
    parser.add_argument("--version", action="version", version=f"cldfast {__version__}")
    parser.add_argument("--threads", type=_positive_int, metavar="N",
                        help="CPU threads for torch and cldfast's kernels (default: torch's; on a "
                             "machine other processes keep busy, 1 avoids OpenMP threads waiting "
                             "for descheduled peers, and cldfast warns when it sees that case)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("run", help="track a proxy, select coresets, retrain and compare",
                       description="The whole pipeline: train a proxy while tracking CLD, select "
                                   "CLD and random coresets at several fractions and top / "
                                   "near-zero / most-negative CLD subsets of equal size, train the "
                                   "target model on each and on the full training split, and write "
                                   "a result table, metrics.json, plots and a log into --out.")
    p.add_argument("--proxy-arch", default="small-cnn", metavar="ARCH",
                   help=f"model that is tracked (default: %(default)s; named: {', '.join(ARCHS)}, or "
                        "any torchvision classification model)")
    p.add_argument("--arch", metavar="ARCH", help="model trained on the coresets (default: --proxy-arch)")
    p.add_argument("--fractions", type=_fractions, default=[0.1, 0.2, 0.3],
                   help="coreset fractions per class, comma-separated (default: 0.1,0.2,0.3)")
    p.add_argument("--compare-fraction", type=_fraction,
                   help="size of the top / near-zero / negative CLD comparison (default: smallest fraction)")
    p.add_argument("--seeds", type=_positive_int, default=2,
                   help="retraining seeds of every coreset and of the full split; the table "
                        "gives mean ± std over them (default: %(default)s)")
    _add_data(p)
    _add_recipe(p, proxy=True)
    _add_tracking(p)
    _add_output(p, "cldfast-out")

    p = sub.add_parser("track", help="train a proxy with CLDTracker and write a scores file",
                       description="Train a proxy model while tracking CLD and write OUT/scores.npz: "
                                   "scores, labels, original dataset indices, the train/validation "
                                   "split and metadata, readable with numpy alone.")
    p.add_argument("--arch", "--proxy-arch", dest="arch", default="small-cnn", metavar="ARCH",
                   help=f"proxy model (default: %(default)s; named: {', '.join(ARCHS)})")
    _add_data(p)
    _add_recipe(p)
    _add_tracking(p)
    _add_output(p, "cldfast-out")

    p = sub.add_parser("select", help="choose a coreset from a scores file",
                       description="Select a coreset from a scores file and write the ORIGINAL "
                                   "dataset indices as a .npy file (or .txt, one per line).")
    p.add_argument("scores", metavar="SCORES", help="scores file written by `cldfast track`, "
                   "`cldfast bench`, CLDTracker.save or an integration callback")
    size = p.add_mutually_exclusive_group(required=True)
    size.add_argument("--fraction", type=_fraction,
                      help="keep round(f * n_c) of every class c, n_c counted over the scored "
                           "training split (the proxy's validation split excluded; the DeepCore "
                           "adapter instead counts all of dst_train, as DeepCore does)")
    size.add_argument("--per-class", type=_positive_int, metavar="K", help="keep K of every class")
    p.add_argument("--method", default="cld", metavar="NAME",
                   help="score to rank by: cld (default) or any other score stored in the file "
                        "(forgetting, aum, el2n, entropy, margin, ... as `cldfast bench` records "
                        "them)")
    p.add_argument("--order", choices=ORDERS, default=None,
                   help="top: highest score; bottom: lowest (most negative CLD); zero: closest "
                        "to 0; random: uniform among scored samples (default: the method's own "
                        "end, top for CLD)")
    p.add_argument("--global", dest="global_", action="store_true",
                   help="rank over all samples instead of within each class (needs --fraction)")
    p.add_argument("--seed", type=int, default=0, help="seed for --order random (default: %(default)s)")
    p.add_argument("--output", "-o", metavar="FILE", help="where to write the indices "
                   "(default: next to SCORES, named after the selection)")

    p = sub.add_parser("export", help="write a scores file as CSV or as the authors' ranking pickle",
                       description="Write a scores file out: --format csv gives one row per "
                                   "training sample (dataset index, file path with "
                                   "--image-folder, label, class name, CLD, number of "
                                   "differences, and every other stored score); --format "
                                   "authors gives the per-class CLD rankings in the layout of "
                                   "the authors' CLD_indices_sorted_*.pkl (original dataset "
                                   "indices, best first, unscored samples left out).")
    p.add_argument("scores", metavar="SCORES", help="a cldfast scores file")
    p.add_argument("--format", choices=("csv", "authors"), default="csv",
                   help="csv (default) or authors")
    p.add_argument("--image-folder", metavar="DIR",
                   help="csv: the ImageFolder root the dataset indices refer to, to add each "
                        "sample's file path")
    p.add_argument("--output", "-o", metavar="FILE",
                   help="default: SCORES with .csv, or CLD_indices_sorted_<dataset>_<arch>.pkl "
                        "beside it")

    p = sub.add_parser("train", help="train a model on the full data or on a coreset",
                       description="Train a model on the whole training set, on an indices file, "
                                   "or on a selection from a scores file; evaluate it on the test "
                                   "split and write OUT/<name>_metrics.json.")
    p.add_argument("--arch", default="small-cnn", metavar="ARCH",
                   help=f"model (default: %(default)s; named: {', '.join(ARCHS)}, or any "
                        "torchvision classification model)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--indices", metavar="FILE", help="train on these original dataset indices (.npy/.txt)")
    src.add_argument("--scores", metavar="FILE", help="select from this scores file first "
                     "(with --fraction or --per-class and --order); its dataset must match")
    p.add_argument("--fraction", type=_fraction, help="with --scores: fraction per class")
    p.add_argument("--per-class", type=_positive_int, metavar="K", help="with --scores: samples per class")
    p.add_argument("--order", choices=ORDERS, default="top", help="with --scores (default: %(default)s)")
    p.add_argument("--name", default="train", help="name of the run's files (default: %(default)s)")
    g = p.add_argument_group(
        "dynamic pruning (cldfast.pruning): skip samples epoch by epoch while training; epoch 0 "
        "and the epochs after --prune-delta of the run train on everything")
    g.add_argument("--prune", choices=("cld", "cld-abs", "infobatch", "random"), metavar="POLICY",
                   help="cld: soft-prune low-CLD samples (conflicting, then uninformative) from "
                        "the run's live CLD, rescaling kept losses by 1/(1-p); cld-abs: small "
                        "|CLD| first; infobatch: InfoBatch (Qin et al. 2024), prune below-mean-loss "
                        "samples with probability --prune-ratio and rescale; random: a uniform "
                        "share, no rescaling. The cld policies split --val-fraction off the "
                        "training data and also write OUT/<name>_scores.npz (the run's CLD)")
    g.add_argument("--prune-saving", type=_fraction, metavar="F",
                   help="target share of sample-passes (forward + backward of one sample) saved "
                        "over the run, e.g. 0.4 (required by cld, cld-abs and random; infobatch "
                        "uses --prune-ratio without it)")
    g.add_argument("--prune-ratio", type=_fraction, metavar="R",
                   help="infobatch: share of the below-mean-loss samples pruned per epoch "
                        "(default 0.5, InfoBatch's)")
    g.add_argument("--prune-delta", type=_fraction, default=0.875, metavar="D",
                   help="pruning stops once the epoch count passes D x epochs (default: "
                        "%(default)s, InfoBatch's)")
    g.add_argument("--prune-loss-source", choices=LOSS_SOURCES, default="train",
                   help="cld policies: train (default, free: the kept samples' training losses) "
                        "or eval (the paper's estimator: an eval pass over the whole training "
                        "split every epoch, which costs a forward pass per sample per epoch)")
    g.add_argument("--val-fraction", type=_val_fraction, default=0.1,
                   help="cld policies: per-class validation split taken from the training data "
                        "(default: %(default)s)")
    _add_data(p)
    _add_recipe(p)
    _add_output(p, "cldfast-out")

    from .bench import register as register_bench

    parser.set_defaults(bench_handler=register_bench(sub))
    sub.add_parser("info", help="show what this build of cldfast was compiled with")
    return parser


def _recipe(args: argparse.Namespace, epochs_attr: str = "epochs") -> Recipe:
    epochs = getattr(args, epochs_attr, None)
    if epochs is None and epochs_attr == "proxy_epochs":
        epochs = args.epochs
        if epochs is None and args.dataset.lower() in EMBEDDED:
            epochs = DEFAULT_PROXY_EPOCHS_EMBEDDED
    if epochs is None:
        kind = ("embedded" if args.dataset.lower() in EMBEDDED else
                "imagefolder" if args.dataset.lower() == "imagefolder" else "other")
        epochs = DEFAULT_EPOCHS[kind]
    if args.milestones and any(m < 1 or m > epochs for m in args.milestones):
        raise ValueError(f"--milestones {args.milestones} must lie in [1, epochs={epochs}]")
    return Recipe(epochs=epochs, batch_size=args.batch_size, lr=args.lr, momentum=args.momentum,
                  nesterov=not args.no_nesterov, weight_decay=args.weight_decay,
                  milestones=tuple(args.milestones) if args.milestones else None, gamma=args.gamma,
                  workers=args.workers, device=args.device, amp=not args.no_amp,
                  eval_amp=args.eval_amp, seed=args.seed, sync_bn=args.sync_bn)


def _data(args: argparse.Namespace):
    from .pipeline import DataSpec

    return DataSpec(args.dataset, args.data_path, args.download, args.image_size)


def _setup_logging(out: Path | None, name: str) -> None:
    from .distributed import is_main

    log.setLevel(logging.INFO if is_main() else logging.WARNING)
    log.handlers.clear()
    log.propagate = False
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter("cldfast: %(message)s"))
    log.addHandler(console)
    if out is not None and is_main():
        out.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(out / f"{name}.log")
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(fh)


def _cmd_run(args: argparse.Namespace) -> int:
    from .pipeline import run

    result = run(_data(args), args.out, proxy_arch=args.proxy_arch, arch=args.arch,
                 proxy_recipe=_recipe(args, "proxy_epochs"), recipe=_recipe(args),
                 fractions=args.fractions, compare_fraction=args.compare_fraction,
                 val_fraction=args.val_fraction, loss_source=args.loss_source,
                 track_epochs=args.track_epochs, track_every=args.track_every,
                 per_class=not args.global_val, seeds=args.seeds, resume=args.resume,
                 progress=not args.quiet)
    print(result.table)
    if args.dataset.lower() in EMBEDDED:
        print("\n" + EMBEDDED_NOTE)
    print(f"\nOutputs in {result.out}/: scores.npz, indices/, metrics.json, results.md, "
          f"plots/accuracy_vs_fraction.png, plots/cld_histograms.png, run.log")
    return 0


def _cmd_track(args: argparse.Namespace) -> int:
    from .pipeline import track
    from .io import write_json

    sf, metrics = track(_data(args), args.out, arch=args.arch, recipe=_recipe(args),
                        val_fraction=args.val_fraction, loss_source=args.loss_source,
                        track_epochs=args.track_epochs, track_every=args.track_every,
                        per_class=not args.global_val, precision=args.precision,
                        resume=args.resume, progress=not args.quiet)
    from .distributed import is_main

    if not is_main():
        return 0
    write_json(Path(args.out) / "track_metrics.json", metrics)
    s = sf.scores[np.isfinite(sf.scores)]
    print(f"wrote {Path(args.out) / 'scores.npz'}: {s.size} of {sf.scores.size} samples scored, "
          f"CLD median {np.median(s) if s.size else float('nan'):.3f}, proxy test accuracy "
          f"{100 * metrics['proxy_test_accuracy']:.2f} %")
    return 0


def _cmd_select(args: argparse.Namespace) -> int:
    from .pipeline import select_coreset

    if args.global_ and args.per_class is not None:
        raise ValueError("--global needs --fraction (a per-class count has no meaning without classes)")
    from .baselines import METHODS, canonical_method
    from .selection import select

    sf = load_scores(args.scores)
    info = METHODS[canonical_method(args.method)]
    order = args.order or (info.order if info.order in ORDERS else "top")
    if info.key in (None, "scores"):
        values = sf.scores
    elif info.key in sf.extra:
        values = sf.extra[info.key]
    else:
        stored = ", ".join(sorted(k for k in sf.extra if k != "num_differences")) or "none"
        raise ValueError(f"{args.scores} has no {info.key!r} scores for --method {info.name} "
                         f"(stored: cld, {stored}); record it with `cldfast bench --methods "
                         f"{info.name}`")
    idx = select(values, sf.labels, fraction=args.fraction, per_class=args.per_class,
                 order="random" if info.kind == "random" else order,
                 class_balanced=not args.global_, dataset_indices=sf.train_indices, seed=args.seed)
    size = f"f{args.fraction:g}" if args.fraction is not None else f"k{args.per_class}"
    prefix = "indices" if info.name == "cld" else f"indices_{info.name}"
    out = Path(args.output) if args.output else Path(args.scores).with_name(
        f"{prefix}_{order}_{size}{'_global' if args.global_ else ''}.npy")
    if out.suffix == ".txt":
        from .io import atomic_write
        atomic_write(out, lambda p: np.savetxt(p, idx, fmt="%d"))
    else:
        save_indices(out, idx)
    print(f"wrote {out}: {idx.size} original dataset indices ({info.name}, {order}, "
          f"{'global' if args.global_ else 'class-balanced'})")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .export import export_authors, export_csv

    sf = load_scores(args.scores)
    if args.format == "authors":
        out = Path(args.output) if args.output else Path(args.scores).with_name(
            f"CLD_indices_sorted_{sf.metadata.get('dataset', 'data')}_"
            f"{sf.metadata.get('arch', 'model')}.pkl")
        export_authors(sf, out)
        print(f"wrote {out}: per-class CLD rankings (original dataset indices, best first) for "
              "the authors' train_on_coresets.py")
        return 0
    paths = None
    if args.image_folder:
        from torchvision.datasets import ImageFolder

        samples = ImageFolder(args.image_folder).samples
        if sf.train_indices.size and int(sf.train_indices.max()) >= len(samples):
            raise ValueError(f"--image-folder {args.image_folder} has {len(samples)} images but "
                             f"the scores refer to index {int(sf.train_indices.max())}")
        paths = [samples[int(i)][0] for i in sf.train_indices]
    out = Path(args.output) if args.output else Path(args.scores).with_suffix(".csv")
    export_csv(sf, out, file_paths=paths, class_names=sf.metadata.get("class_names") or None)
    print(f"wrote {out}: {sf.scores.shape[0]} rows")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from .pipeline import select_coreset, train

    data = _data(args)
    indices = args.indices
    if args.scores:
        if (args.fraction is None) == (args.per_class is None):
            raise ValueError("--scores needs exactly one of --fraction or --per-class")
        bundle = data.load()
        sf = load_scores(args.scores, fingerprint=bundle.fingerprint)
        indices = select_coreset(sf, fraction=args.fraction, per_class=args.per_class,
                                 order=args.order, seed=args.seed)
        data = bundle
    elif args.fraction is not None or args.per_class is not None:
        raise ValueError("--fraction / --per-class select from a scores file: add --scores FILE")
    prune = None
    if args.prune is not None:
        from .pipeline import PruneSpec

        if args.prune != "infobatch" and args.prune_saving is None:
            raise ValueError(f"--prune {args.prune} needs --prune-saving F (e.g. 0.4)")
        if args.prune != "infobatch" and args.prune_ratio is not None:
            raise ValueError("--prune-ratio is InfoBatch's; use --prune-saving with "
                             f"--prune {args.prune}")
        prune = PruneSpec(args.prune, saving=args.prune_saving, ratio=args.prune_ratio,
                          delta=args.prune_delta, loss_source=args.prune_loss_source)
    elif args.prune_saving is not None or args.prune_ratio is not None:
        raise ValueError("--prune-saving / --prune-ratio need --prune POLICY")
    metrics = train(data, args.out, arch=args.arch, recipe=_recipe(args), indices=indices,
                    name=args.name, resume=args.resume, progress=not args.quiet, prune=prune,
                    val_fraction=args.val_fraction)
    saved = ""
    if prune is not None:
        saved = f", {100 * metrics['prune']['saved']:.1f} % of sample-passes saved ({prune.policy})"
    print(f"{args.name}: {metrics['train_samples']} training samples, test accuracy "
          f"{100 * metrics['test_accuracy']:.2f} %{saved} -> "
          f"{Path(args.out) / (args.name + '_metrics.json')}")
    if metrics.get("scores_file"):
        print(f"CLD scores of the pruned run (train-mode losses of the samples it kept) -> "
              f"{metrics['scores_file']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .threads import check_cpu_contention, set_threads

    if args.threads is not None:
        set_threads(args.threads)
    elif args.command in ("run", "track", "train", "bench"):
        busy = check_cpu_contention(warn=False)
        if busy:
            print(f"cldfast: warning: {busy}", file=sys.stderr)
    if args.command == "info":
        print(json.dumps(build_info(), indent=2))
        return 0
    from ._extras import PIPELINE, require_all

    try:
        if args.command in ("run", "track", "train"):
            require_all(PIPELINE, f"cldfast {args.command}")
        elif args.command == "bench":
            require_all(PIPELINE + ("numba",), "cldfast bench", extra="bench")
    except ImportError as exc:
        print(f"cldfast {args.command}: error: {exc}", file=sys.stderr)
        return 2
    from .distributed import init_from_env, is_main

    distributed = init_from_env()
    if not is_main():
        sys.stdout = open(os.devnull, "w")  # results are printed once, by rank 0
    out = Path(args.out) if hasattr(args, "out") else None
    _setup_logging(out, args.command)
    handlers = {"run": _cmd_run, "track": _cmd_track, "select": _cmd_select, "train": _cmd_train,
                "export": _cmd_export, "bench": args.bench_handler}
    try:
        return handlers[args.command](args)
    except (ValueError, FileNotFoundError, CorruptFileError, IndexError, TypeError) as exc:
        print(f"cldfast {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except Preempted as exc:
        print(f"cldfast {args.command}: SIGTERM: checkpoint written at {exc.where}; rerun the same "
              "command with --resume to continue", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print(f"cldfast {args.command}: interrupted; rerun with --resume to continue", file=sys.stderr)
        return 130
    finally:
        if distributed:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


if __name__ == "__main__":
    raise SystemExit(main())
