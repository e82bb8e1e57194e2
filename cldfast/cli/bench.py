"""`cldfast bench`: CLD against the coreset baselines from one proxy run
(cldfast.pipeline.bench)."""

from __future__ import annotations

import argparse

from ..defaults import (BENCH_FRACTIONS, BENCH_METHODS, BENCH_OUT, BENCH_SEEDS, CCS_BETA, CCS_STRATA,
                        DEFAULT_ARCH)
from ..selection.methods import METHODS
from ..selection.rules import RULES
from ..training.models import ARCHS
from .common import (add_data, add_output, add_recipe, add_tracking, data_from_args, fractions,
                     positive_int, recipe_from_args, unit_interval)


def _methods_arg(text: str) -> list[str]:
    from ..pipeline.bench import parse_methods

    try:
        return parse_methods(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _strategies_arg(text: str) -> list[str]:
    from ..pipeline.bench import parse_strategies

    try:
        return parse_strategies(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _rules_arg(text: str) -> list[str]:
    from ..pipeline.bench import rule_strategies

    try:
        return rule_strategies(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(sub):
    """Add the subcommand to ``sub`` (from ``add_subparsers``); returns its handler."""
    method_help = ", ".join(f"{name} ({info.order})" for name, info in METHODS.items())
    p = sub.add_parser(
        "bench", help="compare CLD with coreset baselines from one proxy run",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train one proxy while tracking CLD and recording every trajectory-based "
                    "baseline from the same training logits (forgetting, AUM, EL2N, entropy / "
                    "margin / least confidence, cartography); GraNd, Herding and k-Center Greedy "
                    "share one eval pass of the final proxy. Then select a coreset for every "
                    "method x strategy x fraction x seed, retrain --arch on it and write "
                    "OUT/bench.md, OUT/bench.json and OUT/bench_accuracy.png (mean ± std test "
                    "accuracy, selection cost per method). Finished cells are cached in "
                    "OUT/cells/ and the proxy writes a resume checkpoint every epoch: re-running the "
                    "same command "
                    "continues where it stopped (--resume is implied).",
        epilog="Methods and the end each keeps: " + method_help + ". Definitions: "
               "cldfast/scores/recorders.py. Example: cldfast bench --methods "
               "cld,random,forgetting,el2n,aum,entropy,kcenter --fractions 0.1,0.3,0.5 --seeds 3")
    p.add_argument("--methods", type=_methods_arg, default=list(BENCH_METHODS),
                   help="comma-separated methods, or 'all' (default: %s)" % ",".join(BENCH_METHODS))
    p.add_argument("--fractions", type=fractions, default=list(BENCH_FRACTIONS),
                   help="coreset fractions, comma-separated (default: "
                        f"{','.join(f'{f:g}' for f in BENCH_FRACTIONS)})")
    p.add_argument("--seeds", type=positive_int, default=BENCH_SEEDS,
                   help="retrainings per cell, seeds --seed + 0..N-1 (default: %(default)s)")
    p.add_argument("--strategies", type=_strategies_arg, default=["balanced"],
                   help="balanced (rank within each class, default), global (rank over all "
                        "samples), ccs (coverage-centric stratified sampling over all samples, "
                        "Zheng et al. 2023), rule-<name> (a selection rule, as --rules); "
                        "comma-separated")
    p.add_argument("--rules", type=_rules_arg, default=[], metavar="NAMES",
                   help="selection rules applied to every method with a difficulty score, "
                        "within each class, automatic parameters; comma-separated, from: "
                        + ", ".join(RULES) + " (top is the balanced strategy; see `cldfast "
                        "select --help` and docs/method.md)")
    p.add_argument("--proxy-arch", default=DEFAULT_ARCH, metavar="ARCH",
                   help=f"model that is tracked (default: %(default)s; named: {', '.join(ARCHS)})")
    p.add_argument("--arch", metavar="ARCH", help="model retrained on the coresets (default: --proxy-arch)")
    p.add_argument("--el2n-epoch", type=positive_int, metavar="E",
                   help="1-based epoch whose training logits give EL2N (default: 10 %% of the "
                        "proxy's epochs, at least 2)")
    p.add_argument("--ccs-beta", type=unit_interval, default=CCS_BETA,
                   help="CCS: fraction of the hardest samples dropped first (default: %(default)s)")
    p.add_argument("--ccs-strata", type=positive_int, default=CCS_STRATA,
                   help="CCS: number of score strata (default: %(default)s)")
    p.add_argument("--no-full", action="store_true",
                   help="skip the full-training-split reference runs")
    p.add_argument("--full-seeds", type=positive_int, metavar="N",
                   help="seeds of the full-training-split reference (default: --seeds)")
    add_data(p)
    add_recipe(p, proxy=True)
    add_tracking(p)
    add_output(p, BENCH_OUT)
    p.set_defaults(handler=handle)
    return handle


def handle(args: argparse.Namespace) -> int:
    from ..pipeline.bench import bench

    result = bench(data_from_args(args), args.out, methods=args.methods, fractions=args.fractions,
                   seeds=args.seeds, strategies=args.strategies + args.rules,
                   proxy_arch=args.proxy_arch,
                   arch=args.arch, proxy_recipe=recipe_from_args(args, "proxy"),
                   recipe=recipe_from_args(args), val_fraction=args.val_fraction,
                   loss_source=args.loss_source, track_epochs=args.track_epochs,
                   track_every=args.track_every, track_from=args.track_from,
                   per_class=not args.global_val,
                   precision=args.precision, el2n_epoch=args.el2n_epoch, ccs_beta=args.ccs_beta,
                   ccs_strata=args.ccs_strata, full=not args.no_full, full_seeds=args.full_seeds,
                   progress=not args.quiet)
    print(result.table)
    print(f"\nOutputs in {result.out}/: bench.md, bench.json, bench_accuracy.png, scores.npz, "
          "cells/, indices/, runs/")
    return 0
