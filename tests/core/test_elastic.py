"""Tracker state saved by W processes and continued by W' (elastic / requeued jobs): the
scores, counts and error counters equal one process fed the same losses, including an epoch
that was open (half recorded) when the state was saved. Gloo on CPU."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cldfast import CLDTracker

from dist_helpers import free_port, init_group
from numpy_reference import cld_reference

N, Q, T, C = 101, 13, 5, 4
STOP = 2  # the state is saved halfway through epoch 2 (0-based)


def problem():
    rng = np.random.default_rng(7)
    labels = rng.integers(0, C, N)
    val_labels = np.arange(Q) % C
    train = rng.gamma(2.0, 1.0, (T, N))
    train[1, 5] = np.nan  # a non-finite loss: skipped and counted
    val = rng.gamma(2.0, 1.0, (T, Q))
    orders = [rng.permutation(N) for _ in range(T)]
    orders[1] = orders[1][: N - 9]  # epoch 1 misses 9 samples (drop_last, subsampling)
    orders[3] = np.concatenate([orders[3], orders[3][:4]])  # 4 samples seen twice
    return labels, val_labels, train, val, orders


def feed(tracker, rank, world, epochs, part):
    """Record epochs' losses; this rank takes every world-th observation. ``part`` of the
    STOP epoch: "first" records its first half (and V's first half), "second" the rest."""
    labels, val_labels, train, val, orders = problem()
    for t in epochs:
        order, vpos = orders[t], np.arange(Q)
        if t == STOP and part == "first":
            order, vpos = order[: len(order) // 2], vpos[: Q // 2]
        elif t == STOP and part == "second":
            order, vpos = order[len(order) // 2:], vpos[Q // 2:]
        mine, vmine = order[rank::world], vpos[rank::world]
        for batch in np.array_split(mine, 3):
            tracker.record(torch.from_numpy(batch), torch.from_numpy(train[t][batch]).float())
        tracker.record_validation(torch.from_numpy(val[t][vmine]), torch.from_numpy(vmine))
        if t == STOP and part == "first":
            return
        tracker.end_epoch()


def first_phase(tracker, rank, world):
    feed(tracker, rank, world, range(STOP + 1), "first")
    return tracker.state_dict()


def second_phase(tracker, rank, world):
    feed(tracker, rank, world, [STOP], "second")
    feed(tracker, rank, world, range(STOP + 1, T), None)
    return (tracker.scores().numpy(), tracker.num_differences().numpy(),
            tracker.nonfinite_train, tracker.checkpoint)


def make_tracker():
    labels, val_labels, *_ = problem()
    return CLDTracker(labels, val_labels)


def _phase1_worker(rank, world, port, out_dir):
    init_group(rank, world, port)
    try:
        torch.save(first_phase(make_tracker(), rank, world), os.path.join(out_dir, f"state{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _phase2_worker(rank, world, port, out_dir, old_world):
    init_group(rank, world, port)
    try:
        states = [torch.load(os.path.join(out_dir, f"state{r}.pt")) for r in range(old_world)]
        tracker = make_tracker()
        tracker.load_state_dict(states if old_world > 1 else states[0])
        scores, ndiff, nonfinite, checkpoints = second_phase(tracker, rank, world)
        np.savez(os.path.join(out_dir, f"out{rank}.npz"), scores=scores, ndiff=ndiff,
                 nonfinite=nonfinite, checkpoints=checkpoints)
    finally:
        dist.destroy_process_group()


def uninterrupted():
    tracker = make_tracker()
    tracker.load_state_dict(first_phase(make_tracker(), 0, 1))
    return second_phase(tracker, 0, 1)


def test_uninterrupted_single_process_matches_numpy_reference():
    labels, val_labels, train, val, orders = problem()
    obs = [[(int(i), float(train[t][i])) for i in orders[t] if np.isfinite(train[t][i])]
           for t in range(T)]
    ref = cld_reference(obs, list(val), labels, val_labels)
    scores, ndiff, nonfinite, checkpoints = uninterrupted()
    np.testing.assert_allclose(scores, ref, rtol=0, atol=1e-6)
    assert nonfinite == 1 and checkpoints == T
    assert ndiff.min() < ndiff.max() == T - 1  # the missed samples have fewer differences


@pytest.mark.slow
@pytest.mark.parametrize("old_world,new_world", [(2, 1), (1, 2), (2, 3)])
def test_state_continues_at_another_world_size(tmp_path, old_world, new_world):
    want_scores, want_ndiff, want_nonfinite, want_t = uninterrupted()
    if old_world == 1:
        torch.save(first_phase(make_tracker(), 0, 1), tmp_path / "state0.pt")
    else:
        mp.spawn(_phase1_worker, args=(old_world, free_port(), str(tmp_path)), nprocs=old_world,
                 join=True)
    outs = []
    if new_world == 1:
        states = [torch.load(tmp_path / f"state{r}.pt") for r in range(old_world)]
        tracker = make_tracker()
        tracker.load_state_dict(states)
        outs.append(second_phase(tracker, 0, 1))
    else:
        mp.spawn(_phase2_worker, args=(new_world, free_port(), str(tmp_path), old_world),
                 nprocs=new_world, join=True)
        for r in range(new_world):
            z = np.load(tmp_path / f"out{r}.npz")
            outs.append((z["scores"], z["ndiff"], int(z["nonfinite"]), int(z["checkpoints"])))
    for scores, ndiff, nonfinite, checkpoints in outs:
        np.testing.assert_allclose(scores, want_scores, rtol=0, atol=1e-6)
        np.testing.assert_array_equal(ndiff, want_ndiff)
        assert (nonfinite, checkpoints) == (want_nonfinite, want_t)


def test_consolidate_refuses_an_incomplete_or_mixed_set():
    labels, val_labels, *_ = problem()
    a = first_phase(make_tracker(), 0, 1)
    fake = [dict(a, world_size=2, rank=0), dict(a, world_size=2, rank=0)]
    with pytest.raises(ValueError, match=r"one state of each rank 0..W-1"):
        CLDTracker.consolidate_states(fake)
    with pytest.raises(ValueError, match=r"one state of each rank"):
        CLDTracker.consolidate_states([dict(a, world_size=3, rank=0), dict(a, world_size=3, rank=1)])
    other = dict(a, world_size=2, rank=1, checkpoint=a["checkpoint"] + 1)
    with pytest.raises(ValueError, match="disagree on 'checkpoint'"):
        CLDTracker.consolidate_states([dict(a, world_size=2, rank=0), other])


def test_state_of_another_run_is_refused_naming_what_differs():
    labels, val_labels, *_ = problem()
    state = first_phase(make_tracker(), 0, 1)
    with pytest.raises(ValueError, match="num_samples=101 but this tracker has num_samples=100"):
        CLDTracker(labels[:100], val_labels).load_state_dict(state)
    with pytest.raises(ValueError, match="different train_labels"):
        CLDTracker((labels + 1) % C, val_labels).load_state_dict(state)
    with pytest.raises(ValueError, match="different val_labels"):
        CLDTracker(labels, (val_labels + 1) % C).load_state_dict(state)
    with pytest.raises(ValueError, match="format 99"):
        CLDTracker(labels, val_labels).load_state_dict(dict(state, format=99))
    with pytest.raises(ValueError, match="rank 1 of 2 processes; this is rank 0 of 1"):
        CLDTracker(labels, val_labels).load_state_dict(dict(state, world_size=2, rank=1))
