"""`cldfast select`: a coreset from a scores file (cldfast.pipeline.write_coreset, with the
rules of cldfast.selection.RULES)."""

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
                        "treats the end away from the method's hard end as best (CLD: top, AUM: top, "
                        "forgetting: bottom; or --order top/bottom); see below")
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
    from ..pipeline.coresets import write_coreset
    from ..selection.methods import canonical_method

    if args.global_ and args.per_class is not None:
        raise ValueError("--global needs --fraction (a per-class count has no meaning without classes)")
    method = canonical_method(args.method)
    if method == "random" and args.order not in (None, "random"):
        print(f"cldfast select: note: --order {args.order} does not apply to --method random "
              "(a uniform draw among the scored samples)", file=sys.stderr)
    done = write_coreset(args.scores, method=args.method, fraction=args.fraction,
                          per_class=args.per_class, order=args.order,
                          class_balanced=not args.global_, seed=args.seed, output=args.output,
                          rule=args.rule, rule_params=dict(args.rule_param))
    scope = "global" if args.global_ else "class-balanced"
    if done.rule == "top" and not done.params:
        how = "uniform draw" if method == "random" else done.order
        print(f"wrote {done.path}: {done.indices.size} original dataset indices ({method}, {how}, "
              f"{scope})")
        return 0
    shown = ", ".join(f"{k}={v:g}{' (auto)' if k in done.auto else ''}"
                      for k, v in done.params.items())
    seed = f", seed {args.seed}" if RULES[done.rule].random else ""
    print(f"wrote {done.path}: {done.indices.size} original dataset indices ({method}, rule "
          f"{done.rule}{': ' + shown if shown else ''}, keep {done.order}{seed}, {scope})")
    return 0
