"""Speed and memory of the tracker's hot path: record() per batch and the epoch-end update.

Compares, on the same state layout and the same data:
  kernel     cldfast's native kernels (what CLDTracker runs)
  torch-ops  the same streaming math as a chain of torch ops (cldfast/core/kernels_torch.py)
  numpy      the same streaming math in numpy (np.add.at + vectorised Welford), below
at N = 50k, 1.28M (ImageNet-1k) and 10M training samples, on the CPU and, when present, on
a CUDA GPU, where the epoch-end kernel's effective bandwidth is compared with the GPU's
device-to-device copy bandwidth measured in the same run.

    python benchmarks/bench_update.py            # writes the 'update' section of RESULTS.md
    python benchmarks/bench_update.py --sizes 20000 --repeats 1 --no-write   # smoke run
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import RESULTS, markdown_table, median_time, write_section  # noqa: E402

from cldfast import CLDTracker
from cldfast.core import kernels as _ops, kernels_torch  # noqa: E402

BATCH = 256
CLASSES = 1000
# Bytes the epoch-end update moves per sample when every sample was seen once (float64):
# reads the epoch sum and count (8), last, tlast, ndiff (12), label (2), 5 co-moments (40);
# writes 5 co-moments (40), ndiff, last, tlast (12) and clears the epoch buffer (8).
EPOCH_BYTES = {torch.float64: 122, torch.float32: 82}


class NumpyStream:
    """The streaming update in numpy, on numpy copies of the tracker's state."""

    def __init__(self, tracker: CLDTracker):
        self.epoch = tracker._epoch[0].cpu().numpy().copy()
        self.last = tracker._last.cpu().numpy().copy()
        self.i32 = tracker._i32.cpu().numpy().copy()
        self.acc = tracker._acc.cpu().numpy().copy()
        self.labels = tracker._labels.cpu().numpy().astype(np.int64)

    def record(self, index: np.ndarray, loss: np.ndarray) -> None:
        np.add.at(self.epoch[0], index, loss)
        np.add.at(self.epoch[1], index, 1.0)

    def end_epoch(self, history: np.ndarray, checkpoint: int) -> None:
        esum, count = self.epoch
        last = self.last
        tlast, ndiff = self.i32
        seen = count > 0
        mean = esum / np.maximum(count, 1)
        paired = seen & (tlast >= 0)
        dx = mean.astype(np.float64) - last
        dy = history[checkpoint][self.labels] - history[np.maximum(tlast, 0), self.labels]
        k = ndiff + 1.0
        mx, my, m2x, m2y, cxy = self.acc
        ddx, ddy = dx - mx, dy - my
        nmx, nmy = mx + ddx / k, my + ddy / k
        ry = dy - nmy
        m2x[paired] += (ddx * (dx - nmx))[paired]
        m2y[paired] += (ddy * ry)[paired]
        cxy[paired] += (ddx * ry)[paired]
        mx[paired], my[paired] = nmx[paired], nmy[paired]
        ndiff[paired] += 1
        last[seen], tlast[seen] = mean[seen], checkpoint
        self.epoch[:] = 0


def make_tracker(n: int, device: str, precision: str) -> CLDTracker:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, CLASSES, n)
    val_labels = np.arange(CLASSES)
    return CLDTracker(labels, val_labels, device=device, precision=precision)


def bench_cpu(n: int, repeats: int, record_batches: int) -> list[dict]:
    tracker = make_tracker(n, "cpu", "float64")
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(n, generator=g)
    losses = torch.rand(n, generator=g) * 5
    nb = min(record_batches, n // BATCH)
    batches = [(perm[i * BATCH:(i + 1) * BATCH], losses[i * BATCH:(i + 1) * BATCH]) for i in range(nb)]
    history = torch.rand(8, CLASSES, dtype=torch.float64)
    state = (tracker._epoch[0], tracker._last, tracker._i32, tracker._acc, tracker._flags)

    def fill_epoch():  # every sample observed once, so end_epoch does its full work
        tracker._epoch[0, 0].copy_(losses)
        tracker._epoch[0, 1].fill_(1)

    rows = []
    # record(): per-batch cost, timed over `nb` batches.
    def rec_kernel():
        for idx, loss in batches:
            _ops.record(idx, loss, tracker._epoch, n, tracker._flags)

    def rec_torch():
        for idx, loss in batches:
            kernels_torch.record(idx, loss, tracker._epoch, n, tracker._flags)

    np_stream = NumpyStream(tracker)
    np_batches = [(i.numpy(), l.numpy()) for i, l in batches]

    def rec_numpy():
        for idx, loss in np_batches:
            np_stream.record(idx, loss)

    rec = {name: median_time(fn, repeats) / nb for name, fn in
           (("kernel", rec_kernel), ("torch-ops", rec_torch), ("numpy", rec_numpy))}

    # end_epoch(): the O(N) update and the clearing of the epoch buffer, on a full epoch.
    tracker._i32[0].fill_(0)

    def end_kernel():  # as CLDTracker runs it in one process: the kernel clears the buffer
        fill_epoch()
        _ops.end_epoch(tracker._labels, history, 0, 1, *state, clear_epoch=True)

    def end_torch():
        fill_epoch()
        kernels_torch.end_epoch(tracker._labels, history, 0, 1, *state)
        tracker._epoch.zero_()

    hist_np = history.numpy()

    def end_numpy():
        np_stream.epoch[0][:] = losses.numpy()
        np_stream.epoch[1][:] = 1
        np_stream.i32[0][:] = 0
        np_stream.end_epoch(hist_np, 1)

    fill_cost = median_time(fill_epoch, repeats)
    end = {"kernel": median_time(end_kernel, repeats) - fill_cost,
           "torch-ops": median_time(end_torch, repeats) - fill_cost,
           "numpy": median_time(end_numpy, max(1, repeats // 2))}
    for name in ("kernel", "torch-ops", "numpy"):
        epoch = rec[name] * (n / BATCH) + end[name]
        rows.append(dict(device="cpu", n=n, impl=name, record_us=rec[name] * 1e6,
                         end_s=end[name], epoch_s=epoch, ns_per_sample=epoch / n * 1e9,
                         gbps=EPOCH_BYTES[torch.float64] * n / end[name] / 1e9,
                         bytes_per_sample=tracker.nbytes / n))
    return rows


def bench_cuda(n: int, repeats: int) -> tuple[list[dict], float]:
    dev = "cuda"
    tracker = make_tracker(n, dev, "float64")
    perm = torch.randperm(n, device=dev)
    losses = torch.rand(n, device=dev) * 5
    history = torch.rand(8, CLASSES, dtype=torch.float64, device=dev)
    state = (tracker._epoch[0], tracker._last, tracker._i32, tracker._acc, tracker._flags)
    sync = torch.cuda.synchronize
    idx, loss = perm[:BATCH], losses[:BATCH]
    reps = 200

    def rec_kernel():
        for _ in range(reps):
            _ops.record(idx, loss, tracker._epoch, n, tracker._flags)

    def rec_torch():
        for _ in range(reps):
            kernels_torch.record(idx, loss, tracker._epoch, n, tracker._flags)

    rec = {"kernel": median_time(rec_kernel, repeats, sync=sync) / reps,
           "torch-ops": median_time(rec_torch, repeats, sync=sync) / reps}
    tracker._i32[0].fill_(0)

    def timed_end(fn):
        times = []
        for _ in range(repeats + 1):
            tracker._epoch[0, 0].copy_(losses)
            tracker._epoch[0, 1].fill_(1)
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            stop.record()
            sync()
            times.append(start.elapsed_time(stop) / 1e3)
        return float(np.median(times[1:]))

    def end_kernel():  # as CLDTracker runs it in one process: the kernel clears the buffer
        _ops.end_epoch(tracker._labels, history, 0, 1, *state, clear_epoch=True)

    def end_torch():
        kernels_torch.end_epoch(tracker._labels, history, 0, 1, *state)
        tracker._epoch.zero_()

    end = {"kernel": timed_end(end_kernel), "torch-ops": timed_end(end_torch)}
    src = torch.empty(max(n * EPOCH_BYTES[torch.float64] // 2, 2**28), dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    copy_s = median_time(lambda: dst.copy_(src), repeats, sync=sync)
    copy_gbps = 2 * src.numel() / copy_s / 1e9
    rows = []
    for name in ("kernel", "torch-ops"):
        epoch = rec[name] * (n / BATCH) + end[name]
        rows.append(dict(device="cuda", n=n, impl=name, record_us=rec[name] * 1e6,
                         end_s=end[name], epoch_s=epoch, ns_per_sample=epoch / n * 1e9,
                         gbps=EPOCH_BYTES[torch.float64] * n / end[name] / 1e9,
                         bytes_per_sample=tracker.nbytes / n))
    return rows, copy_gbps


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
    if args.gpu_only and not (torch.cuda.is_available() and _ops.cuda_compiled()):
        ap.error("--gpu-only needs a CUDA GPU and a cldfast build with CUDA kernels")
    rows, copy_bw = [], {}
    for n in sizes:
        if not args.gpu_only:
            print(f"N={n:,}: cpu", flush=True)
            rows += bench_cpu(n, args.repeats, args.record_batches)
        if torch.cuda.is_available() and _ops.cuda_compiled():
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
                             f"record {by['torch-ops']['record_us'] / by['kernel']['record_us']:.1f}x"
                             + (f"; kernel vs numpy, whole epoch "
                                f"{by['numpy']['epoch_s'] / by['kernel']['epoch_s']:.1f}x" if "numpy" in by else ""))
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
