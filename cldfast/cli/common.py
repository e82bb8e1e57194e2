"""What the subcommands share: argument types, the option groups (data, recipe, tracking,
output) and the translation of parsed options into library arguments. Defaults are the
library's: an option left out is passed as None, and the library fills it in."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from ..data.datasets import DATASETS, DEFAULT_EPOCHS
from ..defaults import LOSS_SOURCE, PRECISION, VAL_FRACTION
from ..training.loop import LOSS_SOURCES
from ..training.recipe import OPTIMIZERS, SCHEDULES, Recipe

log = logging.getLogger("cldfast")

_R = Recipe()  # the library's defaults, shown in --help


def fraction(text: str) -> float:
    from ..selection.balanced import check_fraction

    try:
        return check_fraction(text, "the fraction")
    except (TypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def fractions(text: str) -> list[float]:
    return [fraction(t) for t in text.split(",") if t.strip()]


def _number(kind: type, low: float, high: float | None, *, low_open: bool = False,
            high_open: bool = True, what: str):
    """An argparse type: ``kind`` in the interval from ``low`` to ``high`` (None: no bound)."""
    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        bad_low = v <= low if low_open else v < low
        bad_high = high is not None and (v >= high if high_open else v > high)
        if bad_low or bad_high:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
        return v
    return parse


positive_int = _number(int, 1, None, what="a positive integer")
nonnegative_int = _number(int, 0, None, what="an integer >= 0")
unit_interval = _number(float, 0.0, 1.0, what="a number in [0, 1)")  # [0, 1)
val_fraction = _number(float, 0.0, 1.0, low_open=True, what="a validation fraction in (0, 1)")


def workers_arg(text: str) -> int | str:
    """``--workers``: an integer >= 0 or ``auto``."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0 or 'auto', got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0 or 'auto', got {text}")
    return value


def milestones(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated epochs like 81,121; got {text!r}") from None


def add_data(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="auto", metavar="NAME",
                   help=f"one of {', '.join(DATASETS)} (default: auto = Fashion-MNIST from "
                        "/usr/share/datasets/fashion-mnist, else scikit-learn's digits)")
    g.add_argument("--data-path", metavar="PATH",
                   help="where the data is: the folder of the Fashion-MNIST IDX files, the CIFAR "
                        "torchvision folder, or an ImageFolder root holding train/ and val/; for "
                        "webdataset the training shards, a pattern brace-expanded as webdataset "
                        "does, e.g. 'shards/train-{000000..000146}.tar' (quote it; '::' joins "
                        "patterns; local files or webdataset URLs such as pipe:...)")
    g.add_argument("--download", action="store_true",
                   help="CIFAR only: download into --data-path if missing (never done otherwise)")
    g.add_argument("--image-size", type=positive_int, metavar="PX",
                   help="ImageFolder crop size (default 224); webdataset: resize and crop every "
                        "image to PX (RandomResizedCrop for training; default: images as "
                        "stored, which must all have one size; pass 224 for ImageNet shards)")
    w = p.add_argument_group(
        "WebDataset shards (--dataset webdataset; pip install 'cldfast[stream]'): each sample "
        "has an image (.jpg, .png, ...) or .npy and its class in .cls; a sample's key maps to its "
        "original index (scores, coreset and indices files) through an index of the shards, "
        "in shard order")
    w.add_argument("--index", metavar="FILE",
                   help="index file (JSON) of every shard's keys and labels: read when it exists; "
                        "otherwise one listing pass over the shards (it reads only the .cls "
                        "fields) writes it, and shards missing from it are listed and added. "
                        "Without it the listing pass runs on every start")
    w.add_argument("--test-data-path", metavar="PATTERN",
                   help="shards of the test split (e.g. ImageNet's val), a pattern like "
                        "--data-path's; without it no test accuracy is measured (NaN). The "
                        "validation split V is a seeded per-class share of the training shards "
                        "(--val-fraction), as for any dataset")
    w.add_argument("--shuffle-buffer", type=nonnegative_int, metavar="N",
                   help="samples in each loader worker's shuffle buffer (default: 1000); the "
                        "shard order is reshuffled every epoch as well; 0 shuffles only the "
                        "shards. With --no-shuffle the shards are read in index order")


def _epochs_help(role: str) -> str:
    e, k = DEFAULT_EPOCHS, 0 if role == "train" else 1
    return (f"epochs (default, per dataset: {e['fashion-mnist'][k]} on the embedded data, "
            f"{e['cifar10'][k]} on CIFAR, {e['imagefolder'][k]} on ImageFolder)")


def add_recipe(p: argparse.ArgumentParser, proxy: bool = False, role: str = "train") -> None:
    """The recipe options; ``proxy`` adds --proxy-epochs (run, bench); ``role`` is whose
    default epochs --epochs shows (``proxy`` for track)."""
    g = p.add_argument_group("training recipe (defaults: the authors' CIFAR recipe, "
                             "docs/method.md: SGD + Nesterov + multistep)")
    g.add_argument("--epochs", type=positive_int, metavar="E", help=_epochs_help(role))
    if proxy:
        g.add_argument("--proxy-epochs", type=positive_int, metavar="E",
                       help=f"epochs of the proxy run (default: "
                            f"{DEFAULT_EPOCHS['fashion-mnist'][1]} on the embedded data, else "
                            "--epochs or the dataset's default)")
    g.add_argument("--batch-size", type=positive_int, help=f"default: {_R.batch_size}")
    g.add_argument("--optimizer", choices=OPTIMIZERS,
                   help=f"sgd (momentum, Nesterov, weight decay: the authors') or adamw "
                        f"(default: {_R.optimizer})")
    g.add_argument("--lr", type=float, help=f"initial learning rate (default: {_R.lr})")
    g.add_argument("--momentum", type=float, help=f"SGD momentum (default: {_R.momentum})")
    g.add_argument("--no-nesterov", action="store_true", help="plain momentum instead of Nesterov")
    g.add_argument("--weight-decay", type=float, help=f"default: {_R.weight_decay}")
    g.add_argument("--schedule", choices=SCHEDULES,
                   help=f"learning-rate schedule, stepped per epoch: multistep (the authors' "
                        f"decays by --gamma at --milestones), cosine (to 0), onecycle "
                        f"(default: {_R.schedule})")
    g.add_argument("--milestones", type=milestones, metavar="E1,E2",
                   help="multistep: epochs where the lr is multiplied by --gamma (default: at "
                        "81/164 and 121/164 of the epochs)")
    g.add_argument("--gamma", type=float, help=f"multistep decay factor (default: {_R.gamma})")
    g.add_argument("--warmup-epochs", type=nonnegative_int, metavar="W",
                   help="linear learning-rate warm-up over the first W epochs, then the "
                        f"schedule (default: {_R.warmup_epochs})")
    g.add_argument("--label-smoothing", type=unit_interval, metavar="S",
                   help="label smoothing of the training objective (CLD still records plain "
                        f"cross-entropy; default: {_R.label_smoothing})")
    g.add_argument("--workers", type=workers_arg, metavar="N|auto",
                   help="data-loader worker processes, for training and the eval passes "
                        "(default: auto: 0 for data held in memory as tensors, such as the "
                        "embedded Fashion-MNIST and digits; otherwise (CIFAR, ImageFolder, "
                        "webdataset shards) min(8, cores - 1), cores being this process's share "
                        "of the CPU cores it may use)")
    g.add_argument("--no-shuffle", action="store_true",
                   help="train in index order every epoch instead of a new seeded order (for "
                        "comparing runs: webdataset shards are then read in index order, batch "
                        "for batch the order of the same samples as a map-style dataset)")
    g.add_argument("--device", help="cpu, cuda, cuda:N or auto (default)")
    g.add_argument("--no-amp", action="store_true",
                   help="disable bfloat16 autocast of the training pass on CUDA")
    g.add_argument("--eval-amp", action="store_true",
                   help="bfloat16 autocast of the eval passes on CUDA (faster; off by default "
                        "because it moves eval-mode losses, and so CLD scores, beyond float "
                        "rounding)")
    g.add_argument("--no-eval-onednn", action="store_true",
                   help="CPU eval passes with the model's plain forward instead of its oneDNN "
                        "inference copy (the copy is faster for float32 conv nets and "
                        "gives the same losses to float rounding; it is checked on the first "
                        "batch and skipped for models it does not fit)")
    g.add_argument("--seed", type=int, help=f"seed of the split, shuffling, initialisation "
                                            f"(default: {_R.seed})")
    g.add_argument("--sync-bn", action="store_true",
                   help="under torchrun: convert BatchNorm layers to SyncBatchNorm")


def add_tracking(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("CLD tracking")
    g.add_argument("--val-fraction", type=val_fraction, default=VAL_FRACTION,
                   help="per-class validation split of the training set (default: %(default)s; "
                        "the authors use 0.01 for ImageNet)")
    g.add_argument("--loss-source", choices=LOSS_SOURCES, default=LOSS_SOURCE,
                   help="eval (default, the paper's CLD): losses of the model in eval mode, "
                        "without augmentation, over the training split at the end of every "
                        "tracked epoch (one fast batched pass that also serves the validation "
                        "split). train: the training forward pass's own losses, no extra pass; "
                        "an APPROXIMATION whose rankings differ from eval mode's (noisier "
                        "trajectories, augmented inputs). How much: docs/method.md, 'Where the "
                        "losses come from', and the README, 'When does CLD work?'")
    g.add_argument("--track-epochs", type=positive_int, metavar="K",
                   help="only the first K epochs feed CLD; the proxy stops there")
    g.add_argument("--track-every", type=positive_int, default=1, metavar="M",
                   help="track every M-th epoch (its end feeds CLD), counted back from the last "
                        "(default: %(default)s); in eval mode it divides the eval passes by M")
    g.add_argument("--track-from", type=nonnegative_int, default=0, metavar="K",
                   help="leave the first K epochs out of CLD: the first tracked epoch is epoch "
                        "K+1, so the first K loss differences do not count (default: "
                        "%(default)s, the paper's); shows how much of CLD comes from early "
                        "training")
    g.add_argument("--global-val", action="store_true",
                   help="correlate with the mean validation loss over all classes instead of "
                        "the sample's own class")
    g.add_argument("--precision", choices=("float64", "float32"), default=PRECISION,
                   help="tracker accumulator precision (default: %(default)s)")


THREADS_HELP = ("CPU threads for torch and cldfast's kernels (default: torch's; on a machine "
                "other processes keep busy, 1 avoids OpenMP threads waiting for descheduled "
                "peers, and cldfast warns when it sees that case). Accepted before or after "
                "the subcommand")


def add_threads(p: argparse.ArgumentParser, *, sub: bool = False) -> None:
    """``--threads N``: on the top-level parser, and again (``sub``) on each subcommand it
    applies to, so that ``cldfast --threads 1 run`` and ``cldfast run --threads 1`` mean the
    same. A subcommand's copy sets nothing when left out (the top-level value stands)."""
    kwargs = {"default": argparse.SUPPRESS} if sub else {}
    p.add_argument("--threads", type=positive_int, metavar="N", help=THREADS_HELP, **kwargs)


def add_output(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--out", default=default, metavar="DIR", help="output folder (default: %(default)s)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the resume checkpoints in --out (same options required; with "
                        "the same or another number of processes)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def recipe_from_args(args: argparse.Namespace, role: str = "train") -> Recipe:
    """The library's default recipe for ``role`` on ``--dataset``, with the options given.

    ``role="proxy"``: epochs from ``--proxy-epochs``, else ``--epochs``, else the dataset's
    proxy default; ``role="train"``: ``--epochs``, else the dataset's training default."""
    from ..training.recipe import default_recipe

    epochs = args.epochs
    if role == "proxy" and getattr(args, "proxy_epochs", None) is not None:
        epochs = args.proxy_epochs
    given: dict[str, Any] = dict(
        epochs=epochs, batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr,
        momentum=args.momentum, nesterov=False if args.no_nesterov else None,
        weight_decay=args.weight_decay, schedule=args.schedule, milestones=args.milestones,
        gamma=args.gamma, warmup_epochs=args.warmup_epochs, label_smoothing=args.label_smoothing,
        workers=args.workers, device=args.device, amp=False if args.no_amp else None,
        eval_amp=True if args.eval_amp else None,
        eval_onednn=False if args.no_eval_onednn else None, seed=args.seed,
        sync_bn=True if args.sync_bn else None, shuffle=False if args.no_shuffle else None)
    return default_recipe(args.dataset, role, **given)


def data_from_args(args: argparse.Namespace):
    from ..pipeline.sources import DataSpec

    return DataSpec(args.dataset, args.data_path, args.download, args.image_size,
                    index=args.index, test_data_path=args.test_data_path,
                    shuffle_buffer=args.shuffle_buffer)


def setup_logging(out: Path | None, name: str) -> None:
    from ..core.distributed import is_main

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
