"""CLDTracker against the numpy reference in tests/reference.py (CPU always, CUDA when present)."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cldfast
from cldfast import CLDTracker, CLDWarning

from numpy_reference import cld_reference, cld_reference_dense


def run_dense(train, val, labels, val_labels, device, per_class=True, precision="float64"):
    tracker = CLDTracker(labels, val_labels, per_class=per_class, device=device, precision=precision)
    for t in range(train.shape[0]):
        tracker.record(torch.arange(train.shape[1]), torch.as_tensor(train[t], device=device))
        tracker.record_validation(torch.as_tensor(val[t]))
        tracker.end_epoch()
    return tracker, tracker.scores().cpu().numpy()


def random_problem(rng, n=300, q=60, t=12, classes=5):
    labels = rng.integers(0, classes, n)
    val_labels = np.concatenate([np.arange(classes), rng.integers(0, classes, q - classes)])
    train = rng.gamma(2.0, 1.0, (t, n)).astype(np.float32)
    val = rng.gamma(2.0, 1.0, (t, q)).astype(np.float32)
    return train, val, labels, val_labels


@pytest.mark.parametrize("per_class", [True, False])
def test_dense_parity_float64(device, per_class):
    rng = np.random.default_rng(0)
    train, val, labels, val_labels = random_problem(rng)
    _, got = run_dense(train, val, labels, val_labels, device, per_class)
    want = cld_reference_dense(train, val, labels, val_labels, per_class)
    assert np.isfinite(want).all()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_dense_parity_float32(device):
    rng = np.random.default_rng(1)
    train, val, labels, val_labels = random_problem(rng, t=40)
    tracker, got = run_dense(train, val, labels, val_labels, device, precision="float32")
    assert tracker.scores().dtype == torch.float32
    want = cld_reference_dense(train, val, labels, val_labels)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)


def test_scores_follow_aligned_and_opposed_samples():
    # Sample 0's loss moves with its class's validation loss, sample 1's against it.
    vals = np.array([3.0, 2.5, 1.7, 1.6, 1.0])
    train = np.stack([vals + 0.1, 5.0 - vals, np.full(5, 2.0)], axis=1).astype(np.float32)
    val = vals[:, None].astype(np.float32)
    _, got = run_dense(train, val, [0, 0, 0], [0], "cpu")
    np.testing.assert_allclose(got, [1.0, -1.0, 0.0], atol=1e-6)


def test_fewer_than_two_differences_is_nan_and_constant_is_zero(device):
    rng = np.random.default_rng(2)
    train = rng.random((2, 4)).astype(np.float32)
    val = rng.random((2, 2)).astype(np.float32)
    _, got = run_dense(train, val, [0, 1, 0, 1], [0, 1], device)
    assert np.isnan(got).all()  # one difference each
    train = np.ones((5, 3), np.float32)
    val = rng.random((5, 1)).astype(np.float32)
    _, got = run_dense(train, val, [0, 0, 0], [0], device)
    np.testing.assert_array_equal(got, np.zeros(3))


def test_class_without_validation_uses_global_and_warns_once():
    rng = np.random.default_rng(3)
    labels = np.array([0, 1, 2, 2, 1, 0, 2])
    val_labels = np.array([0, 0, 1, 1])  # class 2 has no validation samples
    train = rng.random((6, 7)).astype(np.float32)
    val = rng.random((6, 4)).astype(np.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tracker = CLDTracker(labels, val_labels)
        for t in range(6):
            tracker.record(torch.arange(7), torch.from_numpy(train[t]))
            tracker.record_validation(torch.from_numpy(val[t]))
            tracker.end_epoch()
    msgs = [str(w.message) for w in caught if issubclass(w.category, CLDWarning)]
    assert len(msgs) == 1 and "classes 2" in msgs[0]
    assert tracker.classes_without_validation == [2]
    want = cld_reference_dense(train, val, labels, val_labels)
    np.testing.assert_allclose(tracker.scores().numpy(), want, atol=1e-6)
    traj = tracker.val_trajectory.numpy()
    np.testing.assert_allclose(traj[:, 2], val.astype(np.float64).mean(axis=1), atol=1e-12)


# Losses on a 1/4 grid, repeats in {1, 2, 4}: every epoch mean is exact in float32, so the
# only differences from the reference are float64 rounding of the co-moments.
grid_loss = st.integers(0, 64).map(lambda k: k / 4.0)


@st.composite
def observation_problems(draw):
    n = draw(st.integers(1, 24))
    classes = draw(st.integers(1, 4))
    t = draw(st.integers(1, 7))
    labels = draw(st.lists(st.integers(0, classes - 1), min_size=n, max_size=n))
    val_labels = draw(st.lists(st.integers(0, classes - 1), min_size=1, max_size=8))
    observations, val_losses = [], []
    for _ in range(t):
        obs = []
        for i in range(n):
            kind = draw(st.sampled_from(["once", "once", "once", "missing", "twice", "four", "nonfinite"]))
            if kind == "missing":
                continue
            if kind == "nonfinite":
                obs.append((i, draw(st.sampled_from([float("nan"), float("inf"), -float("inf")]))))
                continue
            value = draw(grid_loss)
            repeats = {"once": 1, "twice": 2, "four": 4}[kind]
            # Repeated observations of one epoch: values whose mean is on the grid.
            spread = draw(st.integers(0, 4)) / 4.0
            vals = [value + spread, value - spread] if repeats == 2 else [value] * repeats
            if repeats == 4:
                vals = [value + spread, value - spread, value, value]
            obs.extend((i, v) for v in vals)
        obs = draw(st.permutations(obs))
        observations.append(obs)
        val_losses.append(np.array(draw(st.lists(grid_loss, min_size=len(val_labels),
                                                 max_size=len(val_labels)))))
    per_class = draw(st.booleans())
    batch = draw(st.integers(1, 8))
    return labels, val_labels, observations, val_losses, per_class, batch


def replay(problem, device="cpu", state_roundtrip_at=None):
    labels, val_labels, observations, val_losses, per_class, batch = problem
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CLDWarning)
        tracker = CLDTracker(labels, val_labels, per_class=per_class, device=device,
                             num_classes=max(max(labels), max(val_labels)) + 1)
    nonfinite = 0
    for t, obs in enumerate(observations):
        for start in range(0, len(obs), batch):
            chunk = obs[start:start + batch]
            idx = torch.tensor([i for i, _ in chunk], dtype=torch.int64)
            loss = torch.tensor([v for _, v in chunk], dtype=torch.float32, device=device)
            tracker.record(idx, loss)
            nonfinite += sum(not np.isfinite(v) for _, v in chunk)
            if state_roundtrip_at == (t, start):
                blob = io.BytesIO()
                torch.save(tracker.state_dict(), blob)
                blob.seek(0)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", CLDWarning)
                    fresh = CLDTracker(labels, val_labels, per_class=per_class, device=device,
                                       num_classes=tracker.num_classes)
                fresh.load_state_dict(torch.load(blob, weights_only=True))
                tracker = fresh
        if not obs:
            tracker.record(torch.zeros(0, dtype=torch.int64), torch.zeros(0, device=device))
        tracker.record_validation(torch.tensor(val_losses[t], dtype=torch.float32))
        tracker.end_epoch()
    return tracker, nonfinite


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(observation_problems())
def test_streaming_matches_reference_with_missing_repeated_nonfinite(problem):
    labels, val_labels, observations, val_losses, per_class, _ = problem
    tracker, nonfinite = replay(problem)
    want = cld_reference(observations, val_losses, np.array(labels), np.array(val_labels), per_class)
    got = tracker.scores().numpy()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9, equal_nan=True)
    assert tracker.nonfinite_train == nonfinite


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(observation_problems(), st.data())
def test_state_dict_roundtrip_mid_epoch_gives_the_same_scores(problem, data):
    observations, batch = problem[2], problem[5]
    points = [(t, s) for t, obs in enumerate(observations) for s in range(0, len(obs), batch)]
    if not points:
        return
    at = data.draw(st.sampled_from(points))
    straight, _ = replay(problem)
    resumed, _ = replay(problem, state_roundtrip_at=at)
    torch.testing.assert_close(resumed.scores(), straight.scores(), rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_low_and_high_precision_losses(device, dtype):
    rng = np.random.default_rng(4)
    train, val, labels, val_labels = random_problem(rng, n=64, t=8)
    rounded = torch.from_numpy(train).to(dtype)
    tracker = CLDTracker(labels, val_labels, device=device)
    for t in range(train.shape[0]):
        tracker.record(torch.arange(64, device=device), rounded[t].to(device))
        tracker.record_validation(torch.from_numpy(val[t]))
        tracker.end_epoch()
    # The reference sees the same rounded values, widened to float32 as the kernel does.
    want = cld_reference_dense(rounded.float().numpy(), val, labels, val_labels)
    np.testing.assert_allclose(tracker.scores().cpu().numpy(), want, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32])
def test_fused_cross_entropy_matches_torch_and_records(device, dtype, index_dtype):
    torch.manual_seed(0)
    n, classes, batch = 40, 7, 16
    labels = torch.randint(0, classes, (n,))
    tracker = CLDTracker(labels, torch.arange(classes), device=device)
    plain = CLDTracker(labels, torch.arange(classes), device=device)
    idx = torch.randperm(n)[:batch].to(index_dtype)
    logits = (3 * torch.randn(batch, classes)).to(dtype).to(device).requires_grad_()
    targets = labels[idx.long()].to(device)
    losses = tracker.record(idx, logits=logits, targets=targets)
    want = F.cross_entropy(logits.float(), targets, reduction="none")
    tol = dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(losses, want.detach(), **tol)
    (losses * torch.linspace(0.5, 2.0, batch, device=device)).sum().backward()
    fused_grad = logits.grad.clone()
    logits.grad = None
    (want * torch.linspace(0.5, 2.0, batch, device=device)).sum().backward()
    grad_tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(fused_grad, logits.grad, **grad_tol)
    plain.record(idx, losses.detach())
    torch.testing.assert_close(tracker._epoch, plain._epoch)


def test_fused_cross_entropy_strided_rows_and_bad_target(device):
    n, classes = 10, 5
    tracker = CLDTracker(torch.arange(n) % classes, torch.arange(classes), device=device)
    wide = torch.randn(4, 2 * classes, device=device)
    logits = wide[:, :classes]  # rows 2*classes apart
    targets = torch.tensor([0, 1, 7, 2], device=device)  # 7 is out of range
    losses = tracker.record(torch.arange(4), logits=logits, targets=targets)
    want = F.cross_entropy(logits[[0, 1, 3]], targets[[0, 1, 3]], reduction="none")
    torch.testing.assert_close(losses[[0, 1, 3]], want)
    assert torch.isnan(losses[2])
    tracker.record_validation(torch.ones(classes))
    with pytest.raises(IndexError, match=r"target\(s\) outside .* e\.g\. 7"):
        tracker.end_epoch()


def test_bad_indices_are_flagged_and_never_applied(device):
    tracker = CLDTracker([0, 1, 0, 1], [0, 1], device=device)
    tracker.record(torch.tensor([0, 9, -3, 1]), torch.ones(4, device=device))
    tracker.record_validation(torch.ones(2))
    before = tracker.state_dict()
    with pytest.raises(IndexError, match=r"2 index\(es\) outside \[0, 4\), e\.g\. (9|-3)"):
        tracker.end_epoch()
    after = tracker.state_dict()
    for key in ("epoch", "last", "i32_state", "acc"):
        torch.testing.assert_close(after[key], before[key])
    assert tracker.checkpoint == 0
    assert tracker.end_epoch() == 2  # closed with the two valid observations
    assert tracker.checkpoint == 1


def test_input_errors_name_the_problem():
    tracker = CLDTracker([0, 1, 0], [0, 1])
    with pytest.raises(ValueError, match="reduction='none'"):
        tracker.record(torch.arange(3), torch.tensor(1.0))
    with pytest.raises(TypeError, match="int64 or int32"):
        tracker.record(torch.arange(3).float(), torch.ones(3))
    with pytest.raises(TypeError, match="losses must be float32"):
        tracker.record(torch.arange(3), torch.ones(3, dtype=torch.int32))
    with pytest.raises(ValueError, match="losses has 2 entries but indices has 3"):
        tracker.record(torch.arange(3), torch.ones(2))
    with pytest.raises(ValueError, match="losses is on meta but the tracker is on cpu"):
        tracker.record(torch.arange(3), torch.ones(3, device="meta"))
    with pytest.raises(ValueError, match="either losses or logits"):
        tracker.record(torch.arange(3))
    with pytest.raises(RuntimeError, match="record\\(\\) was not called"):
        tracker.end_epoch()
    tracker.record(torch.arange(3), torch.ones(3))
    with pytest.raises(RuntimeError, match="record_validation"):
        tracker.end_epoch()
    with pytest.raises(ValueError, match="expected all 2 validation samples"):
        tracker.record_validation(torch.ones(3))
    with pytest.raises(IndexError, match="val index 5"):
        tracker.record_validation(torch.ones(1), torch.tensor([5]))
    tracker.record_validation(torch.ones(1), torch.tensor([0]))
    with pytest.raises(RuntimeError, match=r"class\(es\) \[1\]"):
        tracker.end_epoch()


@pytest.mark.parametrize("labels, match", [
    ([0, -1, 2], "class ids >= 0; found -1 at position 1"),
    ([0.5, 1.0], "integer class ids"),
    ([], "train_labels is empty"),
    ([[0, 1]], "1-D"),
])
def test_label_errors(labels, match):
    with pytest.raises((ValueError, TypeError), match=match):
        CLDTracker(labels, [0, 1])


def test_precision_and_device_errors():
    with pytest.raises(ValueError, match="precision must be one of"):
        CLDTracker([0], [0], precision="float16")
    with pytest.raises(ValueError, match="device='meta' holds no data"):
        CLDTracker([0], [0], device="meta")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="torch sees no CUDA GPU"):
            CLDTracker([0], [0], device="cuda")


def test_state_dict_checks_before_changing_anything():
    tracker = CLDTracker([0, 1, 0, 1], [0, 1])
    tracker.record(torch.arange(4), torch.rand(4))
    state = tracker.state_dict()
    other = CLDTracker([1, 1, 0, 1], [0, 1])
    with pytest.raises(ValueError, match="different train_labels"):
        other.load_state_dict(state)
    with pytest.raises(ValueError, match="num_samples=4 but this tracker has num_samples=3"):
        CLDTracker([0, 1, 0], [0, 1]).load_state_dict(state)
    with pytest.raises(ValueError, match="format"):
        CLDTracker([0, 1, 0, 1], [0, 1]).load_state_dict({**state, "format": 99})
    with pytest.raises(ValueError, match="rank 0 of 2 processes; this is rank 0 of 1"):
        CLDTracker([0, 1, 0, 1], [0, 1]).load_state_dict({**state, "world_size": 2})
    broken = {**state, "acc": state["acc"][:, :2]}
    fresh = CLDTracker([0, 1, 0, 1], [0, 1])
    snapshot = fresh.state_dict()
    with pytest.raises(ValueError, match="'acc' should be"):
        fresh.load_state_dict(broken)
    for key in ("epoch", "last", "i32_state", "acc"):
        torch.testing.assert_close(fresh.state_dict()[key], snapshot[key])


def test_memory_is_64_bytes_per_sample_and_independent_of_epochs():
    n = 10_000
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 100, n)
    val_labels = np.arange(100).repeat(10)
    tracker = CLDTracker(labels, val_labels)
    per_sample = (tracker._epoch.nbytes + tracker._last.nbytes + tracker._i32.nbytes
                  + tracker._acc.nbytes + tracker._labels.nbytes) / n
    assert per_sample == 62
    sizes = []
    for _ in range(30):
        tracker.record(torch.arange(n), torch.rand(n))
        tracker.record_validation(torch.rand(1000))
        tracker.end_epoch()
        sizes.append(tracker.nbytes - 8 * 100 * tracker.checkpoint)  # less the host trajectory
    assert len(set(sizes[2:])) == 1
    assert tracker.nbytes < 64 * n + 64 * 1000 + 8 * 100 * 40
    assert CLDTracker(labels, val_labels, precision="float32").nbytes < tracker.nbytes - 19 * n


def test_missing_epochs_keep_only_needed_history():
    tracker = CLDTracker([0, 0], [0])
    tracker.record(torch.tensor([0, 1]), torch.ones(2))
    tracker.record_validation(torch.ones(1))
    tracker.end_epoch()
    for t in range(1, 6):  # sample 1 is never seen again: checkpoint 0 must stay available
        tracker.record(torch.tensor([0]), torch.tensor([float(t)]))
        tracker.record_validation(torch.tensor([float(t * t)]))
        tracker.end_epoch()
    assert tracker._history_base == 0
    tracker.record(torch.tensor([0, 1]), torch.tensor([7.0, 3.0]))
    tracker.record_validation(torch.tensor([2.0]))
    tracker.end_epoch()
    assert tracker._history_base == 6


def test_build_info():
    info = cldfast.build_info()
    assert info["version"] == cldfast.__version__
    assert isinstance(info["cuda"], bool) and isinstance(info["openmp"], bool)
    assert info["cpu_threads"] >= 1
    assert bool(info["cuda_architectures"]) == info["cuda"]


def test_finished_tracker_refuses_more_records():
    tracker = CLDTracker([0, 1], [0, 1], num_checkpoints=2)
    for _ in range(2):
        tracker.record(torch.arange(2), torch.rand(2))
        tracker.record_validation(torch.rand(2))
        tracker.end_epoch()
    before = tracker.scores().clone()
    for call in (lambda: tracker.record(torch.arange(2), torch.rand(2)),
                 lambda: tracker.record_validation(torch.rand(2)), tracker.end_epoch):
        with pytest.raises(RuntimeError, match="after the final checkpoint.*num_checkpoints=2"):
            call()
    torch.testing.assert_close(tracker.scores(), before, equal_nan=True)
    with pytest.raises(ValueError, match="num_checkpoints must be >= 1"):
        CLDTracker([0], [0], num_checkpoints=0)


def _small_run(tracker, n, epochs=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        tracker.record(torch.arange(n), torch.rand(n, generator=g, dtype=torch.float64))
        tracker.record_validation(torch.rand(tracker.num_val, generator=g, dtype=torch.float64))
        tracker.end_epoch()


def test_save_writes_the_scores_file_that_select_reads(tmp_path):
    import subprocess
    import sys

    from cldfast import select
    from cldfast.io import load_scores

    n = 60
    labels = np.arange(n) % 3
    tracker = CLDTracker(labels, [0, 1, 2, 0, 1, 2])
    _small_run(tracker, n)
    dataset_index = np.arange(n) * 2 + 7  # the training split is part of a larger dataset
    path = tracker.save(tmp_path / "scores.npz", train_indices=dataset_index,
                        metadata={"loss_source": "eval"}, extra={"my_score": np.arange(n) * 0.5})
    sf = load_scores(path)
    np.testing.assert_array_equal(sf.scores, tracker.scores().numpy())
    np.testing.assert_array_equal(sf.labels, labels)
    np.testing.assert_array_equal(sf.train_indices, dataset_index)
    np.testing.assert_array_equal(sf.extra["num_differences"], tracker.num_differences().numpy())
    np.testing.assert_array_equal(sf.extra["my_score"], np.arange(n) * 0.5)
    assert sf.metadata["loss_source"] == "eval" and sf.metadata["checkpoints"] == 4
    want = select(tracker.scores().numpy(), labels, fraction=0.2, dataset_indices=dataset_index)
    out = tmp_path / "idx.npy"
    subprocess.run([sys.executable, "-m", "cldfast.cli", "select", str(path), "--fraction", "0.2",
                    "--output", str(out)], check=True, cwd=tmp_path, capture_output=True)
    np.testing.assert_array_equal(np.sort(np.load(out)), np.sort(want))
    with pytest.raises(ValueError, match="train_indices must be 60 integers"):
        tracker.save(tmp_path / "bad.npz", train_indices=np.arange(59))
    assert not (tmp_path / "bad.npz").exists()


def test_string_ids_get_a_clear_error_and_idmap_maps_them():
    from cldfast import IdMap

    files = [f"img_{i:03d}.jpg" for i in range(10)]
    tracker = CLDTracker(np.arange(10) % 2, [0, 1])
    with pytest.raises(TypeError, match="IdMap"):
        tracker.record(["img_001.jpg", "img_002.jpg"], torch.ones(2))
    with pytest.raises(TypeError, match="training split"):
        tracker.record(torch.tensor([1.0, 2.0]), torch.ones(2))
    ids = IdMap(files)
    pos = ids.positions(["img_003.jpg", "img_000.jpg"])
    assert pos.tolist() == [3, 0] and pos.dtype == torch.int64
    tracker.record(pos, torch.ones(2))
    assert ids.ids_of(np.array([9, 3])) == ["img_009.jpg", "img_003.jpg"]
    with pytest.raises(KeyError, match="img_999"):
        ids.positions(["img_999.jpg"])
    with pytest.raises(ValueError, match="unique"):
        IdMap(["a", "b", "a"])
    with pytest.raises(IndexError, match=r"\[0, 10\)"):
        ids.ids_of([10])


def test_set_threads_reaches_torch_and_the_kernels(monkeypatch):
    import cldfast

    before = torch.get_num_threads()
    try:
        cldfast.set_threads(1)
        assert torch.get_num_threads() == 1
        assert cldfast.build_info()["cpu_threads"] == 1
    finally:
        cldfast.set_threads(before)
    for bad in (0, -2, 1.5, True, "2"):
        with pytest.raises(ValueError, match="threads must be an integer >= 1"):
            cldfast.set_threads(bad)
    monkeypatch.setattr("os.getloadavg", lambda: (3.0, 3.0, 3.0))
    monkeypatch.setattr("cldfast.core.threads.available_cores", lambda: 2)
    with pytest.warns(RuntimeWarning, match="--threads 1"):
        assert cldfast.check_cpu_contention(2) is not None
    assert cldfast.check_cpu_contention(1) is None
    monkeypatch.setattr("os.getloadavg", lambda: (0.0, 0.0, 0.0))
    assert cldfast.check_cpu_contention(2) is None


def test_empty_index_list_and_double_backward():
    tracker = CLDTracker(np.arange(4) % 2, [0, 1])
    tracker.record([], torch.zeros(0))  # an empty batch is fine, whatever its Python type
    x = torch.randn(4, 2, requires_grad=True)
    loss = tracker.record(torch.arange(4), logits=x, targets=torch.tensor([0, 1, 0, 1])).sum()
    (g,) = torch.autograd.grad(loss, x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|twice|does not require grad"):
        g.sum().backward()


def test_tracker_as_a_batch_recorder_matches_record_and_end_epoch():
    """CLDTracker through TrackerRecorder's hooks (on_batch with logits, on_epoch_end) equals
    the same losses through record / end_epoch; without validation on_epoch_end refuses."""
    from cldfast.core import TrackerRecorder

    g = torch.Generator().manual_seed(3)
    n, q, c, epochs = 40, 12, 3, 4
    labels, val_labels = torch.randint(0, c, (n,), generator=g), torch.arange(q) % c
    hooked = TrackerRecorder(CLDTracker(labels, val_labels))
    plain = CLDTracker(labels, val_labels)
    for e in range(epochs):
        logits = torch.randn(n, c, generator=g)
        val = torch.rand(q, generator=g)
        for part in torch.arange(n).split(16):
            hooked.on_batch(part, logits[part], labels[part], e)
            plain.record(part, torch.nn.functional.cross_entropy(logits[part], labels[part],
                                                                 reduction="none"))
        hooked.tracker.record_validation(val)
        plain.record_validation(val)
        hooked.on_epoch_end(e)
        plain.end_epoch()
    torch.testing.assert_close(hooked.tracker.scores(), plain.scores(), rtol=0, atol=1e-6)
    arrays = hooked.score_arrays()
    assert set(arrays) == {"cld", "num_differences"} and (arrays["num_differences"] == 3).all()
    assert arrays["cld"].dtype == np.float64 and arrays["cld"].shape == (n,)
    assert set(hooked.state_dict()) == set(plain.state_dict())
    fresh = TrackerRecorder(CLDTracker(labels, val_labels))
    fresh.on_batch(torch.arange(n), torch.randn(n, c), labels, 0)
    with pytest.raises(RuntimeError, match="record_validation"):
        fresh.on_epoch_end(0)
    # The tracker's own hooks still work, deprecated.
    old = CLDTracker(labels, val_labels)
    with pytest.warns(DeprecationWarning, match="TrackerRecorder"):
        old.on_batch(torch.arange(n), torch.randn(n, c), labels, 0)
    old.record_validation(torch.rand(q))
    with pytest.warns(DeprecationWarning):
        old.on_epoch_end(0)
    assert old.checkpoint == 1


def test_save_writes_one_scores_file_with_the_run_facts(tmp_path):
    """CLDTracker.save: the scores of the numpy reference, the labels, the indices given (or
    their defaults), the number of differences and the run's facts, written by the one writer
    (cldfast.io.save_scores); bad indices are refused before anything is written."""
    from cldfast.io import load_scores

    rng = np.random.default_rng(11)
    n, q, c, t_max = 30, 9, 3, 5
    labels, val_labels = rng.integers(0, c, n), np.arange(q) % c
    train = rng.gamma(2.0, 1.0, (t_max, n))
    train[1, :4] = np.nan  # samples 0-3 miss checkpoint 1
    val = rng.gamma(2.0, 1.0, (t_max, q))
    tracker = CLDTracker(labels, val_labels)
    for t in range(t_max):
        seen = np.flatnonzero(np.isfinite(train[t]))
        tracker.record(torch.from_numpy(seen), torch.from_numpy(train[t, seen]))
        tracker.record_validation(torch.from_numpy(val[t]))
        tracker.end_epoch()
    path = tracker.save(tmp_path / "s.npz", train_indices=np.arange(n) * 3 + 1,
                        metadata={"dataset": "toy"}, extra={"other": np.arange(n) * 0.5})
    sf = load_scores(path)
    want = cld_reference_dense(train, val, labels, val_labels)
    np.testing.assert_allclose(sf.scores, want, rtol=0, atol=1e-6)  # float32 epoch sums
    np.testing.assert_array_equal(sf.labels, labels)
    np.testing.assert_array_equal(sf.train_indices, np.arange(n) * 3 + 1)
    np.testing.assert_array_equal(sf.val_indices, np.full(q, -1))
    want_diff = np.where(np.arange(n) < 4, t_max - 2, t_max - 1)
    np.testing.assert_array_equal(sf.extra["num_differences"], want_diff)
    np.testing.assert_array_equal(sf.extra["other"], np.arange(n) * 0.5)
    meta = sf.metadata
    assert (meta["dataset"], meta["source"], meta["checkpoints"], meta["world_size"]) == (
        "toy", "CLDTracker.save", t_max, 1)
    assert meta["precision"] == "float64" and meta["per_class"] is True and meta["num_classes"] == c
    with pytest.raises(ValueError, match="val_indices must be 9 integers"):
        tracker.save(tmp_path / "bad.npz", val_indices=np.arange(3))
    with pytest.raises(ValueError, match="extra\\['x'\\] has shape"):
        tracker.save(tmp_path / "bad.npz", extra={"x": np.zeros(n + 1)})
    assert not (tmp_path / "bad.npz").exists()
