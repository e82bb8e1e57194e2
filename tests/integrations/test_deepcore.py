"""The DeepCore adapter honours DeepCore's arguments and fraction convention."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from cldfast.integrations.deepcore import CLDSelector
from cldfast.io import ScoresFile
from cldfast.training import Recipe


class Images(torch.utils.data.Dataset):
    def __init__(self, n=60, classes=3):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 1, 8, 8, generator=g)
        self.targets = torch.arange(n) % classes
        self.classes = [f"c{i}" for i in range(classes)]

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return self.x[i], int(self.targets[i])


def fake_track(calls):
    def track(bundle, out, *, arch, recipe, val_fraction, progress):
        calls.append({"arch": arch, "recipe": recipe})
        n = len(bundle.train_targets)
        held_out = np.arange(0, n, 10)  # what a validation split would take away
        scored = np.setdiff1d(np.arange(n), held_out)
        rng = np.random.default_rng(0)
        return ScoresFile(rng.random(scored.size), bundle.train_targets[scored], scored, held_out,
                          {}), {}
    return track


def test_deepcore_args_reach_the_proxy(monkeypatch):
    calls = []
    monkeypatch.setattr("cldfast.pipeline.tracking.track", fake_track(calls))
    args = SimpleNamespace(model="ResNet18", selection_epochs=7, selection_lr=0.05,
                           selection_momentum=0.8, selection_weight_decay=0.0,
                           selection_nesterov=False, selection_batch=32, device="cpu")
    CLDSelector(Images(), args, fraction=0.2, random_seed=3).select()
    call = calls[0]
    r = call["recipe"]
    assert call["arch"] == "resnet18"
    assert (r.epochs, r.lr, r.momentum, r.weight_decay, r.nesterov, r.batch_size, r.seed) == \
        (7, 0.05, 0.8, 0.0, False, 32, 3)
    CLDSelector(Images(), args, fraction=0.2, epochs=2, arch="small-cnn").select()
    assert (calls[1]["arch"], calls[1]["recipe"].epochs) == ("small-cnn", 2)


def test_unknown_deepcore_model_is_an_error_not_a_substitute(monkeypatch):
    monkeypatch.setattr("cldfast.pipeline.tracking.track", fake_track([]))
    with pytest.raises(ValueError, match=r"args\.model.*arch="):
        CLDSelector(Images(), SimpleNamespace(model="NoSuchNet"), fraction=0.2).select()


@pytest.mark.parametrize("balance", [True, False])
def test_fraction_follows_deepcore(monkeypatch, balance):
    monkeypatch.setattr("cldfast.pipeline.tracking.track", fake_track([]))
    data = Images(n=60, classes=3)
    picked = CLDSelector(data, None, fraction=0.25, balance=balance).select()["indices"]
    counts = np.bincount(data.targets.numpy()[picked], minlength=3)
    if balance:
        assert counts.tolist() == [round(0.25 * 20)] * 3  # of each class's dst_train members
    else:
        assert counts.sum() == round(0.25 * 60)
    assert not np.isin(picked, np.arange(0, 60, 10)).any()  # held-out samples never picked


def test_deepcore_zero_and_false_args_are_values_not_missing(monkeypatch):
    """Only a missing or None argument takes the default: momentum 0 stays 0 (it was 0.9)."""
    calls = []
    monkeypatch.setattr("cldfast.pipeline.tracking.track", fake_track(calls))
    args = SimpleNamespace(selection_momentum=0, selection_weight_decay=0, selection_nesterov=False,
                           selection_lr=0.02, selection_batch=16, selection_epochs=3, device="cpu")
    CLDSelector(Images(), args, fraction=0.2).select()
    r = calls[0]["recipe"]
    assert (r.momentum, r.weight_decay, r.nesterov, r.lr, r.batch_size, r.epochs) == \
        (0.0, 0.0, False, 0.02, 16, 3)
    none = SimpleNamespace(selection_momentum=None, selection_weight_decay=None,
                           selection_nesterov=None, selection_lr=None, selection_batch=None,
                           selection_epochs=None, device="cpu")
    CLDSelector(Images(), none, fraction=0.2).select()
    r, d = calls[1]["recipe"], Recipe()
    assert (r.momentum, r.weight_decay, r.nesterov, r.lr, r.batch_size, r.epochs) == \
        (d.momentum, d.weight_decay, d.nesterov, d.lr, 128, 10)


@pytest.mark.parametrize("name, match", [("selection_epochs", "epochs must be >= 1"),
                                         ("selection_lr", "lr must be > 0"),
                                         ("selection_batch", "batch_size must be >= 1")])
def test_deepcore_zero_that_cannot_be_is_an_error_not_the_default(monkeypatch, name, match):
    calls = []
    monkeypatch.setattr("cldfast.pipeline.tracking.track", fake_track(calls))
    with pytest.raises(ValueError, match=f"selection_.*{match}"):
        CLDSelector(Images(), SimpleNamespace(**{name: 0}), fraction=0.2).select()
    assert calls == []
