"""Thin dispatcher between torch tensors and the native kernels in ``cldfast._core``.

Every function here checks what the kernels cannot (dtype, device, shape, layout), turns the
tensors into raw addresses and element strides, and calls the CPU or CUDA entry point. CUDA
kernels run on the caller's current stream. Nothing here allocates except the per-sample
loss output of :func:`record_ce`.
"""

from __future__ import annotations

import torch

from . import _core

# Dtype codes shared with csrc/include/cldfast/common.h (enum DType).
FLOAT_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3}
INDEX_CODES = {torch.int64: 4, torch.int32: 5}
LABEL_CODES = {torch.int32: 5, torch.int16: 6}
ACC_CODES = {torch.float32: 0, torch.float64: 3}

# Slots of the int64 flag buffer (enum Flag in common.h).
(BAD_INDEX_COUNT, FIRST_BAD_INDEX, NON_FINITE, BAD_TARGET_COUNT, FIRST_BAD_TARGET, OBSERVED,
 MIN_LAST_CHECKPOINT) = range(7)
NO_CHECKPOINT = 2**31 - 1
NUM_FLAGS = int(_core.num_flags)


def cuda_compiled() -> bool:
    """Whether this build of cldfast contains the CUDA kernels."""
    return bool(_core.with_cuda)


def _require_cuda_build(device: torch.device) -> None:
    if not cuda_compiled():
        raise RuntimeError(
            f"cldfast was built without CUDA kernels, so it cannot track on {device}. "
            "Reinstall on a machine with nvcc (pip install -C cmake.define.CLDFAST_CUDA=ON .) "
            "or use device='cpu'."
        )


def _stream(device: torch.device) -> int:
    return torch.cuda.current_stream(device).cuda_stream


def _is_cuda(t: torch.Tensor) -> bool:
    return t.device.type == "cuda"


def record(index: torch.Tensor, loss: torch.Tensor, epoch: torch.Tensor, num_samples: int,
           flags: torch.Tensor) -> None:
    """Add one batch of losses to the open epoch.

    index: [B] int64/int32 on the epoch buffer's device; loss: [B] floating, same device.
    epoch: [S, 2, chunk] float32 open-epoch buffer (sums, counts per shard); flags: [NUM_FLAGS].
    """
    args = (index.data_ptr(), INDEX_CODES[index.dtype], index.stride(0), loss.data_ptr(),
            FLOAT_CODES[loss.dtype], loss.stride(0), loss.shape[0], epoch.data_ptr(),
            epoch.shape[2], int(num_samples), flags.data_ptr())
    if _is_cuda(epoch):
        _require_cuda_build(epoch.device)
        _core.cuda_record(*args, _stream(epoch.device))
    else:
        _core.cpu_record(*args)


def record_ce(index: torch.Tensor, logits: torch.Tensor, target: torch.Tensor, epoch: torch.Tensor,
              num_samples: int, flags: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy of ``logits`` [B, C] against ``target`` [B], recorded in place.

    Returns the losses as a new float32 tensor [B] (no autograd; see CLDTracker.record).
    ``logits`` must have unit stride along classes; rows may be strided.
    """
    batch, classes = logits.shape
    out = torch.empty(batch, dtype=torch.float32, device=logits.device)
    args = (index.data_ptr(), INDEX_CODES[index.dtype], index.stride(0), logits.data_ptr(),
            FLOAT_CODES[logits.dtype], logits.stride(0), target.data_ptr(),
            INDEX_CODES[target.dtype], target.stride(0), batch, classes, out.data_ptr(),
            epoch.data_ptr(), epoch.shape[2], int(num_samples), flags.data_ptr())
    if _is_cuda(epoch):
        _require_cuda_build(epoch.device)
        _core.cuda_record_ce(*args, _stream(epoch.device))
    else:
        _core.cpu_record_ce(*args)
    return out


def end_epoch(labels: torch.Tensor, val_history: torch.Tensor, history_base: int,
              checkpoint: int, epoch_shard: torch.Tensor, last: torch.Tensor,
              i32_state: torch.Tensor, acc: torch.Tensor, flags: torch.Tensor) -> None:
    """Close checkpoint ``checkpoint`` for the n samples held here.

    labels: [n] int16/int32 column into val_history; val_history: [R, C] float64 with
    contiguous rows, row r holding checkpoint ``history_base + r``; epoch_shard: [2, chunk]
    float32 contiguous (this shard's summed losses and counts, chunk >= n); last: [n] float32;
    i32_state: [2, n] int32; acc: [5, n] float32 or float64. Writes the number of samples
    folded to flags[OBSERVED] and the oldest checkpoint any sample still refers to to
    flags[MIN_LAST_CHECKPOINT] (NO_CHECKPOINT if none). The epoch buffer is not cleared.
    """
    n = last.shape[0]
    flags[OBSERVED] = 0
    flags[MIN_LAST_CHECKPOINT] = NO_CHECKPOINT
    args = (n, labels.data_ptr(), LABEL_CODES[labels.dtype], val_history.data_ptr(),
            val_history.stride(0), int(history_base), int(checkpoint), epoch_shard.data_ptr(),
            epoch_shard.shape[1], last.data_ptr(), i32_state.data_ptr(), acc.data_ptr(),
            ACC_CODES[acc.dtype], flags.data_ptr())
    if _is_cuda(acc):
        _require_cuda_build(acc.device)
        _core.cuda_end_epoch(*args, _stream(acc.device))
    else:
        _core.cpu_end_epoch(*args)


def scores(i32_state: torch.Tensor, acc: torch.Tensor) -> torch.Tensor:
    """Pearson correlation per sample from the Welford state; NaN where fewer than 2 differences.

    i32_state: [2, n]; acc: [5, n]. Returns a new [n] tensor in the accumulator dtype.
    """
    n = acc.shape[1]
    out = torch.empty(n, dtype=acc.dtype, device=acc.device)
    args = (n, i32_state.data_ptr(), acc.data_ptr(), ACC_CODES[acc.dtype], out.data_ptr())
    if _is_cuda(acc):
        _require_cuda_build(acc.device)
        _core.cuda_scores(*args, _stream(acc.device))
    else:
        _core.cpu_scores(*args)
    return out
