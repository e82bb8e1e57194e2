"""Regenerate every figure of benchmarks/RESULTS.md with one command.

Runs, one after the other, each in its own process (so that one's memory never inflates
another's figures), and each writing its own section of RESULTS.md:

  bench_overhead.py   training-loop overhead of record() (CPU; GPU when available)
  bench_selection.py  the whole selection stage vs the authors' pipeline (authors_baseline.py)
  bench_fidelity.py   when CLD works: eval vs train mode, label noise, proxy length, subsampling, ...
  bench_prune.py      dynamic pruning inside training: CLD-guided vs InfoBatch vs random, by sample-passes saved
  bench_scale.py      tracker time and memory from N = 1e5 to 1e8
  bench_rehearsal.py  an ImageNet-sized job (N = 1,281,167) through track, select, export, train
  bench_update.py     record() and end_epoch(): native kernels vs their torch twins
  bench_distributed.py  tracker bytes per rank and the end_epoch collectives (Gloo ranks)

The full run takes several hours on a 2-core CPU (bench_prune.py alone about 1 h 45 min, the
fidelity study hours; the 1e8-sample scale row needs ~8 GB of
RAM). ``--smoke`` runs every script at tiny sizes (well under a minute; what CI runs).

    python benchmarks/run_all.py                                   # everything, writes RESULTS.md
    python benchmarks/run_all.py --smoke --results /tmp/R.md       # smoke run into another file
    python benchmarks/run_all.py --smoke --no-write                # smoke run, print only
    python benchmarks/run_all.py --only selection,fidelity
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _results import RESULTS  # noqa: E402

SCRIPTS = ("overhead", "selection", "fidelity", "prune", "scale", "rehearsal", "update",
           "distributed")
WRITE_ONLY_DEFAULT = {"update", "distributed"}  # no --smoke / --results: they write RESULTS.md only
THREADED = {"overhead", "selection", "fidelity", "prune", "rehearsal"}  # scripts with a --threads option


def command(name: str, args) -> list[str]:
    cmd = [sys.executable, str(HERE / f"bench_{name}.py")]
    default_target = Path(args.results).resolve() == RESULTS.resolve()
    if name in WRITE_ONLY_DEFAULT:
        # Smoke sizes by hand; these scripts write only to the default RESULTS.md.
        if args.smoke and name == "update":
            cmd += ["--sizes", "20000", "--repeats", "1", "--record-batches", "20"]
        elif args.smoke:
            cmd += ["--samples", "100000", "--worlds", "1,2", "--repeats", "1"]
        if args.no_write or not default_target:
            cmd.append("--no-write")
        return cmd
    if args.smoke:
        cmd.append("--smoke")
    if args.no_write:
        cmd.append("--no-write")
    else:
        cmd += ["--results", str(args.results)]
    if name in THREADED:
        cmd += ["--threads", str(args.threads)]
    return cmd


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes in every script")
    ap.add_argument("--no-write", action="store_true", help="print only; write no results file")
    ap.add_argument("--results", default=str(RESULTS),
                    help="results file the sections go into (default: benchmarks/RESULTS.md; "
                         "bench_update.py and bench_distributed.py write only there)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads for the training benchmarks (0: torch's default; "
                         "default: %(default)s)")
    ap.add_argument("--only", default=",".join(SCRIPTS),
                    help=f"comma-separated subset of {', '.join(SCRIPTS)} (default: all)")
    args = ap.parse_args(argv)
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(SCRIPTS))
    if unknown:
        ap.error(f"--only: unknown benchmark(s) {unknown}; choose from {', '.join(SCRIPTS)}")
    failed, timings = [], []
    for name in chosen:
        cmd = command(name, args)
        print(f"run_all: {' '.join(cmd[1:])}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.run(cmd).returncode
        timings.append((name, time.perf_counter() - t0, rc))
        if rc != 0:
            failed.append(name)
    for name, seconds, rc in timings:
        print(f"run_all: bench_{name}.py {'ok' if rc == 0 else f'FAILED (exit {rc})'} in {seconds / 60:.1f} min")
    if not args.no_write:
        print(f"run_all: sections written to {args.results}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
