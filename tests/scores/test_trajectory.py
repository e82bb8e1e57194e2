"""TrajectoryTracker keeps, per checkpoint, what was recorded: checked against trajectories
built by hand in numpy from the same stream (mean of the finite observations per sample and
checkpoint, NaN where none), and its streamed scores against the plain numpy CLD of
tests/numpy_reference.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cldfast.scores.trajectory import TrajectoryTracker

from numpy_reference import cld_reference_dense


def _stream(seed: int, n: int, q: int, epochs: int):
    """Per epoch: training batches (positions, losses) with repeats, skipped samples and a
    non-finite loss, and validation batches (positions, losses)."""
    rng = np.random.default_rng(seed)
    out = []
    for t in range(epochs):
        pos = rng.permutation(n)[: n - 2]            # two samples unseen this epoch
        pos = np.concatenate([pos, pos[:3]])          # three recorded twice
        loss = rng.random(pos.size).astype(np.float32) * 3
        if t == 1:
            loss[0] = np.nan                          # skipped by the tracker: kept as unseen
        train = [(pos[i:i + 4], loss[i:i + 4]) for i in range(0, pos.size, 4)]
        vpos = rng.permutation(q)[: q - 1]
        vloss = rng.random(vpos.size).astype(np.float32)
        val = [(vpos[: vpos.size // 2], vloss[: vpos.size // 2]),
               (vpos[vpos.size // 2:], vloss[vpos.size // 2:])]
        out.append((train, val))
    return out


def _by_hand(batches, size: int) -> np.ndarray:
    sums, counts = {}, {}
    for pos, loss in batches:
        for p, v in zip(pos.tolist(), loss.tolist()):
            if np.isfinite(v):
                sums[p] = sums.get(p, 0.0) + v
                counts[p] = counts.get(p, 0) + 1
    row = np.full(size, np.nan, dtype=np.float32)
    for p in sums:
        row[p] = np.float32(sums[p] / counts[p])
    return row


def test_rows_are_the_mean_of_each_checkpoints_finite_losses():
    n, q, epochs = 11, 6, 4
    labels, val_labels = np.arange(n) % 3, np.arange(q) % 3
    tracker = TrajectoryTracker(labels, val_labels)
    stream = _stream(0, n, q, epochs)
    want_train, want_val = [], []
    for train, val in stream:
        for pos, loss in train:
            tracker.record(torch.from_numpy(pos), torch.from_numpy(loss))
        for vpos, vloss in val:
            tracker.record_validation(torch.from_numpy(vloss), torch.from_numpy(vpos))
        tracker.end_epoch()
        want_train.append(_by_hand(train, n))
        want_val.append(_by_hand(val, q))
    got_train, got_val = tracker.train_losses(), tracker.val_losses()
    assert got_train.dtype == np.float32 and got_train.shape == (epochs, n)
    assert got_val.dtype == np.float32 and got_val.shape == (epochs, q)
    np.testing.assert_array_equal(got_train, np.stack(want_train))
    np.testing.assert_array_equal(got_val, np.stack(want_val))
    assert tracker.num_rows == epochs


def test_single_observations_are_kept_bit_for_bit_and_scores_match_numpy():
    """Every sample once per checkpoint (an eval pass): the rows are the recorded float32
    values, and the streamed scores are the numpy CLD of those rows."""
    n, q, c, epochs = 40, 12, 4, 6
    rng = np.random.default_rng(1)
    labels, val_labels = rng.integers(0, c, n), np.arange(q) % c
    L = rng.random((epochs, n)).astype(np.float32)
    V = rng.random((epochs, q)).astype(np.float32)
    tracker = TrajectoryTracker(labels, val_labels, num_classes=c)
    for t in range(epochs):
        order = rng.permutation(n)
        tracker.record(torch.from_numpy(order), torch.from_numpy(L[t, order]))
        tracker.record_validation(torch.from_numpy(V[t]))  # all of V, in order
        tracker.end_epoch()
    np.testing.assert_array_equal(tracker.train_losses(), L)
    np.testing.assert_array_equal(tracker.val_losses(), V)
    ref = cld_reference_dense(L.astype(np.float64), V.astype(np.float64), labels, val_labels)
    np.testing.assert_allclose(tracker.scores().double().numpy(), ref, rtol=0, atol=1e-12)


def test_fused_form_keeps_the_cross_entropy():
    n, c = 8, 5
    rng = np.random.default_rng(2)
    labels = rng.integers(0, c, n)
    tracker = TrajectoryTracker(labels, np.arange(c))
    logits = rng.normal(size=(n, c)).astype(np.float32) * 2
    pos = np.array([3, 1, 0, 7, 5, 2, 6, 4])
    out = tracker.record(torch.from_numpy(pos), logits=torch.from_numpy(logits),
                         targets=torch.from_numpy(labels[pos]))
    tracker.record_validation(torch.ones(c))
    tracker.end_epoch()
    z = logits.astype(np.float64)
    ce = np.log(np.exp(z).sum(1)) - z[np.arange(n), labels[pos]]
    row = tracker.train_losses()[0]
    np.testing.assert_allclose(row[pos], ce, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(row[pos], out.detach().numpy())


def test_discard_epoch_drops_the_open_rows_and_empty_shapes():
    tracker = TrajectoryTracker(np.array([0, 1, 0]), np.array([0, 1]))
    assert tracker.train_losses().shape == (0, 3) and tracker.val_losses().shape == (0, 2)
    tracker.record(torch.tensor([0, 1]), torch.tensor([5.0, 6.0]))
    tracker.record_validation(torch.tensor([1.0, 2.0]))
    tracker.discard_epoch()
    tracker.record(torch.tensor([2]), torch.tensor([0.5]))
    tracker.record_validation(torch.tensor([3.0]), torch.tensor([1]))
    tracker.record_validation(torch.tensor([4.0]), torch.tensor([0]))
    tracker.end_epoch()
    np.testing.assert_array_equal(tracker.train_losses(), np.array([[np.nan, np.nan, 0.5]], np.float32))
    np.testing.assert_array_equal(tracker.val_losses(), np.array([[4.0, 3.0]], np.float32))


def test_out_of_range_positions_are_left_to_the_tracker():
    tracker = TrajectoryTracker(np.array([0, 1, 0]), np.array([0, 1]))
    tracker.record(torch.tensor([0, 3]), torch.tensor([1.0, 2.0]))
    tracker.record_validation(torch.tensor([1.0, 2.0]))
    with pytest.raises((ValueError, IndexError, RuntimeError)):
        tracker.end_epoch()
