"""Pure-torch references of the native kernels (same names as cldfast.core.kernels, with a leading
underscore). They operate on the same state layout, so tests compare kernel and reference
state bit for bit or to rounding, and benchmarks use them as the "chain of torch ops"
baseline. They are correct but allocate temporaries on every call.
"""

from __future__ import annotations

import torch

from . import kernels as _ops


def _epoch_offsets(index: torch.Tensor, chunk: int) -> torch.Tensor:
    return (index // chunk) * 2 * chunk + index % chunk


def _record(index: torch.Tensor, loss: torch.Tensor, epoch: torch.Tensor, num_samples: int,
            flags: torch.Tensor) -> None:
    index = index.to(epoch.device).long()
    loss = loss.float()
    inside = (index >= 0) & (index < num_samples)
    finite = torch.isfinite(loss)
    bad = index[~inside]
    if bad.numel():
        if int(flags[_ops.BAD_INDEX_COUNT]) == 0:
            flags[_ops.FIRST_BAD_INDEX] = bad[0]
        flags[_ops.BAD_INDEX_COUNT] += bad.numel()
    flags[_ops.NON_FINITE] += (inside & ~finite).sum()
    ok = inside & finite
    chunk = epoch.shape[2]
    at = _epoch_offsets(index[ok], chunk)
    flat = epoch.view(-1)
    flat.index_add_(0, at, loss[ok])
    flat.index_add_(0, at + chunk, torch.ones_like(loss[ok]))


def _record_ce(index, logits, target, epoch, num_samples, flags) -> torch.Tensor:
    classes = logits.shape[1]
    t = target.long()
    valid = (t >= 0) & (t < classes)
    lse = torch.logsumexp(logits.float(), dim=1)
    picked = logits.float().gather(1, t.clamp(0, max(classes - 1, 0)).unsqueeze(1)).squeeze(1)
    out = torch.where(valid, lse - picked, torch.full_like(lse, float("nan")))
    bad = t[~valid]
    if bad.numel():
        if int(flags[_ops.BAD_TARGET_COUNT]) == 0:
            flags[_ops.FIRST_BAD_TARGET] = bad[0]
        flags[_ops.BAD_TARGET_COUNT] += bad.numel()
    _record(index[valid.to(index.device)], out[valid], epoch, num_samples, flags)
    return out


def _end_epoch(labels, val_history, history_base, checkpoint, epoch_shard, last, i32_state, acc,
               flags) -> None:
    n = last.shape[0]
    esum, count = epoch_shard[0, :n], epoch_shard[1, :n]
    tlast, ndiff = i32_state[0], i32_state[1]
    seen = count > 0
    mean = esum / count.clamp_min(1)
    paired = seen & (tlast >= 0)
    col = labels.long()
    vnow = val_history[checkpoint - history_base][col]
    vthen = val_history[(tlast.long() - history_base).clamp_min(0), col]
    dx = (mean.to(acc.dtype) - last.to(acc.dtype))
    dy = (vnow - vthen).to(acc.dtype)
    k = (ndiff + 1).to(acc.dtype)
    mx, my, m2x, m2y, cxy = acc
    ddx, ddy = dx - mx, dy - my
    new_mx, new_my = mx + ddx / k, my + ddy / k
    ry = dy - new_my
    for row, value in ((mx, new_mx), (my, new_my), (m2x, m2x + ddx * (dx - new_mx)),
                       (m2y, m2y + ddy * ry), (cxy, cxy + ddx * ry)):
        row.copy_(torch.where(paired, value, row))
    ndiff.add_(paired.int())
    last.copy_(torch.where(seen, mean, last))
    tlast.copy_(torch.where(seen, torch.full_like(tlast, checkpoint), tlast))
    flags[_ops.OBSERVED] = seen.sum()
    still = tlast[tlast >= 0]
    flags[_ops.MIN_LAST_CHECKPOINT] = still.min() if still.numel() else _ops.NO_CHECKPOINT


def _scores(i32_state: torch.Tensor, acc: torch.Tensor) -> torch.Tensor:
    n = i32_state[1]
    m2x, m2y, cxy = acc[2], acc[3], acc[4]
    r = (cxy / (m2x.sqrt() * m2y.sqrt())).clamp(-1, 1)
    r = torch.where((m2x > 0) & (m2y > 0), r, torch.zeros_like(r))
    return torch.where(n >= 2, r, torch.full_like(r, float("nan")))
