"""Defaults are the library's: `cldfast.pipeline.run()` from Python and `cldfast run` train the
same proxy and retrain with the same recipe; the dataset registry owns the epochs."""

from __future__ import annotations

import numpy as np
import pytest

import cldfast.pipeline.end_to_end as end_to_end
import cldfast.pipeline.retraining as retraining
import cldfast.pipeline.tracking as tracking
import cldfast.pipeline.training as training
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

    # Patched where they live: run() and the retraining cells call them there.
    monkeypatch.setattr(tracking, "track", fake_track)
    monkeypatch.setattr(training, "train", fake_train)
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


def _capture_jobs(monkeypatch) -> list[tuple[object, int]]:
    """Record what run() asks retrain_jobs and what it answers, then stop the run."""
    asked: list[tuple[object, int]] = []
    real = retraining.retrain_jobs

    def spy(data, arch, recipe, cells, jobs):
        asked.append((jobs, real(data, arch, recipe, cells, jobs)))
        raise _Stop

    monkeypatch.setattr(retraining, "retrain_jobs", spy)
    return asked


def test_python_run_defaults_to_one_job_and_cli_run_to_auto(monkeypatch, tmp_path):
    """A user's script without a __main__ guard must not spawn workers that re-run it: from
    Python the retraining cells run one after the other unless jobs= asks otherwise; `cldfast
    run` keeps its automatic choice."""
    import torch

    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    asked = _capture_jobs(monkeypatch)
    with pytest.raises(_Stop):
        workflows.run("digits", tmp_path / "py", progress=False)
    with pytest.raises(_Stop):
        main(["run", "--dataset", "digits", "--out", str(tmp_path / "cli"), "--quiet"])
    with pytest.raises(_Stop):
        main(["run", "--dataset", "digits", "--out", str(tmp_path / "cli2"), "--quiet", "--jobs", "3"])
    cells = 2 * len(end_to_end._run_cells(workflows.DEFAULT_FRACTIONS, min(workflows.DEFAULT_FRACTIONS)))
    assert asked == [(1, 1), ("auto", min(8, workflows.available_cores(), cells)), (3, 3)]


def test_cli_run_refuses_jobs_under_torchrun(monkeypatch, tmp_path, capsys):
    import torch

    import cldfast.core.distributed as ddist

    seen = _capture(monkeypatch)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    monkeypatch.setattr(ddist, "rank_world", lambda: (0, 2))
    out = tmp_path / "cli"
    rc = main(["run", "--dataset", "digits", "--out", str(out), "--quiet", "--jobs", "4"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "--jobs 4" in err and "world size 2" in err and "torchrun" in err
    assert seen["track"] == []  # refused before the proxy is tracked
    # Left out, the automatic choice is 1 under torchrun: the run goes on (to the fake train).
    asked = _capture_jobs(monkeypatch)
    with pytest.raises(_Stop):
        main(["run", "--dataset", "digits", "--out", str(out), "--quiet"])
    assert asked == [("auto", 1)]


def test_defaults_are_named_once():
    """Every workflow, the CLI and the integrations take their defaults from cldfast.defaults;
    the values themselves are the documented ones (README, docs/method.md)."""
    import inspect

    import cldfast.defaults as d
    from cldfast.cli import build_parser
    from cldfast.integrations.deepcore import CLDSelector
    from cldfast.pipeline.bench import bench
    from cldfast.training.models import ARCHS

    assert (d.DEFAULT_ARCH, d.VAL_FRACTION, d.INFOBATCH_DELTA) == ("small-cnn", 0.1, 0.875)
    assert d.RUN_FRACTIONS == (0.1, 0.3) and d.RUN_SEEDS == 2 and d.BENCH_SEEDS == 3
    assert d.DEFAULT_ARCH in ARCHS

    def defaults(fn):
        return {k: p.default for k, p in inspect.signature(fn).parameters.items()}

    for fn in (workflows.track, workflows.run, bench):
        got = defaults(fn)
        assert got.get("val_fraction") == d.VAL_FRACTION and got.get("precision") == d.PRECISION
        assert got.get("proxy_arch", got.get("arch")) == d.DEFAULT_ARCH
    assert defaults(workflows.train)["val_fraction"] == d.VAL_FRACTION
    assert workflows.PruneSpec("infobatch").delta == d.INFOBATCH_DELTA
    assert defaults(CLDSelector)["val_fraction"] == d.VAL_FRACTION

    sub = build_parser()._subparsers._group_actions[0].choices
    run, train, bench_p = sub["run"], sub["train"], sub["bench"]
    assert run.get_default("proxy_arch") == d.DEFAULT_ARCH and run.get_default("seeds") == d.RUN_SEEDS
    assert run.get_default("fractions") == list(d.RUN_FRACTIONS)
    assert run.get_default("val_fraction") == d.VAL_FRACTION
    assert train.get_default("prune_delta") == d.INFOBATCH_DELTA
    assert train.get_default("val_fraction") == d.VAL_FRACTION
    assert bench_p.get_default("fractions") == list(d.BENCH_FRACTIONS)
    assert bench_p.get_default("methods") == list(d.BENCH_METHODS)
    assert "(default: 0.875, InfoBatch's)" in " ".join(train.format_help().split())
