"""What every benchmark script shares: threads, process measurements, timing, mean ± std,
rank statistics, atomic writes and cut or relabelled copies of a dataset bundle.

The benchmark scripts define experiments only; anything two of them need lives here (or in
cldfast itself), once. RESULTS.md is written by :mod:`_results`.

Conventions:

* mean ± std is always the sample standard deviation (``statistics.stdev``, n - 1); with no
  value the text is ``n/a``, with one value ``x (1 seed)`` (no spread can be measured);
* Spearman and AUROC use the entries finite in every input, ties get average ranks;
* files are written through :mod:`cldfast.io` (temporary file, fsync, rename), so a reader
  (or a second benchmark process sharing a cell cache) sees the old file or the new one.
"""

from __future__ import annotations

import json
import math
import os
import resource
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

import cldfast
from cldfast.data import InMemoryImageDataset
from cldfast.io import atomic_write, write_json

__all__ = ["set_threads", "sync", "rss_mb", "peak_rss_mb", "bytes_written", "dir_bytes",
           "median_time", "Timer", "mean_std", "ms", "paired_diffs", "spearman",
           "within_class_spearman", "auroc", "first_learned", "top_share_overlap",
           "write_text", "write_json", "write_npz", "read_npz", "image_copy", "first_items",
           "relabeled"]


# ------------------------------------------------------------------ threads and the process
def set_threads(n: int) -> None:
    """``n`` threads for torch's CPU operations and cldfast's CPU kernels; 0 or less leaves
    the defaults."""
    if n > 0:
        cldfast.set_threads(int(n))


def sync(device: str | torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def rss_mb() -> float:
    """Current resident set size of this process (MiB)."""
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb(usage: Any = None) -> float:
    """Peak resident set size (MiB) of this process, or of the ``resource`` usage given
    (e.g. a child's from ``os.wait4``)."""
    usage = resource.getrusage(resource.RUSAGE_SELF) if usage is None else usage
    return usage.ru_maxrss / 1024.0


def bytes_written() -> int:
    """Bytes this process passed to write() so far (/proc/self/io wchar; 0 if unavailable)."""
    try:
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("wchar:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def dir_bytes(path: str | os.PathLike) -> int:
    """Bytes of every file under ``path``."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


# ------------------------------------------------------------------ timing
def median_time(fn: Callable[[], None], repeats: int = 5, warmup: int = 1,
                sync: Callable[[], None] | None = None) -> float:
    """Median wall time of fn() in seconds (``sync`` is called around each timed call)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if sync:
            sync()
        start = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class Timer:
    """Seconds of one call: wall time on the CPU, CUDA events on a GPU (synchronised)."""

    def __init__(self, device: str | torch.device):
        self.cuda = torch.device(device).type == "cuda"

    def time(self, fn: Callable[[], Any]) -> float:
        if self.cuda:
            start = torch.cuda.Event(enable_timing=True)
            stop = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            stop.record()
            stop.synchronize()
            return start.elapsed_time(stop) / 1e3
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0


# ------------------------------------------------------------------ mean ± std
def mean_std(xs: Iterable[float]) -> tuple[float, float]:
    """(mean, sample std); NaN std for one value, NaN for both without values."""
    xs = [float(x) for x in xs]
    if not xs:
        return float("nan"), float("nan")
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else float("nan"))


def ms(xs: Iterable[float], digits: int = 2, unit: str = "") -> str:
    """``mean ± std`` (sample std) of ``xs``; ``x (1 seed)`` for one value, ``n/a`` for
    none. ``unit`` follows the figures (``"12.30 ± 0.40 %"``, ``"12.30 % (1 seed)"``)."""
    xs = list(xs)
    if not xs:
        return "n/a"
    if len(xs) == 1:
        return f"{float(xs[0]):.{digits}f}{unit} (1 seed)"
    m, s = mean_std(xs)
    return f"{m:.{digits}f} ± {s:.{digits}f}{unit}"


def paired_diffs(a: dict[Any, float], b: dict[Any, float]) -> list[float]:
    """Per-key differences a[k] - b[k] over the keys both hold (e.g. seeds), in key order."""
    return [a[k] - b[k] for k in sorted(set(a) & set(b))]


# ------------------------------------------------------------------ rank statistics
def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation over the entries finite in both (average ranks for ties)."""
    from scipy.stats import spearmanr

    a, b = np.asarray(a), np.asarray(b)
    ok = np.isfinite(a) & np.isfinite(b)
    return float(spearmanr(a[ok], b[ok]).statistic)


def within_class_spearman(a: np.ndarray, b: np.ndarray, labels: np.ndarray) -> float:
    """Mean over classes of the Spearman correlation within each class."""
    return float(np.mean([spearman(a[labels == c], b[labels == c]) for c in np.unique(labels)]))


def auroc(score: np.ndarray, positive: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counted 1/2 (Mann-Whitney), over
    the finite scores."""
    from scipy.stats import rankdata

    ok = np.isfinite(score)
    s, p = score[ok], positive[ok].astype(bool)
    r = rankdata(s)
    n1, n0 = int(p.sum()), int((~p).sum())
    return float((r[p].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def first_learned(train_losses: np.ndarray) -> np.ndarray:
    """1-based checkpoint from which a sample's eval loss ([T, N]) stays below ln 2 (its
    label's probability > 1/2, so it is classified correctly) to the end; T + 1 if never."""
    ok = train_losses < math.log(2.0)
    stays = np.flip(np.logical_and.accumulate(np.flip(ok, 0), 0), 0)
    T = train_losses.shape[0]
    return np.where(stays.any(0), stays.argmax(0) + 1, T + 1)


def top_share_overlap(a: np.ndarray, b: np.ndarray, share: float = 0.1) -> float:
    """Share of a's global top ``share`` (highest scores, NaN last) that is also in b's."""
    tops = []
    for s in (a, b):
        order = np.argsort(-np.nan_to_num(s, nan=-np.inf), kind="stable")
        tops.append(set(order[: int(len(order) * share + 1e-9)].tolist()))
    return len(tops[0] & tops[1]) / max(1, len(tops[0]))


# ------------------------------------------------------------------ files
def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    return atomic_write(path, lambda p: p.write_text(text))


def write_npz(path: str | os.PathLike, arrays: dict[str, Any]) -> Path:
    """An uncompressed .npz of ``arrays`` at ``path`` (name kept as given), atomically."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:  # a file object: np.savez would append .npz to a name
            np.savez(fh, **arrays)

    return atomic_write(path, write)


def read_npz(path: str | os.PathLike, json_keys: Sequence[str] = ()) -> dict[str, Any]:
    """Every array of an .npz (no pickles); the ``json_keys`` decoded from JSON strings."""
    with np.load(path, allow_pickle=False) as z:
        out: dict[str, Any] = {k: z[k] for k in z.files}
    for key in json_keys:
        out[key] = json.loads(str(out[key]))
    return out


# ------------------------------------------------------------------ dataset bundles
def image_copy(ds: InMemoryImageDataset, images: torch.Tensor | None = None,
               targets: Any = None) -> InMemoryImageDataset:
    """``ds`` with other images and/or targets, the same normalisation (no augmentation)."""
    return InMemoryImageDataset(ds.images if images is None else images,
                                ds.targets if targets is None else targets,
                                ds.mean.flatten().tolist(), ds.std.flatten().tolist(),
                                max_value=ds.max_value)


def _first(ds: Any, n: int) -> Any:
    if isinstance(ds, InMemoryImageDataset):
        cut = image_copy(ds, ds.images[:n], ds.targets[:n])
        return cut.with_augmentation(flip=ds.flip, crop_padding=ds.crop_padding)
    return torch.utils.data.Subset(ds, range(n))


def first_items(bundle: Any, train: int = 0, test: int = 0) -> Any:
    """``bundle`` cut to its first ``train`` training items (fingerprint ``-first<n>``) and
    its first ``test`` test items (0: all). In-memory images stay in-memory datasets."""
    if train and train < len(bundle.train_targets):
        bundle = replace(bundle, train=_first(bundle.train, train),
                         train_eval=_first(bundle.train_eval, train),
                         train_targets=bundle.train_targets[:train],
                         fingerprint=f"{bundle.fingerprint}-first{train}")
    if test and test < len(bundle.test_targets):
        bundle = replace(bundle, test=_first(bundle.test, test),
                         test_targets=bundle.test_targets[:test])
    return bundle


def relabeled(full: Any, labels: np.ndarray, tag: str) -> Any:
    """``full`` with its training labels replaced by ``labels`` (same images, same
    augmentation), fingerprinted ``<full>-<tag>``."""
    train_eval = image_copy(full.train_eval, targets=labels)
    train = train_eval.with_augmentation(flip=full.train.flip, crop_padding=full.train.crop_padding)
    return replace(full, train=train, train_eval=train_eval, train_targets=labels,
                   fingerprint=f"{full.fingerprint}-{tag}")
