"""Standard coreset baselines, recorded in the same proxy run that computes CLD.

The method registry (names, ends, kinds) is :data:`cldfast.selection.methods.METHODS`;
the final-model pass (GraNd, embeddings) is :mod:`cldfast.scores.final`.

DeepCore trains a separate selection model for every method. Most of those methods only need
the logits of training: here they are recorded by :class:`~cldfast.training.BatchRecorder`
objects watching the one proxy run of :func:`cldfast.pipeline.track`, from the logits the
training forward pass computes anyway (streaming, O(N) state each, no extra pass). The
methods that need the final model (GraNd, Herding, k-Center Greedy) share one eval-mode pass
over the training split at the end (:func:`make_final_scores`).

METHODS (``order``: which end a plain selection keeps; ``hard``: the end CCS prunes first)

================  ===========================  ========  ======  =============================
method            score (per training sample)  order     hard    source
================  ===========================  ========  ======  =============================
cld               CLD (cldfast.CLDTracker)     top       bottom  Nagaraj et al. 2025
random            none (uniform, seeded)       random    -       -
forgetting        forgetting events            top       top     Toneva et al. 2019
aum               area under the margin        bottom    bottom  Pleiss et al. 2020
el2n              EL2N at an early epoch       top       top     Paul et al. 2021
entropy           predictive entropy, end      top       top     Coleman et al. 2020 (DeepCore)
margin            p(1st) - p(2nd), end         bottom    bottom  Coleman et al. 2020 (DeepCore)
least-confidence  1 - max p, end               top       top     Coleman et al. 2020 (DeepCore)
variability       std of p(y) over epochs      top       top     Swayamdipta et al. 2020
confidence        mean of p(y) over epochs     bottom    bottom  Swayamdipta et al. 2020
grand             last-layer gradient norm     top       top     Paul et al. 2021 (DeepCore)
herding           greedy pick order            top       -       Welling 2009 (DeepCore)
kcenter           greedy pick order            top       -       Sener & Savarese 2018
================  ===========================  ========  ======  =============================

Definitions, on the training logits z [C] of a sample with label y, p = softmax(z); an
*observation* is one appearance of the sample in a training batch:

* **forgetting**: number of forgetting events, transitions from correct
  (argmax z = y) to incorrect between consecutive observations of the sample across the
  whole run (its first observation cannot be an event). Samples never classified correctly
  at any observation are "never learned" and rank as most forgotten: they get
  ``1 + the largest event count of the run`` (finite, so selection can pick them; the flag
  is also stored as ``forgetting_never_learned``). Keeps the most forgotten (as Toneva et
  al. and DeepCore, which prune the unforgettable ones).
* **aum**: mean over all observations of the margin ``z_y - max_{j != y} z_j`` on the logits
  (not softmax), i.e. Pleiss et al.'s average over epochs when every sample is seen once per
  epoch. Low AUM = hard or mislabelled. Keeps the lowest (the hard end, as the pruning
  literature uses AUM, e.g. Zheng et al. 2023); Pleiss et al. discard the lowest as
  mislabelled, which is ``order="top"``.
* **el2n**: ``||p - onehot(y)||_2`` averaged over the sample's observations during one early
  epoch (default: :func:`default_el2n_epoch`); Paul et al. average over 10 independent runs,
  here it is the one proxy run. Keeps the highest.
* **entropy / margin / least-confidence**: ``-sum_j p_j log p_j``, ``p_(1) - p_(2)`` (the two
  largest probabilities) and ``1 - max_j p_j``, averaged over the sample's observations in
  the last epoch in which it was seen. Each keeps the most uncertain end (highest entropy,
  smallest margin, highest least-confidence), as uncertainty sampling (Coleman et al. 2020)
  intends. DeepCore computes them from an eval pass of the final model; its code keeps the
  *lowest* entropy and the *largest* margin and uses ``-max z`` on logits for
  least-confidence; use ``order=`` to reproduce that.
* **variability / confidence** (Dataset Cartography): per epoch, the sample's p(y) averaged
  over its observations in that epoch; confidence is the mean of those per-epoch values,
  variability their population standard deviation (``np.std``), over the epochs in which
  the sample was seen. Variability keeps the most ambiguous (highest), confidence the
  hard-to-learn (lowest).
* **grand**: the norm of the cross-entropy gradient with respect to the last linear layer
  (weights and bias), exactly ``||p - onehot(y)|| * sqrt(||h||^2 + 1)`` with h the
  penultimate embedding, from an eval-mode pass of the final proxy model (one extra pass).
  Paul et al. take the full gradient norm early in training over 10 runs; DeepCore uses this
  last-layer form. Keeps the highest.
* **herding / kcenter**: greedy selections on the penultimate embeddings of that same pass
  (see :mod:`cldfast.selection.geometry`); their "score" is the pick order (``-t`` for the t-th pick,
  NaN if never picked), run within each class (balanced) or over all samples (global).

Repeated observations: every observation counts, in order. For forgetting, the copies of
a position within one batch form one step of the sequence, correct if more than half of
them are correct (a tie counts as incorrect); each batch is the next step. For aum / el2n /
uncertainty / cartography every copy is one more observation in the averages stated above.

State lives on the logits' device and is updated with scatter ops (``index_add_`` /
indexed assignment) per batch, with no per-sample Python loop.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from typing import Any

import numpy as np
import torch

from ..core.state import Stateful

log = logging.getLogger("cldfast")

__all__ = ["default_el2n_epoch", "ForgettingRecorder", "AUMRecorder", "EL2NRecorder",
           "UncertaintyRecorder", "CartographyRecorder", "recorders_for_training"]


def default_el2n_epoch(epochs: int) -> int:
    """1-based epoch whose logits give EL2N by default: 10 % of training (Paul et al. use
    epoch 20 of 200), but not before epoch 2, whose logits come from a model that has seen
    the data once (epoch 1's come from one near its initialisation), and not after ``epochs``."""
    e = int(epochs)
    if e < 1:
        raise ValueError(f"epochs must be >= 1; got {epochs}")
    return min(e, max(2, int(math.floor(0.1 * e + 0.5))))


# --------------------------------------------------------------------------------------------
# Recorders
# --------------------------------------------------------------------------------------------

_SAME_OPTIONS = ("{owner}: checkpoint written with {key}={saved!r}, this recorder has "
                 "{key}={mine!r}: resume with the same options")


class _Recorder(Stateful):
    """Common plumbing: state placed on the logits' device, input checks, timing, checkpoints.

    Subclasses declare their tensors in ``_init_state`` with ``add_state`` (cldfast.core.state):
    checkpointed state under its own name, scratch buffers (zero between batches) with
    ``key=None``; the checkpoint, moves and ``nbytes`` follow from that. ``score_arrays()``
    returns the recorder's named [N] float64 score arrays.
    """

    name = "recorder"

    def __init__(self, num_samples: int) -> None:
        n = int(num_samples)
        if n < 1:
            raise ValueError(f"num_samples must be >= 1; got {num_samples}")
        self.num_samples = n
        self.add_config("recorder", self.name, message=_SAME_OPTIONS)
        self.add_config("num_samples", n, message=_SAME_OPTIONS)
        self.add_config("config", self._config(), message=_SAME_OPTIONS)
        # host time spent in on_batch / on_epoch_end (no device sync)
        self.add_value("seconds", 0.0, default=0.0, decode=float)
        self._init_state()

    @property
    def state_key(self) -> str:
        """This recorder's name in checkpoints (its method name)."""
        return self.name

    # subclasses create their tensors here (on the CPU; moved to the logits' device on use)
    def _init_state(self) -> None:
        raise NotImplementedError

    def _config(self) -> dict[str, Any]:
        return {}

    @property
    def device(self) -> torch.device:
        return self._states()[0][1].device

    def _prepare(self, positions: torch.Tensor, logits: torch.Tensor,
                 targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if logits.dim() != 2:
            raise ValueError(f"{self.name}: logits must be [B, C]; got shape {tuple(logits.shape)}")
        pos = torch.as_tensor(positions).reshape(-1)
        if pos.shape[0] != logits.shape[0] or targets.reshape(-1).shape[0] != logits.shape[0]:
            raise ValueError(f"{self.name}: {pos.shape[0]} positions, {logits.shape[0]} logits rows "
                             f"and {targets.reshape(-1).shape[0]} targets must agree")
        if pos.device.type == "cpu" and pos.numel():
            lo, hi = int(pos.min()), int(pos.max())
            if lo < 0 or hi >= self.num_samples:
                bad = lo if lo < 0 else hi
                raise IndexError(f"{self.name}: position {bad} is outside [0, {self.num_samples}) "
                                 "(positions index the training split the recorder was built for)")
        dev = logits.device
        self.move_states(dev)
        return (pos.to(dev, torch.int64, non_blocking=True), logits.detach().float(),
                targets.reshape(-1).to(dev, torch.int64, non_blocking=True))

    def on_batch(self, positions: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor,
                 epoch: int) -> None:
        t0 = time.perf_counter()
        with torch.no_grad():
            pos, z, y = self._prepare(positions, logits, targets)
            if pos.numel():
                self._update(pos, z, y, int(epoch))
        self.seconds += time.perf_counter() - t0

    def on_epoch_end(self, epoch: int) -> None:
        t0 = time.perf_counter()
        with torch.no_grad():
            self._end_epoch(int(epoch))
        self.seconds += time.perf_counter() - t0

    def _update(self, pos: torch.Tensor, z: torch.Tensor, y: torch.Tensor, epoch: int) -> None:
        raise NotImplementedError

    def _end_epoch(self, epoch: int) -> None:
        pass

    def score_arrays(self) -> dict[str, np.ndarray]:
        """Named [N] float64 score arrays (NaN: no score)."""
        raise NotImplementedError

    def scores(self) -> dict[str, np.ndarray]:
        """Deprecated name of :meth:`score_arrays`."""
        warnings.warn(f"{type(self).__name__}.scores() is deprecated; use score_arrays()",
                      DeprecationWarning, stacklevel=2)
        return self.score_arrays()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_samples={self.num_samples}, {self.nbytes} bytes)"


class ForgettingRecorder(_Recorder):
    """Forgetting events (Toneva et al. 2019); see the module docstring.

    Copies of a position within one batch are resolved with two scratch counters [N]
    (copies and correct copies) instead of ``torch.unique``, so an update never waits for
    the device: every copy computes the same new state and writes it.

    score_arrays(): ``forgetting`` float64 [N] (never-learned samples: 1 + the largest count; NaN
    if never observed) and ``forgetting_never_learned`` float64 [N] (1.0 / 0.0; NaN if never
    observed).
    """

    name = "forgetting"

    def _init_state(self) -> None:
        n = self.num_samples
        self.add_state("last", torch.full((n,), -1, dtype=torch.int8))   # -1 unseen, 0 wrong, 1 right
        self.add_state("events", torch.zeros(n, dtype=torch.int32))
        self.add_state("learned", torch.zeros(n, dtype=torch.bool))
        self.add_state("_copies", torch.zeros(n, dtype=torch.int32), key=None)     # zero between batches
        self.add_state("_right", torch.zeros(n, dtype=torch.int32), key=None)

    def _update(self, pos, z, y, epoch):
        correct = (z.argmax(1) == y).int()
        self._copies.index_add_(0, pos, torch.ones_like(correct))
        self._right.index_add_(0, pos, correct)
        now = 2 * self._right[pos] > self._copies[pos]       # more than half of the copies right
        prev = self.last[pos]
        self.events[pos] = self.events[pos] + ((prev == 1) & ~now).int()
        self.learned[pos] = self.learned[pos] | now
        self.last[pos] = now.to(torch.int8)
        self._copies[pos] = 0
        self._right[pos] = 0

    def score_arrays(self) -> dict[str, np.ndarray]:
        seen = (self.last >= 0).cpu().numpy()
        events = self.events.cpu().numpy().astype(np.float64)
        learned = self.learned.cpu().numpy()
        never = seen & ~learned
        out = events.copy()
        out[never] = (events[seen].max() if seen.any() else 0.0) + 1.0
        out[~seen] = np.nan
        flag = never.astype(np.float64)
        flag[~seen] = np.nan
        return {"forgetting": out, "forgetting_never_learned": flag}


class AUMRecorder(_Recorder):
    """Area under the margin (Pleiss et al. 2020) on logits; see the module docstring.

    score_arrays(): ``aum`` float64 [N] (NaN if never observed).
    """

    name = "aum"

    def _init_state(self) -> None:
        self.add_state("total", torch.zeros(self.num_samples, dtype=torch.float64))
        self.add_state("count", torch.zeros(self.num_samples, dtype=torch.int32))

    def _update(self, pos, z, y, epoch):
        assigned = z.gather(1, y[:, None]).squeeze(1)
        others = z.scatter(1, y[:, None], float("-inf")).amax(1)
        self.total.index_add_(0, pos, (assigned - others).double())
        self.count.index_add_(0, pos, torch.ones_like(pos, dtype=torch.int32))

    def score_arrays(self) -> dict[str, np.ndarray]:
        total, count = self.total.cpu().numpy(), self.count.cpu().numpy()
        with np.errstate(invalid="ignore", divide="ignore"):
            aum = np.where(count > 0, total / np.maximum(count, 1), np.nan)
        return {"aum": aum}


class EL2NRecorder(_Recorder):
    """EL2N (Paul et al. 2021) from the training logits of one epoch.

    Args:
        num_samples: size of the training split.
        epoch: 1-based epoch whose observations are averaged (e.g. :func:`default_el2n_epoch`).

    score_arrays(): ``el2n`` float64 [N] (NaN if not observed in that epoch).
    """

    name = "el2n"

    def __init__(self, num_samples: int, epoch: int) -> None:
        if int(epoch) < 1:
            raise ValueError(f"EL2N epoch is 1-based and must be >= 1; got {epoch}")
        self.epoch = int(epoch)
        super().__init__(num_samples)

    def _config(self) -> dict[str, Any]:
        return {"epoch": self.epoch}

    def _init_state(self) -> None:
        self.add_state("total", torch.zeros(self.num_samples, dtype=torch.float64))
        self.add_state("count", torch.zeros(self.num_samples, dtype=torch.int32))

    def _update(self, pos, z, y, epoch):
        if epoch + 1 != self.epoch:
            return
        err = torch.softmax(z, 1)
        err[torch.arange(err.shape[0], device=err.device), y] -= 1.0
        self.total.index_add_(0, pos, torch.linalg.vector_norm(err, dim=1).double())
        self.count.index_add_(0, pos, torch.ones_like(pos, dtype=torch.int32))

    def score_arrays(self) -> dict[str, np.ndarray]:
        total, count = self.total.cpu().numpy(), self.count.cpu().numpy()
        if not (count > 0).any():
            log.warning("EL2N: no training batch of epoch %d was seen (the proxy stopped earlier?); "
                        "el2n is NaN everywhere", self.epoch)
        with np.errstate(invalid="ignore", divide="ignore"):
            return {"el2n": np.where(count > 0, total / np.maximum(count, 1), np.nan)}


class UncertaintyRecorder(_Recorder):
    """Entropy, margin and least confidence at the end of training (the last epoch in which
    each sample was seen); see the module docstring.

    score_arrays(): ``entropy``, ``margin``, ``least_confidence`` float64 [N] (NaN if never seen).
    """

    name = "uncertainty"

    def _init_state(self) -> None:
        n = self.num_samples
        self.add_state("cur", torch.zeros((n, 3), dtype=torch.float64))
        self.add_state("cur_count", torch.zeros(n, dtype=torch.int32))
        self.add_state("last", torch.full((n, 3), float("nan"), dtype=torch.float64))

    def _update(self, pos, z, y, epoch):
        logp = torch.log_softmax(z, 1)
        p = logp.exp()
        entropy = -(p * logp).sum(1)
        top2 = p.topk(min(2, p.shape[1]), dim=1).values
        margin = top2[:, 0] - (top2[:, 1] if top2.shape[1] > 1 else 0.0)
        lc = 1.0 - top2[:, 0]
        vals = torch.stack([entropy, margin, lc], 1).double()
        self.cur.index_add_(0, pos, vals)
        self.cur_count.index_add_(0, pos, torch.ones_like(pos, dtype=torch.int32))

    def _end_epoch(self, epoch):
        seen = (self.cur_count > 0)[:, None]
        mean = self.cur / self.cur_count.clamp_min(1)[:, None].double()
        self.last = torch.where(seen, mean, self.last)
        self.cur.zero_()
        self.cur_count.zero_()

    def score_arrays(self) -> dict[str, np.ndarray]:
        last = self.last.cpu().numpy()
        return {"entropy": last[:, 0].copy(), "margin": last[:, 1].copy(),
                "least_confidence": last[:, 2].copy()}


class CartographyRecorder(_Recorder):
    """Dataset Cartography (Swayamdipta et al. 2020): mean (confidence) and population std
    (variability) over epochs of the per-epoch mean p(y). Welford updates, O(N) state.

    score_arrays(): ``confidence``, ``variability`` float64 [N] (NaN if never seen).
    """

    name = "cartography"

    def _init_state(self) -> None:
        n = self.num_samples
        self.add_state("cur", torch.zeros(n, dtype=torch.float64))
        self.add_state("cur_count", torch.zeros(n, dtype=torch.int32))
        self.add_state("epochs", torch.zeros(n, dtype=torch.int32))
        self.add_state("mean", torch.zeros(n, dtype=torch.float64))
        self.add_state("m2", torch.zeros(n, dtype=torch.float64))

    def _update(self, pos, z, y, epoch):
        py = torch.softmax(z, 1).gather(1, y[:, None]).squeeze(1)
        self.cur.index_add_(0, pos, py.double())
        self.cur_count.index_add_(0, pos, torch.ones_like(pos, dtype=torch.int32))

    def _end_epoch(self, epoch):
        seen = self.cur_count > 0
        x = self.cur[seen] / self.cur_count[seen].double()
        k = self.epochs[seen] + 1
        delta = x - self.mean[seen]
        mean = self.mean[seen] + delta / k.double()
        self.m2[seen] += delta * (x - mean)
        self.mean[seen] = mean
        self.epochs[seen] = k
        self.cur.zero_()
        self.cur_count.zero_()

    def score_arrays(self) -> dict[str, np.ndarray]:
        k = self.epochs.cpu().numpy()
        mean, m2 = self.mean.cpu().numpy(), self.m2.cpu().numpy()
        with np.errstate(invalid="ignore", divide="ignore"):
            conf = np.where(k > 0, mean, np.nan)
            var = np.where(k > 0, np.sqrt(np.maximum(m2, 0.0) / np.maximum(k, 1)), np.nan)
        return {"confidence": conf, "variability": var}


def recorders_for_training(num_samples: int, epochs: int, el2n_epoch: int | None = None) -> list[_Recorder]:
    """Every recorded baseline for a proxy run of ``epochs`` epochs (always all of them, in a
    fixed order, so the checkpoint of a run can be resumed whatever methods are asked for)."""
    e = default_el2n_epoch(epochs) if el2n_epoch is None else int(el2n_epoch)
    if not 1 <= e <= int(epochs):
        raise ValueError(f"el2n_epoch must be in [1, {epochs}] (the proxy's epochs); got {el2n_epoch}")
    return [ForgettingRecorder(num_samples), AUMRecorder(num_samples), EL2NRecorder(num_samples, e),
            UncertaintyRecorder(num_samples), CartographyRecorder(num_samples)]
