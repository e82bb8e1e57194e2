"""Each native kernel against its pure-torch twin in cldfast/core/kernels_torch.py."""

import numpy as np
import pytest
import torch

from cldfast.core import kernels as _ops, kernels_torch


def new_flags(device):
    return torch.zeros(_ops.NUM_FLAGS, dtype=torch.int64, device=device)


def random_state(n, chunk, acc_dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    count = torch.randint(0, 3, (chunk,), generator=g).float()
    shard = torch.stack([torch.rand(chunk, generator=g) * 3 * count, count])
    last = torch.rand(n, generator=g) * 3
    tlast = torch.randint(-1, 3, (n,), generator=g, dtype=torch.int32)
    ndiff = torch.where(tlast >= 0, torch.randint(0, 5, (n,), generator=g, dtype=torch.int32), 0)
    i32 = torch.stack([tlast, ndiff])
    acc = torch.randn(5, n, generator=g, dtype=torch.float64)
    acc[2:4] = acc[2:4].abs()
    return [t.to(device) for t in (shard, last, i32, acc.to(acc_dtype))]


@pytest.mark.parametrize("acc_dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("label_dtype", [torch.int16, torch.int32])
@pytest.mark.parametrize("n, chunk", [(5000, 5000), (4999, 5000)])  # a full and a last shard
def test_end_epoch_and_scores_match_reference(device, acc_dtype, label_dtype, n, chunk):
    classes = 7
    state = random_state(n, chunk, acc_dtype, device)
    labels = torch.randint(0, classes, (n,), dtype=label_dtype).to(device)
    history = torch.randn(4, classes, dtype=torch.float64, device=device)
    ref = [t.clone() for t in state]
    flags, ref_flags = new_flags(device), new_flags(device)
    _ops.end_epoch(labels, history, 0, 3, *state, flags)
    kernels_torch.end_epoch(labels, history, 0, 3, *ref, ref_flags)
    tol = dict(rtol=1e-12, atol=1e-12) if acc_dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state[0], ref[0], rtol=0, atol=0)  # the epoch buffer is read only
    torch.testing.assert_close(state[1], ref[1])
    torch.testing.assert_close(state[2], ref[2], rtol=0, atol=0)
    torch.testing.assert_close(state[3], ref[3], **tol)
    assert flags[_ops.OBSERVED] == ref_flags[_ops.OBSERVED]
    assert flags[_ops.MIN_LAST_CHECKPOINT] == ref_flags[_ops.MIN_LAST_CHECKPOINT]
    torch.testing.assert_close(_ops.scores(state[2], state[3]), kernels_torch.scores(state[2], state[3]),
                               equal_nan=True, **tol)


def test_subnormal_losses_are_flushed_to_zero(device):
    """CUDA's float atomics flush subnormal results; both backends flush subnormal inputs so
    that one observation is stored the same way on both."""
    epoch = torch.zeros(1, 2, 3, device=device)
    flags = new_flags(device)
    loss = torch.tensor([1e-40, -1e-39, 2e-38])  # two subnormals and a normal
    _ops.record(torch.arange(3).to(device), loss.to(device), epoch, 3, flags)
    assert epoch[0, 0].cpu().tolist() == [0.0, 0.0, loss[2].item()]
    assert epoch[0, 1].cpu().tolist() == [1.0, 1.0, 1.0] and int(flags[_ops.NON_FINITE]) == 0


def test_end_epoch_clears_the_buffer_only_when_asked(device):
    n = 3000
    state = random_state(n, n, torch.float64, device, seed=11)
    labels = torch.randint(0, 7, (n,), dtype=torch.int16).to(device)
    history = torch.randn(4, 7, dtype=torch.float64, device=device)
    other = [t.clone() for t in state]
    _ops.end_epoch(labels, history, 0, 3, *state, new_flags(device), clear_epoch=True)
    _ops.end_epoch(labels, history, 0, 3, *other, new_flags(device))
    assert (state[0] == 0).all() and torch.equal(other[0], random_state(n, n, torch.float64, device, seed=11)[0])
    for a, b in zip(state[1:], other[1:]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("loss_dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("shards", [1, 3])
def test_record_matches_reference(device, loss_dtype, shards):
    n = 100
    chunk = -(-n // shards)
    g = torch.Generator().manual_seed(1)
    index = torch.randint(-5, n + 5, (300,), generator=g)
    loss = torch.randn(300, generator=g).to(loss_dtype)
    loss[::17] = float("nan")
    epoch = torch.zeros(shards, 2, chunk, device=device)
    ref = epoch.clone()
    flags, ref_flags = new_flags(device), new_flags(device)
    _ops.record(index.to(device), loss.to(device), epoch, n, flags)
    kernels_torch.record(index, loss.to(device), ref, n, ref_flags)
    torch.testing.assert_close(epoch, ref, rtol=1e-6, atol=1e-5)
    for slot in (_ops.BAD_INDEX_COUNT, _ops.NON_FINITE):
        assert flags[slot] == ref_flags[slot]
    bad = index[(index < 0) | (index >= n)]
    assert int(flags[_ops.FIRST_BAD_INDEX]) in bad.tolist()


@pytest.mark.parametrize("classes", [1, 10, 1000])
def test_record_ce_matches_reference(device, classes):
    n, batch = 64, 48
    g = torch.Generator().manual_seed(2)
    index = torch.randint(0, n, (batch,), generator=g).to(device)
    logits = (4 * torch.randn(batch, classes, generator=g)).to(device)
    target = torch.randint(0, classes, (batch,), generator=g).to(device)
    epoch = torch.zeros(1, 2, n, device=device)
    ref = epoch.clone()
    out, _ = _ops.record_ce(index, logits, target, epoch, n, new_flags(device))
    want, _ = kernels_torch.record_ce(index, logits, target, ref, n, new_flags(device))
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(epoch, ref, rtol=1e-5, atol=1e-4)


# ---------------------------------------------------------------------------------------
# Edge cases of the shared per-element math (csrc/include/cldfast/common.h). The CPU runs the
# same functions as the GPU, so every case here checks both, on CUDA where available.

def torch_ce64(logits, target):
    """Independent reference: torch's cross-entropy in float64 on the CPU."""
    return torch.nn.functional.cross_entropy(logits.detach().cpu().double(), target.cpu().long(),
                                             reduction="none")


def ce_rows(device, rows, target, dtype=torch.float32):
    logits = torch.tensor(rows, dtype=dtype)
    target = torch.tensor(target)
    n = len(rows)
    epoch = torch.zeros(1, 2, n, device=device)
    flags = new_flags(device)
    out, _ = _ops.record_ce(torch.arange(n).to(device), logits.to(device), target.to(device), epoch,
                            n, flags)
    return out.cpu(), torch_ce64(logits, target), epoch.cpu(), flags.cpu()


@pytest.mark.parametrize("classes", [3, 31, 33, 200])  # one lane per row, and a warp per row
def test_record_ce_minus_inf_logits_give_finite_loss(device, classes):
    g = torch.Generator().manual_seed(3)
    rows = torch.randn(6, classes, generator=g)
    rows[:, 0] = float("-inf")  # the first value every lane layout reads
    rows[1, : classes // 2] = float("-inf")  # masked logits
    rows[2, 1::2] = float("-inf")
    target = [1, classes - 1, 2, classes - 1, 1, classes - 1]
    out, want, epoch, flags = ce_rows(device, rows.tolist(), target)
    assert torch.isfinite(want).all()
    torch.testing.assert_close(out.double(), want, rtol=1e-6, atol=1e-6)
    assert int(flags[_ops.NON_FINITE]) == 0 and epoch[0, 1].sum() == 6


@pytest.mark.parametrize("classes", [3, 31, 33, 200])
def test_record_ce_nan_or_inf_anywhere_gives_nan_like_torch(device, classes):
    rows = torch.zeros(4, classes)
    rows[0, classes - 1] = float("nan")  # a non-target class, in the last lane's share
    rows[1, 1] = float("nan")
    rows[2, classes // 2] = float("inf")
    rows[3, :] = float("-inf")
    target = [0, 0, 0, 0]
    out, want, epoch, flags = ce_rows(device, rows.tolist(), target)
    assert torch.isnan(want).all() and torch.isnan(out).all()
    assert int(flags[_ops.NON_FINITE]) == 4 and epoch.sum() == 0  # skipped, counted
    # Only the target at -inf: an infinite loss, skipped as non-finite.
    row = [[float("-inf")] + [1.0] * (classes - 1)]
    out, want, _, flags = ce_rows(device, row, [0])
    assert out[0] == float("inf") == want[0] and int(flags[_ops.NON_FINITE]) == 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scale", [30.0, 1000.0, 1e4])
def test_record_ce_keeps_confident_losses_precise(device, dtype, scale):
    """A confident sample's loss is tiny next to its logits; it must not be lost to
    cancellation (relative error against float64 torch)."""
    g = torch.Generator().manual_seed(4)
    classes = 50
    logits = torch.randn(64, classes, generator=g) * 3
    target = torch.randint(0, classes, (64,), generator=g)
    margin = torch.linspace(0.0, 25.0, 64)  # losses from ~log(C) down to ~1e-10
    logits[torch.arange(64), target] = logits.max(1).values + margin
    logits = logits + scale
    logits = logits.to(dtype)
    out, _, _, _ = ce_rows(device, logits.tolist(), target.tolist(), dtype)
    # Reference in numpy float64, written to keep the tiny losses exact: with x_t the row's
    # maximum m, loss = log1p(sum_{j != t} exp(x_j - m)). (torch's own float64 cross-entropy
    # rounds 1 + r before the log and is off by ~1e-5 relative at these losses.)
    x = logits.double().numpy()
    t = target.numpy()
    m = x.max(1)
    assert (x[np.arange(64), t] == m).all()
    terms = np.exp(x - m[:, None])
    terms[np.arange(64), t] = 0.0
    want = np.log1p(terms.sum(1))
    assert (want > 0).all() and want.min() < 1e-9
    rel = np.abs((out.double().numpy() - want) / want).max()
    assert rel < 2e-6, rel


def test_float64_loss_beyond_float_range_is_non_finite(device):
    n = 4
    epoch = torch.zeros(1, 2, n, device=device)
    flags = new_flags(device)
    loss = torch.tensor([1e300, -1e39, 2.0, 3.5e38], dtype=torch.float64)  # finite as doubles
    _ops.record(torch.arange(n).to(device), loss.to(device), epoch, n, flags)
    epoch = epoch.cpu()
    assert torch.isfinite(epoch).all()
    assert int(flags[_ops.NON_FINITE]) == 3
    assert epoch[0, 0].tolist() == [0.0, 0.0, 2.0, 0.0] and epoch[0, 1].tolist() == [0, 0, 1, 0]


@pytest.mark.parametrize("classes", [5, 150])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_fused_backward_matches_torch_and_masks_bad_targets(device, classes, dtype):
    from cldfast import CLDTracker

    g = torch.Generator().manual_seed(5)
    batch = 12
    logits = (3 * torch.randn(batch, classes, generator=g)).to(dtype)
    target = torch.randint(0, classes, (batch,), generator=g)
    bad = target.clone()
    bad[[2, 7]] = torch.tensor([-100, classes])  # ignore_index-style and one past the end
    weights = torch.rand(batch, generator=g)
    tracker = CLDTracker(torch.arange(batch) % classes, torch.arange(classes), device=device)
    x = logits.to(device, copy=True).requires_grad_(True)
    loss = tracker.record(torch.arange(batch), logits=x, targets=bad.to(device))
    (loss.nan_to_num(0.0) * weights.to(device)).sum().backward()
    ok = torch.ones(batch, dtype=torch.bool)
    ok[[2, 7]] = False
    ref_x = logits.detach().double().requires_grad_(True)
    ref = torch.nn.functional.cross_entropy(ref_x[ok], target[ok], reduction="none")
    (ref * weights[ok].double()).sum().backward()
    assert x.grad.dtype == dtype
    got = x.grad.cpu().double()
    assert (got[~ok] == 0).all()
    tol = {torch.float64: 1e-12, torch.float32: 1e-6, torch.bfloat16: 1e-2}[dtype]
    torch.testing.assert_close(got[ok], ref_x.grad[ok], rtol=tol, atol=tol)
    assert torch.isnan(loss[[2, 7]].cpu()).all()
    tracker.record_validation(torch.zeros(classes, device=device))
    with pytest.raises(IndexError, match="2 target"):
        tracker.end_epoch()


def test_fused_backward_with_a_mean_reduction(device):
    """losses.mean().backward() hands the backward a broadcast (stride 0) gradient."""
    from cldfast import CLDTracker

    g = torch.Generator().manual_seed(6)
    logits = torch.randn(9, 40, generator=g)
    target = torch.randint(0, 40, (9,), generator=g)
    tracker = CLDTracker(torch.arange(9), torch.arange(40), device=device)
    x = logits.to(device, copy=True).requires_grad_(True)
    tracker.record(torch.arange(9), logits=x, targets=target.to(device)).mean().backward()
    ref_x = logits.detach().double().requires_grad_(True)
    torch.nn.functional.cross_entropy(ref_x, target).backward()
    torch.testing.assert_close(x.grad.cpu().double(), ref_x.grad, rtol=1e-6, atol=1e-7)


def test_unknown_dtype_codes_are_refused(device):
    from cldfast import _core

    epoch = torch.zeros(1, 2, 4, device=device)
    flags = new_flags(device)
    index = torch.arange(4, device=device)
    loss = torch.ones(4, device=device)
    args = (index.data_ptr(), 4, 1, loss.data_ptr(), 9, 1, 4, epoch.data_ptr(), 4, 4,
            flags.data_ptr())
    with pytest.raises(ValueError, match="unsupported loss dtype code 9"):
        if device == "cuda":
            _core.cuda_record(*args, *_ops._stream(torch.device("cuda")))
        else:
            _core.cpu_record(*args)
    bad_index = list(args)
    bad_index[1], bad_index[4] = 0, 0  # float32 losses, float32 indices (not an index type)
    with pytest.raises(ValueError, match="unsupported index dtype code 0"):
        if device == "cuda":
            _core.cuda_record(*bad_index, *_ops._stream(torch.device("cuda")))
        else:
            _core.cpu_record(*bad_index)
    assert epoch.sum() == 0 and flags.sum() == 0


def test_cuda_driver_compatibility_rule():
    ok, msg = _ops.cuda_compatibility(13000, 12040)
    assert not ok and "CUDA 13.0" in msg and "CUDA 12.4" in msg
    assert _ops.cuda_compatibility(13000, 13020)[0]
    assert _ops.cuda_compatibility(12040, 13000)[0]
    assert not _ops.cuda_compatibility(12080, 0)[0]
    info = __import__("cldfast").build_info()
    assert {"cuda_runtime", "cuda_driver", "cuda_compatible", "torch_cuda"} <= set(info)


# ---------------------------------------------------------------------------------------
# CUDA against the CPU kernels: the agreement stated in common.h.

HAS_CUDA = torch.cuda.is_available() and _ops.cuda_compiled()


def needs_cuda(fn):
    return pytest.mark.cuda(pytest.mark.skipif(
        not HAS_CUDA, reason="needs a CUDA GPU and a cldfast build with CUDA kernels")(fn))


@needs_cuda
@pytest.mark.parametrize("acc_dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("n, chunk", [(200_003, 200_003), (99_999, 100_000)])
def test_cuda_end_epoch_and_scores_bit_identical_to_cpu(acc_dtype, n, chunk):
    state = random_state(n, chunk, acc_dtype, "cpu", seed=7)
    labels = torch.randint(0, 100, (n,), dtype=torch.int16)
    history = torch.randn(4, 100, dtype=torch.float64)
    gpu = [t.cuda() for t in state]
    flags, gflags = new_flags("cpu"), new_flags("cuda")
    _ops.end_epoch(labels, history, 0, 3, *state, flags)
    _ops.end_epoch(labels.cuda(), history.cuda(), 0, 3, *gpu, gflags)
    for cpu_t, gpu_t in zip(state, gpu):
        assert torch.equal(cpu_t, gpu_t.cpu())
    assert torch.equal(flags, gflags.cpu())
    a, b = _ops.scores(state[2], state[3]), _ops.scores(gpu[2], gpu[3]).cpu()
    assert torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(9), b.nan_to_num(9))


@needs_cuda
@pytest.mark.parametrize("loss_dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_cuda_record_bit_identical_and_repeats_within_bound(loss_dtype):
    n, shards = 5000, 3
    chunk = -(-n // shards)
    g = torch.Generator().manual_seed(8)
    index = torch.randperm(n, generator=g)
    loss = (torch.rand(n, generator=g) * 5).to(loss_dtype)
    cpu, gpu = torch.zeros(shards, 2, chunk), torch.zeros(shards, 2, chunk, device="cuda")
    _ops.record(index, loss, cpu, n, new_flags("cpu"))
    _ops.record(index.cuda(), loss.cuda(), gpu, n, new_flags("cuda"))
    assert torch.equal(cpu, gpu.cpu())  # no repeats: bit-identical
    # Each of 100 samples 64 times in one batch: atomics sum in any order.
    k = 64
    index = torch.arange(100).repeat(k)[torch.randperm(100 * k, generator=g)]
    loss = (torch.rand(100 * k, generator=g) * 5).to(loss_dtype)
    cpu, gpu = torch.zeros(1, 2, 100), torch.zeros(1, 2, 100, device="cuda")
    _ops.record(index, loss, cpu, 100, new_flags("cpu"))
    _ops.record(index.cuda(), loss.cuda(), gpu, 100, new_flags("cuda"))
    abs_sum = torch.zeros(100, dtype=torch.float64).index_add_(0, index, loss.double().abs())
    bound = (k - 1) * 2.0**-23 * abs_sum  # each order within k - 1 roundings of the exact sum
    assert ((cpu[0, 0].double() - gpu.cpu()[0, 0].double()).abs() <= bound).all()
    assert torch.equal(cpu[0, 1], gpu.cpu()[0, 1])


@needs_cuda
@pytest.mark.parametrize("classes", [2, 10, 32, 33, 100, 1000, 21843])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_cuda_record_ce_agrees_with_cpu(classes, dtype):
    g = torch.Generator().manual_seed(9)
    batch = 300
    logits = (6 * torch.randn(batch, classes, generator=g)).to(dtype)
    logits[::7, ::3] = float("-inf")
    target = torch.randint(0, classes, (batch,), generator=g)
    target[::7] = 1 % classes if classes > 1 else 0
    index = torch.randint(0, 50, (batch,), generator=g)
    cpu_e, gpu_e = torch.zeros(1, 2, 50), torch.zeros(1, 2, 50, device="cuda")
    cf, gf = new_flags("cpu"), new_flags("cuda")
    a, la = _ops.record_ce(index, logits, target, cpu_e, 50, cf)
    b, lb = _ops.record_ce(index.cuda(), logits.cuda(), target.cuda(), gpu_e, 50, gf)
    torch.testing.assert_close(b.cpu(), a, rtol=4e-6, atol=1e-6, equal_nan=True)
    torch.testing.assert_close(lb.cpu(), la, rtol=4e-6, atol=1e-6, equal_nan=True)
    torch.testing.assert_close(gpu_e.cpu(), cpu_e, rtol=4e-6, atol=1e-5)
    assert torch.equal(cf, gf.cpu())
    # The float backward is element-wise in exp_nonpos and IEEE operations only: from the same
    # log-sum-exp, both sides give the same bits. (float64 logits use each side's libm exp.)
    grad_loss = torch.rand(batch, generator=g)
    ga = _ops.ce_backward(logits, target, la, grad_loss)
    gb = _ops.ce_backward(logits.cuda(), target.cuda(), la.cuda(), grad_loss.cuda())
    if dtype == torch.float64:
        torch.testing.assert_close(gb.cpu(), ga, rtol=1e-14, atol=1e-300)
    else:
        assert torch.equal(gb.cpu(), ga)


@needs_cuda
def test_cuda_tracker_matches_cpu_tracker_over_epochs():
    from cldfast import CLDTracker

    n, classes = 30_000, 10
    g = torch.Generator().manual_seed(10)
    labels = torch.randint(0, classes, (n,), generator=g)
    val_labels = torch.arange(200) % classes
    trackers = [CLDTracker(labels, val_labels, device=d) for d in ("cpu", "cuda")]
    for epoch in range(6):
        seen = torch.randperm(n, generator=g)[: int(0.9 * n)]  # missing observations too
        losses = torch.rand(seen.numel(), generator=g) * 3 / (epoch + 1)
        val = torch.rand(200, generator=g, dtype=torch.float64)
        for t in trackers:
            for part in range(0, seen.numel(), 512):
                t.record(seen[part:part + 512], losses[part:part + 512].to(t.device))
            t.record_validation(val.to(t.device))
            t.end_epoch()
    # The kernels agree bit for bit (above); the per-class validation means come from torch's
    # index_add_, whose CUDA atomics add in any order, so the scores agree to rounding.
    a, b = trackers[0].scores(), trackers[1].scores().cpu()
    assert torch.equal(a.isnan(), b.isnan())
    torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12, equal_nan=True)
    assert torch.equal(trackers[0].num_differences(), trackers[1].num_differences().cpu())


@pytest.mark.cuda
@pytest.mark.skipif(not (torch.cuda.is_available() and torch.cuda.device_count() >= 2
                         and _ops.cuda_compiled()), reason="needs two CUDA GPUs")
def test_cuda_tracker_on_a_device_that_is_not_current():
    from cldfast import CLDTracker

    torch.cuda.set_device(0)
    tracker = CLDTracker(torch.arange(64) % 4, torch.arange(8) % 4, device="cuda:1")
    for _ in range(3):
        logits = torch.randn(64, 4, device="cuda:1")
        tracker.record(torch.arange(64), logits=logits, targets=(torch.arange(64) % 4).cuda(1))
        tracker.record_validation(torch.rand(8, device="cuda:1"))
        tracker.end_epoch()
    assert torch.cuda.current_device() == 0
    assert tracker.scores().device == torch.device("cuda:1")
