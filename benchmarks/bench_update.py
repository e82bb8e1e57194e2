"""Speed and memory of the tracker's hot path: record() per batch and the epoch-end update.

Compares, on the same state layout (cldfast.core.kernels: the open-epoch buffer, last loss,
last checkpoint and difference count, five co-moments, flags) and the same data:
  kernel     cldfast's native kernels (what CLDTracker runs)
  torch-ops  the same streaming math as a chain of torch ops (cldfast/core/kernels_torch.py,
             the kernels' twins, which run where no native kernel covers the device)
at N = 50k, 1.28M (ImageNet-1k) and 10M training samples, on the CPU and, when present, on
a CUDA GPU, where the epoch-end kernel's effective bandwidth is compared with the GPU's
device-to-device copy bandwidth measured in the same run.

    python benchmarks/bench_update.py            # writes the 'update' section of RESULTS.md
    python benchmarks/bench_update.py --sizes 20000 --repeats 1 --no-write   # smoke run
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Timer, median_time  # noqa: E402
from _results import RESULTS, markdown_table, write_section  # noqa: E402

from cldfast import CLDTracker  # noqa: E402
from cldfast.core import kernels, kernels_torch  # noqa: E402

BATCH = 256
CLASSES = 1000
# Bytes the epoch-end update moves per sample when every sample was seen once (float64):
# reads the epoch sum and count (8), last, tlast, ndiff (12), label (2), 5 co-moments (40);
# writes 5 co-moments (40), ndiff, last, tlast (12) and clears the epoch buffer (8).
EPOCH_BYTES = {torch.float64: 122, torch.float32: 82}
IMPLS = {"kernel": kernels, "torch-ops": kernels_torch}


@dataclass
class KernelState:
    """The per-sample state of n samples in one process, laid out as the kernels take it
    (cldfast.core.kernels.record / end_epoch): a CLDTracker's buffers, built here so that
    both implementations run on the same tensors."""

    labels: torch.Tensor  # [n] int16 class ids
    epoch: torch.Tensor   # [1, 2, n] float32 open-epoch sums and counts
    last: torch.Tensor    # [n] float32
    i32: torch.Tensor     # [2, n] int32 last checkpoint, number of differences
    acc: torch.Tensor     # [5, n] float64 co-moments
    flags: torch.Tensor   # [NUM_FLAGS] int64

    @classmethod
    def build(cls, n: int, device: str) -> "KernelState":
        labels = np.random.default_rng(0).integers(0, CLASSES, n)
        return cls(torch.from_numpy(labels).to(device=device, dtype=torch.int16),
                   torch.zeros(1, 2, n, dtype=torch.float32, device=device),
                   torch.zeros(n, dtype=torch.float32, device=device),
                   torch.zeros(2, n, dtype=torch.int32, device=device),
                   torch.zeros(5, n, dtype=torch.float64, device=device),
                   torch.zeros(kernels.NUM_FLAGS, dtype=torch.int64, device=device))

    def fill_epoch(self, losses: torch.Tensor) -> None:
        """Every sample observed once (so end_epoch does its full work), each paired with
        checkpoint 0."""
        self.epoch[0, 0].copy_(losses)
        self.epoch[0, 1].fill_(1)
        self.i32[0].fill_(0)

    def record(self, impl: str, idx: torch.Tensor, loss: torch.Tensor) -> None:
        IMPLS[impl].record(idx, loss, self.epoch, self.last.shape[0], self.flags)

    def end_epoch(self, impl: str, history: torch.Tensor) -> None:
        """Close checkpoint 1; the buffer is cleared as CLDTracker does in one process (the
        native kernel clears what it read; the twins' clearing pass is timed too)."""
        state = (self.epoch[0], self.last, self.i32, self.acc, self.flags)
        IMPLS[impl].end_epoch(self.labels, history, 0, 1, *state, clear_epoch=True)


def tracker_bytes_per_sample(n: int, device: str) -> float:
    """What a CLDTracker over n samples holds per sample (its nbytes)."""
    labels = np.random.default_rng(0).integers(0, CLASSES, n)
    return CLDTracker(labels, np.arange(CLASSES), device=device).nbytes / n


def row(device: str, n: int, impl: str, record_s: float, end_s: float, nbytes: float) -> dict:
    epoch = record_s * (n / BATCH) + end_s
    return dict(device=device, n=n, impl=impl, record_us=record_s * 1e6, end_s=end_s,
                epoch_s=epoch, ns_per_sample=epoch / n * 1e9,
                gbps=EPOCH_BYTES[torch.float64] * n / end_s / 1e9, bytes_per_sample=nbytes)


def bench_cpu(n: int, repeats: int, record_batches: int) -> list[dict]:
    nbytes = tracker_bytes_per_sample(n, "cpu")
    state = KernelState.build(n, "cpu")
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(n, generator=g)
    losses = torch.rand(n, generator=g) * 5
    nb = min(record_batches, n // BATCH)
    batches = [(perm[i * BATCH:(i + 1) * BATCH], losses[i * BATCH:(i + 1) * BATCH]) for i in range(nb)]
    history = torch.rand(8, CLASSES, dtype=torch.float64)
    fill_cost = median_time(lambda: state.fill_epoch(losses), repeats)
    rows = []
    for impl in IMPLS:
        def rec():  # record(): per-batch cost, timed over `nb` batches
            for idx, loss in batches:
                state.record(impl, idx, loss)

        def end():  # end_epoch(): the O(N) update and the clearing of the epoch buffer
            state.fill_epoch(losses)
            state.end_epoch(impl, history)

        rows.append(row("cpu", n, impl, median_time(rec, repeats) / nb,
                        median_time(end, repeats) - fill_cost, nbytes))
    return rows


def bench_cuda(n: int, repeats: int) -> tuple[list[dict], float]:
    dev = "cuda"
    nbytes = tracker_bytes_per_sample(n, dev)
    state = KernelState.build(n, dev)
    perm = torch.randperm(n, device=dev)
    losses = torch.rand(n, device=dev) * 5
    history = torch.rand(8, CLASSES, dtype=torch.float64, device=dev)
    idx, loss = perm[:BATCH], losses[:BATCH]
    reps = 200

    timer = Timer(dev)

    def timed_end(impl: str) -> float:  # CUDA events around the kernel alone
        times = []
        for _ in range(repeats + 1):
            state.fill_epoch(losses)
            times.append(timer.time(lambda: state.end_epoch(impl, history)))
        return float(np.median(times[1:]))

    rows = []
    for impl in IMPLS:
        def rec():
            for _ in range(reps):
                state.record(impl, idx, loss)

        record_s = median_time(rec, repeats, sync=torch.cuda.synchronize) / reps
        rows.append(row(dev, n, impl, record_s, timed_end(impl), nbytes))
    src = torch.empty(max(n * EPOCH_BYTES[torch.float64] // 2, 2**28), dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    copy_s = median_time(lambda: dst.copy_(src), repeats, sync=torch.cuda.synchronize)
    return rows, 2 * src.numel() / copy_s / 1e9


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="50000,1280000,10000000",
                    help="comma-separated N values (default: %(default)s)")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats per figure (median)")
    ap.add_argument("--record-batches", type=int, default=2000,
                    help="batches of 256 timed for record() (default: %(default)s)")
    ap.add_argument("--gpu-only", action="store_true",
                    help="GPU rows only, written to the 'update-gpu' section (run on a GPU machine)")
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    ap.add_argument("--results", default=str(RESULTS), help="file to write the section into")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.gpu_only and not (torch.cuda.is_available() and kernels.cuda_compiled()):
        ap.error("--gpu-only needs a CUDA GPU and a cldfast build with CUDA kernels")
    rows, copy_bw = [], {}
    for n in sizes:
        if not args.gpu_only:
            print(f"N={n:,}: cpu", flush=True)
            rows += bench_cpu(n, args.repeats, args.record_batches)
        if torch.cuda.is_available() and kernels.cuda_compiled():
            print(f"N={n:,}: cuda", flush=True)
            cuda_rows, copy_bw[n] = bench_cuda(n, args.repeats)
            rows += cuda_rows
    table = markdown_table(
        ["device", "N", "implementation", "record µs/batch of 256", "end_epoch s", "epoch s",
         "ns/sample/epoch", "end_epoch GB/s", "tracker bytes/sample"],
        [[r["device"], f"{r['n']:,}", r["impl"], f"{r['record_us']:.1f}", f"{r['end_s']:.4f}",
          f"{r['epoch_s']:.3f}", f"{r['ns_per_sample']:.1f}", f"{r['gbps']:.2f}",
          f"{r['bytes_per_sample']:.2f}"] for r in rows])
    notes = []
    for dev in ("cpu", "cuda"):
        for n in sizes:
            by = {r["impl"]: r for r in rows if r["device"] == dev and r["n"] == n}
            if "kernel" in by and "torch-ops" in by:
                notes.append(f"- {dev}, N={n:,}: kernel vs torch-ops, whole epoch "
                             f"{by['torch-ops']['epoch_s'] / by['kernel']['epoch_s']:.1f}x, "
                             f"end_epoch {by['torch-ops']['end_s'] / by['kernel']['end_s']:.1f}x, "
                             f"record {by['torch-ops']['record_us'] / by['kernel']['record_us']:.1f}x")
            if dev == "cuda" and n in copy_bw and "kernel" in by:
                notes.append(f"- cuda, N={n:,}: end_epoch kernel {by['kernel']['gbps']:.0f} GB/s = "
                             f"{100 * by['kernel']['gbps'] / copy_bw[n]:.0f} % of the device-to-device "
                             f"copy bandwidth ({copy_bw[n]:.0f} GB/s, measured in this run)")
    if not copy_bw:
        notes.append("- No CUDA GPU in this run: the GPU rows and the copy-bandwidth comparison "
                     "are produced when the script runs on a machine with one.")
    body = (f"One epoch = N/{BATCH} record() calls (batch {BATCH}, timed over up to "
            f"{args.record_batches} batches and scaled) + one end_epoch(); every sample observed "
            f"once; {CLASSES} classes; float64 accumulators. GB/s counts the "
            f"{EPOCH_BYTES[torch.float64]} bytes per sample the epoch-end update must move.\n\n"
            f"{table}\n\n" + "\n".join(notes))
    print(body)
    if not args.no_write:
        name, title = ("update-gpu", " (GPU)") if args.gpu_only else ("update", "")
        write_section(name, "Tracker update: record() and end_epoch()" + title,
                      "benchmarks/bench_update.py" + (" --gpu-only" if args.gpu_only else ""), body,
                      Path(args.results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
