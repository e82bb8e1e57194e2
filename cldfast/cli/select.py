"""`cldfast select`: a coreset from a scores file (cldfast.pipeline.select_to_file)."""

from __future__ import annotations

import argparse
import sys

from ..selection.balanced import ORDERS
from .common import fraction, positive_int


def register(sub):
    """Add the subcommand to ``sub`` (from ``add_subparsers``); returns its handler."""
    p = sub.add_parser("select", help="choose a coreset from a scores file",
                       description="Select a coreset from a scores file and write the ORIGINAL "
                                   "dataset indices as a .npy file (or .txt, one per line).")
    p.add_argument("scores", metavar="SCORES", help="scores file written by `cldfast track`, "
                   "`cldfast bench`, CLDTracker.save or an integration callback")
    size = p.add_mutually_exclusive_group(required=True)
    size.add_argument("--fraction", type=fraction,
                      help="keep round(f * n_c) of every class c, n_c counted over the scored "
                           "training split (the proxy's validation split excluded; the DeepCore "
                           "adapter instead counts all of dst_train, as DeepCore does)")
    size.add_argument("--per-class", type=positive_int, metavar="K", help="keep K of every class")
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
    p.set_defaults(handler=handle)
    return handle


def handle(args: argparse.Namespace) -> int:
    from ..pipeline.workflows import select_to_file
    from ..selection.methods import canonical_method

    if args.global_ and args.per_class is not None:
        raise ValueError("--global needs --fraction (a per-class count has no meaning without classes)")
    method = canonical_method(args.method)
    if method == "random" and args.order not in (None, "random"):
        print(f"cldfast select: note: --order {args.order} does not apply to --method random "
              "(a uniform draw among the scored samples)", file=sys.stderr)
    path, idx, order = select_to_file(args.scores, method=args.method, fraction=args.fraction,
                                      per_class=args.per_class, order=args.order,
                                      class_balanced=not args.global_, seed=args.seed,
                                      output=args.output)
    how = "uniform draw" if method == "random" else order
    print(f"wrote {path}: {idx.size} original dataset indices ({method}, {how}, "
          f"{'global' if args.global_ else 'class-balanced'})")
    return 0
