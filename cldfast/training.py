"""The one training loop behind `cldfast track`, `train` and `run`.

A model is trained on a set of ORIGINAL dataset indices with SGD + multistep decay. When a
:class:`Tracking` is given, CLD is recorded on the way: in ``eval`` mode (the paper's
estimator, the default of the pipeline) from an eval-mode pass over the training split after
every tracked epoch, which also gives the validation split's losses (one pass over both,
see :func:`predict` for what makes it fast); in ``train`` mode (an approximation) from the
training forward pass's own per-sample losses (fused cross-entropy, no extra pass over the
training split), plus an eval pass over the validation split. A checkpoint (model, optimizer,
scheduler, tracker, RNG states) is written atomically after every epoch; ``resume=True``
continues from it. Shuffling and augmentation are re-seeded from (seed, epoch) at the start
of every epoch, so a resumed run on the CPU repeats an uninterrupted one bit for bit.

Under torchrun (see :mod:`cldfast.distributed`) the model is wrapped in
DistributedDataParallel, each rank trains on its DistributedSampler share (padding
included) and records only its own batches; evaluation passes are split between ranks;
every rank writes its own checkpoint file per epoch, and rank 0 then commits the epoch in a
small manifest, so a run killed at any moment resumes from an epoch all ranks completed.
"""

from __future__ import annotations

import json
import logging
import math
import random
import resource
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import distributed as ddist
from .data import DatasetBundle, IndexedSubset, InMemoryImageDataset, make_loader
from .io import load_checkpoint, save_checkpoint, write_json
from .models import build_model
from .tracker import CLDTracker

log = logging.getLogger("cldfast")

LOSS_SOURCES = ("eval", "train")


def tqdm(*args, **kwargs):
    """The plain tqdm bar (tqdm.auto's asyncio variant opens an extra loader iterator); tqdm
    comes with the ``pipeline`` extra."""
    from ._extras import require

    return require("tqdm", "cldfast's training loop").tqdm(*args, **kwargs)


@dataclass
class Recipe:
    """Training hyper-parameters. Defaults are the authors' CIFAR recipe (docs/method.md)."""

    epochs: int = 164
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    milestones: tuple[int, ...] | None = None  # None: 81/164 and 121/164 of the epochs
    gamma: float = 0.1
    schedule: str = "multistep"  # or "cosine", "onecycle" (see make_scheduler)
    workers: int = 0
    eval_batch_size: int = 512
    device: str = "auto"
    amp: bool = True            # bfloat16 autocast of the training pass, CUDA only
    channels_last: bool = True  # CUDA, and the CPU in one process (about 2x faster there)
    train_channels_last: bool | None = None  # the training pass alone (None: channels_last);
                                # False keeps the eval passes fast but trains in the layout
                                # (and so with the float rounding) of a contiguous model
    eval_amp: bool = False      # bfloat16 autocast of the eval passes, CUDA only; opt-in
                                # because it moves the eval-mode losses beyond float rounding
    seed: int = 0
    sync_bn: bool = False       # SyncBatchNorm under torch.distributed

    def resolved_milestones(self) -> list[int]:
        if self.milestones is not None:
            return sorted(int(m) for m in self.milestones)
        # Never 0: MultiStepLR would decay the rate before the first epoch.
        return [max(1, round(self.epochs * 81 / 164)), max(1, round(self.epochs * 121 / 164))]

    def resolved_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        dev = torch.device(self.device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"--device {self.device}: torch sees no CUDA GPU here; use --device cpu")
        return dev

    def check(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0; got {self.lr}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0; got {self.workers}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}; got {self.schedule!r}")


SCHEDULES = ("multistep", "cosine", "onecycle")


def make_scheduler(opt: torch.optim.Optimizer, recipe: Recipe):
    """The learning-rate schedule, stepped once per epoch.

    ``multistep``: the authors' step decays (``gamma`` at ``resolved_milestones()``);
    ``cosine``: cosine annealing from ``lr`` to 0 over ``epochs``; ``onecycle``: a linear
    warm-up from ``lr / 25`` to ``lr`` over the first 30 % of the epochs, then cosine
    annealing to ``lr / 1e4`` (the shape of torch's OneCycleLR, per epoch).
    """
    if recipe.schedule == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(opt, recipe.resolved_milestones(), recipe.gamma)
    if recipe.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=recipe.epochs)
    up = max(1, round(0.3 * recipe.epochs))

    def factor(epoch: int) -> float:
        if epoch < up:
            return 1 / 25 + (1 - 1 / 25) * epoch / up
        t = min(1.0, (epoch - up) / max(1, recipe.epochs - up))
        return 1e-4 + (1 - 1e-4) * 0.5 * (1 + math.cos(math.pi * t))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


@dataclass
class Tracking:
    """What to record while training: the tracker over the training split, the source of
    the losses, the validation split (original indices) and which epochs feed CLD."""

    tracker: CLDTracker
    loss_source: str  # "eval" (the paper's estimator) or "train" (an approximation)
    val_indices: np.ndarray
    epochs: list[int]  # 0-based epochs whose end is a CLD checkpoint

    def __post_init__(self) -> None:
        if self.loss_source not in LOSS_SOURCES:
            raise ValueError(f"loss_source must be one of {LOSS_SOURCES}; got {self.loss_source!r}")


class BatchRecorder(Protocol):
    """Something that watches the training pass, e.g. a streaming baseline score.

    ``on_batch`` gets the positions (CPU or device int64 [B], positions in the training
    split), the detached logits [B, C] and the targets [B] of every training batch;
    ``on_epoch_end`` is called after each epoch (0-based). ``state_dict`` /
    ``load_state_dict`` go into the per-epoch checkpoint, so a resumed run continues them.
    """

    def on_batch(self, positions: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor,
                 epoch: int) -> None: ...

    def on_epoch_end(self, epoch: int) -> None: ...

    def scores(self) -> dict[str, np.ndarray]:
        """Named [N] score arrays (stored in the scores file by :func:`cldfast.pipeline.track`)."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class FitResult:
    model: torch.nn.Module
    history: list[dict[str, float]] = field(default_factory=list)
    test_accuracy: float = float("nan")
    seconds: float = 0.0
    tracking_seconds: float = 0.0
    extra_forward_passes: int = 0
    peak_rss_mb: float = 0.0
    peak_cuda_mb: float = 0.0
    prune: dict[str, Any] | None = None  # the pruner's summary (sample-passes saved, ...)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _epoch_seed(seed: int, epoch: int) -> int:
    return (int(seed) * 1_000_003 + int(epoch) * 7919) % 2**62


def _to_device(batch, device: torch.device, channels_last: bool):
    x, y, k = batch
    x = x.to(device, non_blocking=True)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(device, non_blocking=True), k


def _batched_source(dataset) -> InMemoryImageDataset | None:
    """``dataset`` itself when its items can be served a batch at a time (in memory, no
    augmentation), else None (then a DataLoader collates items one by one)."""
    if isinstance(dataset, InMemoryImageDataset) and not dataset.augmented:
        return dataset
    return None


@contextmanager
def _eval_memory_format(model: torch.nn.Module, channels_last: bool):
    """Run the block with ``model``'s 4-D weights in channels_last, restoring their layout
    after. Only the layout changes (the same values), so training is unaffected; on the CPU
    channels_last makes the small CNN's eval forward about 3x faster (max-pooling above
    all), on the GPU it feeds tensor cores. Not done under torch.distributed, where DDP's
    gradient buckets are laid out after the parameters' strides."""
    weights = [p for p in model.parameters() if p.dim() == 4]
    # Every weight is checked: a 1-channel one ([O, 1, kH, kW]) passes either test.
    convert = (channels_last and ddist.rank_world()[1] == 1
               and any(not w.is_contiguous(memory_format=torch.channels_last) for w in weights))
    if convert:
        model.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        if convert:
            model.to(memory_format=torch.contiguous_format)


def predict(model: torch.nn.Module, dataset, indices: np.ndarray, recipe: Recipe,
            device: torch.device, desc: str | None = None, progress: bool = True
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample cross-entropy and correctness of ``dataset[indices]`` in eval mode.

    Returns (losses float32 [M], correct bool [M]) on the CPU, in the order of ``indices``.
    Under torch.distributed call it with each rank's share (:func:`ddist.eval_shard`).

    The fast path, with the same losses as a plain per-sample loop (to float rounding):
    ``torch.inference_mode``; an in-memory dataset without augmentation is indexed a batch
    at a time (no per-item Python, no collation); inputs and weights in channels_last when
    ``recipe.channels_last`` (any device); bfloat16 autocast only with ``recipe.eval_amp``
    on CUDA (opt-in: it changes the losses, and so the scores, beyond float rounding).
    """
    model.eval()
    indices = np.asarray(indices, dtype=np.int64)
    losses = torch.empty(indices.shape[0], dtype=torch.float32)
    correct = torch.empty(indices.shape[0], dtype=torch.bool)
    cl = recipe.channels_last and (device.type == "cuda" or ddist.rank_world()[1] == 1)
    amp = recipe.eval_amp and device.type == "cuda"
    bs = recipe.eval_batch_size
    source = _batched_source(dataset)
    show = progress and desc is not None
    # The layout changes outside inference mode: parameters converted inside it would become
    # inference tensors, which the next training step cannot use.
    with _eval_memory_format(model, cl), torch.inference_mode():
        if source is not None:
            idx = torch.from_numpy(_checked_indices(indices, len(source)))
            starts = range(0, idx.shape[0], bs)
            batches = ((slice(s, s + bs), *source.batch(idx[s:s + bs])) for s in starts)
        else:
            loader = make_loader(IndexedSubset(dataset, indices), bs, shuffle=False,
                                 num_workers=recipe.workers)
            batches = ((k, x, y) for x, y, k in loader)
        for where, x, y in tqdm(batches, desc=desc, leave=False, disable=not show,
                                total=-(-indices.shape[0] // bs)):
            x, y, _ = _to_device((x, y, None), device, cl)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                out = model(x)
            losses[where] = F.cross_entropy(out.float(), y, reduction="none").cpu()
            correct[where] = (out.argmax(1) == y).cpu()
    return losses, correct


def _checked_indices(indices: np.ndarray, length: int) -> np.ndarray:
    if indices.size and (int(indices.min()) < 0 or int(indices.max()) >= length):
        bad = int(indices.min()) if int(indices.min()) < 0 else int(indices.max())
        raise IndexError(f"indices holds {bad}, outside [0, {length}) for a dataset of {length} items")
    return indices


def _shared_predict(model, dataset, indices: np.ndarray, recipe: Recipe, device: torch.device,
                    desc: str, progress: bool) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """:func:`predict` on this rank's share of ``indices``: (positions, losses, correct)."""
    positions = ddist.eval_shard(len(indices))
    losses, correct = predict(model, dataset, indices[positions], recipe, device, desc=desc,
                              progress=progress)
    return positions, losses, correct


def _mean_across(losses: torch.Tensor, correct: torch.Tensor) -> tuple[float, float]:
    total, right, count = ddist.sum_across(
        [float(losses.double().sum()), float(correct.sum()), float(losses.numel())])
    return total / max(count, 1), right / max(count, 1)


class _Checkpoints:
    """Per-epoch checkpoint files. One process: one file, replaced atomically. Several ranks:
    one file per rank and epoch, then (after a barrier) rank 0 commits the epoch in
    ``<name>.manifest.json``; files of older epochs are deleted only after that."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rank, self.world = ddist.rank_world()
        self.manifest = path.with_name(path.name + ".manifest.json")

    def _rank_file(self, tag: str) -> Path:
        return self.path.with_name(f"{self.path.stem}.rank{self.rank}-of-{self.world}"
                                   f".{tag}{self.path.suffix}")

    def latest(self) -> Path | None:
        """The checkpoint file this process resumes from (None: start afresh)."""
        if self.manifest.exists():
            try:
                info = json.loads(self.manifest.read_text())
                tag, world = str(info["tag"]), int(info["world_size"])
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{self.manifest}: unreadable checkpoint manifest ({exc})") from None
        elif self.path.exists():
            tag, world = "", 1
        else:
            return None
        if world != self.world:
            raise ValueError(f"{self.path} checkpoints were written by {world} processes; this run "
                             f"has {self.world}. Resume with torchrun --nproc_per_node={world} "
                             "(and the same number of nodes), or use another --out")
        return self.path if world == 1 else self._rank_file(tag)

    def save(self, tag: str, state: dict[str, Any]) -> None:
        """Write ``state`` as the checkpoint ``tag`` (e.g. ``epoch3``, ``epoch3-batch120``)."""
        if self.world == 1:
            save_checkpoint(self.path, state)
            return
        save_checkpoint(self._rank_file(tag), state)
        ddist.barrier()
        if self.rank == 0:
            write_json(self.manifest, {"tag": tag, "world_size": self.world})
        ddist.barrier()
        for old in self.path.parent.glob(f"{self.path.stem}.rank{self.rank}-of-{self.world}.*"):
            if old != self._rank_file(tag):
                old.unlink(missing_ok=True)


class Preempted(SystemExit):
    """Raised after SIGTERM once a checkpoint is on disk; exit status 143 (128 + SIGTERM)."""

    def __init__(self, where: str) -> None:
        super().__init__(143)
        self.where = where


class _SigtermWatch:
    """Turns SIGTERM into a request to checkpoint and stop at the next batch boundary.

    Under torch.distributed the ranks agree (a one-element all-reduce every ``every``
    batches and at the end of an epoch), so that all of them stop after the same batch.
    """

    def __init__(self, every: int = 20) -> None:
        self.requested = False
        self.every = every
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:  # noqa: ARG002 - signal handler signature
        self.requested = True

    def close(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def agreed(self, batch: int | None = None) -> bool:
        """Whether to stop now; ``batch`` is the 0-based batch just finished (None: epoch end)."""
        if ddist.rank_world()[1] == 1:
            return self.requested
        if batch is not None and (batch + 1) % self.every:
            return False
        return ddist.sum_across([float(self.requested)])[0] > 0


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def fit(bundle: DatasetBundle, train_indices: np.ndarray, arch: str, recipe: Recipe, *,
        tracking: Tracking | None = None, stop_epoch: int | None = None,
        checkpoint: str | Path | None = None, resume: bool = False, evaluate_test: bool = True,
        progress: bool = True, desc: str = "train", run_config: dict[str, Any] | None = None,
        recorders: Sequence[BatchRecorder] = (), pruner: Any = None) -> FitResult:
    """Train ``arch`` on ``bundle.train[train_indices]``, optionally tracking CLD.

    Args:
        train_indices: int64 [M] original dataset indices to train on (with tracking: the
            training split, in the order the tracker's positions refer to).
        stop_epoch: stop after this many epochs (default ``recipe.epochs``); the learning
            rate schedule still follows ``recipe.epochs``.
        checkpoint: file for the per-epoch checkpoint; ``resume`` continues from it.
        run_config: anything identifying the run; a resumed checkpoint must match it.
        recorders: watchers of every training batch (see :class:`BatchRecorder`).
        pruner: a :class:`cldfast.pruning.Pruner`: each epoch trains on its plan, each kept
            sample's loss weighted by its weight (see :mod:`cldfast.pruning`).
    """
    recipe.check()
    device = ddist.local_device(recipe.resolved_device())
    rank, world = ddist.rank_world()
    progress = progress and rank == 0
    stop = recipe.epochs if stop_epoch is None else int(stop_epoch)
    _seed_everything(recipe.seed)
    model = build_model(arch, bundle.num_classes, bundle.input_shape).to(device)
    # channels_last on the CPU too (mkldnn's pooling and convolutions are much faster in it),
    # but not under DDP there: its gradient buckets follow the parameters' strides.
    train_cl = recipe.channels_last if recipe.train_channels_last is None else recipe.train_channels_last
    cl = train_cl and (device.type == "cuda" or world == 1)
    amp = recipe.amp and device.type == "cuda"
    if cl:
        model = model.to(memory_format=torch.channels_last)
    if world > 1 and recipe.sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    net = (torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)
        if world > 1 else model)
    opt = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                          nesterov=recipe.nesterov and recipe.momentum > 0,
                          weight_decay=recipe.weight_decay)
    sched = make_scheduler(opt, recipe)
    config = {"arch": arch, "recipe": asdict(recipe), "dataset": bundle.fingerprint,
              "num_train": int(len(train_indices)), "world_size": world, **(run_config or {})}
    result = FitResult(model=model)
    start_epoch = 0
    resume_batches, resume_partial, resume_rng = 0, None, None
    ckpts = _Checkpoints(Path(checkpoint)) if checkpoint is not None else None
    ckpt = ckpts.latest() if ckpts is not None and resume else None
    if ckpt is not None:
        state = load_checkpoint(ckpt)
        if state.get("config") != _jsonable(config):
            raise ValueError(f"{ckpt} was written by a run with other settings; resume with the "
                             "same options, or delete the checkpoint / use another --out")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        if tracking is not None:
            tracking.tracker.load_state_dict(state["tracker"])
        for rec, rec_state in zip(recorders, state.get("recorders") or []):
            rec.load_state_dict(rec_state)
        if pruner is not None:
            pruner.load_state_dict(state["pruner"])
        start_epoch = int(state["epoch"])
        resume_batches = int(state.get("batches_done", 0))
        resume_partial = state.get("partial")
        resume_rng = state.get("rng")
        result.history = list(state["history"])
        result.seconds = float(state.get("seconds", 0.0))
        result.tracking_seconds = float(state.get("tracking_seconds", 0.0))
        result.extra_forward_passes = int(state.get("extra_forward_passes", 0))
        log.info("resumed %s from %s at epoch %d%s", desc, ckpt, start_epoch,
                 f" after batch {resume_batches}" if resume_batches else "")
    elif resume and ckpts is not None:
        log.info("no checkpoint at %s; starting %s from scratch", ckpts.path, desc)

    train_set = IndexedSubset(bundle.train, train_indices)
    tracked = set(tracking.epochs) if tracking is not None else set()
    watch = _SigtermWatch()

    def snapshot(epoch_done: int, batches_done: int, partial: list[float] | None) -> dict[str, Any]:
        return {
            "config": _jsonable(config), "epoch": epoch_done, "batches_done": batches_done,
            "partial": partial, "model": model.state_dict(),
            "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "tracker": tracking.tracker.state_dict() if tracking is not None else None,
            "recorders": [rec.state_dict() for rec in recorders],
            "pruner": pruner.state_dict() if pruner is not None else None,
            "history": result.history, "seconds": result.seconds,
            "tracking_seconds": result.tracking_seconds,
            "extra_forward_passes": result.extra_forward_passes,
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                    "python": list(random.getstate()[1])},
        }

    try:
        for epoch in range(start_epoch, stop):
            t0 = time.perf_counter()
            net.train()
            # Augmentation in the main process draws from torch's global generator.
            torch.manual_seed(_epoch_seed(recipe.seed, epoch) + rank)
            sampler = None
            if pruner is not None:
                sampler = pruner.sampler(epoch, rank=rank, world_size=world)
            elif world > 1:
                sampler = torch.utils.data.DistributedSampler(
                    train_set, num_replicas=world, rank=rank, shuffle=True, seed=recipe.seed,
                    drop_last=False)
                sampler.set_epoch(epoch)
            loader = make_loader(train_set, recipe.batch_size, shuffle=sampler is None,
                                 num_workers=recipe.workers, seed=_epoch_seed(recipe.seed, epoch),
                                 sampler=sampler)
            record_train = (tracking is not None and epoch in tracked
                            and tracking.loss_source == "train")
            # Running sums stay on the device: reading them every batch would synchronise.
            sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss, correct, seen
            skip = resume_batches if epoch == start_epoch else 0
            if skip and resume_partial is not None:
                sums += torch.tensor(resume_partial, dtype=torch.float64, device=device)
            bar = tqdm(loader, desc=f"{desc} {epoch + 1}/{stop}", leave=False, disable=not progress)
            for b, batch in enumerate(bar):
                if b < skip:
                    # Replaying the loader repeats the original run's shuffling and augmentation;
                    # the saved generator state then covers what the skipped steps consumed.
                    if b == skip - 1 and resume_rng is not None:
                        torch.set_rng_state(resume_rng["torch"])
                    continue
                x, y, k = _to_device(batch, device, cl)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    out = net(x)
                if record_train:
                    losses = tracking.tracker.record(k, logits=out, targets=y)
                else:
                    losses = F.cross_entropy(out.float(), y, reduction="none")
                watchers = list(recorders) + ([pruner] if pruner is not None
                                              and pruner.needs_batches else [])
                if watchers:
                    # Under torch.distributed every rank's recorders see every rank's batch, so
                    # each holds the whole run's per-sample state (the scores rank 0 writes).
                    seen_k, seen_out, seen_y = ddist.gather_batch(k, out.detach(), y)
                    for rec in watchers:
                        rec.on_batch(seen_k, seen_out, seen_y, epoch)
                if pruner is not None:
                    loss = (losses * pruner.loss_weights(k, losses.device)).mean()
                else:
                    loss = losses.mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                with torch.no_grad():
                    sums[0] += losses.detach().sum()
                    sums[1] += (out.argmax(1) == y).sum()
                    sums[2] += y.shape[0]
                if progress and b % 50 == 0:
                    tl, tc, ts = sums.tolist()
                    bar.set_postfix(loss=f"{tl / ts:.3f}", acc=f"{100 * tc / ts:.1f}%")
                if watch.agreed(b):
                    tag = f"epoch{epoch}-batch{b + 1}"
                    if ckpts is not None:
                        ckpts.save(tag, snapshot(epoch, b + 1, sums.tolist()))
                    raise Preempted(f"epoch {epoch + 1}, after batch {b + 1}")
            tot_loss, tot_correct, seen = sums.tolist()
            sched.step()
            for rec in recorders:
                rec.on_epoch_end(epoch)
            tot_loss, tot_correct, seen = ddist.sum_across([tot_loss, float(tot_correct), float(seen)])
            entry = {"epoch": epoch + 1, "train_loss": tot_loss / max(seen, 1),
                     "train_acc": tot_correct / max(seen, 1), "lr": opt.param_groups[0]["lr"]}
            if pruner is not None:
                entry["kept_fraction"] = float(pruner.history[-1]["kept"]) / pruner.num_samples
            train_seconds = time.perf_counter() - t0
            if tracking is not None and epoch in tracked:
                t1 = time.perf_counter()
                tr = tracking.tracker
                if tracking.loss_source == "eval":
                    # One eval pass serves the training split's losses and the validation
                    # split's: the two index lists are concatenated and split again after.
                    both = np.concatenate([train_indices, tracking.val_indices])
                    positions, losses, vcorrect = _shared_predict(
                        model, bundle.train_eval, both, recipe, device,
                        "eval pass (train + validation split)", progress)
                    is_train = positions < train_indices.shape[0]
                    mask = torch.from_numpy(is_train)
                    tr.record(torch.from_numpy(positions[is_train]), losses[mask].to(tr.device))
                    positions = positions[~is_train] - train_indices.shape[0]
                    vloss, vcorrect = losses[~mask], vcorrect[~mask]
                    result.extra_forward_passes += 1
                else:
                    positions, vloss, vcorrect = _shared_predict(
                        model, bundle.train_eval, tracking.val_indices, recipe, device,
                        "validation", progress)
                tr.record_validation(vloss, torch.from_numpy(positions))
                tr.end_epoch()
                val_loss, val_acc = _mean_across(vloss, vcorrect)
                entry.update(val_loss=val_loss, val_acc=val_acc)
                result.tracking_seconds += time.perf_counter() - t1
            result.seconds += time.perf_counter() - t0
            entry["seconds"] = time.perf_counter() - t0
            entry["train_seconds"] = train_seconds
            result.history.append(entry)
            msg = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in entry.items())
            log.info("%s epoch %d/%d: %s", desc, epoch + 1, stop, msg)
            if ckpts is not None:
                ckpts.save(f"epoch{epoch + 1}", snapshot(epoch + 1, 0, None))
            if watch.agreed():
                raise Preempted(f"the end of epoch {epoch + 1}")
    finally:
        watch.close()
    if evaluate_test:
        _, losses, correct = _shared_predict(model, bundle.test, np.arange(len(bundle.test_targets)),
                                             recipe, device, "test", progress)
        result.test_accuracy = _mean_across(losses, correct)[1]
        log.info("%s: test accuracy %.2f %%", desc, 100 * result.test_accuracy)
    if pruner is not None:
        result.prune = pruner.summary()
    result.peak_rss_mb = _peak_rss_mb()
    if device.type == "cuda":
        result.peak_cuda_mb = torch.cuda.max_memory_allocated(device) / 2**20
    return result


def _jsonable(obj: Any) -> Any:
    """Config values as plain lists/dicts/scalars, so they compare equal after torch.save."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj
