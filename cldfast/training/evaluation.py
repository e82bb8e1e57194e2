"""Evaluation: the one eval loop (:func:`eval_batches`) and the per-sample losses built on it
(:func:`predict`), shared by the CLD eval passes, the validation and test passes and the
final-model scores (:mod:`cldfast.scores.final`)."""

from __future__ import annotations

import copy
import logging
import warnings
import weakref
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from ..core import distributed as ddist
from ..data.datasets import BatchServing, serves_batches
from ..data.indexed import IndexedSubset, make_loader
from ..data.stream import is_streamed
from .recipe import Recipe

__all__ = ["eval_batches", "predict", "shared_predict", "mean_across", "to_device", "tqdm"]

log = logging.getLogger("cldfast")


def tqdm(*args, **kwargs):
    """The plain tqdm bar (tqdm.auto's asyncio variant opens an extra loader iterator); tqdm
    comes with the ``pipeline`` extra."""
    from .._extras import require

    return require("tqdm", "cldfast's training loop").tqdm(*args, **kwargs)


def to_device(batch, device: torch.device, channels_last: bool):
    x, y, k = batch
    x = x.to(device, non_blocking=True)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(device, non_blocking=True), k


def _batched_source(dataset) -> BatchServing | None:
    """``dataset`` itself when its items can be served a batch at a time
    (:func:`cldfast.data.serves_batches`: a :class:`cldfast.data.BatchServing` without
    augmentation), else None (then a DataLoader collates items one by one)."""
    return dataset if serves_batches(dataset) else None


@contextmanager
def _eval_memory_format(model: torch.nn.Module, channels_last: bool):
    """Run the block with ``model``'s 4-D weights in channels_last, restoring their layout
    after. Only the layout changes (the same values), so training is unaffected; on the CPU
    channels_last makes the small CNN's eval forward faster (max-pooling above all; README,
    Performance), on the GPU it feeds tensor cores. Not done under torch.distributed, where DDP's
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


# Models whose oneDNN inference copy failed or disagreed with the model (a reason each), and
# models whose copy was checked against the model once: the op set of a model object does not
# change between epochs, so one check per model serves every later pass.
_ONEDNN_REFUSED: "weakref.WeakKeyDictionary[torch.nn.Module, str]" = weakref.WeakKeyDictionary()
_ONEDNN_CHECKED: "weakref.WeakKeyDictionary[torch.nn.Module, bool]" = weakref.WeakKeyDictionary()
# Agreement asked of the copy's logits on the first batch: float rounding of a different
# summation order is ~1e-6 relative; anything beyond this is another computation.
_ONEDNN_RTOL = 1e-4


def _unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    """The module a DistributedDataParallel wrapper holds (``model`` itself otherwise): the
    key of the per-model oneDNN decisions, whatever wraps it."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def _onednn_copy(model: torch.nn.Module, device: torch.device) -> torch.nn.Module | None:
    """An inference copy of ``model`` whose convolution, linear and batch-norm layers run
    through oneDNN on its own blocked layout (:func:`torch.utils.mkldnn.to_mkldnn`), or None
    where that does not apply: not the CPU, no oneDNN, a model without 2-D convolutions
    (nothing to gain), parameters other than float32, or a model refused before. Same
    weights, same float32 arithmetic (another summation order): the losses agree with the
    plain forward to float rounding, and the first batch of every model is checked."""
    if device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return None
    base = _unwrapped(model)
    if base in _ONEDNN_REFUSED:
        return None
    tensors = [*base.parameters(), *base.buffers()]
    if (not any(isinstance(m, torch.nn.Conv2d) for m in base.modules())
            or any(t.is_floating_point() and t.dtype != torch.float32 for t in tensors)
            or any(t.device.type != "cpu" for t in tensors)):
        return None
    try:
        with warnings.catch_warnings():
            # torch.utils.mkldnn builds its modules with torch.jit.script_method, which newer
            # torch marks deprecated; should it go, the import fails and the plain forward runs.
            warnings.simplefilter("ignore", FutureWarning)
            from torch.utils import mkldnn as onednn

            return onednn.to_mkldnn(copy.deepcopy(base).eval())
    except Exception as e:  # a layer oneDNN cannot take, a model that cannot be copied
        _refuse_onednn(base, f"{type(e).__name__}: {e}")
        return None


def _refuse_onednn(model: torch.nn.Module, why: str) -> None:
    _ONEDNN_REFUSED[model] = why
    log.info("eval passes of %s use the plain forward (oneDNN inference copy not used: %s)",
             type(model).__name__, why)


def _onednn_forward(fast: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = fast(x.contiguous().to_mkldnn())
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"the model returned {type(out).__name__}, not a tensor")
    return out.to_dense() if out.is_mkldnn else out


def _checked_onednn_forward(model: torch.nn.Module, fast: torch.nn.Module,
                            x: torch.Tensor) -> torch.Tensor | None:
    """The copy's output for ``x``; on the first batch of a model also the plain forward's,
    and None (the copy refused from then on) when the two disagree beyond float rounding or
    the copy fails. ``model`` is the caller's (eval mode)."""
    base = _unwrapped(model)
    try:
        out = _onednn_forward(fast, x)
    except Exception as e:  # an op without a oneDNN kernel for blocked tensors
        _refuse_onednn(base, f"{type(e).__name__}: {e}")
        return None
    if base not in _ONEDNN_CHECKED:
        ref = model(x).float()
        out = out.float()
        why = _logits_disagreement(out, ref)
        if why is not None:
            _refuse_onednn(base, f"its logits differ from the model's: {why}")
            log.warning("the oneDNN inference copy of %s disagrees with the model (%s); its "
                        "eval passes use the plain forward", type(base).__name__, why)
            return None
        _ONEDNN_CHECKED[base] = True
    return out


def _logits_disagreement(out: torch.Tensor, ref: torch.Tensor) -> str | None:
    """None when the copy's logits ``out`` agree with the model's ``ref``: the same shape,
    the same non-finite positions (NaN, +inf and -inf each where the model has them) and the
    finite values within float rounding; else what differs. A plain ``max |out - ref|``
    would accept NaN (every comparison with it is False) and an infinite scale."""
    if ref.shape != out.shape:
        return f"shape {tuple(out.shape)} instead of {tuple(ref.shape)}"
    for name, test in (("NaN", torch.isnan), ("+inf", torch.isposinf),
                       ("-inf", torch.isneginf)):
        if not torch.equal(test(out), test(ref)):
            return f"{name} at other positions"
    finite = torch.isfinite(ref)
    if not bool(finite.any()):
        return None
    scale = 1.0 + float(ref[finite].abs().max())
    diff = float((out[finite] - ref[finite]).abs().max())
    if diff > _ONEDNN_RTOL * scale:
        return f"max finite logit difference {diff:.3g}"
    return None


def eval_batches(model: torch.nn.Module, dataset, indices: np.ndarray, *, batch_size: int,
                 device: torch.device, workers: int | str = 0, channels_last: bool = False,
                 amp: bool = False, onednn: bool = False, desc: str | None = None,
                 progress: bool = True, split_ranks: bool = False
                 ) -> Iterator[tuple[Any, torch.Tensor, torch.Tensor]]:
    """The one eval loop: ``model`` in eval mode over ``dataset[indices]``, a batch at a time.

    Yields ``(where, outputs, targets)``: ``where`` selects the batch's rows in the order of
    ``indices`` (a slice or an int64 tensor of positions), ``outputs`` the model's output
    (float32 logits, an inference tensor: read it, do not backpropagate through it),
    ``targets`` the labels on ``device``. What makes it fast (the same outputs as a plain
    per-sample loop, to float rounding): each forward runs under ``torch.inference_mode``
    (the caller's loop body does not); an in-memory dataset without augmentation is indexed a
    batch at a time (no per-item Python, no collation); inputs and 4-D weights in
    channels_last when asked (the weights' layout is restored when the loop ends); with
    ``onednn`` on the CPU, a float32 convolutional model runs as an inference copy on
    oneDNN's blocked layout (:func:`_onednn_copy`: faster than channels_last for such
    models; checked against the model on its first batch, the plain forward otherwise); bfloat16
    autocast only with ``amp`` on CUDA. Hooks on ``model``'s modules see the batches only on
    the plain forward (pass ``onednn=False`` to rely on them). The model is left in eval
    mode, as a test pass leaves it; the training loop sets train mode at every epoch.

    A streamed dataset (WebDataset shards, :func:`cldfast.data.stream.is_streamed`) is read
    once through its ``eval_view``: batches come in the shards' order, ``where`` is an int64
    tensor of positions in ``indices`` (every one served once), and ``split_ranks`` reads
    only this rank's shards under torch.distributed (then each rank sees its share).
    ``workers="auto"``: :func:`cldfast.training.recipe.auto_workers` for ``dataset``.
    """
    from .recipe import auto_workers

    model.eval()
    indices = np.asarray(indices, dtype=np.int64)
    workers = auto_workers(dataset) if isinstance(workers, str) else int(workers)
    streamed = is_streamed(dataset)
    source = None if streamed else _batched_source(dataset)
    bs = int(batch_size)
    amp = amp and device.type == "cuda"
    show = progress and desc is not None
    fast = _onednn_copy(model, device) if onednn and not amp else None
    # The layout changes outside inference mode: parameters converted inside it would become
    # inference tensors, which the next training step cannot use. The oneDNN copy has its own
    # layout, so the caller's weights are left alone then (a copy refused mid-pass runs the
    # rest of that pass in the model's own layout).
    with _eval_memory_format(model, channels_last and fast is None):
        total = indices.shape[0]
        if streamed:
            rank, world = ddist.rank_world() if split_ranks else (0, 1)
            view = dataset.eval_view(indices, rank=rank, world=world, workers=workers)
            total = len(view)
            loader = make_loader(view, bs, shuffle=False, num_workers=workers) if total else ()
            batches = ((k, x, y) for x, y, k in loader)
        elif source is not None:
            idx = torch.from_numpy(_checked_indices(indices, len(source)))
            starts = range(0, idx.shape[0], bs)
            batches = ((slice(s, s + bs), *source.batch(idx[s:s + bs])) for s in starts)
        else:
            loader = make_loader(IndexedSubset(dataset, indices), bs, shuffle=False,
                                 num_workers=workers)
            batches = ((k, x, y) for x, y, k in loader)
        for where, x, y in tqdm(batches, desc=desc, leave=False, disable=not show,
                                total=-(-total // bs)):
            with torch.inference_mode():
                out = None
                if fast is not None:
                    x, y = x.to(device), y.to(device)
                    out = _checked_onednn_forward(model, fast, x)
                    if out is None:
                        fast = None
                if out is None:
                    x, y, _ = to_device((x, y, None), device, channels_last)
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                        out = model(x)
                out = out.float()
            yield where, out, y


def predict(model: torch.nn.Module, dataset, indices: np.ndarray, recipe: Recipe,
            device: torch.device, desc: str | None = None, progress: bool = True
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample cross-entropy and correctness of ``dataset[indices]`` in eval mode.

    Returns (losses float32 [M], correct bool [M]) on the CPU, in the order of ``indices``.
    Under torch.distributed call it with each rank's share (:func:`ddist.eval_shard`).
    Runs :func:`eval_batches` with the recipe's ``eval_batch_size``, ``workers``,
    channels_last (``recipe.channels_last``; on the CPU in one process only), the oneDNN
    inference copy on the CPU (``recipe.eval_onednn``) and bfloat16
    autocast only with ``recipe.eval_amp`` (opt-in: it changes the losses, and so the
    scores, beyond float rounding).
    """
    indices = np.asarray(indices, dtype=np.int64)
    losses = torch.empty(indices.shape[0], dtype=torch.float32)
    correct = torch.empty(indices.shape[0], dtype=torch.bool)
    cl = recipe.channels_last and (device.type == "cuda" or ddist.rank_world()[1] == 1)
    for where, out, y in eval_batches(model, dataset, indices, batch_size=recipe.eval_batch_size,
                                      device=device, workers=recipe.resolved_workers(dataset),
                                      channels_last=cl,
                                      amp=recipe.eval_amp, onednn=recipe.eval_onednn,
                                      desc=desc, progress=progress):
        losses[where] = F.cross_entropy(out, y, reduction="none").cpu()
        correct[where] = (out.argmax(1) == y).cpu()
    return losses, correct


def _checked_indices(indices: np.ndarray, length: int) -> np.ndarray:
    if indices.size and (int(indices.min()) < 0 or int(indices.max()) >= length):
        bad = int(indices.min()) if int(indices.min()) < 0 else int(indices.max())
        raise IndexError(f"indices holds {bad}, outside [0, {length}) for a dataset of {length} items")
    return indices


def shared_predict(model, dataset, indices: np.ndarray, recipe: Recipe, device: torch.device,
                    desc: str, progress: bool) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """:func:`predict` on this rank's share of ``indices``: (positions in ``indices``,
    losses, correct). Map-style data: every world-th position (:func:`ddist.eval_shard`).
    Streamed data: the samples of this rank's shards (every world-th shard holding one), in
    the order they were read; over all ranks each position comes exactly once."""
    if is_streamed(dataset):
        # Each rank streams its own shards: the positions are those it happened to read.
        return _predict(model, dataset, np.asarray(indices, dtype=np.int64), recipe, device,
                        desc, progress, split_ranks=True)
    positions = ddist.eval_shard(len(indices))
    losses, correct = predict(model, dataset, indices[positions], recipe, device, desc=desc,
                              progress=progress)
    return positions, losses, correct


def _predict(model, dataset, indices: np.ndarray, recipe: Recipe, device: torch.device,
             desc: str | None, progress: bool, split_ranks: bool = False
             ) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """:func:`predict`'s pass, returning the positions (in ``indices``) of the samples this
    process evaluated with their losses and correctness, in the order they came."""
    cl = recipe.channels_last and (device.type == "cuda" or ddist.rank_world()[1] == 1)
    positions, losses, correct = [], [], []
    for where, out, y in eval_batches(model, dataset, indices, batch_size=recipe.eval_batch_size,
                                      device=device, workers=recipe.resolved_workers(dataset),
                                      channels_last=cl, amp=recipe.eval_amp,
                                      onednn=recipe.eval_onednn, desc=desc, progress=progress,
                                      split_ranks=split_ranks):
        if isinstance(where, slice):
            where = torch.arange(where.start, min(where.stop, indices.shape[0]))
        positions.append(torch.as_tensor(where, dtype=torch.int64).cpu())
        losses.append(F.cross_entropy(out, y, reduction="none").cpu())
        correct.append((out.argmax(1) == y).cpu())
    if not positions:
        return np.zeros(0, np.int64), torch.zeros(0), torch.zeros(0, dtype=torch.bool)
    return torch.cat(positions).numpy(), torch.cat(losses), torch.cat(correct)


def mean_across(losses: torch.Tensor, correct: torch.Tensor) -> tuple[float, float]:
    total, right, count = ddist.sum_across(
        [float(losses.double().sum()), float(correct.sum()), float(losses.numel())])
    return total / max(count, 1), right / max(count, 1)
