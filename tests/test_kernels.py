"""Each native kernel against its pure-torch reference in cldfast/_reference.py."""

import pytest
import torch

from cldfast import _ops, _reference


def random_state(n, acc_dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    f32 = torch.stack([torch.rand(n, generator=g) * 3, torch.rand(n, generator=g) * 3])
    count = torch.randint(0, 3, (n,), generator=g, dtype=torch.int32)
    f32[0] *= count  # sums consistent with counts
    tlast = torch.randint(-1, 3, (n,), generator=g, dtype=torch.int32)
    ndiff = torch.where(tlast >= 0, torch.randint(0, 5, (n,), generator=g, dtype=torch.int32), 0)
    i32 = torch.stack([count, tlast, ndiff])
    acc = torch.randn(5, n, generator=g, dtype=torch.float64)
    acc[2:4] = acc[2:4].abs()
    acc = acc.to(acc_dtype)
    return f32.to(device), i32.to(device), acc.to(device)


@pytest.mark.parametrize("acc_dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("label_dtype", [torch.int16, torch.int32])
def test_end_epoch_and_scores_match_reference(device, acc_dtype, label_dtype):
    n, classes = 5000, 7
    f32, i32, acc = random_state(n, acc_dtype, device)
    labels = torch.randint(0, classes, (n,), dtype=label_dtype).to(device)
    history = torch.randn(4, classes, dtype=torch.float64, device=device)
    ref = [t.clone() for t in (f32, i32, acc)]
    flags = torch.zeros(_ops.NUM_FLAGS, dtype=torch.int64, device=device)
    ref_flags = flags.clone()
    _ops.end_epoch(labels, history, 0, 3, f32, i32, acc, flags)
    _reference._end_epoch(labels, history, 0, 3, *ref, ref_flags)
    tol = dict(rtol=1e-12, atol=1e-12) if acc_dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(f32, ref[0])
    torch.testing.assert_close(i32, ref[1], rtol=0, atol=0)
    torch.testing.assert_close(acc, ref[2], **tol)
    assert flags[_ops.OBSERVED] == ref_flags[_ops.OBSERVED]
    assert flags[_ops.MIN_LAST_CHECKPOINT] == ref_flags[_ops.MIN_LAST_CHECKPOINT]
    torch.testing.assert_close(_ops.scores(i32, acc), _reference._scores(i32, acc), equal_nan=True, **tol)


@pytest.mark.parametrize("loss_dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_record_matches_reference(device, loss_dtype):
    n = 100
    g = torch.Generator().manual_seed(1)
    index = torch.randint(-5, n + 5, (300,), generator=g)
    loss = torch.randn(300, generator=g).to(loss_dtype)
    loss[::17] = float("nan")
    state = [torch.zeros(2, n, device=device), torch.zeros(3, n, dtype=torch.int32, device=device)]
    ref = [t.clone() for t in state]
    flags = torch.zeros(_ops.NUM_FLAGS, dtype=torch.int64, device=device)
    ref_flags = flags.clone()
    _ops.record(index.to(device), loss.to(device), *state, flags)
    _reference._record(index, loss.to(device), *ref, ref_flags)
    torch.testing.assert_close(state[0], ref[0], rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(state[1], ref[1], rtol=0, atol=0)
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
    state = [torch.zeros(2, n, device=device), torch.zeros(3, n, dtype=torch.int32, device=device)]
    ref = [t.clone() for t in state]
    flags = torch.zeros(_ops.NUM_FLAGS, dtype=torch.int64, device=device)
    out = _ops.record_ce(index, logits, target, *state, flags)
    want = _reference._record_ce(index, logits, target, *ref, flags.clone())
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state[0], ref[0], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(state[1], ref[1], rtol=0, atol=0)
