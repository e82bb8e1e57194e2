"""CLDTracker under torch.distributed (Gloo on CPU): 2 and 3 processes, DistributedSampler
with padding, compared with a single-process tracker and the numpy reference."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DistributedSampler

from cldfast import CLDTracker, CLDWarning

from dist_helpers import free_port, init_group as _init
from numpy_reference import cld_reference

N, Q, T, C = 103, 17, 6, 4  # N not divisible by 2 or 3: padding and uneven shards


# Each test spawns 2-3 Gloo processes: slow.
pytestmark = pytest.mark.slow


def problem():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, C, N)
    val_labels = np.arange(Q) % C
    train = rng.gamma(2.0, 1.0, (T, N)).astype(np.float32)
    val = rng.gamma(2.0, 1.0, (T, Q)).astype(np.float32)
    return labels, val_labels, train, val


def _worker(rank: int, world: int, port: int, out_dir: str, mode: str) -> None:
    _init(rank, world, port)
    try:
        labels, val_labels, train, val = problem()
        tracker = CLDTracker(labels, val_labels)
        assert tracker.distributed and tracker.world_size == world
        sampler = DistributedSampler(range(N), num_replicas=world, rank=rank, shuffle=True, seed=1)
        for t in range(T):
            sampler.set_epoch(t)
            positions = torch.tensor(list(iter(sampler)))
            for batch in positions.split(8):
                tracker.record(batch, torch.from_numpy(train[t][batch.numpy()]))
            if mode == "padded_val":
                # V through a DistributedSampler too: Q = 17 is padded with repeats of the
                # first samples, which must count once each, as in one process.
                val_sampler = DistributedSampler(range(Q), num_replicas=world, rank=rank,
                                                 shuffle=False)
                mine = torch.tensor(list(iter(val_sampler)))
                for part in mine.split(5):
                    tracker.record_validation(torch.from_numpy(val[t][part.numpy()]), part)
            else:
                mine = torch.arange(rank, Q, world)  # ranks split V without repeats
                tracker.record_validation(torch.from_numpy(val[t][mine.numpy()]), mine)
            if mode == "resume" and t == 2:
                state = tracker.state_dict()
                tracker = CLDTracker(labels, val_labels)
                tracker.load_state_dict(state)
            tracker.end_epoch()
        scores = tracker.scores()  # gathered on every rank
        rank0 = tracker.scores(gather="rank0")
        np.save(os.path.join(out_dir, f"scores{rank}.npy"), scores.numpy())
        if rank == 0:
            np.save(os.path.join(out_dir, "rank0.npy"), rank0.numpy())
        else:
            assert rank0 is None
        np.save(os.path.join(out_dir, f"bytes{rank}.npy"), np.array([tracker.nbytes]))
        saved = tracker.save(os.path.join(out_dir, "saved.npz"))  # every rank calls, rank 0 writes
        assert (saved is None) == (rank != 0)
    finally:
        dist.destroy_process_group()


def single_process_scores():
    labels, val_labels, train, val = problem()
    tracker = CLDTracker(labels, val_labels, distributed=False)
    for t in range(T):
        tracker.record(torch.arange(N), torch.from_numpy(train[t]))
        tracker.record_validation(torch.from_numpy(val[t]))
        tracker.end_epoch()
    return tracker.scores().numpy(), tracker.nbytes


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("mode", ["plain", "resume", "padded_val"])
def test_distributed_matches_single_process(tmp_path, world, mode):
    mp.spawn(_worker, args=(world, free_port(), str(tmp_path), mode), nprocs=world, join=True)
    want, single_bytes = single_process_scores()
    labels, val_labels, train, val = problem()
    ref = cld_reference([[(i, float(v)) for i, v in enumerate(row)] for row in train], list(val),
                        labels, val_labels)
    np.testing.assert_allclose(want, ref, atol=1e-6)
    for rank in range(world):
        got = np.load(tmp_path / f"scores{rank}.npy")
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
        per_rank = int(np.load(tmp_path / f"bytes{rank}.npy")[0])
        assert per_rank < single_bytes  # the co-moment state is sharded
    np.testing.assert_array_equal(np.load(tmp_path / "rank0.npy"), np.load(tmp_path / "scores0.npy"))
    from cldfast.io import load_scores

    saved = load_scores(tmp_path / "saved.npz")
    np.testing.assert_array_equal(saved.scores, np.load(tmp_path / "scores0.npy"))
    np.testing.assert_array_equal(saved.labels, labels)


DUP_RANK0 = [0.0, 4.0, 1.0, 9.0, 2.0]  # sample 0's loss as rank 0 sees it, per epoch
DUP_RANK1 = [3.0, 0.0, 5.0, 2.0, 8.0]  # and as rank 1 sees it
DUP_VAL = [10.0, 7.0, 6.0, 2.0, 1.5]


def _duplicate_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    _init(rank, world, port)
    try:
        tracker = CLDTracker([0, 0, 0], [0])
        for t in range(5):
            # Sample 0 is seen by both ranks in every epoch (as DistributedSampler pads);
            # the epoch's value must be the mean of the two observations.
            tracker.record(torch.tensor([0]), torch.tensor([(DUP_RANK0 if rank == 0 else DUP_RANK1)[t]]))
            if rank == 0:
                tracker.record(torch.tensor([1, 2]), torch.tensor([float(t), 5.0 - t * 0.5]))
                tracker.record_validation(torch.tensor([DUP_VAL[t]]))
            else:
                tracker.record_validation(torch.zeros(0), torch.zeros(0, dtype=torch.int64))
            tracker.end_epoch()
        np.save(os.path.join(out_dir, f"dup{rank}.npy"), tracker.scores().numpy())
    finally:
        dist.destroy_process_group()


def test_validation_sample_recorded_twice_counts_once():
    """One process: a validation sample recorded twice contributes the mean of its losses
    once to its class's mean (the numpy reference averages per sample, then per class)."""
    val_labels = np.array([0, 0, 1])
    tracker = CLDTracker([0, 1, 0, 1], val_labels, distributed=False)
    rng = np.random.default_rng(3)
    per_epoch = []
    for t in range(5):
        tracker.record(torch.arange(4), torch.from_numpy(rng.gamma(2.0, 1.0, 4)).float())
        first = rng.gamma(2.0, 1.0, 3)
        again = rng.gamma(2.0, 1.0)  # sample 0 a second time, with another loss
        tracker.record_validation(torch.from_numpy(first))
        tracker.record_validation(torch.tensor([again], dtype=torch.float64), torch.tensor([0]))
        sample_mean = np.array([(first[0] + again) / 2, first[1], first[2]])
        per_epoch.append([sample_mean[val_labels == c].mean() for c in (0, 1)])
        tracker.end_epoch()
    np.testing.assert_allclose(tracker.val_trajectory.numpy(), np.array(per_epoch), rtol=1e-12)


def test_padded_sample_seen_twice_is_averaged(tmp_path):
    mp.spawn(_duplicate_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    obs = [[(0, DUP_RANK0[t]), (0, DUP_RANK1[t]), (1, float(t)), (2, 5.0 - t * 0.5)] for t in range(5)]
    val = [np.array([v]) for v in DUP_VAL]
    want = cld_reference(obs, val, np.zeros(3, int), np.zeros(1, int))
    counted_twice = cld_reference([o + [(0, DUP_RANK1[t])] for t, o in enumerate(obs)], val,
                                  np.zeros(3, int), np.zeros(1, int))
    got = np.load(tmp_path / "dup0.npy")
    np.testing.assert_allclose(got, want, atol=1e-9)
    assert not np.allclose(got[0], counted_twice[0])  # weighting 2:1 would give another value
    np.testing.assert_array_equal(np.load(tmp_path / "dup1.npy"), got)


def _world_change_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    _init(rank, world, port)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CLDWarning)
            tracker = CLDTracker(np.arange(10) % 2, [0, 1])
        # One rank's state of a 3-process run, alone, cannot be resharded: refused.
        one_rank = dict(CLDTracker(np.arange(10) % 2, [0, 1], distributed=False).state_dict(),
                        world_size=3, rank=1)
        try:
            tracker.load_state_dict(one_rank)
        except ValueError as exc:
            with open(os.path.join(out_dir, f"err{rank}.txt"), "w") as fh:
                fh.write(str(exc))
        # A whole-run state (one process) is resharded (tests/core/test_elastic.py).
        tracker.load_state_dict(CLDTracker(np.arange(10) % 2, [0, 1], distributed=False).state_dict())
    finally:
        dist.destroy_process_group()


def test_one_rank_state_from_another_world_size_is_refused(tmp_path):
    mp.spawn(_world_change_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        msg = (tmp_path / f"err{rank}.txt").read_text()
        assert f"saved by rank 1 of 3 processes; this is rank {rank} of 2" in msg
        assert "Pass every rank's state (a list of 3)" in msg
