"""Defaults are the library's: `cldfast.pipeline.run()` from Python and `cldfast run` train the
same proxy and retrain with the same recipe; the dataset registry owns the epochs."""

from __future__ import annotations

import numpy as np
import pytest

import cldfast.pipeline.workflows as workflows
from cldfast.cli import main
from cldfast.data import default_epochs, is_embedded
from cldfast.io import ScoresFile
from cldfast.training import Recipe, default_recipe


class _Stop(Exception):
    pass


def _capture(monkeypatch):
    seen: dict[str, list] = {"track": [], "train": []}

    def fake_track(bundle, out, **kw):
        seen["track"].append(kw["recipe"])
        seen.setdefault("precision", []).append(kw.get("precision"))
        n = len(bundle.train_targets)
        idx = np.arange(n - 100)
        return ScoresFile(np.linspace(-1, 1, idx.size), bundle.train_targets[idx], idx,
                          np.arange(n - 100, n), {}), {}

    def fake_train(bundle, out, **kw):
        seen["train"].append(kw["recipe"])
        raise _Stop

    monkeypatch.setattr(workflows, "track", fake_track)
    monkeypatch.setattr(workflows, "train", fake_train)
    return seen


def test_python_run_and_cli_run_use_the_same_recipes(monkeypatch, tmp_path):
    seen = _capture(monkeypatch)
    with pytest.raises(_Stop):
        workflows.run("digits", tmp_path / "py", jobs=1)  # in-process: the fakes apply
    with pytest.raises(_Stop):
        main(["run", "--dataset", "digits", "--out", str(tmp_path / "cli"), "--quiet", "--jobs", "1"])
    (py_proxy, cli_proxy), (py_train, cli_train) = seen["track"], seen["train"]
    assert py_proxy == cli_proxy and py_train == cli_train
    assert (py_proxy.epochs, py_train.epochs) == (10, 8)  # the embedded data's quick recipe
    assert py_proxy.lr == Recipe().lr and py_proxy.schedule == "multistep"


def test_cli_options_override_only_what_they_name(monkeypatch, tmp_path):
    seen = _capture(monkeypatch)
    with pytest.raises(_Stop):
        main(["run", "--dataset", "digits", "--out", str(tmp_path), "--quiet", "--jobs", "1", "--optimizer",
              "adamw", "--lr", "0.003", "--schedule", "cosine", "--warmup-epochs", "2",
              "--label-smoothing", "0.1", "--proxy-epochs", "6"])
    proxy, retrain = seen["track"][0], seen["train"][0]
    assert (proxy.epochs, retrain.epochs) == (6, 8)
    for r in (proxy, retrain):
        assert (r.optimizer, r.lr, r.schedule, r.warmup_epochs, r.label_smoothing) == \
               ("adamw", 0.003, "cosine", 2, 0.1)
        assert r.batch_size == Recipe().batch_size


def test_registry_defaults_and_aliases():
    assert is_embedded("fashionmnist") and is_embedded("FMNIST") and is_embedded("auto")
    assert not is_embedded("cifar100")
    assert default_epochs("cifar100", "proxy") == 164 and default_epochs("imagefolder") == 90
    assert default_recipe("fashion_mnist", "proxy").epochs == 10
    with pytest.raises(ValueError, match="unknown dataset"):
        default_epochs("mnist-7")
    with pytest.raises(TypeError, match="unknown recipe field"):
        default_recipe("auto", "train", optimiser="sgd")
    with pytest.raises(ValueError, match="milestones"):
        default_recipe("auto", "train", milestones=[20])


def test_run_passes_the_tracker_precision(monkeypatch, tmp_path):
    seen = _capture(monkeypatch)
    with pytest.raises(_Stop):
        main(["run", "--dataset", "digits", "--out", str(tmp_path), "--quiet", "--jobs", "1", "--precision",
              "float32"])
    assert seen["precision"] == ["float32"]
