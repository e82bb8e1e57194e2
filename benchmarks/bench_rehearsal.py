"""Scale rehearsal: an ImageNet-sized selection job end to end on tiny synthetic inputs.

N = 1,281,167 training samples in 1000 classes (ImageNet-1k's index space) with 16 float32
features each (class centroids plus noise) and a linear model, through every stage a user
runs, each in its own process so that its wall time and peak resident memory are its own:

  track    cldfast.pipeline.track: eval-mode CLD (the paper's estimator), 3 epochs, every
           epoch tracked, V = 1 % per class (the authors' ImageNet setting)
  select   `cldfast select scores.npz --fraction 0.1`
  export   `cldfast export scores.npz` (CSV) and `--format authors` (the authors' pickle)
  train    cldfast.pipeline.train on the 10 % coreset (3 epochs)

The question is not accuracy (the inputs are synthetic) but whether everything after the
proxy's training stays cheap at this N: the target is under 10 s and 1 GB of RAM beyond the
data for each command after training, on a 2-core CPU.

    python benchmarks/bench_rehearsal.py                 # N = 1,281,167, writes RESULTS.md
    python benchmarks/bench_rehearsal.py --smoke --no-write
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import peak_rss_mb, set_threads  # noqa: E402
from _results import RESULTS, markdown_table, write_section  # noqa: E402

IMAGENET_N = 1_281_167
FEATURES = 16
TEST_N = 10_000


def make_data(work: Path, n: int, classes: int, seed: int = 0) -> None:
    """Synthetic inputs: a random centroid per class plus unit noise, float32 [n, FEATURES]."""
    rng = np.random.default_rng(seed)
    centroids = rng.normal(0.0, 1.0, (classes, FEATURES)).astype(np.float32)
    for split, size in (("train", n), ("test", TEST_N)):
        y = rng.integers(0, classes, size).astype(np.int64)
        x = centroids[y] + rng.normal(0.0, 1.0, (size, FEATURES)).astype(np.float32)
        np.save(work / f"{split}_x.npy", x)
        np.save(work / f"{split}_y.npy", y)


def bundle(work: Path, classes: int):
    import torch
    from torch.utils.data import TensorDataset

    from cldfast.data import bundle_from_datasets

    def split(name):
        x = torch.from_numpy(np.load(work / f"{name}_x.npy"))
        y = np.load(work / f"{name}_y.npy")
        return TensorDataset(x, torch.from_numpy(y)), y

    (train, ytr), (test, yte) = split("train"), split("test")
    return bundle_from_datasets(train, test, num_classes=classes, name="synthetic-imagenet-index",
                                train_targets=ytr, test_targets=yte)


def linear(num_classes: int, input_shape) -> "torch.nn.Module":
    import torch

    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(int(np.prod(input_shape)),
                                                                    num_classes))


def recipe(epochs: int):
    from cldfast.training import Recipe

    return Recipe(epochs=epochs, batch_size=1024, eval_batch_size=8192, lr=0.1,
                  weight_decay=0.0, device="cpu", seed=0)


def stage(name: str, work: Path, classes: int, epochs: int) -> None:
    """One stage, run inside its own process (see main)."""
    from cldfast import pipeline

    if name == "track":
        pipeline.track(bundle(work, classes), work / "proxy", model=linear, recipe=recipe(epochs),
                       val_fraction=0.01, progress=False)
    elif name == "train":
        pipeline.train(bundle(work, classes), work / "proxy", model=linear, recipe=recipe(epochs),
                       indices=work / "coreset.npy", name="coreset", progress=False)
    else:
        raise ValueError(f"unknown stage {name!r}")


def timed(cmd: list[str], threads: int) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of one child process."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    out = proc.stdout.read()
    proc.stdout.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out[-3000:]}")
    return seconds, peak_rss_mb(usage)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=IMAGENET_N, help="training samples N (default: ImageNet-1k's)")
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=3, help="proxy and coreset epochs (>= 3)")
    p.add_argument("--threads", type=int, default=2, help="torch threads of each stage")
    p.add_argument("--smoke", action="store_true", help="N = 20,000, 50 classes (seconds)")
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--stage", choices=["track", "train"], help=argparse.SUPPRESS)
    p.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.smoke:
        args.samples, args.classes = 20_000, 50
    if args.stage:
        set_threads(args.threads)
        stage(args.stage, args.work, args.classes, args.epochs)
        return 0

    with tempfile.TemporaryDirectory(prefix="cldfast-rehearsal-") as tmp:
        work = Path(tmp)
        make_data(work, args.samples, args.classes)
        data_mb = sum(f.stat().st_size for f in work.glob("*.npy")) / 2**20
        me = [sys.executable, str(Path(__file__).resolve())]
        common = ["--work", str(work), "--classes", str(args.classes), "--epochs", str(args.epochs),
                  "--threads", str(args.threads)]
        scores = str(work / "proxy" / "scores.npz")
        cli = [sys.executable, "-m", "cldfast", "--threads", str(args.threads)]
        baseline = timed([sys.executable, "-c", "import torch, cldfast, cldfast.cli"], args.threads)
        stages = [
            ("track (3 eval-mode checkpoints)", me + ["--stage", "track"] + common),
            ("select --fraction 0.1", cli + ["select", scores, "--fraction", "0.1", "-o",
                                             str(work / "coreset.npy")]),
            ("export (CSV)", cli + ["export", scores]),
            ("export --format authors", cli + ["export", scores, "--format", "authors"]),
            ("train on the 10 % coreset", me + ["--stage", "train"] + common),
        ]
        rows = []
        for label, cmd in stages:
            seconds, rss = timed(cmd, args.threads)
            rows.append([label, f"{seconds:.1f}", f"{rss:.0f}", f"{rss - baseline[1]:.0f}"])
            print(f"{label}: {seconds:.1f} s, peak RSS {rss:.0f} MiB", flush=True)
        csv_mb = sum(f.stat().st_size for f in (work / "proxy").glob("*.csv")) / 2**20
        n_coreset = int(np.load(work / "coreset.npy").size)

    after = rows[1:4]
    worst_s = max(float(r[1]) for r in after)
    worst_extra = max(float(r[3]) for r in after)
    verdict = ("met" if worst_s < 10 and worst_extra < 1024 else "NOT met")
    body = (
        f"N = {args.samples:,} training samples, {args.classes} classes, {FEATURES} float32 "
        f"features each (synthetic: class centroids plus noise; {data_mb:.0f} MiB of data "
        f"files), a linear model, {args.epochs} epochs, {args.threads} torch threads per stage; "
        f"V = 1 % per class. Each stage runs in its own process; peak RSS is that process's "
        f"(ru_maxrss). Importing torch and cldfast alone peaks at {baseline[1]:.0f} MiB "
        f"({baseline[0]:.1f} s); the last column is the peak beyond that.\n\n"
        + markdown_table(["stage", "wall s", "peak RSS MiB", "beyond import MiB"], rows)
        + f"\n\nThe coreset holds {n_coreset:,} samples; the CSV export is {csv_mb:.0f} MiB. "
        f"Target (every command after training under 10 s and 1 GB of RAM beyond the data): "
        f"**{verdict}** (slowest {worst_s:.1f} s, largest {worst_extra:.0f} MiB beyond import)."
    )
    print(body)
    if not args.no_write:
        write_section("rehearsal", "Scale rehearsal: an ImageNet-sized selection job",
                      "python benchmarks/bench_rehearsal.py", body, args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
