"""The one training loop behind `cldfast track`, `train` and `run`.

A model is trained on a set of ORIGINAL dataset indices with the recipe's optimizer and
schedule (:mod:`cldfast.training.recipe`). When a :class:`Tracking` is given, CLD is recorded
on the way: in ``eval`` mode (the paper's estimator, the default of the pipeline) from an
eval-mode pass over the training split after every tracked epoch, which also gives the
validation split's losses (one pass over both, see :func:`cldfast.training.predict` for what
makes it fast); in ``train`` mode (an approximation) from the training forward pass's own
per-sample losses (fused cross-entropy, no extra pass over the training split), plus an eval
pass over the validation split. A checkpoint (model, optimizer, scheduler, tracker,
recorders, pruner, RNG states) is written atomically after every epoch; ``resume=True``
continues from it. Shuffling and augmentation are re-seeded from (seed, epoch) at the start
of every epoch, so a resumed run on the CPU repeats an uninterrupted one bit for bit.

Under torchrun (see :mod:`cldfast.core.distributed`) the model is wrapped in
DistributedDataParallel, each rank trains on its DistributedSampler share (padding
included) and records only its own batches; evaluation passes are split between ranks;
every rank writes its own checkpoint file per epoch, and rank 0 then commits the epoch in a
small manifest, so a run killed at any moment resumes from an epoch all ranks completed.

Streamed data (WebDataset shards, :mod:`cldfast.data.stream`) has no positions to sample:
each epoch's loader reads ``bundle.train.training_view`` (shards shuffled per epoch and split
between ranks and loader workers, a seeded shuffle buffer; index order with
``recipe.shuffle=False``), whose items carry their positions as IndexedSubset's do, and
the eval passes stream the shards once (:func:`cldfast.training.shared_predict`).

The parts, in the order :func:`fit` runs them: :class:`_Run` builds the model, optimizer and
schedule and restores a resume checkpoint (``resume``); ``train_epoch`` is the batch loop;
``end_epoch`` runs the epoch-end hooks (:class:`Tracking` closes the tracked CLD epoch after
its eval pass, then the recorders and the callbacks; the public hooks and their order:
:mod:`cldfast.training.callbacks`); ``test`` is the test pass.
"""

from __future__ import annotations

import logging
import random
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..core import distributed as ddist
from ..core.tracker import CLDTracker
from ..data.datasets import DatasetBundle
from ..data.indexed import IndexedSubset, make_loader
from .checkpoints import Checkpoints, Preempted, SigtermWatch, jsonable, load_checkpoint
from .evaluation import mean_across, shared_predict, to_device, tqdm
from .models import model_name, resolve_model
from .callbacks import BatchRecorder, Callback, FitContext, PrunerLike, TrainBatch, state_keys
from .recipe import Recipe, make_optimizer, make_scheduler, smoothed_losses
from .seeding import epoch_seed, seed_everything

log = logging.getLogger("cldfast")

__all__ = ["LOSS_SOURCES", "Tracking", "BatchRecorder", "Callback", "FitContext", "TrainBatch",
           "FitResult", "fit"]

LOSS_SOURCES = ("eval", "train")


@dataclass
class Tracking(Callback):
    """CLD tracking as a callback of :func:`fit`: the tracker over the training split, the
    source of the losses, the validation split (original indices) and which epochs feed CLD
    (their ends are the tracked epochs, the checkpoints of CLD). Its ``on_epoch_end`` runs
    first among the callbacks: the eval pass, then the tracked epoch is closed."""

    tracker: CLDTracker
    loss_source: str  # "eval" (the paper's estimator) or "train" (an approximation)
    val_indices: np.ndarray
    epochs: list[int]  # 0-based epochs whose end closes a tracked epoch
    state_key = "tracker"

    def __post_init__(self) -> None:
        if self.loss_source not in LOSS_SOURCES:
            raise ValueError(f"loss_source must be one of {LOSS_SOURCES}; got {self.loss_source!r}")
        self._tracked = set(int(e) for e in self.epochs)

    def records_training(self, epoch: int) -> bool:
        """Whether the training pass of ``epoch`` feeds the tracker (train mode)."""
        return self.loss_source == "train" and epoch in self._tracked

    def on_epoch_end(self, ctx: FitContext, epoch: int) -> dict[str, float] | None:
        """After a tracked epoch: the eval pass (eval mode: training and validation split in
        one pass; train mode: the validation split), ``record_validation`` and ``end_epoch``.
        Returns the validation loss and accuracy for the epoch's log (None if untracked)."""
        if epoch not in self._tracked:
            return None
        t0 = time.perf_counter()
        tr, n_train = self.tracker, ctx.train_indices.shape[0]
        if self.loss_source == "eval":
            # One eval pass serves the training split's losses and the validation split's:
            # the two index lists are concatenated and split again after.
            both = np.concatenate([ctx.train_indices, self.val_indices])
            positions, losses, vcorrect = shared_predict(
                ctx.model, ctx.bundle.train_eval, both, ctx.recipe, ctx.device,
                "eval pass (train + validation split)", ctx.progress)
            is_train = positions < n_train
            mask = torch.from_numpy(is_train)
            tr.record(torch.from_numpy(positions[is_train]), losses[mask].to(tr.device))
            positions = positions[~is_train] - n_train
            vloss, vcorrect = losses[~mask], vcorrect[~mask]
            ctx.result.extra_forward_passes += 1
        else:
            positions, vloss, vcorrect = shared_predict(
                ctx.model, ctx.bundle.train_eval, self.val_indices, ctx.recipe, ctx.device,
                "validation", ctx.progress)
        tr.record_validation(vloss, torch.from_numpy(positions))
        tr.end_epoch()
        val_loss, val_acc = mean_across(vloss, vcorrect)
        ctx.result.tracking_seconds += time.perf_counter() - t0
        return {"val_loss": val_loss, "val_acc": val_acc}


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


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0



class _Run:
    """One call of :func:`fit`: the model, optimizer, schedule, checkpoints and the result."""

    def __init__(self, bundle: DatasetBundle, train_indices: np.ndarray, model: Any,
                 recipe: Recipe, *, tracking: Tracking | None, recorders: Sequence[BatchRecorder],
                 pruner: PrunerLike | None, callbacks: Sequence[Callback],
                 checkpoint: str | Path | None, progress: bool, desc: str,
                 run_config: dict[str, Any] | None, stop_epoch: int) -> None:
        recipe.check()
        # workers="auto" resolved for this data (0 for in-memory tensors): the checkpoint's
        # config records the number, and the eval passes use the same.
        recipe = recipe.resolved(bundle.train)
        self.bundle, self.recipe, self.desc = bundle, recipe, desc
        self.streamed = bundle.streamed
        if self.streamed and pruner is not None:
            raise ValueError("dynamic pruning (prune= / --prune) needs a map-style dataset: a "
                             "pruner trains each epoch on a plan of positions, which streamed "
                             "WebDataset shards cannot serve; prune a map-style dataset, or train "
                             "on a CLD coreset of the shards (indices= / --scores)")
        self.train_indices = np.asarray(train_indices, dtype=np.int64)
        self.tracking, self.recorders, self.pruner = tracking, list(recorders), pruner
        self.callbacks = list(callbacks)
        self.recorder_keys = state_keys(self.recorders)
        self.callback_keys = state_keys(self.callbacks)
        self.device = ddist.local_device(recipe.resolved_device())
        self.rank, self.world = ddist.rank_world()
        self.progress = progress and self.rank == 0
        seed_everything(recipe.seed)
        self.model = resolve_model(model, bundle.num_classes, bundle.input_shape).to(self.device)
        # channels_last on the CPU too (mkldnn's pooling and convolutions are much faster in
        # it), but not under DDP there: its gradient buckets follow the parameters' strides.
        train_cl = recipe.channels_last if recipe.train_channels_last is None else recipe.train_channels_last
        self.channels_last = train_cl and (self.device.type == "cuda" or self.world == 1)
        self.amp = recipe.amp and self.device.type == "cuda"
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if self.world > 1 and recipe.sync_bn:
            self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.net = (torch.nn.parallel.DistributedDataParallel(
            self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            if self.world > 1 else self.model)
        self.opt = make_optimizer(self.model.parameters(), recipe)
        self.sched = make_scheduler(self.opt, recipe)
        self.config = {"arch": model_name(model), "recipe": recipe.identity(),
                       "dataset": bundle.fingerprint, "num_train": int(len(train_indices)),
                       "world_size": self.world, **(run_config or {})}
        self.result = FitResult(model=self.model)
        self.ckpts = Checkpoints(Path(checkpoint)) if checkpoint is not None else None
        self.start_epoch, self.resume_batches = 0, 0
        self.resume_partial: list[float] | None = None
        self.resume_rng: dict[str, Any] | None = None
        self.elastic_order: np.ndarray | None = None  # rest of a stopped epoch, another world
        # Map-style data: the training split, indexed by position. Streamed data: None (each
        # epoch's loader reads bundle.train.training_view, see _loader).
        self.train_set = None if self.streamed else IndexedSubset(bundle.train, self.train_indices)
        # Watchers of every batch: the recorders, and a pruner that scores from the batches.
        self.watchers = self.recorders + ([pruner] if pruner is not None and pruner.needs_batches
                                          else [])
        self.ctx = FitContext(bundle=bundle, train_indices=self.train_indices, recipe=recipe,
                              model=self.model, device=self.device, rank=self.rank,
                              world=self.world, progress=self.progress, result=self.result,
                              stop_epoch=int(stop_epoch))

    # ----- checkpoints ---------------------------------------------------------------------
    def resume(self) -> None:
        """Continue from the latest checkpoint, if any (its config must match this run's).

        At another number of processes than the one that wrote it (an elastic or requeued
        job) every rank reads all of that run's files: model, optimizer, schedule, recorders
        and pruner from rank 0's (they are equal on every rank), the tracker resharded from
        all of them (:meth:`CLDTracker.load_state_dict`). An epoch stopped halfway continues
        with the samples the stopped run had not reached (:meth:`_elastic_order`)."""
        found = self.ckpts.latest() if self.ckpts is not None else None
        if found is None:
            if self.ckpts is not None:
                log.info("no checkpoint at %s; starting %s from scratch", self.ckpts.path, self.desc)
            return
        files, written_by = found
        states = [load_checkpoint(f) for f in files]
        state = states[0]
        ckpt = files[0] if len(files) == 1 else files[0].parent
        config = {k: v for k, v in jsonable(self.config).items() if k != "world_size"}
        saved = {k: v for k, v in (state.get("config") or {}).items() if k != "world_size"}
        if saved != config:
            differ = sorted(k for k in set(saved) | set(config) if saved.get(k) != config.get(k))
            raise ValueError(f"{ckpt} was written by a run with other settings ({', '.join(differ)} "
                             "differ); resume with the same options, or delete the checkpoint / "
                             "use another output folder")
        batches_done = int(state.get("batches_done", 0))
        elastic = written_by != self.world
        if elastic and batches_done and self.streamed:
            raise ValueError(f"{ckpt} stopped a streamed run halfway through an epoch with "
                             f"{written_by} processes; resume it with torchrun "
                             f"--nproc_per_node={written_by} (that epoch's shards were split "
                             "between that many ranks), or from an epoch's end")
        if elastic and batches_done and self.pruner is not None:
            raise ValueError(f"{ckpt} stopped pruned training halfway through an epoch with "
                             f"{written_by} processes; resume it with torchrun "
                             f"--nproc_per_node={written_by} (a pruned epoch's plan is split "
                             "between the ranks that started it)")
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        if self.tracking is not None:
            tracker_states = [s["tracker"] for s in states]
            self.tracking.tracker.load_state_dict(tracker_states if elastic else tracker_states[0])
        self._load_keyed("recorders", self.recorders, self.recorder_keys, state, ckpt)
        self._load_keyed("callbacks", self.callbacks, self.callback_keys, state, ckpt)
        if self.pruner is not None:
            self.pruner.load_state_dict(state["pruner"])
        self.start_epoch = int(state["epoch"])
        if elastic:
            # The stopped epoch's remaining samples, split between this run's ranks; its
            # running sums so far belong to the run's total, counted once (on rank 0).
            self.resume_batches = 0
            if batches_done:
                self.elastic_order = self._elastic_order(self.start_epoch, written_by, batches_done)
                partials = [s.get("partial") or [0.0, 0.0, 0.0] for s in states]
                self.resume_partial = ([sum(p[i] for p in partials) for i in range(3)]
                                       if self.rank == 0 else None)
            log.info("%s: checkpoint written by %d process(es), resumed with %d", self.desc,
                     written_by, self.world)
        else:
            self.resume_batches = batches_done
            self.resume_partial = state.get("partial")
            self.resume_rng = state.get("rng")
        r = self.result
        r.history = list(state["history"])
        r.seconds = float(state.get("seconds", 0.0))
        r.tracking_seconds = float(state.get("tracking_seconds", 0.0))
        r.extra_forward_passes = int(state.get("extra_forward_passes", 0))
        log.info("resumed %s from %s at epoch %d%s", self.desc, ckpt, self.start_epoch,
                 f" after batch {batches_done}" if batches_done else "")

    @staticmethod
    def _load_keyed(what: str, objects: list[Any], keys: list[str], state: dict[str, Any],
                    ckpt: Any) -> None:
        """Restore recorders or callbacks from a resume checkpoint: by ``state_key`` (a list,
        as checkpoints before state keys wrote the recorders, is matched by position)."""
        saved = state.get(what) or {}
        if isinstance(saved, list):
            saved = dict(zip(keys, saved))
        for obj, key in zip(objects, keys):
            if not hasattr(obj, "load_state_dict"):
                continue
            if key not in saved:
                raise ValueError(f"{ckpt} holds no state for the {what[:-1]} {key!r} (it has "
                                 f"{sorted(saved) or 'none'}); resume with the same {what}")
            obj.load_state_dict(saved[key])

    def _elastic_order(self, epoch: int, old_world: int, batches_done: int) -> np.ndarray:
        """This rank's positions for the rest of ``epoch`` after a run of ``old_world``
        processes stopped it after ``batches_done`` batches per rank: the samples none of its
        ranks had reached, in that run's order, padded to a multiple of this run's world
        size and split as DistributedSampler splits (equal counts, so equal batch counts)."""
        n = len(self.train_set)
        seen = self.recipe.batch_size * batches_done
        orders = [self._epoch_order(epoch, rank, old_world) for rank in range(old_world)]
        done = np.zeros(n, dtype=bool)
        for order in orders:
            done[order[:seen]] = True
        rest = [order[seen:] for order in orders]
        width = max((len(r) for r in rest), default=0)
        # Interleaved as the stopped run would have reached them; repeats (padding) dropped.
        queue = [r[j] for j in range(width) for r in rest if j < len(r)]
        left = [int(i) for i in dict.fromkeys(queue) if not done[i]]
        if not left:
            return np.zeros(0, dtype=np.int64)
        total = -(-len(left) // self.world) * self.world
        padded = np.resize(np.asarray(left, dtype=np.int64), total)
        return padded[self.rank::self.world]

    def _epoch_order(self, epoch: int, rank: int, world: int) -> np.ndarray:
        """The positions rank ``rank`` of a ``world``-process run trains on in ``epoch``, in
        order (the loader of :meth:`_loader`, over positions instead of samples)."""
        positions = torch.utils.data.TensorDataset(torch.arange(len(self.train_set)))
        loader = self._loader(epoch, dataset=positions, rank=rank, world=world, workers=0)
        return torch.cat([b[0] for b in loader]).numpy() if len(loader) else np.zeros(0, np.int64)

    def snapshot(self, epoch_done: int, batches_done: int, partial: list[float] | None) -> dict[str, Any]:
        r = self.result
        return {
            "config": jsonable(self.config), "epoch": epoch_done, "batches_done": batches_done,
            "partial": partial, "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
            "tracker": self.tracking.tracker.state_dict() if self.tracking is not None else None,
            "recorders": {k: rec.state_dict() for k, rec in zip(self.recorder_keys, self.recorders)},
            "callbacks": {k: cb.state_dict() for k, cb in zip(self.callback_keys, self.callbacks)
                          if hasattr(cb, "state_dict")},
            "pruner": self.pruner.state_dict() if self.pruner is not None else None,
            "history": r.history, "seconds": r.seconds,
            "tracking_seconds": r.tracking_seconds,
            "extra_forward_passes": r.extra_forward_passes,
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                    "python": list(random.getstate()[1])},
        }

    # ----- one epoch -----------------------------------------------------------------------
    def _loader(self, epoch: int, *, dataset: Any = None, rank: int | None = None,
                world: int | None = None, workers: int | None = None):
        """The training loader of ``epoch`` (over ``dataset``, default the training split,
        as rank ``rank`` of ``world`` processes, default this run's)."""
        rank = self.rank if rank is None else rank
        world = self.world if world is None else world
        workers = self.recipe.workers if workers is None else workers
        if self.streamed and dataset is None:
            # The shards in this epoch's order (seeded), split between ranks and workers.
            view = self.bundle.train.training_view(
                self.train_indices, seed=epoch_seed(self.recipe.seed, epoch), rank=rank,
                world=world, shuffle=self.recipe.shuffle, batch_size=self.recipe.batch_size,
                workers=workers)
            return make_loader(view, self.recipe.batch_size, shuffle=False, num_workers=workers,
                               seed=epoch_seed(self.recipe.seed, epoch))
        dataset = self.train_set if dataset is None else dataset
        sampler = None
        if epoch == self.start_epoch and self.elastic_order is not None and dataset is self.train_set:
            sampler = self.elastic_order.tolist()
        elif self.pruner is not None:
            sampler = self.pruner.sampler(epoch, rank=rank, world_size=world)
        elif world > 1:
            sampler = torch.utils.data.DistributedSampler(
                dataset, num_replicas=world, rank=rank, shuffle=self.recipe.shuffle,
                seed=self.recipe.seed, drop_last=False)
            sampler.set_epoch(epoch)
        return make_loader(dataset, self.recipe.batch_size,
                           shuffle=sampler is None and self.recipe.shuffle, num_workers=workers,
                           seed=epoch_seed(self.recipe.seed, epoch), sampler=sampler)

    def _batch_losses(self, k, out, y, record: bool) -> torch.Tensor:
        """Per-sample losses of the training objective (CE, label-smoothed if asked); in
        train mode the plain CE goes into the tracker on the way (fused kernel)."""
        if record:
            ce = self.tracking.tracker.record(k, logits=out, targets=y)
        else:
            ce = F.cross_entropy(out.float(), y, reduction="none")
        return smoothed_losses(ce, out, float(self.recipe.label_smoothing))

    def train_epoch(self, epoch: int, stop: int, watch: SigtermWatch) -> dict[str, float]:
        """The batch loop of ``epoch``; returns the epoch's training loss and accuracy."""
        self.net.train()
        self.ctx.epoch = epoch
        # Augmentation in the main process draws from torch's global generator.
        torch.manual_seed(epoch_seed(self.recipe.seed, epoch) + self.rank)
        loader = self._loader(epoch)
        record = self.tracking is not None and self.tracking.records_training(epoch)
        # Running sums stay on the device: reading them every batch would synchronise.
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)  # loss, correct, seen
        skip = self.resume_batches if epoch == self.start_epoch else 0
        if epoch == self.start_epoch and self.resume_partial is not None:
            sums += torch.tensor(self.resume_partial, dtype=torch.float64, device=self.device)
        bar = tqdm(loader, desc=f"{self.desc} {epoch + 1}/{stop}", leave=False,
                   disable=not self.progress)
        for b, batch in enumerate(bar):
            if b < skip:
                # Replaying the loader repeats the original run's shuffling and augmentation;
                # the saved generator state then covers what the skipped steps consumed.
                if b == skip - 1 and self.resume_rng is not None:
                    torch.set_rng_state(self.resume_rng["torch"])
                continue
            x, y, k = to_device(batch, self.device, self.channels_last)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                out = self.net(x)
            losses = self._batch_losses(k, out, y, record)
            if self.watchers or self.callbacks:
                # Under torch.distributed every rank's recorders see every rank's batch, so
                # each holds the whole run's per-sample state (the scores rank 0 writes).
                seen_k, seen_out, seen_y = ddist.gather_batch(k, out.detach(), y)
                for rec in self.watchers:
                    rec.on_batch(seen_k, seen_out, seen_y, epoch)
                if self.callbacks:
                    seen = TrainBatch(seen_k, seen_out, seen_y, epoch)
                    for cb in self.callbacks:
                        cb.on_train_batch(self.ctx, seen)
            if self.pruner is not None:
                loss = (losses * self.pruner.loss_weights(k, losses.device)).mean()
            else:
                loss = losses.mean()
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            with torch.no_grad():
                sums[0] += losses.detach().sum()
                sums[1] += (out.argmax(1) == y).sum()
                sums[2] += y.shape[0]
            if self.progress and b % 50 == 0:
                tl, tc, ts = sums.tolist()
                bar.set_postfix(loss=f"{tl / ts:.3f}", acc=f"{100 * tc / ts:.1f}%")
            if watch.agreed(b):
                if self.ckpts is not None:
                    self.ckpts.save(f"epoch{epoch}-batch{b + 1}", self.snapshot(epoch, b + 1, sums.tolist()))
                raise Preempted(f"epoch {epoch + 1}, after batch {b + 1}")
        tot_loss, tot_correct, seen = sums.tolist()
        self.sched.step()
        tot_loss, tot_correct, seen = ddist.sum_across([tot_loss, float(tot_correct), float(seen)])
        entry = {"epoch": epoch + 1, "train_loss": tot_loss / max(seen, 1),
                 "train_acc": tot_correct / max(seen, 1), "lr": self.opt.param_groups[0]["lr"]}
        if self.pruner is not None:
            entry["kept_fraction"] = float(self.pruner.history[-1]["kept"]) / self.pruner.num_samples
        return entry

    def end_epoch(self, epoch: int, entry: dict[str, Any]) -> None:
        """The epoch-end hooks, in order: CLD tracking (eval pass, tracked epoch closed), the
        recorders, the callbacks; what they return goes into the epoch's log ``entry``."""
        self.ctx.epoch = epoch
        if self.tracking is not None:
            entry.update(self.tracking.on_epoch_end(self.ctx, epoch) or {})
        for rec in self.recorders:
            rec.on_epoch_end(epoch)
        for cb in self.callbacks:
            entry.update(cb.on_epoch_end(self.ctx, epoch) or {})

    def test(self) -> float:
        if len(self.bundle.test_targets) == 0:  # e.g. shards without --test-data-path
            log.info("%s: no test split; test accuracy not measured", self.desc)
            return float("nan")
        _, losses, correct = shared_predict(self.model, self.bundle.test,
                                            np.arange(len(self.bundle.test_targets)), self.recipe,
                                            self.device, "test", self.progress)
        return mean_across(losses, correct)[1]


def fit(bundle: DatasetBundle, train_indices: np.ndarray, model: Any, recipe: Recipe, *,
        tracking: Tracking | None = None, stop_epoch: int | None = None,
        checkpoint: str | Path | None = None, resume: bool = False, evaluate_test: bool = True,
        progress: bool = True, desc: str = "train", run_config: dict[str, Any] | None = None,
        recorders: Sequence[BatchRecorder] = (), pruner: PrunerLike | None = None,
        callbacks: Sequence[Callback] = ()) -> FitResult:
    """Train ``model`` on ``bundle.train[train_indices]``, optionally tracking CLD.

    Args:
        model: an architecture name (:func:`cldfast.training.build_model`), an ``nn.Module``
            (copied: every fit starts from its weights as given) or a factory
            ``fn(num_classes, input_shape) -> nn.Module``.
        train_indices: int64 [M] original dataset indices to train on (with tracking: the
            training split, in the order the tracker's positions refer to).
        tracking: CLD tracking (:class:`Tracking`), the first callback at every epoch's end.
        stop_epoch: stop after this many epochs (default ``recipe.epochs``); the learning
            rate schedule still follows ``recipe.epochs``.
        checkpoint: file for the per-epoch resume checkpoint; ``resume`` continues from it.
        run_config: anything identifying the run; a resumed checkpoint must match it.
        recorders: watchers of every training batch (see :class:`BatchRecorder`).
        pruner: a :class:`cldfast.training.pruning.Pruner` (:class:`PrunerLike`): each epoch
            trains on its plan, each kept sample's loss weighted by its weight.
        callbacks: :class:`Callback` objects; the order of all hooks is documented in
            :mod:`cldfast.training.callbacks`.
    """
    stop = recipe.epochs if stop_epoch is None else int(stop_epoch)
    run = _Run(bundle, train_indices, model, recipe, tracking=tracking, recorders=recorders,
               pruner=pruner, callbacks=callbacks, checkpoint=checkpoint, progress=progress,
               desc=desc, run_config=run_config, stop_epoch=stop)
    if resume:
        run.resume()
    result, watch = run.result, SigtermWatch()
    for cb in run.callbacks:
        cb.on_fit_start(run.ctx)
    try:
        for epoch in range(run.start_epoch, stop):
            t0 = time.perf_counter()
            entry = run.train_epoch(epoch, stop, watch)
            train_seconds = time.perf_counter() - t0
            run.end_epoch(epoch, entry)
            result.seconds += time.perf_counter() - t0
            entry["seconds"] = time.perf_counter() - t0
            entry["train_seconds"] = train_seconds
            result.history.append(entry)
            msg = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in entry.items())
            log.info("%s epoch %d/%d: %s", desc, epoch + 1, stop, msg)
            if run.ckpts is not None:
                run.ckpts.save(f"epoch{epoch + 1}", run.snapshot(epoch + 1, 0, None))
            if watch.agreed():
                raise Preempted(f"the end of epoch {epoch + 1}")
    finally:
        watch.close()
    for cb in run.callbacks:
        cb.on_fit_end(run.ctx)
    if evaluate_test:
        result.test_accuracy = run.test()
        log.info("%s: test accuracy %.2f %%", desc, 100 * result.test_accuracy)
    if pruner is not None:
        result.prune = pruner.summary()
    result.peak_rss_mb = _peak_rss_mb()
    if run.device.type == "cuda":
        result.peak_cuda_mb = torch.cuda.max_memory_allocated(run.device) / 2**20
    return result
