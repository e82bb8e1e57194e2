"""Dynamic data pruning inside the training run: CLD-guided, InfoBatch and uniform random.

A pruner decides, at the start of every epoch, which positions of the training split that
epoch trains on, and with which weight each kept sample's loss enters the batch mean. It
watches the training batches (it is a :class:`cldfast.training.BatchRecorder`), so its state
goes into the per-epoch checkpoint and a resumed run repeats an uninterrupted one.

Schedule (shared by every policy, InfoBatch's): epoch 0 trains on everything (nothing is
known about the samples yet); epoch ``e`` prunes while ``e + 1 <= delta * epochs`` (InfoBatch's
``stop_prune`` with its epoch counter); the epochs after that train on all the data again
("annealing"), with every weight back to 1. With ``epochs=10, delta=0.875`` epochs 1-7 prune
and 0, 8, 9 do not.

Policies:

``infobatch`` (Qin et al., ICLR 2024, faithful to the authors' sampler): a sample's score is
its last training loss (3 before it has one, so epoch 0 keeps everything); the "well-learned"
samples, score below the mean score, are pruned at random with probability ``ratio``
(default 0.5) and the kept well-learned samples' losses are multiplied by ``1 / (1 - ratio)``;
the others are always kept with weight 1. The keep ratio is bounded below by 0.1, as theirs.
With ``saving=`` instead of ``ratio``, the ratio is set each pruning epoch so that the epoch
prunes the share of samples that reaches that overall saving (when fewer samples are below the
mean than that needs, it prunes 90 % of them and the saving falls short; ``saved`` reports it).

``cld`` / ``cld-abs`` (cldfast's): the live CLD state of a :class:`cldfast.CLDTracker` over
the same training split decides. Every sample i is pruned independently with probability
``p_i = min(0.9, c * u_i)``, where ``u_i`` is its rank-preference in (0, 1): highest for the
lowest CLD (``cld``: conflicting samples first, then uninformative ones) or for the smallest
|CLD| (``cld-abs``: uninformative ones first), 0.5 for samples without a score yet; ``c`` is
solved so that the expected number pruned reaches the epoch's share. A kept sample's loss is
multiplied by ``1 / (1 - p_i)`` (``rescale=True``), so the expected total update of an epoch
equals the full epoch's: sum over kept i of w_i * grad_i has expectation sum over all i of
grad_i. Pruned samples are missing observations for the tracker: their next loss difference
spans back to their last observed epoch (docs/method.md), so the run still ends with CLD
scores over every sample (of the losses the pruned run saw).

``random``: a uniform share of the samples is pruned every pruning epoch, no rescaling (the
batch mean of a uniform subsample is already unbiased).

For a policy other than ``infobatch`` the share pruned in each pruning epoch is
``saving * epochs / pruning_epochs``; ``saving`` counts sample-passes (forward + backward of
one sample) over the whole run against full training.

Under torch.distributed every rank computes the same plan: the state it is drawn from is
replicated (InfoBatch's scores are fed every rank's batches; CLD comes from one all-gather of
the tracker's scores per epoch, not per batch) and the draw is seeded by (seed, epoch). Each
rank then trains on its share of the shuffled kept set, padded to a multiple of the world
size as DistributedSampler does.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from ..core.state import Stateful
from ..defaults import INFOBATCH_DELTA, INFOBATCH_RATIO
from .seeding import epoch_seed

__all__ = ["POLICIES", "Pruner", "InfoBatchPruner", "CLDPruner", "RandomPruner", "PlanSampler",
           "PruningSampler", "make_pruner"]

POLICIES = ("cld", "cld-abs", "infobatch", "random")
MAX_PRUNE = 0.9  # InfoBatch's lower bound on the keep ratio, 0.1, for every policy
_INFOBATCH_INITIAL_SCORE = 3.0


def _check_unit(name: str, value: float, *, closed_low: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number in (0, 1); got {value!r}") from None
    ok = (0.0 <= v < 1.0) if closed_low else (0.0 < v < 1.0)
    if not ok or not math.isfinite(v):
        raise ValueError(f"{name} must be in {'[0, 1)' if closed_low else '(0, 1)'}; got {value!r}")
    return v


def _plan_rng(seed: int, epoch: int) -> np.random.Generator:
    return np.random.default_rng([int(seed) % 2**63, int(epoch), 0x70726E])


def _positions_tensor(kept: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(kept, dtype=np.int64))


def _positions_array(kept: torch.Tensor) -> np.ndarray:
    return kept.numpy().astype(np.int64).copy()


_SAME_PRUNE = ("checkpoint written with pruner {key}={saved!r}; this run has {key}={mine!r}: "
               "resume with the same prune options (PruneSpec / --prune)")


class Pruner(Stateful):
    """Common schedule, plan, weights, accounting and checkpoint state of the policies.

    Args:
        num_samples: N, the size of the training split (positions 0 .. N-1).
        epochs: epochs of the run (the schedule's length).
        saving: target share of sample-passes saved over the run, in (0, 1).
        delta: share of the epochs during which pruning may happen (InfoBatch's 0.875).
        seed: seed of the per-epoch draws.
    """

    policy = "none"
    needs_batches = False  # whether on_batch must see every training batch (all ranks')

    def __init__(self, num_samples: int, epochs: int, *, saving: float | None = None,
                 delta: float = INFOBATCH_DELTA, seed: int = 0) -> None:
        if int(num_samples) < 1:
            raise ValueError(f"num_samples must be >= 1; got {num_samples}")
        if int(epochs) < 1:
            raise ValueError(f"epochs must be >= 1; got {epochs}")
        self.num_samples = int(num_samples)
        self.epochs = int(epochs)
        self.delta = _check_unit("delta", delta) if float(delta) != 1.0 else 1.0
        self.seed = int(seed)
        self.saving = None if saving is None else _check_unit("saving", saving)
        self.pruning_epochs = [e for e in range(self.epochs) if self.prunes(e)]
        if self.saving is not None:
            if not self.pruning_epochs:
                raise ValueError(f"epochs={epochs} with delta={delta} leaves no epoch to prune in "
                                 "(epoch 0 always trains on everything); train longer or raise delta")
            share = self.saving * self.epochs / len(self.pruning_epochs)
            if share > MAX_PRUNE + 1e-12:
                raise ValueError(
                    f"saving={saving} needs {share:.3f} of the samples pruned in each of the "
                    f"{len(self.pruning_epochs)} pruning epochs (of {epochs}, delta={delta}), "
                    f"above the bound {MAX_PRUNE}; ask for a saving of at most "
                    f"{MAX_PRUNE * len(self.pruning_epochs) / self.epochs:.3f}")
            self.epoch_share = share
        else:
            self.epoch_share = None
        # Declared once (cldfast.core.state): the checkpoint and its checks follow.
        self.add_config("recorder", self.state_key, message=_SAME_PRUNE)
        self.add_config("config", self._config(), message=_SAME_PRUNE)
        self.add_state("weights", torch.ones(self.num_samples, dtype=torch.float32))
        self.add_value("_kept", np.arange(self.num_samples, dtype=np.int64), key="kept",
                       encode=_positions_tensor, decode=_positions_array)
        self.add_value("_planned_epoch", -1, key="planned_epoch", decode=int)
        # Sample-passes of the planned epochs (no DDP padding) and of full training.
        self.add_value("passes_used", 0, decode=int)
        self.add_value("passes_full", 0, decode=int)
        self.add_value("history", [])

    @property
    def state_key(self) -> str:
        """This pruner's name in checkpoints."""
        return f"pruner-{self.policy}"

    # ----- schedule -----------------------------------------------------------------------
    def prunes(self, epoch: int) -> bool:
        """Whether ``epoch`` (0-based) may prune: not the first, and within ``delta``."""
        return epoch >= 1 and epoch + 1 <= self.delta * self.epochs + 1e-9

    # ----- plan ---------------------------------------------------------------------------
    def plan(self, epoch: int) -> np.ndarray:
        """Sorted int64 positions epoch ``epoch`` trains on; sets :attr:`weights`.

        Deterministic in (state at the epoch's start, seed, epoch); asked again for the same
        epoch (a resumed run) it returns the stored plan.
        """
        epoch = int(epoch)
        if epoch == self._planned_epoch:
            return self._kept
        if not 0 <= epoch < self.epochs:
            raise ValueError(f"epoch must be in [0, {self.epochs}); got {epoch}")
        if self.prunes(epoch):
            kept, weights = self._draw(epoch, _plan_rng(self.seed, epoch))
        else:
            kept = np.arange(self.num_samples, dtype=np.int64)
            weights = torch.ones(self.num_samples, dtype=torch.float32)
        self._kept = np.sort(np.asarray(kept, dtype=np.int64))
        self.weights = weights
        self._planned_epoch = epoch
        self.passes_used += int(self._kept.size)
        self.passes_full += self.num_samples
        entry = {"epoch": epoch + 1, "kept": int(self._kept.size),
                 "saved": 1.0 - self._kept.size / self.num_samples}
        if getattr(self, "_last_ratio", None) is not None and self.prunes(epoch):
            entry["ratio"] = float(self._last_ratio)
        self.history.append(entry)
        return self._kept

    def _draw(self, epoch: int, rng: np.random.Generator) -> tuple[np.ndarray, torch.Tensor]:
        raise NotImplementedError

    def sampler(self, epoch: int, *, rank: int = 0, world_size: int = 1) -> "PlanSampler":
        """A sampler over this rank's share of epoch ``epoch``'s plan (positions)."""
        return PlanSampler(self.plan(epoch), seed=self.seed, epoch=epoch, rank=rank,
                           world_size=world_size)

    def loss_weights(self, positions: Any, device: torch.device | str | None = None) -> torch.Tensor:
        """float32 [B] weights of the samples at ``positions`` for the current epoch."""
        pos = torch.as_tensor(positions).reshape(-1).to("cpu", torch.int64)
        w = self.weights[pos]
        return w if device is None else w.to(device, non_blocking=True)

    @property
    def saved(self) -> float:
        """Share of sample-passes saved so far against full training (0 before any epoch)."""
        return 0.0 if self.passes_full == 0 else 1.0 - self.passes_used / self.passes_full

    # ----- BatchRecorder ------------------------------------------------------------------
    def on_batch(self, positions: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor,
                 epoch: int) -> None:
        pass

    def on_epoch_end(self, epoch: int) -> None:
        pass

    def score_arrays(self) -> dict[str, np.ndarray]:
        """Named [N] score arrays of the policy (none but InfoBatch's)."""
        return {}

    def scores(self) -> dict[str, np.ndarray]:
        """Deprecated name of :meth:`score_arrays`."""
        warnings.warn(f"{type(self).__name__}.scores() is deprecated; use score_arrays()",
                      DeprecationWarning, stacklevel=2)
        return self.score_arrays()

    def _config(self) -> dict[str, Any]:
        return {"policy": self.policy, "num_samples": self.num_samples, "epochs": self.epochs,
                "saving": self.saving, "delta": self.delta, "seed": self.seed}

    def summary(self) -> dict[str, Any]:
        return {"policy": self.policy, "target_saving": self.saving, "saved": self.saved,
                "sample_passes": self.passes_used, "full_sample_passes": self.passes_full,
                "delta": self.delta, "epochs": self.history}

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(num_samples={self.num_samples}, epochs={self.epochs}, "
                f"saving={self.saving}, delta={self.delta}, seed={self.seed})")


class RandomPruner(Pruner):
    """Uniform random dynamic pruning: a uniform share of the samples is skipped each pruning
    epoch (``saving`` required), no rescaling."""

    policy = "random"

    def __init__(self, num_samples: int, epochs: int, *, saving: float,
                 delta: float = INFOBATCH_DELTA, seed: int = 0) -> None:
        if saving is None:
            raise ValueError("the random policy needs saving= (the share of sample-passes to save)")
        super().__init__(num_samples, epochs, saving=saving, delta=delta, seed=seed)

    def _draw(self, epoch, rng):
        n_prune = int(round(self.epoch_share * self.num_samples))
        kept = rng.permutation(self.num_samples)[n_prune:]
        return kept, torch.ones(self.num_samples, dtype=torch.float32)


class InfoBatchPruner(Pruner):
    """InfoBatch (Qin et al., ICLR 2024): soft-prune well-learned samples (last loss below
    the mean) with probability ``ratio`` and rescale the kept ones by ``1 / (1 - ratio)``;
    see the module docstring. ``ratio`` (default 0.5, theirs) or ``saving``, not both."""

    policy = "infobatch"
    needs_batches = True

    def __init__(self, num_samples: int, epochs: int, *, ratio: float | None = None,
                 saving: float | None = None, delta: float = INFOBATCH_DELTA, seed: int = 0) -> None:
        if ratio is not None and saving is not None:
            raise ValueError("infobatch takes ratio= (its prune ratio) or saving= (a target "
                             "share of sample-passes), not both")
        self.ratio = None if saving is not None else _check_unit("ratio", INFOBATCH_RATIO if ratio is None else ratio)
        super().__init__(num_samples, epochs, saving=saving, delta=delta, seed=seed)
        self.add_state("loss_scores", torch.full((self.num_samples,), _INFOBATCH_INITIAL_SCORE,
                                                 dtype=torch.float32))

    def _config(self) -> dict[str, Any]:
        return {**super()._config(), "ratio": self.ratio}

    def on_batch(self, positions, logits, targets, epoch):
        # The score of a sample is the loss it had when last trained (InfoBatch's update()).
        with torch.no_grad():
            losses = F.cross_entropy(logits.detach().float(), targets.reshape(-1).long(),
                                     reduction="none")
            pos = torch.as_tensor(positions).reshape(-1).to("cpu", torch.int64)
            self.loss_scores[pos] = losses.cpu()

    def _draw(self, epoch, rng):
        scores = self.loss_scores.numpy()
        well = np.flatnonzero(scores < scores.mean())
        rest = np.flatnonzero(~(scores < scores.mean()))
        if self.ratio is not None:
            ratio = self.ratio
        else:
            need = self.epoch_share * self.num_samples
            ratio = min(MAX_PRUNE, need / well.size) if well.size else 0.0
        keep_ratio = max(1.0 - MAX_PRUNE, 1.0 - ratio)
        chosen = rng.choice(well, int(keep_ratio * well.size), replace=False) if well.size else well
        weights = torch.ones(self.num_samples, dtype=torch.float32)
        if chosen.size:
            weights[torch.from_numpy(chosen)] = 1.0 / keep_ratio
        self._last_ratio = ratio
        return np.concatenate([rest, chosen]), weights

    def score_arrays(self) -> dict[str, np.ndarray]:
        return {"infobatch_last_loss": self.loss_scores.double().numpy().copy()}


def _solve_scale(u: np.ndarray, target: float, cap: float) -> np.ndarray:
    """p = min(cap, c * u) with sum(p) = target (u > 0), by bisection on c."""
    if target <= 0:
        return np.zeros_like(u)
    if target >= cap * u.size:
        return np.full_like(u, cap)
    lo, hi = 0.0, cap / float(u.min())
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if np.minimum(cap, mid * u).sum() < target:
            lo = mid
        else:
            hi = mid
    return np.minimum(cap, hi * u)


class CLDPruner(Pruner):
    """CLD-guided soft pruning from a live :class:`cldfast.CLDTracker` over the training split.

    ``key="cld"`` prefers pruning low CLD (negative: the sample's loss moves against the
    validation loss of its class; then near zero), ``key="abs"`` small |CLD| (its loss moves
    independently of it). See the module docstring for the draw and the rescaling.
    """

    def __init__(self, tracker: Any, epochs: int, *, saving: float, key: str = "cld",
                 rescale: bool = True, delta: float = INFOBATCH_DELTA, seed: int = 0) -> None:
        if key not in ("cld", "abs"):
            raise ValueError(f"key must be 'cld' or 'abs'; got {key!r}")
        if saving is None:
            raise ValueError("the CLD policies need saving= (the share of sample-passes to save)")
        self.policy = "cld" if key == "cld" else "cld-abs"
        self.tracker = tracker
        self.key = key
        self.rescale = bool(rescale)
        super().__init__(tracker.num_samples, epochs, saving=saving, delta=delta, seed=seed)
        self.last_probabilities: np.ndarray | None = None

    def _config(self) -> dict[str, Any]:
        return {**super()._config(), "rescale": self.rescale}

    def preference(self, cld: np.ndarray) -> np.ndarray:
        """u in (0, 1): rank preference for pruning (1 = first pruned); 0.5 without a score."""
        u = np.full(cld.shape[0], 0.5)
        ok = np.isfinite(cld)
        if ok.any():
            v = cld[ok] if self.key == "cld" else np.abs(cld[ok])
            # Highest preference for the smallest value; ties in the order of position.
            order = np.argsort(-v, kind="stable")
            ranks = np.empty(order.size)
            ranks[order] = np.arange(order.size)
            u[ok] = (ranks + 0.5) / order.size
        return u

    def probabilities(self, cld: np.ndarray) -> np.ndarray:
        """Prune probability of every sample for one pruning epoch (sums to the epoch's share)."""
        return _solve_scale(self.preference(cld), self.epoch_share * self.num_samples, MAX_PRUNE)

    def _draw(self, epoch, rng):
        cld = self.tracker.scores(gather="all").double().cpu().numpy()
        p = self.probabilities(cld)
        pruned = rng.random(self.num_samples) < p
        kept = np.flatnonzero(~pruned)
        weights = torch.ones(self.num_samples, dtype=torch.float32)
        if self.rescale:
            weights = torch.from_numpy((1.0 / (1.0 - p)).astype(np.float32))
        self.last_probabilities = p
        return kept, weights


class PlanSampler(torch.utils.data.Sampler):
    """The positions of one epoch's plan, shuffled with (seed, epoch); under several ranks,
    this rank's share after padding to a multiple of the world size (DistributedSampler's
    contract: every rank gets the same number of items, each kept sample at least once)."""

    def __init__(self, kept: np.ndarray, *, seed: int, epoch: int, rank: int = 0,
                 world_size: int = 1) -> None:
        if not 0 <= int(rank) < int(world_size):
            raise ValueError(f"rank must be in [0, world_size={world_size}); got {rank}")
        g = torch.Generator()
        g.manual_seed((epoch_seed(seed, epoch) + 17) % 2**62)  # the loop's seed, offset
        order = torch.from_numpy(np.asarray(kept, dtype=np.int64))
        order = order[torch.randperm(order.numel(), generator=g)]
        if world_size > 1 and order.numel():
            total = -(-order.numel() // world_size) * world_size
            reps = -(-total // order.numel())
            order = order.repeat(reps)[:total]
            order = order[int(rank)::int(world_size)]
        self.order = order

    def __iter__(self) -> Iterator[int]:
        return iter(self.order.tolist())

    def __len__(self) -> int:
        return int(self.order.numel())


class PruningSampler(torch.utils.data.Sampler):
    """A sampler for your own loop (or a framework that calls ``set_epoch``, as Lightning
    does for a DataLoader's sampler): each epoch it asks ``pruner`` for that epoch's plan and
    yields this rank's share of it. Call ``set_epoch(e)`` before iterating epoch ``e``.

    Under torch.distributed pass ``rank`` / ``world_size`` (default: the default process
    group's); with Lightning, set ``use_distributed_sampler=False`` so that it keeps this
    sampler. In the loop, weight each sample's loss: ``(losses *
    pruner.loss_weights(indices, device)).mean()``, and feed InfoBatch with
    ``pruner.on_batch(indices, logits, targets, epoch)`` (every rank's batch).
    """

    def __init__(self, pruner: Pruner, *, rank: int | None = None,
                 world_size: int | None = None) -> None:
        self.pruner, self.epoch = pruner, 0
        self._rank, self._world = rank, world_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _current(self) -> PlanSampler:
        # Rank and world size are read when iterating, not when the sampler is built: a
        # framework may start the process group after the DataLoader exists.
        from ..core import distributed as ddist

        rank, world = ddist.rank_world()
        rank = rank if self._rank is None else int(self._rank)
        world = world if self._world is None else int(self._world)
        return self.pruner.sampler(self.epoch, rank=rank, world_size=world)

    def __iter__(self) -> Iterator[int]:
        return iter(self._current())

    def __len__(self) -> int:
        return len(self._current())


def make_pruner(policy: str, *, num_samples: int, epochs: int, saving: float | None = None,
                ratio: float | None = None, delta: float = INFOBATCH_DELTA, seed: int = 0,
                tracker: Any = None) -> Pruner:
    """The pruner of ``policy`` (one of :data:`POLICIES`); ``tracker`` for the CLD policies."""
    if policy not in POLICIES:
        raise ValueError(f"prune policy must be one of {', '.join(POLICIES)}; got {policy!r}")
    if policy == "infobatch":
        return InfoBatchPruner(num_samples, epochs, ratio=ratio, saving=saving, delta=delta, seed=seed)
    if ratio is not None:
        raise ValueError(f"ratio= is InfoBatch's prune ratio; the {policy} policy takes saving=")
    if policy == "random":
        return RandomPruner(num_samples, epochs, saving=saving, delta=delta, seed=seed)
    if tracker is None:
        raise ValueError(f"the {policy} policy needs the CLDTracker of the run (tracker=)")
    if tracker.num_samples != int(num_samples):
        raise ValueError(f"tracker has {tracker.num_samples} samples; num_samples={num_samples}")
    return CLDPruner(tracker, epochs, saving=saving, key="cld" if policy == "cld" else "abs",
                     delta=delta, seed=seed)
