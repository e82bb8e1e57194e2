"""`cldfast export`: a scores file as CSV or as the authors' ranking pickle
(cldfast.pipeline.export)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub):
    """Add the subcommand to ``sub`` (from ``add_subparsers``); returns its handler."""
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
    p.set_defaults(handler=handle)
    return handle


def handle(args: argparse.Namespace) -> int:
    from ..io import load_scores
    from ..pipeline.export import authors_filename, export_authors, export_csv, image_folder_paths

    sf = load_scores(args.scores)
    if args.format == "authors":
        out = Path(args.output) if args.output else Path(args.scores).with_name(authors_filename(sf))
        export_authors(sf, out)
        print(f"wrote {out}: per-class CLD rankings (original dataset indices, best first) for "
              "the authors' train_on_coresets.py")
        return 0
    paths = image_folder_paths(sf, args.image_folder) if args.image_folder else None
    out = Path(args.output) if args.output else Path(args.scores).with_suffix(".csv")
    export_csv(sf, out, file_paths=paths, class_names=sf.metadata.get("class_names") or None)
    print(f"wrote {out}: {sf.scores.shape[0]} rows")
    return 0
