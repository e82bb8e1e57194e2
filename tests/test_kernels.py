"""Each native kernel against its pure-torch reference in cldfast/_reference.py."""

import pytest
import torch

from cldfast import _ops, _reference


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
    _reference._end_epoch(labels, history, 0, 3, *ref, ref_flags)
    tol = dict(rtol=1e-12, atol=1e-12) if acc_dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state[0], ref[0], rtol=0, atol=0)  # the epoch buffer is read only
    torch.testing.assert_close(state[1], ref[1])
    torch.testing.assert_close(state[2], ref[2], rtol=0, atol=0)
    torch.testing.assert_close(state[3], ref[3], **tol)
    assert flags[_ops.OBSERVED] == ref_flags[_ops.OBSERVED]
    assert flags[_ops.MIN_LAST_CHECKPOINT] == ref_flags[_ops.MIN_LAST_CHECKPOINT]
    torch.testing.assert_close(_ops.scores(state[2], state[3]), _reference._scores(state[2], state[3]),
                               equal_nan=True, **tol)


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
    _reference._record(index, loss.to(device), ref, n, ref_flags)
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
    want = _reference._record_ce(index, logits, target, ref, n, new_flags(device))
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(epoch, ref, rtol=1e-5, atol=1e-4)
