"""The torch fallback of the kernels (cldfast/core/kernels.py routes to kernels_torch.py where
this build has no compiled kernels for a device, or when CLDFAST_KERNELS=torch): the same
tracker results as the native kernels, one warning per device type, the path in build_info.
On the CPU the fallback is forced through CLDFAST_KERNELS; a spy on every twin checks that
the path really changed."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

import cldfast
from cldfast import CLDTracker, KernelFallbackWarning
from cldfast.core import kernels as _ops, kernels_torch
from numpy_reference import cld_reference

TWINS = ("record", "record_ce", "ce_backward", "end_epoch", "scores")


@pytest.fixture
def spy(monkeypatch):
    """Counts the calls of every twin; starts with no cached routes and no warning given."""
    calls = dict.fromkeys(TWINS, 0)
    for name in TWINS:
        real = getattr(kernels_torch, name)

        def wrapper(*args, _real=real, _name=name, **kwargs):
            calls[_name] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(kernels_torch, name, wrapper)
    monkeypatch.setattr(_ops, "_ROUTES", {})
    monkeypatch.setattr(_ops, "_ROUTES_ENV", None)
    monkeypatch.setattr(_ops, "_WARNED", set())
    monkeypatch.delenv(_ops.KERNELS_ENV, raising=False)
    return calls


def use(monkeypatch, path: str) -> None:
    """Choose the path through CLDFAST_KERNELS. A tracker reads it when it is built; the
    kernel functions called directly read it once the paths chosen so far are dropped."""
    if path == "native":
        monkeypatch.delenv(_ops.KERNELS_ENV, raising=False)
    else:
        monkeypatch.setenv(_ops.KERNELS_ENV, "torch")
    monkeypatch.setattr(_ops, "_ROUTES", {})


def run_both(monkeypatch, spy, fn):
    """fn() on the native path, then on the torch path; checks which path each took."""
    use(monkeypatch, "native")
    native = fn()
    assert sum(spy.values()) == 0, spy
    use(monkeypatch, "torch")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", KernelFallbackWarning)
        twin = fn()
    assert sum(spy.values()) > 0, spy
    return native, twin


# --------------------------------------------------------------------------- the tracker
N, CLASSES, Q, EPOCHS = 400, 7, 50, 6


def make_run(seed: int):
    """Six epochs of batches with missing observations, repeated indices (within a batch and
    across batches) and non-finite training and validation losses."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, N)
    val_labels = np.arange(Q) % CLASSES
    epochs = []
    for epoch in range(EPOCHS):
        seen = rng.permutation(N)[: int(0.85 * N)]  # ~15 % missing this epoch
        index = np.concatenate([seen, rng.choice(seen, 60)])  # 60 repeats
        rng.shuffle(index)
        loss = (rng.random(index.size) * 3 / (epoch + 1)).astype(np.float32)
        loss[rng.choice(index.size, 9, replace=False)] = [np.nan] * 5 + [np.inf] * 2 + [-np.inf] * 2
        val = rng.random(Q) + 0.1 * epoch
        val[rng.choice(Q, 2, replace=False)] = np.nan
        epochs.append((index, loss, val))
    return labels, val_labels, epochs


def replay(labels, val_labels, epochs, precision="float64", per_class=True):
    tracker = CLDTracker(labels, val_labels, precision=precision, per_class=per_class)
    for epoch, (index, loss, val) in enumerate(epochs):
        for part in range(0, index.size, 64):
            idx = torch.from_numpy(index[part:part + 64])
            if epoch % 2:
                idx = idx.to(torch.int32)
            tracker.record(idx, torch.from_numpy(loss[part:part + 64]))
        tracker.record_validation(torch.from_numpy(val))
        tracker.end_epoch()
    return tracker


def results(tracker):
    """What a run produces, read on the path in force."""
    return dict(scores=tracker.scores(), diffs=tracker.num_differences(),
                nonfinite=(tracker.nonfinite_train, tracker.nonfinite_val),
                observed=tracker.observed_per_checkpoint, state=tracker.state_dict())


@pytest.mark.parametrize("precision", ["float64", "float32"])
@pytest.mark.parametrize("per_class", [True, False])
def test_tracker_on_the_torch_path_matches_the_native_kernels(monkeypatch, spy, precision,
                                                              per_class):
    labels, val_labels, epochs = make_run(seed=1)
    native, twin = run_both(monkeypatch, spy, lambda: results(
        replay(labels, val_labels, epochs, precision, per_class)))
    assert spy["record"] == sum(-(-index.size // 64) for index, _, _ in epochs)
    assert spy["end_epoch"] == EPOCHS and spy["scores"] == 1
    a, b = native["scores"], twin["scores"]
    assert a.dtype == b.dtype == getattr(torch, precision)
    assert torch.equal(a.isnan(), b.isnan()) and (~a.isnan()).sum() > 0.5 * N
    assert (a.nan_to_num(9) - b.nan_to_num(9)).abs().max() <= 1e-6
    assert torch.equal(native["diffs"], twin["diffs"])
    assert native["nonfinite"] == twin["nonfinite"] == (9 * EPOCHS, 2 * EPOCHS)
    assert native["observed"] == twin["observed"]
    for key in ("last", "i32_state", "acc", "val_history"):
        torch.testing.assert_close(native["state"][key], twin["state"][key], rtol=0, atol=1e-6)
    # Both agree with the independent numpy formula (in float64 throughout; the tracker sums
    # an epoch's repeated losses in float32).
    observations = [list(zip(index.tolist(), loss.tolist())) for index, loss, _ in epochs]
    want = cld_reference(observations, [val for _, _, val in epochs], labels, val_labels,
                         per_class=per_class)
    tol = 1e-5 if precision == "float64" else 2e-4
    for got in (a, b):
        np.testing.assert_allclose(got.double().numpy(), want, rtol=tol, atol=tol)


def test_a_state_moves_between_the_paths(monkeypatch, spy):
    """The twins keep the kernels' state layout: a checkpoint written on one path resumes on
    the other with the same scores."""
    labels, val_labels, epochs = make_run(seed=2)
    whole = results(replay(labels, val_labels, epochs))
    first = replay(labels, val_labels, epochs[:3])
    use(monkeypatch, "torch")
    with pytest.warns(KernelFallbackWarning):
        resumed = CLDTracker(labels, val_labels)
    resumed.load_state_dict(first.state_dict())
    for index, loss, val in epochs[3:]:
        resumed.record(torch.from_numpy(index), torch.from_numpy(loss))
        resumed.record_validation(torch.from_numpy(val))
        resumed.end_epoch()
    assert spy["end_epoch"] == 3
    torch.testing.assert_close(resumed.scores(), whole["scores"], rtol=0, atol=1e-6,
                               equal_nan=True)
    assert torch.equal(resumed.num_differences(), whole["diffs"])


@pytest.mark.parametrize("form", ["losses", "logits"])
def test_out_of_range_indices_and_targets_raise_the_same_errors(monkeypatch, spy, form):
    def run():
        torch.manual_seed(0)
        tracker = CLDTracker(torch.arange(10) % 3, torch.arange(6) % 3)
        outcomes = []
        for epoch in range(3):
            index = torch.tensor([0, 1, 12, 2, 3, -4, 5, 6, 7, 8, 9, 1])
            if form == "losses":
                tracker.record(index, torch.rand(12) + epoch)
            else:
                targets = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 7, 0, -100, 1])
                tracker.record(index, logits=torch.randn(12, 3) * (epoch + 1), targets=targets)
            tracker.record_validation(torch.rand(6) + epoch)
            while True:  # each error leaves the epoch open; end_epoch again closes it
                try:
                    outcomes.append(tracker.end_epoch())
                    break
                except IndexError as exc:
                    outcomes.append(str(exc))
        return outcomes, tracker.scores(), tracker.num_differences(), tracker._flags.clone()

    (a, sa, na, fa), (b, sb, nb, fb) = run_both(monkeypatch, spy, run)
    assert a == b
    assert "2 index(es) outside [0, 10), e.g. 12" in a[0]
    if form == "logits":  # rows with a bad target are not index-checked: 7 samples observed
        assert "2 target(s) outside" in a[1] and a[2] == 7 and len(a) == 9
    else:
        assert a[1] == 9 and len(a) == 6
    torch.testing.assert_close(sa, sb, rtol=0, atol=1e-6, equal_nan=True)
    assert torch.equal(na, nb) and torch.equal(fa, fb)


# ------------------------------------------------------------------- the fused cross-entropy
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("classes", [1, 5, 150])
def test_fused_cross_entropy_forward_and_backward_match(monkeypatch, spy, dtype, classes):
    g = torch.Generator().manual_seed(3)
    batch = 24
    logits = (4 * torch.randn(batch, classes, generator=g)).to(dtype)
    logits[3, 0] = float("-inf")
    if classes > 1:
        logits[4, 1:] = float("-inf")  # a masked row
        logits[5, classes - 1] = float("nan")  # NaN loss: skipped and counted
        logits[6, 0] = float("inf")  # NaN loss, as torch gives
        logits[7] = float("-inf")  # all -inf: NaN
    target = torch.randint(0, classes, (batch,), generator=g)
    target[[2, 9]] = torch.tensor([-100, classes])  # flagged, zero gradient
    index = torch.randint(0, 10, (batch,), generator=g)  # repeats
    weights = torch.rand(batch, generator=g)

    def run():
        tracker = CLDTracker(torch.arange(10) % max(classes, 2), torch.arange(max(classes, 2)))
        x = logits.clone().requires_grad_(True)
        loss = tracker.record(index, logits=x, targets=target)
        (loss.nan_to_num(0.0) * weights).sum().backward()
        mean_x = logits.clone().requires_grad_(True)  # a stride-0 upstream gradient
        tracker.record(index, logits=mean_x, targets=target).nan_to_num(0.0).mean().backward()
        with torch.no_grad():  # the eval form, without autograd
            eval_loss = tracker.record(index, logits=logits, targets=target)
        return (loss.detach(), x.grad, mean_x.grad, eval_loss, tracker._epoch.clone(),
                tracker._flags.clone())

    native, twin = run_both(monkeypatch, spy, run)
    assert spy["record_ce"] == 3 and spy["ce_backward"] == 2
    (la, ga, ma, ea, epa, fa), (lb, gb, mb, eb, epb, fb) = native, twin
    assert ga.dtype == gb.dtype == dtype
    torch.testing.assert_close(lb, la, rtol=4e-6, atol=1e-6, equal_nan=True)
    torch.testing.assert_close(eb, ea, rtol=4e-6, atol=1e-6, equal_nan=True)
    tol = {torch.float64: 1e-12, torch.float32: 1e-6, torch.bfloat16: 1e-2}[dtype]
    torch.testing.assert_close(gb, ga, rtol=tol, atol=tol, equal_nan=True)
    torch.testing.assert_close(mb, ma, rtol=tol, atol=tol, equal_nan=True)
    assert (gb[[2, 9]] == 0).all() and torch.isnan(lb[[2, 9]]).all()
    torch.testing.assert_close(epb, epa, rtol=4e-6, atol=1e-5)
    assert torch.equal(fa, fb)
    assert int(fa[_ops.BAD_TARGET_COUNT]) == 6 and int(fa[_ops.FIRST_BAD_TARGET]) == -100
    valid = torch.ones(batch, dtype=torch.bool)
    valid[[2, 9]] = False
    assert int(fa[_ops.NON_FINITE]) == 3 * int((~torch.isfinite(la[valid])).sum())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_torch_path_keeps_confident_losses_precise(monkeypatch, spy, dtype):
    """The twin runs the kernels' two-pass cross-entropy, so a confident sample's tiny loss
    keeps its relative precision (logsumexp - x_t would cancel it away)."""
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(64, 50, generator=g) * 3
    target = torch.randint(0, 50, (64,), generator=g)
    logits[torch.arange(64), target] = logits.max(1).values + torch.linspace(0.0, 25.0, 64)
    logits = (logits + 1000.0).to(dtype)
    use(monkeypatch, "torch")
    with pytest.warns(KernelFallbackWarning):
        out, _ = _ops.record_ce(torch.arange(64), logits, target, torch.zeros(1, 2, 64), 64,
                                torch.zeros(_ops.NUM_FLAGS, dtype=torch.int64))
    assert spy["record_ce"] == 1
    x = logits.double().numpy()
    t = target.numpy()
    terms = np.exp(x - x.max(1)[:, None])
    terms[np.arange(64), t] = 0.0
    want = np.log1p(terms.sum(1))
    assert want.min() < 1e-9
    assert np.abs((out.double().numpy() - want) / want).max() < 2e-6


def test_kernel_level_edge_cases_match(monkeypatch, spy):
    """Subnormal flushing, float64 losses beyond float range, the first bad index, and
    end_epoch's clear_epoch on random state: the twins against the kernels, bit for bit."""
    def run():
        out = []
        epoch = torch.zeros(3, 2, 4)
        flags = torch.zeros(_ops.NUM_FLAGS, dtype=torch.int64)
        loss = torch.tensor([1e-40, -1e-39, 2e-38, 1e300, -1e39, 2.0, 3.5e38, float("nan"), 1.5],
                            dtype=torch.float64)
        index = torch.tensor([0, 1, 2, 3, 4, 13, 5, -2, 11], dtype=torch.int32)
        _ops.record(index, loss, epoch, 12, flags)
        out += [epoch, flags]
        g = torch.Generator().manual_seed(7)
        n, chunk = 300, 310
        count = torch.randint(0, 3, (chunk,), generator=g).float()
        shard = torch.stack([torch.rand(chunk, generator=g) * 3 * count, count])
        last = torch.rand(n, generator=g) * 3
        tlast = torch.randint(-1, 3, (n,), generator=g, dtype=torch.int32)
        ndiff = torch.randint(0, 5, (n,), generator=g, dtype=torch.int32)
        ndiff = torch.where(tlast >= 0, ndiff, 0)
        i32 = torch.stack([tlast, ndiff])
        acc = torch.randn(5, n, generator=g, dtype=torch.float64)
        acc[2:4] = acc[2:4].abs()
        labels = torch.randint(0, 7, (n,), generator=g, dtype=torch.int16)
        history = torch.randn(4, 7, dtype=torch.float64, generator=g)
        flags = torch.zeros(_ops.NUM_FLAGS, dtype=torch.int64)
        _ops.end_epoch(labels, history, 0, 3, shard, last, i32, acc, flags, clear_epoch=True)
        out += [shard, last, i32, acc, flags, _ops.scores(i32, acc)]
        return out

    native, twin = run_both(monkeypatch, spy, run)
    assert spy["record"] == 1 and spy["end_epoch"] == 1 and spy["scores"] == 1
    for a, b in zip(native, twin):
        assert a.dtype == b.dtype and torch.equal(a.isnan(), b.isnan())
    for a, b in zip(native[:-1], twin[:-1]):  # the state: bit for bit
        assert torch.equal(a.nan_to_num(7), b.nan_to_num(7))
    # The scores to an ulp: torch's vectorised sqrt is not correctly rounded on every CPU.
    torch.testing.assert_close(twin[-1], native[-1], rtol=4e-16, atol=0, equal_nan=True)
    flags = native[1]
    assert int(flags[_ops.BAD_INDEX_COUNT]) == 2 and int(flags[_ops.FIRST_BAD_INDEX]) == 13
    assert int(flags[_ops.NON_FINITE]) == 3


# ------------------------------------------------------------------ choosing and reporting
def fallback_warnings(record):
    return [w for w in record if issubclass(w.category, KernelFallbackWarning)]


def test_the_fallback_warns_once_per_device_type(monkeypatch, spy):
    use(monkeypatch, "torch")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for _ in range(2):
            tracker = CLDTracker([0, 1, 0, 1], [0, 1])
            for _ in range(3):
                tracker.record(torch.arange(4), torch.rand(4))
                tracker.record_validation(torch.rand(2))
                tracker.end_epoch()
            tracker.scores()
    got = fallback_warnings(record)
    assert len(got) == 1, [str(w.message) for w in got]
    message = str(got[0].message)
    assert "torch twins" in message and "on cpu" in message and "CLDFAST_KERNELS=torch" in message
    assert got[0].filename == __file__  # attributed to the caller that built the tracker
    assert spy["end_epoch"] == 6
    # Another device type warns once too, with its own reason (here checked without a device).
    monkeypatch.delenv(_ops.KERNELS_ENV)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert not _ops.uses_native(torch.device("mps"))
        assert not _ops.uses_native(torch.device("mps", 0))
        assert _ops.uses_native(torch.device("cpu"))
    got = fallback_warnings(record)
    assert len(got) == 1 and "not for mps" in str(got[0].message)


def test_the_warning_says_how_to_get_the_cuda_kernels(monkeypatch, spy):
    monkeypatch.setattr(_ops, "cuda_compiled", lambda: False)
    monkeypatch.setattr(torch.version, "hip", None)
    assert _ops.kernel_path("cuda") == "torch (this build of cldfast has no CUDA kernels)"
    with pytest.warns(KernelFallbackWarning, match="nvcc on PATH") as record:
        assert not _ops.uses_native(torch.device("cuda", 0))
    assert "cmake.define.CLDFAST_CUDA=ON" in str(record[0].message)
    # ROCm: torch calls its GPUs cuda, and cldfast's GPU kernels are CUDA only.
    monkeypatch.setattr(torch.version, "hip", "6.2")
    monkeypatch.setattr(_ops, "cuda_compiled", lambda: True)
    monkeypatch.setattr(_ops, "_ROUTES", {})
    monkeypatch.setattr(_ops, "_WARNED", set())
    assert _ops.kernel_path("cuda").startswith("torch (torch is a ROCm build")
    with pytest.warns(KernelFallbackWarning, match="ROCm"):
        assert not _ops.uses_native(torch.device("cuda"))


def test_native_mode_refuses_instead_of_falling_back(monkeypatch, spy):
    monkeypatch.setenv(_ops.KERNELS_ENV, "native")
    CLDTracker([0, 1], [0, 1])  # the CPU has its kernels
    with pytest.raises(RuntimeError, match="CLDFAST_KERNELS=native, but cldfast compiles"):
        _ops.uses_native(torch.device("mps"))
    assert _ops.kernel_path("xpu").startswith("none (CLDFAST_KERNELS=native")
    monkeypatch.setenv(_ops.KERNELS_ENV, "fast")
    with pytest.raises(ValueError, match="CLDFAST_KERNELS='fast' is not one of auto, native"):
        CLDTracker([0, 1], [0, 1])


def test_the_setting_is_read_when_a_tracker_is_built(monkeypatch, spy):
    first = CLDTracker([0, 1, 0], [0, 1])
    first.record(torch.arange(3), torch.rand(3))
    monkeypatch.setenv(_ops.KERNELS_ENV, "torch")
    first.record(torch.arange(3), torch.rand(3))
    assert spy["record"] == 0  # not read at every kernel call
    with pytest.warns(KernelFallbackWarning):
        second = CLDTracker([0, 1, 0], [0, 1])
    second.record(torch.arange(3), torch.rand(3))
    first.record(torch.arange(3), torch.rand(3))  # the path is per device type
    assert spy["record"] == 2
    monkeypatch.delenv(_ops.KERNELS_ENV)
    CLDTracker([0, 1, 0], [0, 1])
    first.record(torch.arange(3), torch.rand(3))
    assert spy["record"] == 2


def test_build_info_and_cldfast_info_report_the_paths(monkeypatch, spy, capsys):
    from cldfast.cli import main

    info = cldfast.build_info()
    assert info["kernels_mode"] == "auto"
    assert info["kernels"]["cpu"] == "native"
    assert info["kernels"]["other"].startswith("torch (cldfast compiles kernels for the CPU")
    cuda = info["kernels"]["cuda"]
    if info["cuda"] and info["cuda_compatible"] and not torch.version.hip:
        assert cuda == "native"
    else:
        assert cuda.startswith("torch (")
    use(monkeypatch, "torch")
    info = cldfast.build_info()
    assert info["kernels_mode"] == "torch"
    assert set(info["kernels"].values()) == {"torch (CLDFAST_KERNELS=torch)"}
    assert main(["info"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["kernels"]["cpu"] == "torch (CLDFAST_KERNELS=torch)"
    assert sum(spy.values()) == 0  # reporting runs no kernel and resolves no route
    assert _ops._ROUTES == {} and _ops._WARNED == set()


def test_tracker_devices(monkeypatch):
    with pytest.raises(ValueError, match="device='meta' holds no data"):
        CLDTracker([0], [0], device="meta")
    if not torch.xpu.is_available():
        with pytest.raises(RuntimeError, match="torch sees no xpu device"):
            CLDTracker([0], [0], device="xpu")
    assert CLDTracker([0], [0], device=torch.device("cpu")).device == torch.device("cpu")
