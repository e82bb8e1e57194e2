"""Baseline scores against plain numpy implementations of their published definitions.

Every reference below is written from the definition (and the documented rule for repeated
positions), with per-sample Python loops, independent of cldfast.scores. They run on
logits recorded from a synthetic stream (duplicates within a batch, samples skipped in an
epoch, a sample never seen, samples never learned) and on the logits a real proxy run feeds
the recorders (a tape recorder watching the same pass)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from cldfast.selection import class_quotas
from cldfast.selection.methods import METHODS, canonical_method
from cldfast.scores import (AUMRecorder, default_el2n_epoch,
                               embed_and_grand, last_linear, make_final_scores,
                               recorders_for_training)

# --------------------------------------------------------------------------------------------
# numpy references
# --------------------------------------------------------------------------------------------


def _softmax(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max())
    return e / e.sum()


def ref_forgetting(batches, n):
    last = {}
    events = np.zeros(n)
    learned = np.zeros(n, bool)
    seen = np.zeros(n, bool)
    for _, pos, z, y in batches:
        correct = np.argmax(z, 1) == y
        for p in np.unique(pos):
            now = correct[pos == p].mean() > 0.5  # copies in one batch: majority, tie = wrong
            if last.get(p) is True and not now:
                events[p] += 1
            learned[p] |= now
            seen[p] = True
            last[p] = bool(now)
    score = events.copy()
    never = seen & ~learned
    score[never] = events[seen].max() + 1
    score[~seen] = np.nan
    return score, never, seen


def ref_aum(batches, n):
    margins = [[] for _ in range(n)]
    for _, pos, z, y in batches:
        for p, zi, yi in zip(pos, z, y):
            zi = np.asarray(zi, np.float64)
            margins[p].append(zi[yi] - np.max(np.delete(zi, yi)))
    return np.array([np.mean(m) if m else np.nan for m in margins])


def ref_el2n(batches, n, epoch1):
    vals = [[] for _ in range(n)]
    for e, pos, z, y in batches:
        if e + 1 != epoch1:
            continue
        for p, zi, yi in zip(pos, z, y):
            onehot = np.eye(len(zi))[yi]
            vals[p].append(np.linalg.norm(_softmax(zi) - onehot))
    return np.array([np.mean(v) if v else np.nan for v in vals])


def ref_uncertainty(batches, n):
    per_epoch = [dict() for _ in range(n)]  # sample -> epoch -> list of (entropy, margin, lc)
    for e, pos, z, y in batches:
        for p, zi in zip(pos, z):
            pr = _softmax(zi)
            top = np.sort(pr)[::-1]
            per_epoch[p].setdefault(e, []).append(
                (-np.sum(pr * np.log(pr)), top[0] - top[1], 1.0 - top[0]))
    out = np.full((n, 3), np.nan)
    for p in range(n):
        if per_epoch[p]:
            out[p] = np.mean(per_epoch[p][max(per_epoch[p])], axis=0)  # the last epoch it was seen
    return out


def ref_cartography(batches, n):
    per_epoch = [dict() for _ in range(n)]  # sample -> epoch -> list of p(y)
    for e, pos, z, y in batches:
        for p, zi, yi in zip(pos, z, y):
            per_epoch[p].setdefault(e, []).append(_softmax(zi)[yi])
    conf, var = np.full(n, np.nan), np.full(n, np.nan)
    for p in range(n):
        vals = [np.mean(v) for v in per_epoch[p].values()]
        if vals:
            conf[p], var[p] = np.mean(vals), np.std(vals)
    return conf, var


# --------------------------------------------------------------------------------------------
# synthetic stream
# --------------------------------------------------------------------------------------------


def make_stream(n=60, c=5, epochs=5, seed=0):
    """Batches (epoch, positions, logits float32 [B, C], targets) with the awkward cases."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, c, n)
    never_learned = np.arange(3)          # their label logit is pushed down every time
    unseen = n - 1                        # never in any batch
    batches = []
    for e in range(epochs):
        order = rng.permutation(n - 1)
        if e == 2:
            order = order[:-9]            # 9 samples skipped in this epoch
        order = np.concatenate([order, rng.choice(order, 8)])  # repeats across / within batches
        rng.shuffle(order)
        chunks = np.array_split(order, 6)
        p = int(chunks[0][0])
        chunks.append(np.array([p, p, p, int(chunks[1][0])]))  # copies inside one batch
        for pos in chunks:
            y = labels[pos]
            z = rng.normal(0, 1.5, (pos.size, c)) + (0.6 * e) * np.eye(c)[y]
            z[np.isin(pos, never_learned), y[np.isin(pos, never_learned)]] -= 20.0
            batches.append((e, pos.astype(np.int64), z.astype(np.float32), y.astype(np.int64)))
    return labels, batches, never_learned, unseen


def feed(recorders, batches, device="cpu", dtype=torch.float32, upto_epoch=None, from_epoch=0):
    last_epoch = None
    for e, pos, z, y in batches:
        if e < from_epoch or (upto_epoch is not None and e >= upto_epoch):
            continue
        if last_epoch is not None and e != last_epoch:
            for r in recorders:
                r.on_epoch_end(last_epoch)
        last_epoch = e
        zt = torch.from_numpy(z).to(device=device, dtype=dtype)
        for r in recorders:
            r.on_batch(torch.from_numpy(pos), zt, torch.from_numpy(y).to(device), e)
    for r in recorders:
        r.on_epoch_end(last_epoch)


def rounded(batches, dtype):
    """The stream as the recorders see it after the logits are cast to ``dtype``."""
    return [(e, p, torch.from_numpy(z).to(dtype).float().numpy(), y) for e, p, z, y in batches]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_recorded_scores_match_numpy_definitions(device, dtype):
    labels, batches, never_learned, unseen = make_stream()
    n = labels.size
    recs = recorders_for_training(n, 5, el2n_epoch=2)
    feed(recs, batches, device, dtype)
    got = {}
    for r in recs:
        got.update(r.score_arrays())
    ref = rounded(batches, dtype)

    forgetting, never, seen = ref_forgetting(ref, n)
    np.testing.assert_array_equal(got["forgetting"], forgetting)
    assert set(np.flatnonzero(never)) >= set(never_learned)
    assert np.all(got["forgetting"][never] > np.nanmax(got["forgetting"][~never & seen]))
    np.testing.assert_array_equal(got["forgetting_never_learned"][seen], never[seen].astype(float))
    assert (got["forgetting"][seen] > 0).sum() > 5  # the stream does produce forgetting events
    np.testing.assert_allclose(got["aum"], ref_aum(ref, n), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got["el2n"], ref_el2n(ref, n, 2), rtol=1e-5, atol=1e-6)
    unc = ref_uncertainty(ref, n)
    for k, name in enumerate(("entropy", "margin", "least_confidence")):
        np.testing.assert_allclose(got[name], unc[:, k], rtol=1e-5, atol=1e-6, err_msg=name)
    conf, var = ref_cartography(ref, n)
    np.testing.assert_allclose(got["confidence"], conf, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["variability"], var, rtol=1e-4, atol=1e-6)
    for name, arr in got.items():
        assert arr.shape == (n,) and arr.dtype == np.float64, name
        assert np.isnan(arr[unseen]), name


def test_recorders_resume_from_a_checkpoint_exactly(tmp_path):
    labels, batches, *_ = make_stream(seed=1)
    n = labels.size
    straight = recorders_for_training(n, 5, el2n_epoch=3)
    feed(straight, batches)
    first = recorders_for_training(n, 5, el2n_epoch=3)
    feed(first, batches, upto_epoch=2)
    torch.save([r.state_dict() for r in first], tmp_path / "ckpt.pt")
    states = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    resumed = recorders_for_training(n, 5, el2n_epoch=3)
    for r, s in zip(resumed, states):
        r.load_state_dict(s)
    feed(resumed, batches, from_epoch=2)
    for a, b in zip(straight, resumed):
        for k, v in a.score_arrays().items():
            np.testing.assert_array_equal(v, b.score_arrays()[k], err_msg=k)
    with pytest.raises(ValueError, match="same options"):
        recorders_for_training(n, 5, el2n_epoch=4)[2].load_state_dict(states[2])
    with pytest.raises(ValueError, match="recorder='aum', this recorder has recorder='el2n'"):
        resumed[2].load_state_dict(states[1])
    with pytest.raises(ValueError, match="'total' should be torch.float64"):
        AUMRecorder(n + 1).load_state_dict({**states[1], "num_samples": n + 1})
    with pytest.warns(DeprecationWarning, match="score_arrays"):
        old_name = resumed[1].scores()
    np.testing.assert_array_equal(old_name["aum"], straight[1].score_arrays()["aum"])


def test_recorder_input_errors():
    rec = AUMRecorder(10)
    with pytest.raises(IndexError, match="position 10 is outside"):
        rec.on_batch(torch.tensor([1, 10]), torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), 0)
    with pytest.raises(ValueError, match="must agree"):
        rec.on_batch(torch.tensor([1]), torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), 0)
    with pytest.raises(ValueError, match="epochs"):
        recorders_for_training(10, 5, el2n_epoch=6)


def test_defaults_and_method_table():
    assert default_el2n_epoch(200) == 20 and default_el2n_epoch(164) == 16
    assert default_el2n_epoch(10) == 2 and default_el2n_epoch(1) == 1 and default_el2n_epoch(3) == 2
    assert canonical_method("kCenterGreedy") == "kcenter" and canonical_method("LC") == "least-confidence"
    with pytest.raises(ValueError, match="unknown method"):
        canonical_method("glister")
    # the ends each method keeps (documented in cldfast/baselines.py)
    keep = {m: i.order for m, i in METHODS.items()}
    assert keep["forgetting"] == keep["el2n"] == keep["grand"] == keep["entropy"] == "top"
    assert keep["aum"] == keep["margin"] == keep["confidence"] == "bottom"
    assert keep["cld"] == "top" and METHODS["cld"].hard == "bottom"


@pytest.mark.slow
def test_scores_from_a_real_proxy_run_match_the_logits_it_saw(tmp_path):
    """The recorders inside pipeline.track, checked against the logits of the same pass."""
    from cldfast.pipeline import DataSpec, track
    from cldfast.training import Recipe

    class Tape:
        def __init__(self):
            self.batches = []

        def on_batch(self, positions, logits, targets, epoch):
            self.batches.append((epoch, positions.cpu().numpy().copy(),
                                 logits.detach().float().cpu().numpy().copy(),
                                 targets.cpu().numpy().copy()))

        def on_epoch_end(self, epoch):
            pass

        def score_arrays(self):
            return {}

        def state_dict(self):
            return {}

        def load_state_dict(self, state):
            pass

    tape = Tape()
    bundle = DataSpec("digits").load()
    from cldfast.data import split_train_val

    n = split_train_val(bundle.train_targets, 0.1, 0)[0].size
    recs = recorders_for_training(n, 3, el2n_epoch=2)
    costs = {}
    sf, metrics = track(bundle, tmp_path, recipe=Recipe(epochs=3, batch_size=64, lr=0.05, device="cpu"),
                        progress=False, recorders=[*recs, tape],
                        final_scores=make_final_scores(["grand", "herding", "kcenter"],
                                                       geometry_fraction=0.3, costs=costs))
    forgetting, _, _ = ref_forgetting(tape.batches, n)
    np.testing.assert_array_equal(sf.extra["forgetting"], forgetting)
    np.testing.assert_allclose(sf.extra["aum"], ref_aum(tape.batches, n), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sf.extra["el2n"], ref_el2n(tape.batches, n, 2), rtol=1e-5, atol=1e-6)
    unc = ref_uncertainty(tape.batches, n)
    np.testing.assert_allclose(sf.extra["entropy"], unc[:, 0], rtol=1e-5, atol=1e-6)
    conf, var = ref_cartography(tape.batches, n)
    np.testing.assert_allclose(sf.extra["variability"], var, rtol=1e-4, atol=1e-6)
    assert np.isfinite(sf.extra["grand"]).all() and (sf.extra["grand"] > 0).all()
    for m in ("herding", "kcenter"):
        picked = np.isfinite(sf.extra[m])
        assert picked.sum() == sum(class_quotas(sf.labels, fraction=0.3).values())
    assert costs["final_pass_seconds"] > 0 and costs["embedding_dim"] == 64


# --------------------------------------------------------------------------------------------
# GraNd and embeddings
# --------------------------------------------------------------------------------------------


class _Items(torch.utils.data.Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


def test_grand_is_the_last_layer_gradient_norm():
    from cldfast.training.models import build_model

    torch.manual_seed(0)
    model = build_model("small-cnn", 4, (1, 12, 12))
    x = torch.randn(30, 1, 12, 12)
    y = torch.randint(0, 4, (30,))
    idx = np.array([3, 7, 0, 11, 29, 15, 16, 2])
    grand, emb = embed_and_grand(model, _Items(x, y), idx, y.numpy()[idx], batch_size=3)
    assert model.training  # the pass runs in eval mode and restores the mode it found
    # numpy reference: h from the model's own layers, z = W h + b, and the gradient of
    # cross-entropy with respect to (W, b), i.e. outer(p - e_y, h) and p - e_y.
    model.eval()
    with torch.no_grad():
        h = torch.flatten(model.pool(model.features(x[idx])), 1).double().numpy()
    W = model.classifier.weight.detach().double().numpy()
    b = model.classifier.bias.detach().double().numpy()
    for k, i in enumerate(idx):
        p = _softmax(W @ h[k] + b)
        g = p - np.eye(4)[y[i]]
        ref = math.sqrt(np.sum(np.outer(g, h[k]) ** 2) + np.sum(g ** 2))
        assert grand[k] == pytest.approx(ref, rel=1e-5)
    np.testing.assert_allclose(emb, h, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="do not match"):
        embed_and_grand(model, _Items(x, y), idx, (y.numpy()[idx] + 1) % 4)


def test_last_linear_of_torchvision_models():
    from cldfast.training.models import build_model

    for arch, name in (("resnet18", "fc"), ("densenet121", "classifier")):
        model = build_model(arch, 7, (3, 32, 32))
        assert last_linear(model) is getattr(model, name)
    model = build_model("vgg16_bn", 7, (3, 32, 32))
    assert last_linear(model, 7).out_features == 7
    with pytest.raises(ValueError, match="no nn.Linear"):
        last_linear(nn.Sequential(nn.Conv2d(1, 2, 3)))
