"""Training recipes: hyper-parameters, optimizers and learning-rate schedules.

A :class:`Recipe`'s defaults are the authors' CIFAR recipe (docs/method.md); the defaults
per dataset (epochs of a proxy and of a retraining) live with each dataset's entry in the
registry (:data:`cldfast.data.REGISTRY`, read through :func:`cldfast.data.default_epochs`),
and :func:`default_recipe` here builds a dataset's recipe from them.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

__all__ = ["Recipe", "SCHEDULES", "OPTIMIZERS", "MAX_AUTO_WORKERS", "auto_workers", "default_recipe",
           "make_optimizer", "make_scheduler", "smoothed_losses"]

#: The most data-loader workers ``workers="auto"`` starts per process.
MAX_AUTO_WORKERS = 8


def auto_workers(dataset: Any) -> int:
    """Data-loader workers for ``dataset`` when ``Recipe.workers`` is ``"auto"``.

    0 (loading in the main process) for data held as tensors in memory
    (:func:`cldfast.data.holds_tensors`: the embedded Fashion-MNIST and digits, a
    ``TensorDataset``), where workers only add start-up and copying. Otherwise (items decoded
    or transformed one by one in Python: torchvision's CIFAR, ImageFolder, WebDataset shards,
    your own Dataset classes) ``min(8, cores - 1)``, where ``cores`` is this process's share
    of the CPU cores it may run on (its affinity, divided by torchrun's LOCAL_WORLD_SIZE, the
    processes per machine): one core stays with the training process itself; 0 on a single
    core.
    """
    from ..core.threads import available_cores
    from ..data.datasets import holds_tensors

    if holds_tensors(dataset):
        return 0
    try:
        local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        local = 1
    return max(0, min(MAX_AUTO_WORKERS, available_cores() // local - 1))


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
    optimizer: str = "sgd"      # or "adamw" (see make_optimizer)
    warmup_epochs: int = 0      # linear warm-up of the learning rate before the schedule
    label_smoothing: float = 0.0  # of the training objective only; CLD's losses stay plain CE
    workers: int | str = "auto"  # data-loader workers; "auto": auto_workers(dataset) (0 for
                                 # in-memory tensors such as the embedded data)
    eval_batch_size: int = 512
    device: str = "auto"
    amp: bool = True            # bfloat16 autocast of the training pass, CUDA only
    channels_last: bool = True  # CUDA, and the CPU in one process (about 2x faster there)
    train_channels_last: bool | None = None  # the training pass alone (None: channels_last);
                                # False keeps the eval passes fast but trains in the layout
                                # (and so with the float rounding) of a contiguous model
    eval_amp: bool = False      # bfloat16 autocast of the eval passes, CUDA only; opt-in
                                # because it moves the eval-mode losses beyond float rounding
    eval_onednn: bool = True    # CPU eval passes of float32 conv nets through a oneDNN
                                # inference copy (same losses to float rounding, ~2x faster)
    seed: int = 0
    sync_bn: bool = False       # SyncBatchNorm under torch.distributed
    shuffle: bool = True        # a new training order every epoch (seeded); False: index order
                                # every epoch (streamed shards: read in order, no shuffle buffer)

    def identity(self) -> dict:
        """The fields that identify a run (resume-checkpoint and bench-cell configs): every
        field, less the ones added later (optimizer, warm-up, label smoothing, eval_onednn,
        shuffle) while they keep their defaults, so that resume checkpoints and cached cells
        written before them still match. ``workers="auto"`` stays ``"auto"`` here; the training loop and the bench record
        the identity of :meth:`resolved` (0 workers on the embedded data, as before)."""
        fields = asdict(self)
        for name, default in _LATER_FIELDS.items():
            if fields.get(name) == default:
                fields.pop(name)
        return fields

    def resolved_workers(self, dataset: Any) -> int:
        """The data-loader workers for ``dataset``: ``workers`` itself, or for ``"auto"``
        :func:`auto_workers`."""
        if isinstance(self.workers, str):
            return auto_workers(dataset)
        return int(self.workers)

    def resolved(self, dataset: Any) -> "Recipe":
        """A copy with ``workers`` resolved for ``dataset`` (an integer): what a run's
        resume checkpoint records, so that ``"auto"`` on the embedded data keeps the identity of a
        run with ``workers=0``."""
        return replace(self, workers=self.resolved_workers(dataset))

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
            raise ValueError(f"device={self.device!r}: torch sees no CUDA GPU here; use device='cpu'")
        return dev

    def check(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0; got {self.lr}")
        if isinstance(self.workers, str):
            if self.workers != "auto":
                raise ValueError(f"workers must be an integer >= 0 or 'auto'; got {self.workers!r}")
        elif isinstance(self.workers, bool) or int(self.workers) != self.workers or self.workers < 0:
            raise ValueError(f"workers must be an integer >= 0 or 'auto'; got {self.workers!r}")
        if self.milestones is not None and any(not 1 <= int(m) <= self.epochs for m in self.milestones):
            raise ValueError(f"milestones {list(self.milestones)} must lie in [1, epochs={self.epochs}]")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}; got {self.schedule!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}; got {self.optimizer!r}")
        if not 0 <= int(self.warmup_epochs) < int(self.epochs):
            raise ValueError(f"warmup_epochs must be in [0, epochs={self.epochs}); got {self.warmup_epochs}")
        if not 0.0 <= float(self.label_smoothing) < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1); got {self.label_smoothing}")


# Fields added after resume checkpoints and bench caches existed, with the value that reproduces
# the behaviour from before them.
_LATER_FIELDS = {"optimizer": "sgd", "warmup_epochs": 0, "label_smoothing": 0.0,
                 "eval_onednn": True, "shuffle": True}

SCHEDULES = ("multistep", "cosine", "onecycle")
OPTIMIZERS = ("sgd", "adamw")


def make_optimizer(params, recipe: Recipe) -> torch.optim.Optimizer:
    """``sgd``: SGD with ``momentum``, Nesterov (``nesterov``) and ``weight_decay`` (the
    authors'); ``adamw``: AdamW with ``lr`` and decoupled ``weight_decay``."""
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    return torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum,
                           nesterov=recipe.nesterov and recipe.momentum > 0,
                           weight_decay=recipe.weight_decay)


def _main_scheduler(opt: torch.optim.Optimizer, recipe: Recipe, epochs: int, offset: int):
    if recipe.schedule == "multistep":
        milestones = [max(1, m - offset) for m in recipe.resolved_milestones()]
        return torch.optim.lr_scheduler.MultiStepLR(opt, milestones, recipe.gamma)
    if recipe.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    up = max(1, round(0.3 * epochs))

    def factor(epoch: int) -> float:
        if epoch < up:
            return 1 / 25 + (1 - 1 / 25) * epoch / up
        t = min(1.0, (epoch - up) / max(1, epochs - up))
        return 1e-4 + (1 - 1e-4) * 0.5 * (1 + math.cos(math.pi * t))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def make_scheduler(opt: torch.optim.Optimizer, recipe: Recipe):
    """The learning-rate schedule, stepped once per epoch.

    ``multistep``: the authors' step decays (``gamma`` at ``resolved_milestones()``);
    ``cosine``: cosine annealing from ``lr`` to 0 over ``epochs``; ``onecycle``: a linear
    warm-up from ``lr / 25`` to ``lr`` over the first 30 % of the epochs, then cosine
    annealing to ``lr / 1e4`` (the shape of torch's OneCycleLR, per epoch).

    ``warmup_epochs = w > 0`` puts a linear warm-up first (epoch e < w trains at
    ``lr * (e + 1) / (w + 1)``); the schedule then runs over the remaining epochs (multistep
    milestones stay at the same absolute epochs).
    """
    w = int(recipe.warmup_epochs)
    if w == 0:
        return _main_scheduler(opt, recipe, recipe.epochs, 0)
    warm = torch.optim.lr_scheduler.LinearLR(opt, start_factor=1 / (w + 1),
                                             end_factor=w / (w + 1), total_iters=max(1, w - 1))
    main = _main_scheduler(opt, recipe, recipe.epochs - w, w)
    return torch.optim.lr_scheduler.SequentialLR(opt, [warm, main], milestones=[w])


def smoothed_losses(ce: torch.Tensor, logits: torch.Tensor, smoothing: float) -> torch.Tensor:
    """The label-smoothed training objective per sample from the plain cross-entropy ``ce``
    [B] (which CLD records): ``(1 - s) * ce + s * mean_c(-log softmax(logits)_c)``, what
    ``F.cross_entropy(..., label_smoothing=s)`` computes."""
    if smoothing == 0.0:
        return ce
    uniform = -torch.log_softmax(logits.float(), dim=1).mean(dim=1)
    return (1.0 - smoothing) * ce + smoothing * uniform


def default_recipe(dataset: str = "auto", role: str = "train", **overrides) -> Recipe:
    """The recipe the pipeline uses for ``role`` (``"train"`` or ``"proxy"``) on ``dataset``
    when none is given: :class:`Recipe`'s defaults with the dataset's default epochs
    (:data:`cldfast.data.REGISTRY`, :data:`cldfast.data.DEFAULT_EPOCHS`); ``overrides`` that are not None replace fields
    (what the CLI passes for the options a user gave)."""
    from ..data.datasets import default_epochs

    fields = {k: v for k, v in overrides.items() if v is not None}
    unknown = sorted(set(fields) - set(Recipe.__dataclass_fields__))
    if unknown:
        raise TypeError(f"unknown recipe field(s) {unknown}; Recipe has "
                        f"{', '.join(Recipe.__dataclass_fields__)}")
    if "milestones" in fields:
        fields["milestones"] = tuple(int(m) for m in fields["milestones"])
    fields.setdefault("epochs", default_epochs(dataset, role))
    recipe = Recipe(**fields)
    recipe.check()
    return recipe
