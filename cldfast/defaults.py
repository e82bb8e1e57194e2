"""The library's defaults, each named once.

The workflows (:mod:`cldfast.pipeline`), the command line (:mod:`cldfast.cli`, whose
``--help`` shows these values) and the integrations take their defaults from here, so a
default changes in one line. Dataset-specific defaults (epochs of a proxy and of a
retraining, native image size) live with each dataset in the registry
(:data:`cldfast.data.REGISTRY`); a :class:`cldfast.training.Recipe`'s hyper-parameters are
its dataclass defaults.

This module imports nothing from the package, so every layer may use it.
"""

from __future__ import annotations

__all__ = ["DEFAULT_ARCH", "VAL_FRACTION", "LOSS_SOURCE", "PRUNE_LOSS_SOURCE", "PRECISION",
           "INFOBATCH_DELTA", "INFOBATCH_RATIO", "RUN_FRACTIONS", "RUN_SEEDS", "RUN_OUT",
           "BENCH_METHODS", "BENCH_FRACTIONS", "BENCH_SEEDS", "BENCH_OUT", "CCS_BETA",
           "CCS_STRATA", "DEEPCORE_SELECTION_EPOCHS"]

#: The model tracked as a proxy and retrained when none is given: the small CNN
#: (:class:`cldfast.training.models.SmallCNN`, registered under this name), which trains the
#: embedded data on a CPU in minutes.
DEFAULT_ARCH = "small-cnn"

#: Share of each class of the training set split off as CLD's validation set V when the data
#: has no validation split of its own (the authors use 0.01 for ImageNet).
VAL_FRACTION = 0.1

#: Losses that feed CLD in ``track`` / ``run`` / ``bench``: ``"eval"``, the paper's estimator
#: (an eval-mode pass over the training split at every tracked epoch).
LOSS_SOURCE = "eval"

#: Losses that feed the CLD pruning policies' tracker: ``"train"``, the kept samples' own
#: training losses (no extra pass).
PRUNE_LOSS_SOURCE = "train"

#: Accumulator precision of a CLDTracker built by the workflows and the callbacks.
PRECISION = "float64"

#: Share of the epochs during which a dynamic pruner may prune (InfoBatch's schedule; the
#: epochs after it train on everything).
INFOBATCH_DELTA = 0.875

#: InfoBatch's share of the below-mean-loss samples pruned per epoch.
INFOBATCH_RATIO = 0.5

#: Coreset fractions of ``cldfast run`` / :func:`cldfast.pipeline.run`: the fidelity study's
#: two (10 % and 30 % of each class), which keep the default run on the embedded data near
#: 10 minutes on 2 cores.
RUN_FRACTIONS: tuple[float, ...] = (0.1, 0.3)

#: Retraining seeds of every coreset in ``cldfast run`` (the table shows mean ± std).
RUN_SEEDS = 2

#: Output folder of ``cldfast run`` / ``track`` / ``train``.
RUN_OUT = "cldfast-out"

#: Methods ``cldfast bench`` compares by default.
BENCH_METHODS: tuple[str, ...] = ("cld", "random", "forgetting", "el2n", "aum", "entropy",
                                  "kcenter")

#: Coreset fractions of ``cldfast bench``.
BENCH_FRACTIONS: tuple[float, ...] = (0.1, 0.3, 0.5)

#: Retrainings per ``cldfast bench`` cell.
BENCH_SEEDS = 3

#: Output folder of ``cldfast bench``.
BENCH_OUT = "cldfast-bench"

#: CCS (coverage-centric selection): the share of the hardest samples dropped first.
CCS_BETA = 0.1

#: CCS: the number of score strata (the paper's).
CCS_STRATA = 50

#: Proxy epochs of the DeepCore adapter when DeepCore's ``args.selection_epochs`` is absent.
DEEPCORE_SELECTION_EPOCHS = 10
