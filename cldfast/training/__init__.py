"""Training: recipes (optimizer, schedule, warm-up, label smoothing), models, the one eval
loop, resume checkpoints and the training loop (:func:`fit`) with its public hooks
(:mod:`cldfast.training.callbacks`), and dynamic pruning inside it."""

from .checkpoints import Preempted
from .evaluation import eval_batches, predict
from .callbacks import BatchRecorder, Callback, FitContext, PrunerLike, TrainBatch
from .loop import LOSS_SOURCES, FitResult, Tracking, fit
from .models import ARCHS, build_model, model_name, resolve_model
from .pruning import (POLICIES, CLDPruner, InfoBatchPruner, PlanSampler, Pruner, PruningSampler,
                      RandomPruner, make_pruner)
from .recipe import OPTIMIZERS, SCHEDULES, Recipe, default_recipe, make_optimizer, make_scheduler

__all__ = ["Recipe", "default_recipe", "SCHEDULES", "OPTIMIZERS", "make_optimizer", "make_scheduler",
           "fit", "FitResult", "Tracking", "BatchRecorder", "Callback", "FitContext", "TrainBatch",
           "PrunerLike", "LOSS_SOURCES", "Preempted",
           "eval_batches", "predict", "ARCHS", "build_model", "resolve_model", "model_name",
           "POLICIES", "Pruner", "CLDPruner", "InfoBatchPruner", "RandomPruner", "PlanSampler",
           "PruningSampler",
           "make_pruner"]
