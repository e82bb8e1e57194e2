"""`cldfast` command line: run | track | select | export | train | bench | info. Parsing only:
one module per subcommand turns options into arguments of cldfast.pipeline, whose defaults
apply to every option left out."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ..core.kernels import build_info
from .._core import __version__
from ..io import CorruptFileError
from ..training.checkpoints import Preempted
from . import bench, export, run, select, track, train
from .common import add_threads, setup_logging

__all__ = ["main", "build_parser"]

# The subcommands whose work (or report: info) depends on the thread count.
THREADED_COMMANDS = ("run", "track", "train", "bench", "info")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cldfast",
        description="Coreset selection with CLD (Correlation of Loss Differences), streamed "
                    "during training. `cldfast run` with no arguments runs the whole pipeline "
                    "on the embedded Fashion-MNIST data. The method: docs/method.md.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Each subcommand has its own --help.")
    parser.add_argument("--version", action="version", version=f"cldfast {__version__}")
    add_threads(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (run, track, select, export, train, bench):
        module.register(sub)
    sub.add_parser("info", help="show what this build of cldfast was compiled with, the CUDA "
                                "runtime and driver, whether they are compatible, and which "
                                "kernels each device runs (native, or the torch twins)")
    for name in THREADED_COMMANDS:  # --threads after the subcommand too
        add_threads(sub.choices[name], sub=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from ..core.threads import check_cpu_contention, set_threads

    if args.threads is not None:
        set_threads(args.threads)
    elif args.command in ("run", "track", "train", "bench"):
        busy = check_cpu_contention(warn=False)
        if busy:
            print(f"cldfast: warning: {busy}", file=sys.stderr)
    if args.command == "info":
        print(json.dumps(build_info(), indent=2))
        return 0
    from .._extras import PIPELINE, require_all

    try:
        if args.command in ("run", "track", "train"):
            require_all(PIPELINE, f"cldfast {args.command}")
        elif args.command == "bench":
            require_all(PIPELINE + ("numba",), "cldfast bench", extra="bench")
        if str(getattr(args, "dataset", "")).strip().lower() in ("webdataset", "wds"):
            require_all(("webdataset",), "--dataset webdataset", extra="stream")
    except ImportError as exc:
        print(f"cldfast {args.command}: error: {exc}", file=sys.stderr)
        return 2
    from ..core.distributed import init_from_env, is_main

    distributed = init_from_env()
    if not is_main():
        sys.stdout = open(os.devnull, "w")  # results are printed once, by rank 0
    out = Path(args.out) if hasattr(args, "out") else None
    setup_logging(out, args.command)
    try:
        return args.handler(args)
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
