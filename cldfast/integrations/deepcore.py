"""DeepCore-style adapters: call CLD (or any cldfast score) from a harness built on DeepCore.

DeepCore (Guo et al. 2022, github.com/PatrickZH/DeepCore) drives every method the same way::

    method = methods.__dict__[args.selection](dst_train, args, args.fraction, args.seed, **kw)
    subset = method.select()        # {"indices": positions in dst_train, "scores": [len(dst_train)]}

:class:`CLDSelector` and :class:`ScoreSelector` keep that contract, so such a harness can
register them (``methods.__dict__["CLD"] = CLDSelector``) and run unchanged::

    sel = CLDSelector(dst_train, args, fraction=0.1, random_seed=0, scores="runs/c100/scores.npz")
    subset = sel.select()
    train_subset = torch.utils.data.Subset(dst_train, subset["indices"])

Index space: the scores file holds ORIGINAL dataset indices (``train_indices``); they are
taken to be positions in ``dst_train`` (the same dataset, in the same order), unless
``dataset_indices`` maps them. Where ``dst_train`` has ``targets``, the labels are checked
against the scores file's, so a scores file from another dataset or order is refused.
Samples without a score (e.g. CLD's held-out validation split) get NaN and are never
selected; with ``balance=True`` each class keeps ``round(fraction * n_c)`` of its
``dst_train`` members (DeepCore's quota), taken from its scored members.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..defaults import CCS_BETA, CCS_STRATA, DEEPCORE_SELECTION_EPOCHS, DEFAULT_ARCH, VAL_FRACTION
from ..io import ScoresFile, load_scores
from ..selection.balanced import ccs_select, check_fraction, select_by_order
from ..selection.methods import METHODS, canonical_method, score_array

__all__ = ["ScoreSelector", "CLDSelector"]


def _targets(dst_train: Any) -> np.ndarray | None:
    t = getattr(dst_train, "targets", None)
    if t is None:
        return None
    if isinstance(t, torch.Tensor):
        t = t.cpu().numpy()
    return np.asarray(t).reshape(-1).astype(np.int64)


class ScoreSelector:
    """A DeepCore ``CoresetMethod`` over a cldfast scores file.

    Args:
        dst_train: the training dataset DeepCore passes (``len()``; ``targets`` if present).
        args: DeepCore's argument namespace (unused here; accepted for the contract).
        fraction: coreset fraction in (0, 1].
        random_seed: seed of random / CCS draws (default 0).
        scores: a scores file path or :class:`cldfast.io.ScoresFile` (``cldfast track`` or
            ``cldfast bench`` output).
        method: which score to rank (see :data:`cldfast.selection.METHODS`; default ``cld``).
        balance: rank within each class (DeepCore's ``balance``; default True) or globally.
        strategy: ``None`` (keep the method's default end) or ``"ccs"``.
        order: override the kept end (``top``, ``bottom``, ``zero``, ``random``).
        dataset_indices: int [N] position in ``dst_train`` of every scores-file entry
            (default: the file's ``train_indices``).
        ccs_beta, ccs_strata: CCS options.

    ``select()`` returns ``{"indices": int64 positions in dst_train (sorted), "scores":
    float64 [len(dst_train)] (NaN = unscored)}``.
    """

    def __init__(self, dst_train: Any, args: Any = None, fraction: float = 0.5,
                 random_seed: int | None = None, *, scores: str | Path | ScoresFile | None = None,
                 method: str = "cld", balance: bool = True, strategy: str | None = None,
                 order: str | None = None, dataset_indices: Any = None,
                 ccs_beta: float = CCS_BETA, ccs_strata: int = CCS_STRATA, **kwargs: Any) -> None:
        f = check_fraction(fraction)
        self.dst_train = dst_train
        self.args = args
        self.fraction = f
        self.random_seed = 0 if random_seed is None else int(random_seed)
        self.n_train = len(dst_train)
        self.coreset_size = round(self.n_train * f)
        self.method = canonical_method(method)
        self.balance = bool(balance)
        if strategy not in (None, "ccs"):
            raise ValueError(f"strategy must be None or 'ccs'; got {strategy!r}")
        self.strategy = strategy
        self.order = order
        self.ccs_beta, self.ccs_strata = ccs_beta, ccs_strata
        self._scores_src = scores
        self._dataset_indices = dataset_indices
        self.kwargs = kwargs

    def _scores_file(self) -> ScoresFile:
        if self._scores_src is None:
            raise ValueError("give scores= (a scores file path or ScoresFile)")
        if isinstance(self._scores_src, ScoresFile):
            return self._scores_src
        return load_scores(self._scores_src)

    def _full_scores(self, sf: ScoresFile) -> tuple[np.ndarray, np.ndarray]:
        """Scores and labels over all of dst_train (NaN / scores-file labels where unscored)."""
        info = METHODS[self.method]
        pos = np.asarray(sf.train_indices if self._dataset_indices is None else self._dataset_indices,
                         dtype=np.int64)
        if pos.shape != sf.scores.shape:
            raise ValueError(f"dataset_indices has {pos.shape[0]} entries; the scores file has "
                             f"{sf.scores.shape[0]}")
        if pos.size and (pos.min() < 0 or pos.max() >= self.n_train):
            raise ValueError(f"the scores file refers to index {int(pos.max())}, outside dst_train "
                             f"(len {self.n_train}); pass dataset_indices= to map it")
        values = score_array(sf, info.name)  # the one score look-up (None: random)
        values = np.zeros(sf.scores.shape[0]) if values is None else values
        full = np.full(self.n_train, np.nan)
        full[pos] = values
        targets = _targets(self.dst_train)
        if targets is not None:
            if targets.shape[0] != self.n_train:
                raise ValueError(f"dst_train.targets has {targets.shape[0]} entries for {self.n_train} items")
            if not np.array_equal(targets[pos], sf.labels):
                raise ValueError("dst_train's targets differ from the scores file's labels at the "
                                 "same indices: the scores come from another dataset or order")
            labels = targets
        else:
            labels = np.full(self.n_train, -1, np.int64)
            labels[pos] = sf.labels
        return full, labels

    def select(self, **kwargs: Any) -> dict[str, np.ndarray]:
        sf = self._scores_file()
        scores, labels = self._full_scores(sf)
        info = METHODS[self.method]
        if self.strategy == "ccs":
            if info.hard is None:
                raise ValueError(f"CCS needs a difficulty score; {self.method} has none")
            idx = ccs_select(scores, labels, fraction=self.fraction, hard=info.hard,
                             beta=self.ccs_beta, strata=self.ccs_strata,
                             class_balanced=self.balance, seed=self.random_seed)
        else:
            order = self.order or info.order
            # DeepCore's n_c counts the held-out validation samples, which are never picked:
            # a quota above the scored count takes every scored sample (as documented).
            idx = select_by_order(scores, labels, fraction=self.fraction, order=order,
                                  class_balanced=self.balance, seed=self.random_seed,
                                  allow_short=True)
        return {"indices": idx, "scores": scores}


def _arg(args: Any, name: str, default: Any) -> Any:
    """DeepCore's ``args.<name>``, or ``default`` where ``args`` lacks it or holds None. Only
    None means "not given": 0 and False are values (momentum 0, no Nesterov); a 0 that
    cannot be (epochs, batch size, lr) is refused by the recipe, never replaced."""
    value = getattr(args, name, None)
    return default if value is None else value


class CLDSelector(ScoreSelector):
    """DeepCore-style CLD selection.

    With ``scores=`` (a scores file of the same dataset) it only selects. Without, it first
    trains a proxy on ``dst_train`` with :func:`cldfast.pipeline.track`, configured from
    DeepCore's arguments where ``args`` has them: the architecture ``args.model`` (a cldfast,
    torchvision or timm name, case-insensitive: ``ResNet18`` -> ``resnet18``; a model cldfast
    cannot build is an error, never a silent substitute), ``args.selection_epochs``,
    ``args.selection_lr``, ``args.selection_momentum``, ``args.selection_weight_decay``,
    ``args.selection_nesterov``, ``args.selection_batch`` and ``args.device``. Explicit
    ``epochs=`` / ``arch=`` win over ``args``; without either, 10 epochs of ``small-cnn``
    (:data:`cldfast.defaults.DEEPCORE_SELECTION_EPOCHS`, :data:`cldfast.defaults.DEFAULT_ARCH`).
    ``val_fraction`` of every class is held out for CLD's validation trajectories;
    ``dst_test`` gives the proxy's test accuracy (else ``dst_train``); files go to ``out``
    (default: a new temporary folder). ``dst_train`` must yield ``(image tensor [C, H, W],
    label)`` and have ``targets``; its items are used as they come (augmented or not).

    ``fraction`` follows DeepCore: with ``balance=True`` each class keeps
    ``round(fraction * n_c)`` of its members in ``dst_train`` (the proxy's held-out validation
    samples count in ``n_c`` but are never picked), otherwise ``round(fraction *
    len(dst_train))`` in all. (``cldfast select --fraction`` counts only the scored training
    split instead.) Keyword arguments of :class:`ScoreSelector` apply.
    """

    def __init__(self, dst_train: Any, args: Any = None, fraction: float = 0.5,
                 random_seed: int | None = None, epochs: int | None = None, *,
                 scores: str | Path | ScoresFile | None = None, arch: str | None = None,
                 val_fraction: float = VAL_FRACTION, dst_test: Any = None,
                 out: str | Path | None = None, progress: bool = False, **kwargs: Any) -> None:
        kwargs.setdefault("method", "cld")
        super().__init__(dst_train, args, fraction, random_seed, scores=scores, **kwargs)
        if epochs is None:
            epochs = _arg(args, "selection_epochs", DEEPCORE_SELECTION_EPOCHS)
        self.epochs = int(epochs)
        model = getattr(args, "model", None)
        self.arch = arch if arch is not None else (str(model).lower() if model else DEFAULT_ARCH)
        self.val_fraction = val_fraction
        self.dst_test = dst_test
        self.out = out
        self.progress = progress

    def _scores_file(self) -> ScoresFile:
        if self._scores_src is not None:
            return super()._scores_file()
        from ..data.datasets import DatasetBundle, dataset_fingerprint
        from ..pipeline import tracking
        from ..training.recipe import Recipe

        targets = _targets(self.dst_train)
        if targets is None:
            raise ValueError("dst_train has no .targets; CLD needs every training label up front")
        classes = getattr(self.dst_train, "classes", None)
        num_classes = len(classes) if classes is not None else int(
            getattr(self.args, "num_classes", int(targets.max()) + 1))
        x0 = self.dst_train[0][0]
        test = self.dst_test if self.dst_test is not None else self.dst_train
        test_targets = _targets(test)
        if test_targets is None:
            test_targets = np.array([int(test[i][1]) for i in range(len(test))], np.int64)
        bundle = DatasetBundle(
            name="deepcore", train=self.dst_train, train_eval=self.dst_train, test=test,
            train_targets=targets, test_targets=test_targets, num_classes=num_classes,
            input_shape=tuple(int(s) for s in x0.shape),
            class_names=[str(c) for c in classes] if classes is not None else
            [str(c) for c in range(num_classes)],
            fingerprint=dataset_fingerprint("deepcore", targets, len(test_targets), []))
        device = str(getattr(self.args, "device", "auto") or "auto")
        from ..training.models import build_model

        try:  # fail here, naming DeepCore's argument, rather than deep inside training
            build_model(self.arch, num_classes, tuple(int(s) for s in x0.shape))
        except (ValueError, ImportError) as exc:
            raise ValueError(f"CLDSelector cannot build the proxy architecture {self.arch!r} "
                             f"(from {'args.model' if getattr(self.args, 'model', None) else 'arch='}"
                             f"): {exc}. Pass arch= with a cldfast, torchvision or timm name") from None
        defaults = Recipe()
        recipe = Recipe(epochs=self.epochs,
                        batch_size=int(_arg(self.args, "selection_batch", 128)),
                        lr=float(_arg(self.args, "selection_lr", defaults.lr)),
                        momentum=float(_arg(self.args, "selection_momentum", defaults.momentum)),
                        weight_decay=float(_arg(self.args, "selection_weight_decay",
                                                defaults.weight_decay)),
                        nesterov=bool(_arg(self.args, "selection_nesterov", defaults.nesterov)),
                        device=device, seed=self.random_seed)
        try:  # e.g. selection_lr=0: refused here, naming DeepCore's arguments
            recipe.check()
        except ValueError as exc:
            raise ValueError(f"CLDSelector: the proxy recipe from DeepCore's selection_* "
                             f"arguments (or epochs=) is invalid: {exc}") from None
        out = Path(self.out) if self.out is not None else Path(tempfile.mkdtemp(prefix="cldfast-"))
        sf, _ = tracking.track(bundle, out, arch=self.arch, recipe=recipe,
                               val_fraction=self.val_fraction, progress=self.progress)
        self._scores_src = sf
        return sf
