"""Regenerate the README's `cldfast run` section from a real run.

Runs `cldfast run` with the given arguments (default: none, i.e. the embedded data set),
then copies the printed result table and the two plots into the README / docs/. Nothing in
that README section is typed by hand.

    python benchmarks/readme_run.py [--out DIR] [-- extra cldfast run arguments]
    python benchmarks/readme_run.py --from-out cldfast-out   # splice an existing run's output
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import machine  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "_work" / "readme-run"))
    ap.add_argument("--from-out", metavar="DIR",
                    help="use the output folder of a `cldfast run` that already ran (e.g. the "
                         "README's main-job command) instead of running it again")
    ap.add_argument("extra", nargs="*", help="arguments passed on to `cldfast run`")
    args = ap.parse_args()
    if args.from_out:
        out = Path(args.from_out)
        minutes = json.loads((out / "metrics.json").read_text())["total_seconds"] / 60
    else:
        out = Path(args.out)
        if out.exists():
            shutil.rmtree(out)
        cmd = [sys.executable, "-m", "cldfast", "run", "--out", str(out), "--quiet", *args.extra]
        start = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=tempfile.gettempdir())
        minutes = (time.perf_counter() - start) / 60
    table = (out / "results.md").read_text().strip()
    for name in ("accuracy_vs_fraction.png", "cld_histograms.png"):
        shutil.copyfile(out / "plots" / name, ROOT / "docs" / f"run_{name}")
    shown = "cldfast run" + ("" if not args.extra else " " + " ".join(args.extra))
    if args.from_out:
        shown = "cldfast run"  # the README's main-job command
    block = (f"<!-- run-results -->\nOutput of `{shown}` ({minutes:.1f} min wall time on "
             f"{machine()}; {time.strftime('%Y-%m-%d')}):\n\n{table}\n\n"
             "![accuracy vs coreset fraction](docs/run_accuracy_vs_fraction.png)\n"
             "![CLD histograms per class](docs/run_cld_histograms.png)\n<!-- /run-results -->")
    readme = ROOT / "README.md"
    text = readme.read_text()
    text = re.sub(r"<!-- run-results -->.*?<!-- /run-results -->", lambda _: block, text, flags=re.S)
    readme.write_text(text)
    print(block)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
