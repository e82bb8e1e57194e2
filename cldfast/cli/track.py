"""`cldfast track`: a proxy with CLD tracking (cldfast.pipeline.track)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..defaults import DEFAULT_ARCH, RUN_OUT
from ..training.models import ARCHS
from .common import add_data, add_output, add_recipe, add_tracking, data_from_args, recipe_from_args


def register(sub):
    """Add the subcommand to ``sub`` (from ``add_subparsers``); returns its handler."""
    p = sub.add_parser("track", help="train a proxy with CLDTracker and write a scores file",
                       description="Train a proxy model while tracking CLD and write OUT/scores.npz: "
                                   "scores, labels, original dataset indices, the train/validation "
                                   "split and metadata, readable with numpy alone; and "
                                   "OUT/track_metrics.json (timings, memory, accuracy).")
    p.add_argument("--arch", "--proxy-arch", dest="arch", default=DEFAULT_ARCH, metavar="ARCH",
                   help=f"proxy model (default: %(default)s; named: {', '.join(ARCHS)})")
    add_data(p)
    add_recipe(p, role="proxy")
    add_tracking(p)
    add_output(p, RUN_OUT)
    p.set_defaults(handler=handle)
    return handle


def handle(args: argparse.Namespace) -> int:
    from ..core.distributed import is_main
    from ..pipeline.tracking import track

    sf, metrics = track(data_from_args(args), args.out, arch=args.arch,
                        recipe=recipe_from_args(args, "proxy"), val_fraction=args.val_fraction,
                        loss_source=args.loss_source, track_epochs=args.track_epochs,
                        track_every=args.track_every, track_from=args.track_from,
                        per_class=not args.global_val,
                        precision=args.precision, resume=args.resume, progress=not args.quiet)
    if not is_main():
        return 0
    s = sf.scores[np.isfinite(sf.scores)]
    print(f"wrote {Path(args.out) / 'scores.npz'}: {s.size} of {sf.scores.size} samples scored, "
          f"CLD median {np.median(s) if s.size else float('nan'):.3f}, proxy test accuracy "
          f"{100 * metrics['proxy_test_accuracy']:.2f} %")
    return 0
