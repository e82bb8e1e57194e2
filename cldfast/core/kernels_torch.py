"""The torch twins of the native kernels: the same names, signatures, state layout and
observation rules as :mod:`cldfast.core.kernels`, written as chains of torch ops that run on
any device torch supports.

They are the kernels' fallback (``kernels`` routes a call here when this build has no
compiled kernels for the tensors' device, or when ``CLDFAST_KERNELS=torch``), the
references the kernel tests compare against, and the "chain of torch ops" baseline of
``benchmarks/bench_update.py``. Like the kernels they never synchronise with the device and
write the same flags; unlike them they allocate temporaries on every call.

Agreement with the native kernels (tests/core/test_kernels.py, tests/core/test_fallback.py):
``record`` (on the CPU, where torch's index_add_ adds in batch order, as the kernel does) and
``end_epoch`` compute the same operations in the same precision and agree bit for bit;
``scores`` agrees to about an ulp (torch's vectorised ``sqrt`` is not correctly rounded on
every CPU); the cross-entropy (``record_ce``, ``ce_backward``) runs the kernels' two-pass
algorithm with torch's ``exp`` and its own summation order, so losses and gradients agree to
about 1e-6 relative. On a GPU, index_add_ adds repeated indices in atomic order, as the CUDA
kernel does.
"""

from __future__ import annotations

import torch

from . import kernels as _ops

__all__ = ["record", "record_ce", "ce_backward", "end_epoch", "scores"]

# The smallest normal float32: the kernels flush smaller (subnormal) losses to zero.
_FLT_MIN = torch.finfo(torch.float32).tiny


def _note_first(flags: torch.Tensor, count_slot: int, first_slot: int, bad: torch.Tensor,
                values: torch.Tensor) -> None:
    """Add the number of ``bad`` rows to ``flags[count_slot]`` and, when the counter was 0,
    store the value of the first of them in ``flags[first_slot]`` (without a host sync)."""
    nbad = bad.sum()
    first = values[bad.to(torch.uint8).argmax()]
    flags[first_slot] = torch.where((flags[count_slot] == 0) & (nbad > 0), first,
                                    flags[first_slot])
    flags[count_slot] += nbad


def _fold(index: torch.Tensor, loss: torch.Tensor, rows: torch.Tensor | None, epoch: torch.Tensor,
          num_samples: int, flags: torch.Tensor) -> None:
    """Add one observation per row (only the ``rows`` marked True, all if None) to the open
    epoch: the kernels' fold_observation (common.h). ``loss`` is float32."""
    index = index.to(epoch.device).long()
    loss = torch.where((loss != 0) & (loss.abs() < _FLT_MIN), torch.zeros_like(loss), loss)
    inside = (index >= 0) & (index < num_samples)
    considered = torch.ones_like(inside) if rows is None else rows
    _note_first(flags, _ops.BAD_INDEX_COUNT, _ops.FIRST_BAD_INDEX, considered & ~inside, index)
    finite = torch.isfinite(loss)
    flags[_ops.NON_FINITE] += (considered & inside & ~finite).sum()
    ok = considered & inside & finite
    # Rows not folded add 0 to sample 0's slots (x + 0 == x; no sum is ever -0).
    safe = torch.where(ok, index, torch.zeros_like(index))
    chunk = epoch.shape[2]
    at = (safe // chunk) * (2 * chunk) + safe % chunk
    flat = epoch.view(-1)
    flat.index_add_(0, at, torch.where(ok, loss, torch.zeros_like(loss)))
    flat.index_add_(0, at + chunk, ok.to(epoch.dtype))


def record(index: torch.Tensor, loss: torch.Tensor, epoch: torch.Tensor, num_samples: int,
           flags: torch.Tensor) -> None:
    """Twin of :func:`cldfast.core.kernels.record`: add one batch of losses to the open epoch
    ``epoch`` [S, 2, chunk] float32. Losses are narrowed to float32 first (a float64 loss
    beyond float range is non-finite); out-of-range indices are flagged, non-finite losses
    skipped and counted."""
    if index.shape[0] == 0:
        return
    _fold(index, loss.to(torch.float32), None, epoch, num_samples, flags)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def record_ce(index: torch.Tensor, logits: torch.Tensor, target: torch.Tensor, epoch: torch.Tensor,
              num_samples: int, flags: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Twin of :func:`cldfast.core.kernels.record_ce`: per-sample cross-entropy of ``logits``
    [B, C] against ``target`` [B], recorded in place. Returns (float32 losses [B], each row's
    log-sum-exp [B] in the compute dtype). The kernels' algorithm: m = the row's maximum,
    r = sum of exp(x - m) over the entries below it, c = the number of maxima, then
    loss = (m - x_t) + log1p((c - 1) + r), which keeps a confident sample's tiny loss
    precise. NaN for a row with a NaN or +inf or all -inf, and for an out-of-range target
    (flagged, not recorded)."""
    batch, classes = logits.shape
    acc = _compute_dtype(logits.dtype)
    dev = logits.device
    if batch == 0:
        return (torch.empty(0, dtype=torch.float32, device=dev),
                torch.empty(0, dtype=acc, device=dev))
    x = logits.to(acc)
    t = target.to(dev).long()
    valid = (t >= 0) & (t < classes)
    nan = torch.tensor(float("nan"), dtype=acc, device=dev)
    if classes == 0:
        m = torch.full((batch,), float("-inf"), dtype=acc, device=dev)
        tail = torch.full((batch,), float("nan"), dtype=acc, device=dev)
        picked = torch.zeros(batch, dtype=acc, device=dev)
    else:
        isnan = torch.isnan(x)
        m = torch.where(isnan, torch.full_like(x, float("-inf")), x).amax(1)
        mm = m.unsqueeze(1)
        below = x < mm
        r = torch.where(below, torch.exp(torch.where(below, x - mm, torch.zeros_like(x))),
                        torch.zeros_like(x)).sum(1)
        c = (x == mm).sum(1)
        tail = torch.log1p((c - 1).to(acc) + r)
        tail = torch.where(isnan.any(1) | ~torch.isfinite(m), nan, tail)
        picked = x.gather(1, t.clamp(0, classes - 1).unsqueeze(1)).squeeze(1)
    lse = m + tail
    loss = torch.where(valid, ((m - picked) + tail).to(torch.float32),
                       torch.full((batch,), float("nan"), dtype=torch.float32, device=dev))
    _note_first(flags, _ops.BAD_TARGET_COUNT, _ops.FIRST_BAD_TARGET, ~valid, t)
    _fold(index, loss, valid.to(epoch.device), epoch, num_samples, flags)
    return loss, lse


def ce_backward(logits: torch.Tensor, target: torch.Tensor, lse: torch.Tensor,
                grad_loss: torch.Tensor) -> torch.Tensor:
    """Twin of :func:`cldfast.core.kernels.ce_backward`: (softmax - onehot) * grad_loss from
    the forward's log-sum-exp, zero for rows with an out-of-range target. Returns a new
    contiguous [B, C] tensor in the compute dtype."""
    batch, classes = logits.shape
    acc = _compute_dtype(logits.dtype)
    if batch == 0 or classes == 0:
        return torch.zeros(batch, classes, dtype=acc, device=logits.device)
    x = logits.to(acc)
    t = target.to(logits.device).long()
    valid = (t >= 0) & (t < classes)
    g = grad_loss.to(torch.float32).to(acc)
    e = torch.exp(x - lse.to(acc).unsqueeze(1))
    e.scatter_add_(1, t.clamp(0, classes - 1).unsqueeze(1), -valid.to(acc).unsqueeze(1))
    grad = e * g.unsqueeze(1)
    return torch.where(valid.unsqueeze(1), grad, torch.zeros_like(grad)).contiguous()


def end_epoch(labels: torch.Tensor, val_history: torch.Tensor, history_base: int,
              checkpoint: int, epoch_shard: torch.Tensor, last: torch.Tensor,
              i32_state: torch.Tensor, acc: torch.Tensor, flags: torch.Tensor,
              clear_epoch: bool = False) -> None:
    """Twin of :func:`cldfast.core.kernels.end_epoch`: close checkpoint ``checkpoint`` for the
    n samples held here (same arguments, same flags; with ``clear_epoch`` the slots of
    ``epoch_shard`` that were read are zeroed)."""
    n = last.shape[0]
    esum, count = epoch_shard[0, :n], epoch_shard[1, :n]
    tlast, ndiff = i32_state[0], i32_state[1]
    seen = count > 0
    mean = esum / torch.where(seen, count, torch.ones_like(count))
    paired = seen & (tlast >= 0)
    col = labels.long()
    vnow = val_history[checkpoint - history_base][col]
    vthen = val_history[(tlast.long() - history_base).clamp_min(0), col]
    dx = mean.to(acc.dtype) - last.to(acc.dtype)
    dy = (vnow - vthen).to(acc.dtype)
    k = (ndiff + 1).to(acc.dtype)
    mx, my, m2x, m2y, cxy = acc
    ddx, ddy = dx - mx, dy - my
    new_mx, new_my = mx + ddx / k, my + ddy / k
    ry = dy - new_my
    # Every new value is computed from the old state before any row is written.
    for row, value in ((mx, new_mx), (my, new_my), (m2x, m2x + ddx * (dx - new_mx)),
                       (m2y, m2y + ddy * ry), (cxy, cxy + ddx * ry)):
        row.copy_(torch.where(paired, value, row))
    ndiff.add_(paired.to(ndiff.dtype))
    last.copy_(torch.where(seen, mean, last))
    tlast.copy_(torch.where(seen, torch.full_like(tlast, checkpoint), tlast))
    if clear_epoch:
        esum.masked_fill_(seen, 0.0)
        count.masked_fill_(seen, 0.0)
    flags[_ops.OBSERVED] = seen.sum()
    if n:
        flags[_ops.MIN_LAST_CHECKPOINT] = torch.where(
            tlast >= 0, tlast, torch.full_like(tlast, _ops.NO_CHECKPOINT)).min()
    else:
        flags[_ops.MIN_LAST_CHECKPOINT] = _ops.NO_CHECKPOINT


def scores(i32_state: torch.Tensor, acc: torch.Tensor) -> torch.Tensor:
    """Twin of :func:`cldfast.core.kernels.scores`: Pearson correlation per sample from the
    co-moments; NaN with fewer than 2 differences, 0 for a zero-variance series."""
    n = i32_state[1]
    m2x, m2y, cxy = acc[2], acc[3], acc[4]
    r = (cxy / (m2x.sqrt() * m2y.sqrt())).clamp(-1, 1)
    r = torch.where((m2x > 0) & (m2y > 0), r, torch.zeros_like(r))
    return torch.where(n >= 2, r, torch.full_like(r, float("nan")))
