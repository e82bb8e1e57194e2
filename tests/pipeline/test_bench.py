"""`cldfast bench` end to end on the embedded digits (tiny configuration), its cache, and the
DeepCore-style adapter."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

import cldfast.pipeline.tracking as tracking
import cldfast.pipeline.training as training
from cldfast.selection.methods import METHODS
from cldfast.cli.bench import register
from cldfast.pipeline.bench import bench, method_coreset
from cldfast.integrations.deepcore import CLDSelector, ScoreSelector
from cldfast.io import load_scores
from cldfast.pipeline import DataSpec
from cldfast.selection import class_quotas
from cldfast.training import Recipe

METHOD_LIST = "cld,random,forgetting,el2n,aum,entropy,kcenter"
ARGS = ["--dataset", "digits", "--epochs", "1", "--proxy-epochs", "3", "--batch-size", "64",
        "--lr", "0.05", "--methods", METHOD_LIST, "--fractions", "0.3,0.6", "--seeds", "2",
        "--strategies", "balanced,ccs", "--device", "cpu", "--quiet"]


# Real proxy runs and retrainings of `cldfast bench`: slow.
pytestmark = pytest.mark.slow


def parse(argv):
    parser = argparse.ArgumentParser(prog="cldfast")
    sub = parser.add_subparsers(dest="command", required=True)
    handler = register(sub)
    return handler, parser.parse_args(["bench", *argv])


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny digits models run fastest on one thread (and do not fight other processes
    for cores on a shared CI machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def bench_out(tmp_path_factory, one_thread):
    from cldfast.cli import main

    out = tmp_path_factory.mktemp("bench")
    assert main(["bench", *ARGS, "--out", str(out)]) == 0  # through the real `cldfast` entry point
    return out


def test_bench_command_writes_table_json_and_plot(bench_out, capsys):
    md = (bench_out / "bench.md").read_text()
    assert "| method | 30 % | 60 % | extra passes | selection time (s) | state (MB) |" in md
    for label in ("| cld |", "| random |", "| forgetting |", "| el2n |", "| aum |", "| entropy |",
                  "| kcenter |", "| cld (ccs) |", "| forgetting (ccs) |"):
        assert label in md
    assert "Full training split" in md and "random (ccs), kcenter (ccs)" in md
    metrics = json.loads((bench_out / "bench.json").read_text())
    lines = metrics["results"]["lines"]
    assert len(lines) == 7 + 5
    for ln in lines:
        for f in ("0.3", "0.6"):
            cell = ln["fractions"][f]
            assert len(cell["accuracies"]) == 2 and 0 <= cell["mean"] <= 1
    # one proxy run: no extra pass for the recorded scores, one per proxy epoch for CLD (eval
    # mode, the default: the paper's estimator), one for k-center greedy
    cost = metrics["selection_cost"]
    assert cost["forgetting"]["extra_passes"] == 0 and cost["cld"]["extra_passes"] == 3
    assert cost["kcenter"]["extra_passes"] == 1 and cost["kcenter"]["state_bytes"] > 0
    assert (bench_out / "bench_accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(list((bench_out / "cells").glob("*.json"))) == 12 * 2 * 2 + 2
    # coresets are original dataset indices of the training split, of the requested size
    sf = load_scores(bench_out / "scores.npz")
    for key in ("forgetting", "aum", "el2n", "entropy", "margin", "variability", "grand", "kcenter"):
        assert sf.extra[key].shape == sf.scores.shape
    idx = np.load(bench_out / "indices" / "el2n-balanced-f0.3-s0.npy")
    assert np.isin(idx, sf.train_indices).all()
    assert idx.size == sum(class_quotas(sf.labels, fraction=0.3).values())
    ccs = np.load(bench_out / "indices" / "el2n-ccs-f0.3-s1.npy")
    assert ccs.size == int(np.floor(0.3 * sf.scores.size + 0.5))
    # the seeds change the retraining (and random draws), not the proxy
    c0 = json.loads((bench_out / "cells" / "random-balanced-f0.3-s0.json").read_text())
    c1 = json.loads((bench_out / "cells" / "random-balanced-f0.3-s1.json").read_text())
    assert c1["seed"] == c0["seed"] + 1
    r0 = np.load(bench_out / "indices" / "random-balanced-f0.3-s0.npy")
    r1 = np.load(bench_out / "indices" / "random-balanced-f0.3-s1.npy")
    assert not np.array_equal(r0, r1)
    assert not list((bench_out / "runs" / "checkpoints").glob("*.pt"))  # finished cells keep no checkpoint


def test_rerun_continues_from_the_cache(bench_out, monkeypatch, capsys):
    before = (bench_out / "bench.md").read_text()

    def no_training(*args, **kwargs):
        raise AssertionError("a cached cell was trained again")

    monkeypatch.setattr(training, "train", no_training)
    monkeypatch.setattr(tracking, "track", no_training)
    handler, args = parse([*ARGS, "--out", str(bench_out)])
    assert handler(args) == 0
    assert (bench_out / "bench.md").read_text() == before
    assert "| cld |" in capsys.readouterr().out


def test_interrupted_bench_continues_where_it_stopped(tmp_path, monkeypatch):
    real_train = training.train
    calls = {"n": 0}

    def crash_after_three(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt("simulated kill")
        return real_train(*args, **kwargs)

    kw = dict(methods="cld,random,aum", fractions=[0.5], seeds=2, progress=False,
              recipe=Recipe(epochs=1, batch_size=64, device="cpu"),
              proxy_recipe=Recipe(epochs=3, batch_size=64, device="cpu"))
    monkeypatch.setattr(training, "train", crash_after_three)
    with pytest.raises(KeyboardInterrupt):
        bench(DataSpec("digits"), tmp_path, **kw)
    assert len(list((tmp_path / "cells").glob("*.json"))) == 3
    calls["n"] = -100
    result = bench(DataSpec("digits"), tmp_path, **kw)
    assert calls["n"] == -100 + 8 - 3  # only the 5 missing cells (2 full + 3 x 2 - 3 done)
    assert "| aum |" in result.table
    with pytest.raises(ValueError, match="other settings"):
        bench(DataSpec("digits"), tmp_path, **{**kw, "recipe": Recipe(epochs=2, batch_size=64, device="cpu")})


def test_bench_help_and_argument_errors(capsys):
    parser = argparse.ArgumentParser(prog="cldfast")
    sub = parser.add_subparsers(dest="command")
    register(sub)
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "--help"])
    text = capsys.readouterr().out
    for word in ("--methods", "--fractions", "--seeds", "--strategies", "--ccs-beta", "--el2n-epoch",
                 "--proxy-arch", "--arch", "--val-fraction", "--out", "forgetting (top)", "aum (bottom)",
                 "--rules", "rule-<name>", "--track-from"):
        assert word in text
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "--methods", "cld,glister"])
    assert "unknown method 'glister'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "--strategies", "stratified"])
    assert "unknown strategy" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "--rules", "ccs,median"])
    assert "rules: unknown ['median']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "--track-from", "-1"])
    assert "--track-from" in capsys.readouterr().err


def test_method_coreset_uses_each_methods_end(bench_out):
    sf = load_scores(bench_out / "scores.npz")
    for method in ("forgetting", "aum", "el2n", "entropy", "margin", "confidence"):
        info = METHODS[method]
        idx = method_coreset(sf, method, "global", 0.2)
        pos = np.searchsorted(sf.train_indices, idx)
        s = sf.extra[info.key]
        rest = np.setdiff1d(np.arange(s.size), pos)
        if info.order == "top":
            assert s[pos].min() >= np.nanmax(s[rest])
        else:
            assert s[pos].max() <= np.nanmin(s[rest])
    with pytest.raises(ValueError, match="kcenter_global"):
        method_coreset(sf, "kcenter", "global", 0.2)
    with pytest.raises(ValueError, match="smaller fraction"):
        method_coreset(sf, "kcenter", "balanced", 0.9)
    with pytest.raises(ValueError, match="ccs"):
        method_coreset(sf, "random", "ccs", 0.2)


def test_rule_strategies_over_a_stored_baseline(bench_out):
    """``rule-<name>`` strategies: class-balanced quotas, the hard end of the method's score
    dropped by ``filtered`` (AUM: its low end), deterministic per seed; not for random or the
    geometry methods."""
    from cldfast.selection import auto_params

    sf = load_scores(bench_out / "scores.npz")
    aum = sf.extra["aum"]
    quotas = class_quotas(sf.labels, fraction=0.3)
    q = auto_params("filtered", aum, sf.labels, fraction=0.3, keep="top")["q"]
    for rule in ("rule-ccs", "rule-filtered", "rule-band", "rule-beta", "rule-mix"):
        idx = method_coreset(sf, "aum", rule, 0.3, seed=5)
        np.testing.assert_array_equal(idx, method_coreset(sf, "aum", rule, 0.3, seed=5))
        pos = np.searchsorted(sf.train_indices, idx)
        assert np.array_equal(sf.train_indices[pos], idx)
        got = {int(c): int(n) for c, n in zip(*np.unique(sf.labels[pos], return_counts=True))}
        assert got == {int(c): int(n) for c, n in quotas.items() if n}
        if rule == "rule-filtered":
            for c in quotas:  # none of the floor(q n_c) lowest AUM of a class (plain numpy)
                members = np.flatnonzero(sf.labels == c)
                n_drop = min(int(np.floor(q * members.size)), members.size - quotas[c])
                worst = members[np.argsort(aum[members], kind="stable")[:n_drop]]
                assert not np.isin(worst, pos).any()
    for method in ("random", "kcenter"):
        with pytest.raises(ValueError, match="rule-filtered.*difficulty score"):
            method_coreset(sf, method, "rule-filtered", 0.3)


class DeepCoreLike(torch.utils.data.Dataset):
    """What DeepCore hands a method: (x, y) items, .targets, .classes."""

    def __init__(self, images, targets):
        self.images, self.targets = images, torch.as_tensor(targets)
        self.classes = [str(c) for c in range(10)]

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return self.images[i], int(self.targets[i])


def test_deepcore_adapter_contract(bench_out):
    bundle = DataSpec("digits").load()
    images = torch.stack([bundle.train_eval[i][0] for i in range(len(bundle.train_targets))])
    dst = DeepCoreLike(images, bundle.train_targets)
    sf = load_scores(bench_out / "scores.npz")
    for method in ("cld", "forgetting", "aum"):
        sel = ScoreSelector(dst, None, 0.2, 0, scores=bench_out / "scores.npz", method=method)
        res = sel.select()
        assert set(res) == {"indices", "scores"}
        assert res["scores"].shape == (len(dst),)
        assert np.isnan(res["scores"][sf.val_indices]).all()  # CLD's validation split: unscored
        idx = res["indices"]
        assert not np.isin(idx, sf.val_indices).any()
        for c, q in class_quotas(bundle.train_targets, fraction=0.2).items():
            assert (bundle.train_targets[idx] == c).sum() == q  # DeepCore's quota over dst_train
    with pytest.raises(ValueError, match="another dataset or order"):
        ScoreSelector(DeepCoreLike(images, np.roll(bundle.train_targets, 1)), None, 0.2,
                      scores=bench_out / "scores.npz").select()
    ccs = ScoreSelector(dst, None, 0.2, 0, scores=bench_out / "scores.npz", method="el2n",
                        strategy="ccs", balance=False).select()
    assert ccs["indices"].size == round(0.2 * len(dst))


def test_cld_selector_trains_its_own_proxy(tmp_path):
    bundle = DataSpec("digits").load()
    images = torch.stack([bundle.train_eval[i][0] for i in range(len(bundle.train_targets))])
    dst = DeepCoreLike(images, bundle.train_targets)
    args = argparse.Namespace(device="cpu", selection_batch=64, num_classes=10)
    res = CLDSelector(dst, args, fraction=0.1, random_seed=0, epochs=3, out=tmp_path).select()
    assert res["indices"].size == sum(class_quotas(bundle.train_targets, fraction=0.1).values())
    sf = load_scores(tmp_path / "scores.npz")
    np.testing.assert_array_equal(res["scores"][sf.train_indices], sf.scores)
