"""`cldfast train`: a model on the full data, a coreset, or with dynamic pruning
(cldfast.pipeline.train)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..defaults import (DEFAULT_ARCH, INFOBATCH_DELTA, INFOBATCH_RATIO, PRUNE_LOSS_SOURCE, RUN_OUT,
                        VAL_FRACTION)
from ..selection.balanced import ORDERS
from ..training.loop import LOSS_SOURCES
from ..training.models import ARCHS
from ..training.pruning import POLICIES
from .common import (add_data, add_output, add_recipe, data_from_args, fraction, positive_int,
                     recipe_from_args, val_fraction)


def register(sub):
    """Add the subcommand to ``sub`` (from ``add_subparsers``); returns its handler."""
    p = sub.add_parser("train", help="train a model on the full data, a coreset, or with pruning",
                       description="Train a model on the whole training set, on an indices file, "
                                   "or on a selection from a scores file; evaluate it on the test "
                                   "split and write OUT/<name>_metrics.json. With --prune, skip "
                                   "samples epoch by epoch while training (dynamic pruning).")
    p.add_argument("--arch", default=DEFAULT_ARCH, metavar="ARCH",
                   help=f"model (default: %(default)s; named: {', '.join(ARCHS)}, or any "
                        "torchvision classification model)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--indices", metavar="FILE", help="train on these original dataset indices (.npy/.txt)")
    src.add_argument("--scores", metavar="FILE", help="select from this scores file first "
                     "(with --fraction or --per-class and --order); its dataset must match")
    p.add_argument("--fraction", type=fraction, help="with --scores: fraction per class")
    p.add_argument("--per-class", type=positive_int, metavar="K", help="with --scores: samples per class")
    p.add_argument("--order", choices=ORDERS, default="top", help="with --scores (default: %(default)s)")
    p.add_argument("--name", default="train", help="name of the run's files (default: %(default)s)")
    g = p.add_argument_group(
        "dynamic pruning (cldfast.training.pruning): skip samples epoch by epoch while training; "
        "epoch 0 and the epochs after --prune-delta of the run train on everything")
    g.add_argument("--prune", choices=POLICIES, metavar="POLICY",
                   help="cld: soft-prune low-CLD samples (conflicting, then uninformative) from "
                        "the run's live CLD, rescaling kept losses by 1/(1-p); cld-abs: small "
                        "|CLD| first; infobatch: InfoBatch (Qin et al. 2024), prune below-mean-loss "
                        "samples with probability --prune-ratio and rescale; random: a uniform "
                        "share, no rescaling. The cld policies split --val-fraction off the "
                        "training data and also write OUT/<name>_scores.npz (the run's CLD)")
    g.add_argument("--prune-saving", type=fraction, metavar="F",
                   help="target share of sample-passes (forward + backward of one sample) saved "
                        "over the run, e.g. 0.4 (required by cld, cld-abs and random; infobatch "
                        "uses --prune-ratio without it)")
    g.add_argument("--prune-ratio", type=fraction, metavar="R",
                   help="infobatch: share of the below-mean-loss samples pruned per epoch "
                        f"(default {INFOBATCH_RATIO:g}, InfoBatch's)")
    g.add_argument("--prune-delta", type=fraction, default=INFOBATCH_DELTA, metavar="D",
                   help="pruning stops once the epoch count passes D x epochs (default: "
                        "%(default)s, InfoBatch's)")
    g.add_argument("--prune-loss-source", choices=LOSS_SOURCES, default=PRUNE_LOSS_SOURCE,
                   help="cld policies: train (default, free: the kept samples' training losses) "
                        "or eval (the paper's estimator: an eval pass over the whole training "
                        "split every epoch, which costs a forward pass per sample per epoch)")
    g.add_argument("--val-fraction", type=val_fraction, default=VAL_FRACTION,
                   help="cld policies: per-class validation split taken from the training data "
                        "(default: %(default)s)")
    add_data(p)
    add_recipe(p)
    add_output(p, RUN_OUT)
    p.set_defaults(handler=handle)
    return handle


def handle(args: argparse.Namespace) -> int:
    from ..pipeline.training import PruneSpec, train

    if args.scores is None and (args.fraction is not None or args.per_class is not None):
        raise ValueError("--fraction / --per-class select from a scores file: add --scores FILE")
    if args.scores is not None and (args.fraction is None) == (args.per_class is None):
        raise ValueError("--scores needs exactly one of --fraction or --per-class")
    prune = None
    if args.prune is not None:
        if args.prune != "infobatch" and args.prune_saving is None:
            raise ValueError(f"--prune {args.prune} needs --prune-saving F (e.g. 0.4)")
        if args.prune != "infobatch" and args.prune_ratio is not None:
            raise ValueError("--prune-ratio is InfoBatch's; use --prune-saving with "
                             f"--prune {args.prune}")
        prune = PruneSpec(args.prune, saving=args.prune_saving, ratio=args.prune_ratio,
                          delta=args.prune_delta, loss_source=args.prune_loss_source)
    elif args.prune_saving is not None or args.prune_ratio is not None:
        raise ValueError("--prune-saving / --prune-ratio need --prune POLICY")
    metrics = train(data_from_args(args), args.out, arch=args.arch, recipe=recipe_from_args(args),
                    indices=args.indices, scores=args.scores, fraction=args.fraction,
                    per_class=args.per_class, order=args.order, name=args.name,
                    resume=args.resume, progress=not args.quiet, prune=prune,
                    val_fraction=args.val_fraction)
    saved = ""
    if prune is not None:
        saved = f", {100 * metrics['prune']['saved']:.1f} % of sample-passes saved ({prune.policy})"
    print(f"{args.name}: {metrics['train_samples']} training samples, test accuracy "
          f"{100 * metrics['test_accuracy']:.2f} %{saved} -> "
          f"{Path(args.out) / (args.name + '_metrics.json')}")
    if metrics.get("scores_file"):
        source = (metrics.get("prune") or {}).get("loss_source", args.prune_loss_source)
        losses = ("eval-mode losses of every training sample, from an eval pass each epoch"
                  if source == "eval" else "train-mode losses of the samples it kept")
        print(f"CLD scores of the pruned run ({losses}) -> {metrics['scores_file']}")
    return 0
