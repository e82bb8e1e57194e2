"""The tracker in compiled training steps: its kernels as torch custom operators
(cldfast/core/ops.py) pass torch.library.opcheck; a step calling record() compiles with
fullgraph=True (inductor and aot_eager) without graph breaks and trains to the same model and
tracker state as eager code; record_validation compiles too; a CUDA graph replaying a step
with record() reaches the eager state (GPU only).

Compiled steps are kept tiny: an inductor compile costs seconds even with a warm cache."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.testing import CompileCounterWithBackend

from cldfast import CLDTracker, KernelFallbackWarning
from cldfast.core import kernels as _ops, kernels_torch, ops
from conftest import requires_cuda

N, CLASSES, Q, BATCH, FEATURES, EPOCHS = 48, 4, 12, 8, 6, 3
LR = 0.1


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.fixture(params=["native", "torch"])
def kernels_path(request, monkeypatch):
    """The kernels' path the operators take (CLDFAST_KERNELS; routes chosen afresh)."""
    if request.param == "torch":
        monkeypatch.setenv(_ops.KERNELS_ENV, "torch")
    else:
        monkeypatch.delenv(_ops.KERNELS_ENV, raising=False)
    monkeypatch.setattr(_ops, "_ROUTES", {})
    monkeypatch.setattr(_ops, "_ROUTES_ENV", None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", KernelFallbackWarning)
        yield request.param


# ---------------------------------------------------------------------------- the operators
def _flags(device):
    return torch.zeros(_ops.NUM_FLAGS, dtype=torch.int64, device=device)


def _epoch(device, n=20):
    return torch.zeros(1, 2, n, dtype=torch.float32, device=device)


INDEX_DTYPES = [torch.int64, torch.int32]
LOSS_DTYPES = [torch.float32, torch.float64]


def _index(dtype, device):
    # repeats, and one out of range (flagged, not recorded)
    return torch.tensor([3, 0, 19, 3, 7, 25, 11, 0], dtype=dtype, device=device)


@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
@pytest.mark.parametrize("loss_dtype", LOSS_DTYPES)
def test_opcheck_record(device, kernels_path, index_dtype, loss_dtype):
    g = torch.Generator().manual_seed(0)
    loss = (torch.rand(8, generator=g, dtype=torch.float64) * 3).to(loss_dtype).to(device)
    loss[2] = float("nan")
    torch.library.opcheck(torch.ops.cldfast.record.default,
                          (_index(index_dtype, device), loss, _epoch(device), 20, _flags(device)))


@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
@pytest.mark.parametrize("logits_dtype", LOSS_DTYPES)
def test_opcheck_record_ce_ce_loss_and_ce_backward(device, kernels_path, index_dtype,
                                                   logits_dtype):
    g = torch.Generator().manual_seed(1)
    logits = (3 * torch.randn(8, 5, generator=g, dtype=torch.float64)).to(logits_dtype).to(device)
    target = torch.tensor([0, 4, 2, 2, 1, 3, 0, 4], dtype=index_dtype, device=device)
    index = _index(index_dtype, device)
    torch.library.opcheck(torch.ops.cldfast.record_ce.default,
                          (index, logits, target, _epoch(device), 20, _flags(device)))
    loss, lse = ops.record_ce(index, logits, target, _epoch(device), 20, _flags(device))
    assert loss.dtype == torch.float32
    assert lse.dtype == (torch.float64 if logits_dtype == torch.float64 else torch.float32)
    torch.library.opcheck(torch.ops.cldfast.ce_loss.default,
                          (logits.clone().requires_grad_(), target, loss, lse))
    grad = torch.rand(8, generator=g).to(device)
    torch.library.opcheck(torch.ops.cldfast.ce_backward.default, (logits, target, lse, grad))
    # the backward of ce_loss is the fused cross-entropy's gradient
    x = logits.clone().requires_grad_()
    ops.ce_loss(x, target, loss, lse).backward(grad)
    ref = x.detach().clone().requires_grad_()
    F.cross_entropy(ref, target.long(), reduction="none").backward(grad.to(ref.dtype))
    torch.testing.assert_close(x.grad, ref.grad, rtol=1e-5, atol=1e-6)


def _end_epoch_args(n, acc_dtype, label_dtype, device, clear):
    g = torch.Generator().manual_seed(2)
    count = torch.randint(0, 3, (n,), generator=g).float()
    shard = torch.stack([torch.rand(n, generator=g) * 3 * count, count])
    last = torch.rand(n, generator=g) * 3
    tlast = torch.randint(-1, 3, (n,), generator=g, dtype=torch.int32)
    ndiff = torch.where(tlast >= 0, torch.randint(0, 5, (n,), generator=g, dtype=torch.int32), 0)
    acc = torch.randn(5, n, generator=g, dtype=torch.float64)
    acc[2:4] = acc[2:4].abs()
    labels = torch.randint(0, 3, (n,), generator=g).to(label_dtype)
    history = torch.randn(4, 3, generator=g, dtype=torch.float64)
    return tuple(t.to(device) for t in (labels, history)) + (0, 3) + tuple(
        t.to(device) for t in (shard, last, torch.stack([tlast, ndiff]), acc.to(acc_dtype),
                               _flags("cpu"))) + (clear,)


@pytest.mark.parametrize("acc_dtype", LOSS_DTYPES)
@pytest.mark.parametrize("label_dtype", [torch.int16, torch.int32])
@pytest.mark.parametrize("clear", [False, True])
def test_opcheck_end_epoch_and_scores(device, kernels_path, acc_dtype, label_dtype, clear):
    args = _end_epoch_args(30, acc_dtype, label_dtype, device, clear)
    torch.library.opcheck(torch.ops.cldfast.end_epoch.default, args)
    i32, acc = args[6], args[7]
    torch.testing.assert_close(ops.scores(i32, acc), _ops.scores(i32, acc), rtol=0, atol=0,
                               equal_nan=True)
    # opcheck compares outputs without equal_nan: every sample with 2 differences or more
    i32 = i32.clone()
    i32[1] = torch.arange(2, 2 + i32.shape[1], dtype=torch.int32, device=device)
    torch.library.opcheck(torch.ops.cldfast.scores.default, (i32, acc))


def test_the_operators_run_the_kernels_path(monkeypatch, kernels_path):
    """Each operator's implementation is kernels.py's function, routed like an eager call."""
    calls = []
    for name in ("record", "record_ce", "ce_backward", "end_epoch", "scores"):
        real = getattr(kernels_torch, name)
        monkeypatch.setattr(kernels_torch, name, lambda *a, _real=real, _name=name, **k:
                            calls.append(_name) or _real(*a, **k))
    epoch, flags = _epoch("cpu"), _flags("cpu")
    index = _index(torch.int64, "cpu")
    torch.ops.cldfast.record(index, torch.rand(8), epoch, 20, flags)
    logits = torch.randn(8, 5, requires_grad=True)
    target = torch.randint(0, 5, (8,))
    ops.fused_cross_entropy(index, logits, target, epoch, 20, flags).sum().backward()
    args = _end_epoch_args(30, torch.float64, torch.int16, "cpu", True)
    torch.ops.cldfast.end_epoch(*args)
    torch.ops.cldfast.scores(args[6], args[7])
    expect = ["record", "record_ce", "ce_backward", "end_epoch", "scores"]
    assert calls == (expect if kernels_path == "torch" else [])


# ----------------------------------------------------------------------- a compiled training step
def make_data(seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, N)
    x = torch.from_numpy(rng.standard_normal((N, FEATURES)).astype(np.float32))
    x += torch.from_numpy(labels).float().unsqueeze(1)  # learnable, so the losses move
    val_labels = np.arange(Q) % CLASSES
    xv = torch.from_numpy(rng.standard_normal((Q, FEATURES)).astype(np.float32))
    xv += torch.from_numpy(val_labels).float().unsqueeze(1)
    orders = [torch.from_numpy(rng.permutation(N)) for _ in range(EPOCHS)]
    return labels, x, val_labels, xv, orders


def make_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(FEATURES, 16), torch.nn.ReLU(),
                               torch.nn.Linear(16, CLASSES))


def make_forward(model, tracker, form):
    """The step's compiled part: forward, per-sample losses recorded, mean loss."""
    def forward(x, y, idx):
        out = model(x)
        if form == "logits":
            return tracker.record(idx, logits=out, targets=y).mean()
        losses = F.cross_entropy(out, y, reduction="none")
        tracker.record(idx, losses)
        return losses.mean()
    return forward


def train(form, backend=None, device="cpu", epochs=EPOCHS):
    """EPOCHS epochs of SGD steps whose forward and record() run eagerly or compiled with
    fullgraph=True; backward and the optimiser step run as usual; record_validation and
    end_epoch close each epoch. Returns the model, the tracker and the compile counter."""
    labels, x, val_labels, xv, orders = make_data()
    model = make_model().to(device)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    tracker = CLDTracker(labels, val_labels, device=device)
    y, yv = torch.from_numpy(labels).to(device), torch.from_numpy(val_labels).to(device)
    x, xv = x.to(device), xv.to(device)
    forward = make_forward(model, tracker, form)
    counter = None
    if backend is not None:
        counter = CompileCounterWithBackend(backend)
        forward = torch.compile(forward, backend=counter, fullgraph=True)
    for epoch in range(epochs):
        for part in range(0, N, BATCH):
            idx = orders[epoch][part:part + BATCH]  # CPU indices, as a DataLoader yields them
            loss = forward(x[idx.to(device)], y[idx.to(device)], idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            assert tracker._recorded  # the compiled step replays the attribute's side effect
        with torch.no_grad():
            tracker.record_validation(F.cross_entropy(model(xv), yv, reduction="none"))
        tracker.end_epoch()
        assert not tracker._recorded
    return model, tracker, counter


def assert_same_run(a, b, tol=1e-6):
    (model_a, tracker_a), (model_b, tracker_b) = a, b
    for pa, pb in zip(model_a.parameters(), model_b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=tol, atol=tol)
    sa, sb = tracker_a.scores(), tracker_b.scores()
    assert (~sa.isnan()).sum() == N  # every sample has its 2 differences
    torch.testing.assert_close(sa, sb, rtol=tol, atol=tol, equal_nan=True)
    assert torch.equal(tracker_a.num_differences(), tracker_b.num_differences())
    state_a, state_b = tracker_a.state_dict(), tracker_b.state_dict()
    assert state_a.keys() == state_b.keys()
    for key, value in state_a.items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(value, state_b[key], rtol=tol, atol=tol, msg=key)
        else:
            assert value == state_b[key], key
    assert tracker_a.observed_per_checkpoint == [N] * EPOCHS


@pytest.mark.parametrize("form", ["logits", "losses"])
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compiled_training_step_matches_eager(form, backend):
    eager = train(form)
    model, tracker, counter = train(form, backend)
    assert counter.frame_count == 1  # one graph for every step of every epoch
    assert_same_run((model, tracker), eager[:2])


@pytest.mark.parametrize("kernels_path", ["torch"], indirect=True)
def test_compiled_training_step_on_the_torch_path(kernels_path):
    """The operators run the torch twins where no compiled kernels cover the device."""
    eager = train("logits")
    compiled = train("logits", "aot_eager")
    assert_same_run(compiled[:2], eager[:2])


@pytest.mark.parametrize("form", ["logits", "losses"])
def test_no_graph_breaks(form):
    labels, x, val_labels, _, orders = make_data()
    tracker = CLDTracker(labels, val_labels)
    forward = make_forward(make_model(), tracker, form)
    idx = orders[0][:BATCH]
    for index in (idx, idx.to(torch.int32)):
        explained = torch._dynamo.explain(forward)(x[idx], torch.from_numpy(labels)[idx], index)
        assert explained.graph_break_count == 0, explained.break_reasons
        assert explained.graph_count == 1
        ops_in_graph = {str(n.target) for g in explained.graphs for n in g.graph.nodes}
        assert any("cldfast." in t for t in ops_in_graph), ops_in_graph
    assert tracker._recorded


def test_whole_step_with_backward_and_update_in_the_graph():
    """With dynamo tracing backward() too (torch._dynamo.config.trace_autograd_ops), forward,
    record, the fused cross-entropy's backward and an SGD update are one graph."""
    if not hasattr(torch._dynamo.config, "trace_autograd_ops"):
        pytest.skip("this torch cannot trace backward() in a graph")
    labels, x, val_labels, xv, orders = make_data()
    y, yv = torch.from_numpy(labels), torch.from_numpy(val_labels)
    runs = []
    for compiled in (False, True):
        model = make_model()
        tracker = CLDTracker(labels, val_labels)

        def step(x, y, idx):
            loss = tracker.record(idx, logits=model(x), targets=y).mean()
            loss.backward()
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(p.grad, alpha=-LR)
                    p.grad = None
            return loss.detach()

        counter = CompileCounterWithBackend("aot_eager")
        with torch._dynamo.config.patch(trace_autograd_ops=True):
            run = torch.compile(step, backend=counter, fullgraph=True) if compiled else step
            for epoch in range(EPOCHS):
                for part in range(0, N, BATCH):
                    idx = orders[epoch][part:part + BATCH]
                    run(x[idx], y[idx], idx)
                with torch.no_grad():
                    tracker.record_validation(F.cross_entropy(model(xv), yv, reduction="none"))
                tracker.end_epoch()
        assert counter.frame_count == (1 if compiled else 0)
        runs.append((model, tracker))
    assert_same_run(runs[1], runs[0])


# ------------------------------------------------------------------------ record_validation
def test_record_validation_compiles():
    labels, _, val_labels, _, _ = make_data()
    g = torch.Generator().manual_seed(4)
    losses = torch.rand(Q, generator=g, dtype=torch.float64)
    losses[3] = float("nan")
    part, at = torch.rand(5, generator=g), torch.tensor([0, 3, 3, 11, 7], dtype=torch.int32)
    trackers = [CLDTracker(labels, val_labels) for _ in range(2)]

    def validate(tracker, losses, part, at):
        tracker.record_validation(losses)
        tracker.record_validation(part, at)

    compiled = torch.compile(validate, backend="aot_eager", fullgraph=True)
    explained = torch._dynamo.explain(validate)(CLDTracker(labels, val_labels), losses, part, at)
    assert explained.graph_break_count == 0, explained.break_reasons
    validate(trackers[0], losses, part, at)
    compiled(trackers[1], losses, part, at)
    eager, comp = (t.state_dict() for t in trackers)
    assert torch.equal(eager["val_samples"], comp["val_samples"])
    assert trackers[1]._val_recorded and int(trackers[1]._val_nonfinite) == 1
    # an index outside [0, Q) fails where the graph runs (an assertion instead of the host check)
    with pytest.raises(RuntimeError, match="val index out of range"):
        compiled(trackers[1], losses, part, torch.tensor([0, 3, 3, 12, 7], dtype=torch.int32))


def test_a_finished_tracker_refuses_compiled_records_without_recompiling_each_epoch():
    labels, x, val_labels, xv, orders = make_data()
    tracker = CLDTracker(labels, val_labels, num_checkpoints=2)
    counter = CompileCounterWithBackend("aot_eager")

    @torch.compile(backend=counter, fullgraph=True)
    def record(idx, losses):
        tracker.record(idx, losses)

    for epoch in range(2):
        record(orders[epoch], torch.rand(N))
        tracker.record_validation(torch.rand(Q))
        tracker.end_epoch()
    assert counter.frame_count == 1
    with pytest.raises(Exception, match="after the final checkpoint"):
        record(orders[0], torch.rand(N))


# ------------------------------------------------------------------------------ CUDA graphs
@pytest.mark.cuda
@requires_cuda
def test_cuda_graph_replays_a_training_step_with_record():
    """Whole-step capture as torch's CUDA-graph docs show it (warm-up on a side stream, static
    input buffers, zero_grad(set_to_none=True) before capture), with record(logits=) in the
    step: the replays reach the eager run's tracker state and model, epoch after epoch."""
    device = "cuda"
    labels, x, val_labels, xv, orders = make_data()
    x, xv = x.to(device), xv.to(device)
    y, yv = torch.from_numpy(labels).to(device), torch.from_numpy(val_labels).to(device)
    eager = train("logits", device=device)

    model = make_model().to(device)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    tracker = CLDTracker(labels, val_labels, device=device)
    static_x = torch.empty(BATCH, FEATURES, device=device)
    static_y = torch.empty(BATCH, dtype=torch.int64, device=device)
    static_idx = torch.empty(BATCH, dtype=torch.int64, device=device)

    def step():
        loss = tracker.record(static_idx, logits=model(static_x), targets=static_y).mean()
        loss.backward()
        opt.step()

    def load(idx):
        static_idx.copy_(idx)
        static_x.copy_(x[static_idx])
        static_y.copy_(y[static_idx])

    batches = [orders[e][p:p + BATCH] for e in range(EPOCHS) for p in range(0, N, BATCH)]
    per_epoch = N // BATCH
    warmup = 3  # the first steps of epoch 0, run eagerly on a side stream
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for idx in batches[:warmup]:
            load(idx.to(device))
            opt.zero_grad(set_to_none=True)
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        step()
    for i, idx in enumerate(batches[warmup:], start=warmup):
        load(idx.to(device))
        graph.replay()
        if (i + 1) % per_epoch == 0:
            with torch.no_grad():
                tracker.record_validation(F.cross_entropy(model(xv), yv, reduction="none"))
            assert not tracker._recorded or i + 1 == per_epoch  # replays leave the flag alone
            tracker.end_epoch()  # the device marker written by the replays opens it
    torch.cuda.synchronize()
    assert_same_run((model, tracker), eager[:2], tol=1e-5)
