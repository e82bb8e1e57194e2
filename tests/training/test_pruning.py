"""Dynamic pruning: deterministic plans, identical across ranks, unbiased rescaling, exact
resume (cldfast.pruning, and through cldfast.pipeline.train)."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cldfast import CLDTracker
from cldfast.core.state import Stateful
from cldfast.training.pruning import (CLDPruner, InfoBatchPruner, PlanSampler, Pruner, RandomPruner,
                             make_pruner)

from dist_helpers import free_port, init_group as _init

N, C, Q, E = 97, 3, 12, 10


def _losses(epoch: int) -> np.ndarray:
    rng = np.random.default_rng(100 + epoch)
    return rng.gamma(2.0, 0.5, N).astype(np.float32) / (1 + epoch)


def _labels():
    return np.arange(N) % C, np.arange(Q) % C


def _logits_for(losses: np.ndarray, targets: np.ndarray) -> torch.Tensor:
    """Logits whose cross-entropy at ``targets`` is ``losses``: the target logit a and the
    others 0 give CE = log(1 + (C - 1) e^-a)."""
    l = np.maximum(losses.astype(np.float64), 1e-6)
    logits = np.zeros((l.size, C))
    logits[np.arange(l.size), targets] = -np.log(np.expm1(l) / (C - 1))
    return torch.from_numpy(logits)


def _drive(pruner_factory, seed: int, epochs: int = E):
    """Run a pruner through ``epochs`` with synthetic losses; returns the plans and weights."""
    labels, val_labels = _labels()
    tracker = CLDTracker(labels, val_labels)
    pruner = pruner_factory(tracker, seed)
    plans, weights = [], []
    for e in range(epochs):
        kept = pruner.plan(e)
        plans.append(kept.copy())
        weights.append(pruner.weights.clone())
        losses = _losses(e)
        pos = torch.from_numpy(kept)
        tracker.record(pos, torch.from_numpy(losses[kept]))
        tracker.record_validation(torch.from_numpy(np.random.default_rng(e).gamma(2, 1, Q).astype(np.float32)))
        tracker.end_epoch()
        targets = torch.from_numpy(labels[kept])
        pruner.on_batch(pos, _logits_for(losses[kept], labels[kept]), targets, e)
        pruner.on_epoch_end(e)
    return plans, weights, pruner


FACTORIES = {
    "random": lambda tr, s: RandomPruner(N, E, saving=0.4, seed=s),
    "infobatch": lambda tr, s: InfoBatchPruner(N, E, seed=s),
    "infobatch-saving": lambda tr, s: InfoBatchPruner(N, E, saving=0.3, seed=s),
    "cld": lambda tr, s: CLDPruner(tr, E, saving=0.4, seed=s),
    "cld-abs": lambda tr, s: CLDPruner(tr, E, saving=0.4, key="abs", seed=s),
}


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_plans_are_deterministic_per_seed(name):
    a, wa, pa = _drive(FACTORIES[name], seed=5)
    b, wb, _ = _drive(FACTORIES[name], seed=5)
    c, _, _ = _drive(FACTORIES[name], seed=6)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    for x, y in zip(wa, wb):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    pruned_epochs = [e for e in range(E) if pa.prunes(e)]
    assert pruned_epochs == list(range(1, 8))  # InfoBatch's schedule: 0, 8, 9 train on all
    assert any(not np.array_equal(a[e], c[e]) for e in pruned_epochs)
    for e in range(E):
        if e not in pruned_epochs:
            assert a[e].size == N and bool((wa[e] == 1).all())
        else:
            assert a[e].size < N
            assert np.all(np.diff(a[e]) > 0) and a[e].min() >= 0 and a[e].max() < N


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_state_dict_resumes_the_same_plans(name, tmp_path):
    """A pruner is Stateful: its state saved after epoch 4 (through torch.save with
    weights_only) and loaded into a fresh pruner continues with the uninterrupted plans."""
    plans, weights, _ = _drive(FACTORIES[name], seed=5)
    labels, val_labels = _labels()
    tracker = CLDTracker(labels, val_labels)
    first = FACTORIES[name](tracker, 5)
    for e in range(5):
        kept = first.plan(e)
        losses = _losses(e)
        tracker.record(torch.from_numpy(kept), torch.from_numpy(losses[kept]))
        tracker.record_validation(torch.from_numpy(np.random.default_rng(e).gamma(2, 1, Q).astype(np.float32)))
        tracker.end_epoch()
        first.on_batch(torch.from_numpy(kept), _logits_for(losses[kept], labels[kept]),
                       torch.from_numpy(labels[kept]), e)
    torch.save(first.state_dict(), tmp_path / "pruner.pt")
    second = FACTORIES[name](tracker, 5)
    assert isinstance(second, Stateful)
    second.load_state_dict(torch.load(tmp_path / "pruner.pt", weights_only=True))
    np.testing.assert_array_equal(second.plan(4), plans[4])  # the stored plan of epoch 4
    for e in range(5, E):
        np.testing.assert_array_equal(second.plan(e), plans[e])
        np.testing.assert_array_equal(second.weights.numpy(), weights[e].numpy())
        losses = _losses(e)
        kept = plans[e]
        tracker.record(torch.from_numpy(kept), torch.from_numpy(losses[kept]))
        tracker.record_validation(torch.from_numpy(np.random.default_rng(e).gamma(2, 1, Q).astype(np.float32)))
        tracker.end_epoch()
        second.on_batch(torch.from_numpy(kept), _logits_for(losses[kept], labels[kept]),
                        torch.from_numpy(labels[kept]), e)
    assert second.passes_used == sum(p.size for p in plans) and second.passes_full == N * E
    other = FACTORIES[name](tracker, 6)  # another seed: another run
    with pytest.raises(ValueError, match="same prune options"):
        other.load_state_dict(first.state_dict())


def test_savings_reach_the_target():
    for name in ("random", "cld", "cld-abs"):
        _, _, p = _drive(FACTORIES[name], seed=1)
        assert abs(p.saved - 0.4) < 0.06, (name, p.saved)
    _, _, p = _drive(FACTORIES["infobatch-saving"], seed=1)
    assert abs(p.saved - 0.3) < 0.06, p.saved


def test_infobatch_is_faithful():
    """Scores start equal (epoch 0 keeps all); then every above-mean sample is kept with
    weight 1 and int(0.5 * n_well) below-mean samples with weight 2."""
    p = InfoBatchPruner(N, E, seed=0)
    assert p.plan(0).size == N
    losses = _losses(0)
    p.loss_scores = torch.from_numpy(losses.copy())
    kept = p.plan(1)
    well = np.flatnonzero(losses < losses.mean())
    rest = np.setdiff1d(np.arange(N), well)
    assert np.isin(rest, kept).all()
    chosen = np.intersect1d(kept, well)
    assert chosen.size == int(0.5 * well.size)
    w = p.weights.numpy()
    np.testing.assert_array_equal(w[chosen], 2.0)
    np.testing.assert_array_equal(w[rest], 1.0)


def test_cld_prefers_low_scores_and_probabilities_sum_to_the_share():
    labels, val_labels = _labels()
    p = CLDPruner(CLDTracker(labels, val_labels), E, saving=0.4)
    cld = np.linspace(-1, 1, N)
    cld[:5] = np.nan
    prob = p.probabilities(cld)
    assert abs(prob.sum() - p.epoch_share * N) < 1e-6
    assert prob.max() <= 0.9 + 1e-12
    scored = prob[5:]
    assert np.all(np.diff(scored) <= 1e-12)  # lower CLD, higher prune probability
    pa = CLDPruner(CLDTracker(labels, val_labels), E, saving=0.4, key="abs")
    x = np.random.default_rng(0).normal(size=N)  # no ties
    prob = pa.probabilities(x)
    assert np.all(np.diff(prob[np.argsort(np.abs(x), kind="stable")]) <= 1e-12)  # |CLD| ~ 0 first


@pytest.mark.parametrize("policy", ["cld", "infobatch"])
def test_rescaling_keeps_the_expected_gradient(policy):
    """A toy logistic-regression problem: the mean over many draws of the gradient of
    sum_{kept} w_i l_i equals the gradient of sum_i l_i, within Monte-Carlo error."""
    rng = np.random.default_rng(0)
    n, d = 200, 5
    x = torch.from_numpy(rng.normal(size=(n, d)))
    y = torch.from_numpy(rng.integers(0, 2, n).astype(np.float64))
    theta = torch.from_numpy(rng.normal(size=d)).requires_grad_(True)
    per_sample = torch.nn.functional.binary_cross_entropy_with_logits(x @ theta, y, reduction="none")
    grads = torch.stack([torch.autograd.grad(per_sample[i], theta, retain_graph=True)[0]
                         for i in range(n)]).numpy()  # [n, d]
    full = grads.sum(0)
    if policy == "cld":
        pruner = CLDPruner(CLDTracker(np.arange(n) % 2, [0, 1]), 10, saving=0.4)
        cld = rng.normal(size=n)
        pruner.tracker.scores = lambda gather="all": torch.from_numpy(cld)  # the live state
        p = pruner.probabilities(cld)
        keep_prob, weight = 1 - p, 1 / (1 - p)
    else:
        pruner = InfoBatchPruner(n, 10)
        losses = per_sample.detach().float()
        pruner.loss_scores = losses.clone()
        well = (losses < losses.mean()).numpy()
        # int(0.5 * n_well) of the n_well well-learned samples are kept, with weight 2
        keep_prob = np.where(well, int(0.5 * well.sum()) / well.sum(), 1.0)
        weight = np.where(well, 2.0, 1.0)
    expected = (keep_prob * weight) @ grads  # exact expectation of the rescaled sum
    # within InfoBatch's rounding of the kept count (at most one sample) of the full gradient
    assert np.all(np.abs(expected - full) <= np.abs(grads).max(0) * 2 + 1e-9)
    if policy == "cld":
        np.testing.assert_allclose(expected, full, rtol=1e-10, atol=1e-10)
    draws = 3000
    acc = np.zeros((draws, d))
    plain = np.zeros((draws, d))
    for r in range(draws):
        kept, w = pruner._draw(1, np.random.default_rng(r))
        acc[r] = (w.numpy()[kept, None].astype(np.float64) * grads[kept]).sum(0)
        plain[r] = grads[kept].sum(0)
    stderr = acc.std(0, ddof=1) / np.sqrt(draws)
    assert np.all(np.abs(acc.mean(0) - expected) <= 5 * stderr + 1e-9), (acc.mean(0), expected)
    # without the weights the same draws are biased (so this test can fail)
    plain_err = plain.std(0, ddof=1) / np.sqrt(draws)
    assert np.any(np.abs(plain.mean(0) - full) > 10 * plain_err)


def test_plan_sampler_shares_cover_the_plan():
    kept = np.array([1, 4, 5, 9, 10, 20, 33])
    shares = [list(PlanSampler(kept, seed=2, epoch=3, rank=r, world_size=3)) for r in range(3)]
    assert {len(s) for s in shares} == {3}
    assert set(sum(shares, [])) == set(kept.tolist())
    assert list(PlanSampler(kept, seed=2, epoch=3)) == list(PlanSampler(kept, seed=2, epoch=3))
    assert sorted(PlanSampler(kept, seed=2, epoch=3)) == kept.tolist()
    with pytest.raises(ValueError, match="rank"):
        PlanSampler(kept, seed=0, epoch=0, rank=3, world_size=3)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="saving"):
        RandomPruner(N, E, saving=1.5)
    with pytest.raises(ValueError, match="at most"):
        RandomPruner(N, E, saving=0.8)  # 0.8 * 10 / 7 epochs > 0.9
    with pytest.raises(ValueError, match="not both"):
        InfoBatchPruner(N, E, ratio=0.5, saving=0.3)
    with pytest.raises(ValueError, match="policy must be one of"):
        make_pruner("loss", num_samples=N, epochs=E, saving=0.3)
    with pytest.raises(ValueError, match="tracker"):
        make_pruner("cld", num_samples=N, epochs=E, saving=0.3)
    with pytest.raises(ValueError, match="no epoch to prune"):
        RandomPruner(N, 1, saving=0.3)


def _rank_worker(rank: int, world: int, port: int, out: str) -> None:
    _init(rank, world, port)
    try:
        labels, val_labels = _labels()
        tracker = CLDTracker(labels, val_labels)  # sharded over the 2 ranks
        pruners = {"cld": CLDPruner(tracker, E, saving=0.4, seed=3),
                   "infobatch": InfoBatchPruner(N, E, seed=3),
                   "random": RandomPruner(N, E, saving=0.4, seed=3)}
        plans = {k: [] for k in pruners}
        for e in range(E):
            for k, p in pruners.items():
                plans[k].append(p.plan(e).copy())
            # each rank records the losses of its DistributedSampler-like share of the cld plan
            share = np.asarray(list(PlanSampler(plans["cld"][-1], seed=3, epoch=e, rank=rank,
                                                world_size=world)), dtype=np.int64)
            losses = _losses(e)
            tracker.record(torch.from_numpy(share), torch.from_numpy(losses[share]))
            tracker.record_validation(torch.from_numpy(
                np.random.default_rng(e).gamma(2, 1, Q).astype(np.float32)))
            tracker.end_epoch()
            kept = plans["infobatch"][-1]
            mine = kept[rank::world]
            # every rank's InfoBatch sees every rank's batch (as fit does with gather_batch)
            obj = [None] * world
            dist.all_gather_object(obj, mine)
            allpos = np.concatenate(obj)
            pruners["infobatch"].on_batch(torch.from_numpy(allpos),
                                          _logits_for(losses[allpos], labels[allpos]),
                                          torch.from_numpy(labels[allpos]), e)
        np.savez(os.path.join(out, f"plans{rank}.npz"),
                 **{f"{k}_{e}": v[e] for k, v in plans.items() for e in range(E)})
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_plans_identical_across_ranks(tmp_path):
    mp.spawn(_rank_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    a = np.load(tmp_path / "plans0.npz")
    b = np.load(tmp_path / "plans1.npz")
    assert sorted(a.files) == sorted(b.files)
    for k in a.files:
        np.testing.assert_array_equal(a[k], b[k])
    # and equal to one process fed the same losses (shards and all-gather change nothing)
    labels, val_labels = _labels()
    tracker = CLDTracker(labels, val_labels)
    p = CLDPruner(tracker, E, saving=0.4, seed=3)
    for e in range(E):
        kept = p.plan(e)
        np.testing.assert_array_equal(kept, a[f"cld_{e}"])
        tracker.record(torch.from_numpy(kept), torch.from_numpy(_losses(e)[kept]))
        tracker.record_validation(torch.from_numpy(
            np.random.default_rng(e).gamma(2, 1, Q).astype(np.float32)))
        tracker.end_epoch()


# ----- through the training loop --------------------------------------------------------

from cldfast import training  # noqa: E402
from cldfast.pipeline import DataSpec, PruneSpec, train  # noqa: E402
from cldfast.io import load_scores  # noqa: E402

RECIPE = training.Recipe(epochs=6, batch_size=64, lr=0.05, device="cpu", seed=1)


@pytest.mark.parametrize("policy", ["cld", "infobatch"])
def test_resume_mid_epoch_equals_an_uninterrupted_run(tmp_path, monkeypatch, policy):
    spec = PruneSpec(policy, saving=0.3)
    data = DataSpec("digits").load()
    straight = train(data, tmp_path / "a", recipe=RECIPE, prune=spec, progress=False)
    assert abs(straight["prune"]["saved"] - 0.3) < 0.05

    # SIGTERM in the middle of epoch 4: the loop writes a mid-epoch checkpoint and stops.
    real = Pruner.loss_weights
    sent = []

    def loss_weights(self, positions, device=None):
        if self._planned_epoch == 3 and not sent:
            sent.append(1)
            os.kill(os.getpid(), signal.SIGTERM)
        return real(self, positions, device)

    monkeypatch.setattr(Pruner, "loss_weights", loss_weights)
    with pytest.raises(training.Preempted) as exc:
        train(data, tmp_path / "b", recipe=RECIPE, prune=spec, progress=False)
    assert "epoch 4, after batch" in exc.value.where
    monkeypatch.undo()
    resumed = train(data, tmp_path / "b", recipe=RECIPE, prune=spec, resume=True, progress=False)
    assert resumed["test_accuracy"] == straight["test_accuracy"]
    assert resumed["prune"]["sample_passes"] == straight["prune"]["sample_passes"]
    assert [h["train_loss"] for h in resumed["history"]] == [h["train_loss"] for h in straight["history"]]
    if policy == "cld":
        a = load_scores(tmp_path / "a" / "train_scores.npz")
        b = load_scores(tmp_path / "b" / "train_scores.npz")
        np.testing.assert_array_equal(a.scores, b.scores)
        assert a.metadata["pruned_run"] == "cld" and a.metadata["loss_source"] == "train"
        assert np.isfinite(a.scores).mean() > 0.9  # missing observations still give scores


def test_pruned_training_counts_sample_passes(tmp_path):
    data = DataSpec("digits").load()
    m = train(data, tmp_path, recipe=RECIPE, prune=PruneSpec("random", saving=0.4), progress=False)
    kept = [h["kept_fraction"] for h in m["history"]]
    assert kept[0] == 1.0 and kept[-1] == 1.0 and min(kept) < 0.5
    n = m["train_samples"]
    assert m["prune"]["full_sample_passes"] == RECIPE.epochs * n
    assert m["prune"]["sample_passes"] == round(sum(k * n for k in kept))


def test_pruning_sampler_in_a_plain_loop():
    """The library object in a user's own loop: CLD-guided pruning from a live tracker fed the
    kept samples' losses; the sampler follows the plan, the saving reaches the target and the
    run still ends with a score for (nearly) every sample."""
    from cldfast.training import PruningSampler

    g = torch.Generator().manual_seed(0)
    n, q, epochs = 400, 60, 8
    x = torch.randn(n + q, 6, generator=g)
    y = (x[:, :3] + 0.5 * torch.randn(n + q, 3, generator=g)).argmax(1)
    model = torch.nn.Linear(6, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    tracker = CLDTracker(y[:n], y[n:])
    pruner = CLDPruner(tracker, epochs, saving=0.3, seed=1)
    sampler = PruningSampler(pruner)
    loader = torch.utils.data.DataLoader(torch.arange(n), batch_size=50, sampler=sampler)
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        seen = []
        for idx in loader:
            logits = model(x[idx])
            losses = tracker.record(idx, logits=logits, targets=y[idx])
            loss = (losses * pruner.loss_weights(idx)).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            seen.append(idx)
        with torch.no_grad():
            tracker.record_validation(torch.nn.functional.cross_entropy(model(x[n:]), y[n:],
                                                                        reduction="none"))
        tracker.end_epoch()
        np.testing.assert_array_equal(np.sort(torch.cat(seen).numpy()), pruner.plan(epoch))
    assert abs(pruner.saved - 0.3) < 0.05
    assert np.isfinite(tracker.scores().numpy()).mean() > 0.95
    assert len(sampler) == n  # the last epoch trains on everything


def test_cld_pruning_uses_the_datas_own_validation_split(tmp_path):
    """With a bundle that carries its own V, the CLD pruner correlates with it and trains on
    all of the training data."""
    from torch.utils.data import TensorDataset

    from cldfast.data import bundle_from_datasets

    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 6, generator=g)
    y = (x[:, :3] + 0.3 * torch.randn(300, 3, generator=g)).argmax(1)
    data = bundle_from_datasets(TensorDataset(x[:200], y[:200]), TensorDataset(x[250:], y[250:]),
                                val=TensorDataset(x[200:250], y[200:250]))
    model = torch.nn.Sequential(torch.nn.Linear(6, 3))
    m = train(data, tmp_path, model=model, recipe=training.Recipe(epochs=5, batch_size=32, lr=0.1,
                                                                  device="cpu"),
              prune=PruneSpec("cld", saving=0.2), progress=False)
    sf = load_scores(tmp_path / "train_scores.npz")
    np.testing.assert_array_equal(sf.val_indices, np.arange(200, 250))
    assert m["train_samples"] == 200 and sf.scores.shape == (200,)
