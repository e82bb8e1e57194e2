"""The tracker's kernels as torch custom operators (namespace ``cldfast``), so that a training
step calling :meth:`cldfast.CLDTracker.record` can be captured by ``torch.compile`` (also
with ``fullgraph=True``) and replayed in CUDA graphs.

Each operator's implementation *is* the same-named function of :mod:`cldfast.core.kernels`,
so it takes the same path as an eager call: the native kernels where this build covers the
device, the torch twins of :mod:`cldfast.core.kernels_torch` everywhere else
(``CLDFAST_KERNELS``). Each has a fake (meta) implementation giving its outputs' shapes and
dtypes, which is all that dynamo and AOTAutograd see while tracing.

* ``cldfast::record`` (mutates ``epoch``, ``flags``): kernels.record, one batch of losses
  into the open epoch.
* ``cldfast::record_ce`` (mutates ``epoch``, ``flags``): kernels.record_ce, the fused
  cross-entropy, recorded; returns (loss, lse) and has no autograd formula.
* ``cldfast::ce_loss``: the recorded ``loss`` again (a copy), differentiable w.r.t. the
  logits; its backward is ``ce_backward``.
* ``cldfast::ce_backward``: kernels.ce_backward, (softmax - onehot) * grad.
* ``cldfast::end_epoch`` (mutates ``epoch_shard``, ``last``, ``i32_state``, ``acc``,
  ``flags``): kernels.end_epoch, closes a checkpoint.
* ``cldfast::scores``: kernels.scores, the Pearson correlation per sample.

torch refuses an autograd formula on an operator that mutates its arguments, so the fused
cross-entropy is two operators: ``record_ce`` (detached logits; computes and records the
losses in one kernel) and ``ce_loss``, which hands the losses back with their gradient
(:func:`fused_cross_entropy`). The copy it makes is [B] float32.

The eager tracker calls :mod:`cldfast.core.kernels` directly (a custom-op call goes through
the dispatcher, which costs more than ``record`` itself); it switches to these operators
while dynamo traces (``torch.compiler.is_compiling()``). ``record_validation`` is torch ops
only and needs no operator; the tracker's ``end_epoch`` synchronises with the host and runs
eagerly (its operator lets other code run the kernel inside a graph).
"""

import torch

from . import kernels as _ops

__all__ = ["record", "record_ce", "ce_loss", "ce_backward", "end_epoch", "scores",
           "fused_cross_entropy"]


def _unit_class_stride(logits: torch.Tensor) -> torch.Tensor:
    """The kernels read rows of unit stride along classes (a compiled graph may hand over
    another layout than eager code would)."""
    return logits.contiguous() if logits.shape[1] > 1 and logits.stride(1) != 1 else logits


# ------------------------------------------------------------------------------- record
@torch.library.custom_op("cldfast::record", mutates_args=("epoch", "flags"))
def record(index: torch.Tensor, loss: torch.Tensor, epoch: torch.Tensor, num_samples: int,
           flags: torch.Tensor) -> None:
    """:func:`cldfast.core.kernels.record` as an operator."""
    _ops.record(index, loss, epoch, num_samples, flags)


@record.register_fake
def _(index, loss, epoch, num_samples, flags):
    return None


# ---------------------------------------------------------------------------- record_ce
@torch.library.custom_op("cldfast::record_ce", mutates_args=("epoch", "flags"))
def record_ce(index: torch.Tensor, logits: torch.Tensor, target: torch.Tensor,
              epoch: torch.Tensor, num_samples: int,
              flags: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`cldfast.core.kernels.record_ce` as an operator: (float32 losses [B], log-sum-exp
    [B] in the compute dtype). Not differentiable: see :func:`fused_cross_entropy`."""
    return _ops.record_ce(index, _unit_class_stride(logits), target, epoch, num_samples, flags)


@record_ce.register_fake
def _(index, logits, target, epoch, num_samples, flags):
    batch = logits.shape[0]
    return (logits.new_empty((batch,), dtype=torch.float32),
            logits.new_empty((batch,), dtype=_ops._compute_dtype(logits.dtype)))


# -------------------------------------------------------------------------- ce_backward
@torch.library.custom_op("cldfast::ce_backward", mutates_args=())
def ce_backward(logits: torch.Tensor, target: torch.Tensor, lse: torch.Tensor,
                grad_loss: torch.Tensor) -> torch.Tensor:
    """:func:`cldfast.core.kernels.ce_backward` as an operator: [B, C] contiguous gradient in
    the compute dtype."""
    return _ops.ce_backward(_unit_class_stride(logits), target, lse, grad_loss)


@ce_backward.register_fake
def _(logits, target, lse, grad_loss):
    return logits.new_empty(tuple(logits.shape), dtype=_ops._compute_dtype(logits.dtype))


# ------------------------------------------------------------------------------ ce_loss
@torch.library.custom_op("cldfast::ce_loss", mutates_args=())
def ce_loss(logits: torch.Tensor, target: torch.Tensor, loss: torch.Tensor,
            lse: torch.Tensor) -> torch.Tensor:
    """A copy of ``loss`` (from :func:`record_ce` on these ``logits`` and ``target``) whose
    gradient w.r.t. ``logits`` is the cross-entropy's, computed by ``ce_backward`` from
    ``lse``."""
    return loss.clone()


@ce_loss.register_fake
def _(logits, target, loss, lse):
    return torch.empty_like(loss)


def ce_grad(logits: torch.Tensor, target: torch.Tensor, lse: torch.Tensor,
            grad_loss: torch.Tensor, backward=None) -> torch.Tensor:
    """The fused cross-entropy's gradient w.r.t. ``logits`` in their dtype: ``backward`` is
    the operator (compiled graphs) or, by default, the kernel function (the eager
    autograd.Function)."""
    return (backward or _ops.ce_backward)(logits, target, lse, grad_loss).to(logits.dtype)


def _ce_loss_setup(ctx, inputs, output):
    logits, target, _, lse = inputs
    ctx.save_for_backward(logits, target, lse)


def _ce_loss_backward(ctx, grad):
    logits, target, lse = ctx.saved_tensors
    return ce_grad(logits, target, lse, grad, backward=ce_backward), None, None, None


ce_loss.register_autograd(_ce_loss_backward, setup_context=_ce_loss_setup)


def fused_cross_entropy(index: torch.Tensor, logits: torch.Tensor, target: torch.Tensor,
                        epoch: torch.Tensor, num_samples: int,
                        flags: torch.Tensor) -> torch.Tensor:
    """The per-sample cross-entropy of ``logits`` recorded into ``epoch`` by one kernel and
    returned as float32 [B] losses carrying autograd back to ``logits`` (when they require
    it): the traceable form of the tracker's fused ``record(indices, logits=, targets=)``."""
    loss, lse = record_ce(index, logits.detach(), target, epoch, num_samples, flags)
    if not (logits.requires_grad and torch.is_grad_enabled()):
        return loss
    return ce_loss(logits, target, loss, lse)


# ---------------------------------------------------------------------------- end_epoch
@torch.library.custom_op("cldfast::end_epoch",
                         mutates_args=("epoch_shard", "last", "i32_state", "acc", "flags"))
def end_epoch(labels: torch.Tensor, val_history: torch.Tensor, history_base: int,
              checkpoint: int, epoch_shard: torch.Tensor, last: torch.Tensor,
              i32_state: torch.Tensor, acc: torch.Tensor, flags: torch.Tensor,
              clear_epoch: bool = False) -> None:
    """:func:`cldfast.core.kernels.end_epoch` as an operator (``epoch_shard`` is written only
    with ``clear_epoch``)."""
    _ops.end_epoch(labels, val_history, history_base, checkpoint, epoch_shard, last, i32_state,
                   acc, flags, clear_epoch=clear_epoch)


@end_epoch.register_fake
def _(labels, val_history, history_base, checkpoint, epoch_shard, last, i32_state, acc, flags,
      clear_epoch=False):
    return None


# ------------------------------------------------------------------------------- scores
@torch.library.custom_op("cldfast::scores", mutates_args=())
def scores(i32_state: torch.Tensor, acc: torch.Tensor) -> torch.Tensor:
    """:func:`cldfast.core.kernels.scores` as an operator: [n] in the accumulator dtype."""
    return _ops.scores(i32_state, acc)


@scores.register_fake
def _(i32_state, acc):
    return acc.new_empty((acc.shape[1],))
