"""`cldfast select`: a coreset from a scores file (cldfast.pipeline.select_to_file; the
rules beyond top-k through cldfast.selection.select_by_rule)."""

from __future__ import annotations

import argparse
import sys

from ..selection.balanced import ORDERS
from ..selection.rules import RULES, rules_help
from .common import fraction, positive_int


def rule_param(text: str) -> tuple[str, str]:
    """``key=value`` of ``--rule-param`` (the value is checked against the rule later)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip() or not value.strip():
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    return key.strip(), value.strip()


def register(sub):
    """Add the subcommand to ``sub`` (from ``add_subparsers``); returns its handler."""
    p = sub.add_parser("select", help="choose a coreset from a scores file",
                       description="Select a coreset from a scores file and write the ORIGINAL "
                                   "dataset indices as a .npy file (or .txt, one per line).",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog=rules_help() + "\n\nAutomatic parameters come from the training "
                              "scores and the budget only (docs/method.md, \"Selection rules\").")
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
    p.add_argument("--rule", choices=tuple(RULES), default="top", metavar="NAME",
                   help=f"selection rule, one of {', '.join(RULES)} (default: %(default)s, the "
                        "paper's: the best of each class); every rule is class-balanced and "
                        "keeps the method's end (or --order top/bottom); see below")
    p.add_argument("--rule-param", type=rule_param, action="append", default=[],
                   metavar="KEY=VALUE", help="a parameter of --rule (repeatable; those left out "
                   "are chosen automatically or take their default, listed below)")
    p.add_argument("--global", dest="global_", action="store_true",
                   help="rank over all samples instead of within each class (needs --fraction)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed for --order random and the random rules ("
                        f"{', '.join(r.name for r in RULES.values() if r.random)}; "
                        "default: %(default)s)")
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
    if args.rule != "top" or args.rule_param:
        return _handle_rule(args, method)
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


def _handle_rule(args: argparse.Namespace, method: str) -> int:
    """``--rule`` other than top: read the scores as select_to_file does, then
    :func:`cldfast.selection.select_by_rule`."""
    from pathlib import Path

    import numpy as np

    from ..io import atomic_write, load_scores, save_indices
    from ..pipeline.workflows import _require_scored
    from ..selection.methods import METHODS, score_array
    from ..selection.rules import resolve_params, select_by_rule

    info = METHODS[method]
    if args.global_:
        raise ValueError(f"--rule {args.rule} is class-balanced; --global needs --rule top")
    if info.kind == "random":
        raise ValueError(f"--rule {args.rule} needs a score; --method random has none")
    keep = args.order or info.order
    if keep not in ("top", "bottom"):
        raise ValueError(f"--rule {args.rule} keeps the top or the bottom end of a score; "
                         f"got --order {keep}")
    params = dict(args.rule_param)
    sf = load_scores(args.scores)
    values = score_array(sf, info.name)
    _require_scored(sf, values, info.name)
    used, auto = resolve_params(args.rule, values, sf.labels, fraction=args.fraction,
                                per_class=args.per_class, keep=keep, params=params)
    idx = select_by_rule(values, sf.labels, rule=args.rule, fraction=args.fraction,
                         per_class=args.per_class, keep=keep, seed=args.seed,
                         dataset_indices=sf.train_indices, params=used)
    size = f"f{args.fraction:g}" if args.fraction is not None else f"k{args.per_class}"
    name = "indices" if info.name == "cld" else f"indices_{info.name}"
    end = "" if keep == info.order else f"_{keep}"  # another end than the method's own
    path = Path(args.output) if args.output else Path(args.scores).with_name(
        f"{name}_{args.rule}{end}_{size}.npy")
    if path.suffix == ".txt":
        atomic_write(path, lambda p: np.savetxt(p, idx, fmt="%d"))
    else:
        save_indices(path, idx)
    shown = ", ".join(f"{k}={v:g}{' (auto)' if k in auto else ''}" for k, v in used.items())
    seed = f", seed {args.seed}" if RULES[args.rule].random else ""
    print(f"wrote {path}: {idx.size} original dataset indices ({method}, rule {args.rule}"
          f"{': ' + shown if shown else ''}, keep {keep}{seed}, class-balanced)")
    return 0
