"""`cldfast run`: the whole pipeline (cldfast.pipeline.run)."""

from __future__ import annotations

import argparse

from ..defaults import DEFAULT_ARCH, RUN_FRACTIONS, RUN_OUT, RUN_SEEDS
from ..selection.rules import RULES
from ..training.models import ARCHS
from .common import (add_data, add_output, add_recipe, add_tracking, data_from_args, fraction,
                     fractions, positive_int, recipe_from_args)


def register(sub):
    """Add the subcommand to ``sub`` (from ``add_subparsers``); returns its handler."""
    p = sub.add_parser("run", help="track a proxy, select coresets, retrain and compare",
                       description="The whole pipeline: train a proxy while tracking CLD, select "
                                   "CLD and random coresets at several fractions and top / "
                                   "near-zero / most-negative CLD subsets of equal size, train the "
                                   "target model on each and on the full training split, and write "
                                   "a result table, metrics.json, plots and a log into --out.")
    p.add_argument("--proxy-arch", default=DEFAULT_ARCH, metavar="ARCH",
                   help=f"model that is tracked (default: %(default)s; named: {', '.join(ARCHS)}, or "
                        "any torchvision classification model)")
    p.add_argument("--arch", metavar="ARCH", help="model trained on the coresets (default: --proxy-arch)")
    p.add_argument("--fractions", type=fractions, default=list(RUN_FRACTIONS),
                   help="coreset fractions per class, comma-separated (default: "
                        f"{','.join(f'{f:g}' for f in RUN_FRACTIONS)})")
    p.add_argument("--compare-fraction", type=fraction,
                   help="size of the top / near-zero / negative CLD comparison (default: smallest fraction)")
    p.add_argument("--seeds", type=positive_int, default=RUN_SEEDS,
                   help="retraining seeds of every coreset and of the full split; the table "
                        "gives mean ± std over them (default: %(default)s)")
    p.add_argument("--jobs", type=positive_int, metavar="N",
                   help="retraining cells trained at once, in worker processes with threads / N "
                        "torch threads each (default: auto: on a CPU as many as torch has "
                        "threads and cores, for the named datasets and architectures; 1 on a GPU "
                        "or under torchrun, where N > 1 is refused). Small models use one core "
                        "per cell better than several cores per step; every cell is seeded on "
                        "its own. cldfast.pipeline.run() from Python defaults to 1")
    p.add_argument("--rules", type=rule_list, default=[], metavar="NAMES",
                   help="further CLD coresets at every fraction by these selection rules, "
                        f"comma-separated, from: {', '.join(RULES)} (automatic parameters; "
                        "see `cldfast select --help` and docs/method.md); the paper's top-CLD "
                        "coresets stay")
    add_data(p)
    add_recipe(p, proxy=True)
    add_tracking(p)
    add_output(p, RUN_OUT)
    p.set_defaults(handler=handle)
    return handle


def rule_list(text: str) -> list[str]:
    """``--rules``: comma-separated names of :data:`cldfast.selection.RULES`."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [n for n in names if n not in RULES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"expected rule names from {', '.join(RULES)}; got "
                                         f"{text!r}")
    return names


def run_jobs(args: argparse.Namespace) -> int | str:
    """``--jobs`` as pipeline.run takes it: left out, the automatic choice ("auto"; the
    library's own default is 1, safe in a script without a ``__main__`` guard)."""
    return args.jobs if args.jobs is not None else "auto"


def handle(args: argparse.Namespace) -> int:
    from ..pipeline.end_to_end import run

    result = run(data_from_args(args), args.out, proxy_arch=args.proxy_arch, arch=args.arch,
                 proxy_recipe=recipe_from_args(args, "proxy"), recipe=recipe_from_args(args),
                 fractions=args.fractions, compare_fraction=args.compare_fraction,
                 val_fraction=args.val_fraction, loss_source=args.loss_source,
                 track_epochs=args.track_epochs, track_every=args.track_every,
                 track_from=args.track_from, per_class=not args.global_val, precision=args.precision, seeds=args.seeds,
                 resume=args.resume, jobs=run_jobs(args),
                 progress=not args.quiet, rules=args.rules)
    print(result.table)
    for note in result.notes:
        print("\n" + note)
    print(f"\nOutputs in {result.out}/: scores.npz, indices/, metrics.json, results.md, "
          f"plots/accuracy_vs_fraction.png, plots/cld_histograms.png, run.log")
    return 0
