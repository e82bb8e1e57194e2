"""Tracker memory per rank and the cost of the epoch-end collectives under torch.distributed.

Starts W Gloo processes on this machine, builds an ImageNet-sized CLDTracker on each
(N = 1.28M training samples, 1000 classes, 1 % validation), lets every rank record its
DistributedSampler share of one epoch (padding included), and measures
  - tracker.nbytes on each rank (W = 1, 2, 8 by default), and
  - the time of end_epoch() for W = 2 (the reduce-scatter of the open-epoch buffer, the small
    all-reduce of validation sums and counters, and the epoch-end kernel), median of repeats,
    next to the same end_epoch() in one process.

    python benchmarks/bench_distributed.py              # writes the 'distributed' section
    python benchmarks/bench_distributed.py --samples 100000 --worlds 1,2 --no-write   # smoke
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import markdown_table, write_section  # noqa: E402

from cldfast import CLDTracker  # noqa: E402

CLASSES = 1000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, n: int, repeats: int, out: str) -> None:
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, CLASSES, n)
    q = max(CLASSES, n // 100)
    val_labels = np.arange(q) % CLASSES
    tracker = CLDTracker(labels, val_labels)
    losses = torch.rand(n)
    if world > 1:
        sampler = torch.utils.data.DistributedSampler(range(n), num_replicas=world, rank=rank, seed=0)
        mine = torch.tensor(list(iter(sampler)))
    else:
        mine = torch.randperm(n)
    vmine = torch.arange(rank, q, world)
    times = []
    for _ in range(repeats + 1):
        for batch in mine.split(65536):
            tracker.record(batch, losses[batch])
        tracker.record_validation(torch.rand(vmine.numel()), vmine)
        if world > 1:
            dist.barrier()
        start = time.perf_counter()
        tracker.end_epoch()
        times.append(time.perf_counter() - start)
    np.save(os.path.join(out, f"r{rank}.npy"),
            np.array([tracker.nbytes, statistics.median(times[1:])]))
    if world > 1:
        dist.destroy_process_group()


def measure(n: int, world: int, repeats: int) -> tuple[list[int], float]:
    with tempfile.TemporaryDirectory() as tmp:
        if world == 1:
            _worker(0, 1, 0, n, repeats, tmp)
        else:
            mp.spawn(_worker, args=(world, _free_port(), n, repeats, tmp), nprocs=world, join=True)
        rows = [np.load(os.path.join(tmp, f"r{r}.npy")) for r in range(world)]
    return [int(r[0]) for r in rows], max(float(r[1]) for r in rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=1_281_167, help="N (default: ImageNet-1k, %(default)s)")
    ap.add_argument("--worlds", default="1,2,8", help="process counts (default: %(default)s)")
    ap.add_argument("--timed-world", type=int, default=2,
                    help="world size whose end_epoch time is reported (default: %(default)s)")
    ap.add_argument("--repeats", type=int, default=5, help="timed epochs (median; default: %(default)s)")
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = ap.parse_args(argv)
    n = args.samples
    rows, timing = [], {}
    for world in [int(w) for w in args.worlds.split(",")]:
        print(f"W={world}", flush=True)
        per_rank, seconds = measure(n, world, args.repeats if world in (1, args.timed_world) else 1)
        if world in (1, args.timed_world):
            timing[world] = seconds
        rows.append([world, f"{n:,}", f"{max(per_rank) / 2**20:.1f}", f"{max(per_rank) / n:.2f}",
                     f"{sum(per_rank) / 2**20:.1f}"])
    table = markdown_table(["ranks W", "N", "tracker MiB per rank (max)", "bytes per sample per rank",
                            "MiB over all ranks"], rows)
    notes = []
    if 1 in timing and args.timed_world in timing:
        notes.append(
            f"- end_epoch() with W={args.timed_world} Gloo ranks on this CPU (reduce-scatter of the "
            f"{8 * n / 2**20:.1f} MiB open-epoch buffer + small all-reduce + kernel on the shard): "
            f"median {1e3 * timing[args.timed_world]:.1f} ms (slowest rank) vs "
            f"{1e3 * timing[1]:.1f} ms in one process.")
    body = (f"Every rank holds the full open-epoch buffer (float32 sum and count, 8 B/sample), and "
            f"the co-moment state of its shard plus its slot of the reduce-scatter (62 B/sample over "
            f"N/W samples), plus O(classes) validation state. Measured with `tracker.nbytes` on each rank; N = {n:,}, "
            f"{CLASSES} classes, 1 % validation.\n\n{table}\n\n" + "\n".join(notes))
    print(body)
    if not args.no_write:
        write_section("distributed", "Tracker under torch.distributed", "benchmarks/bench_distributed.py", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
