"""End-to-end pipeline and CLI on cut-down configurations (digits, generated CIFAR and
ImageFolder data), resume equivalence, and the CLI's error messages."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import cldfast.training.checkpoints as training_checkpoints
from cldfast.cli import main
from cldfast.io import load_scores
from cldfast.pipeline import DataSpec, track
from cldfast.training import Recipe

QUICK = ["--dataset", "digits", "--batch-size", "64", "--lr", "0.05", "--quiet"]


@pytest.mark.slow
def test_run_end_to_end_on_digits(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["run", *QUICK, "--epochs", "2", "--proxy-epochs", "4", "--fractions", "0.3,0.5",
               "--rules", "ccs", "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| fraction | samples | CLD (top) | random |" in printed
    assert "near-zero CLD" in printed and "most negative CLD" in printed
    assert "Selection rules over CLD" in printed and "| 0.5 | ccs |" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["results"]) == {"full", "cld_top_0.3", "random_0.3", "cld_top_0.5",
                                       "random_0.5", "cld_zero_0.3", "cld_bottom_0.3",
                                       "cld_ccs_0.3", "cld_ccs_0.5"}
    for r in metrics["results"].values():
        assert 0.0 <= r["test_accuracy"] <= 1.0
    sf = load_scores(out / "scores.npz")
    assert np.isfinite(sf.scores).all()  # 4 checkpoints: every sample has 3 differences
    assert sf.metadata["dataset"] == "digits" and sf.metadata["tracked_epochs"] == [1, 2, 3, 4]
    # Indices are original dataset indices, from the training split only.
    idx = np.load(out / "indices" / "cld_top_0.3.npy")
    assert np.isin(idx, sf.train_indices).all() and not np.isin(idx, sf.val_indices).any()
    assert metrics["results"]["cld_top_0.3"]["samples"] == idx.size
    # The rule's coreset (seed 0) is the library's, with its automatic parameters.
    from cldfast.selection import select_by_rule

    np.testing.assert_array_equal(
        np.load(out / "indices" / "cld_ccs_0.5.npy"),
        select_by_rule(sf.scores, sf.labels, rule="ccs", fraction=0.5, seed=0,
                       dataset_indices=sf.train_indices))
    for png in ("accuracy_vs_fraction.png", "cld_histograms.png"):
        assert (out / "plots" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "test accuracy" in (out / "run.log").read_text()


def test_scores_file_is_plain_numpy(tmp_path):
    main(["track", *QUICK, "--epochs", "3", "--out", str(tmp_path)])
    with np.load(tmp_path / "scores.npz", allow_pickle=False) as z:
        meta = json.loads(str(z["metadata"]))
        n = z["scores"].shape[0]
        assert z["labels"].shape == z["train_indices"].shape == (n,)
        assert n + z["val_indices"].shape[0] == 1437  # digits' training split
    for key in ("dataset", "arch", "epochs_trained", "loss_source", "seed", "version", "fingerprint"):
        assert key in meta


def test_select_cli_writes_original_indices(tmp_path, capsys):
    main(["track", *QUICK, "--epochs", "3", "--out", str(tmp_path)])
    sf = load_scores(tmp_path / "scores.npz")
    for order in ("top", "bottom", "zero", "random"):
        out = tmp_path / f"{order}.npy"
        assert main(["select", str(tmp_path / "scores.npz"), "--per-class", "5", "--order", order,
                     "-o", str(out)]) == 0
        idx = np.load(out)
        assert idx.size == 5 * 10 and np.unique(idx).size == idx.size
        pos = np.searchsorted(sf.train_indices, idx)
        assert np.array_equal(sf.train_indices[pos], idx)
        assert np.bincount(sf.labels[pos], minlength=10).tolist() == [5] * 10
        if order == "top":
            for c in range(10):
                members = sf.scores[sf.labels == c]
                assert sf.scores[pos][sf.labels[pos] == c].min() >= np.sort(members)[-5]


def test_resume_repeats_uninterrupted_run_bit_for_bit(tmp_path, monkeypatch):
    recipe = Recipe(epochs=4, batch_size=64, lr=0.05, device="cpu", seed=3)
    data = DataSpec("digits")
    straight, _ = track(data, tmp_path / "a", recipe=recipe, progress=False)

    real_save = training_checkpoints.save_checkpoint
    calls = {"n": 0}

    def crash_after_two(path, state):
        real_save(path, state)
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated kill after epoch 2")

    monkeypatch.setattr(training_checkpoints, "save_checkpoint", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        track(data, tmp_path / "b", recipe=recipe, progress=False)
    monkeypatch.setattr(training_checkpoints, "save_checkpoint", real_save)
    resumed, _ = track(data, tmp_path / "b", recipe=recipe, resume=True, progress=False)
    np.testing.assert_array_equal(resumed.scores, straight.scores)
    assert resumed.metadata["proxy_test_accuracy"] == straight.metadata["proxy_test_accuracy"]


def test_resume_refuses_other_settings(tmp_path):
    data = DataSpec("digits")
    track(data, tmp_path, recipe=Recipe(epochs=3, batch_size=64, device="cpu"), progress=False)
    with pytest.raises(ValueError, match="other settings"):
        track(data, tmp_path, recipe=Recipe(epochs=3, batch_size=32, device="cpu"), resume=True,
              progress=False)


def test_eval_loss_source_and_track_epochs(tmp_path):
    sf, metrics = track(DataSpec("digits"), tmp_path, recipe=Recipe(epochs=6, batch_size=64, device="cpu"),
                        loss_source="eval", track_epochs=4, progress=False)
    assert metrics["extra_forward_passes_over_train"] == 4
    assert sf.metadata["epochs_trained"] == 4 and sf.metadata["loss_source"] == "eval"
    sf2, _ = track(DataSpec("digits"), tmp_path / "every", track_every=2,
                   recipe=Recipe(epochs=6, batch_size=64, device="cpu"), progress=False)
    assert sf2.metadata["tracked_epochs"] == [2, 4, 6]


def write_cifar10(root: Path, n_train=60, n_test=20, seed=0):
    rng = np.random.default_rng(seed)
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    per = n_train // 5
    for i in range(1, 6):
        batch = {"data": rng.integers(0, 256, (per, 3072), dtype=np.uint8),
                 "labels": [int(x) for x in np.arange(per) % 10]}
        (base / f"data_batch_{i}").write_bytes(pickle.dumps(batch))
    test = {"data": rng.integers(0, 256, (n_test, 3072), dtype=np.uint8),
            "labels": [int(x) for x in np.arange(n_test) % 10]}
    (base / "test_batch").write_bytes(pickle.dumps(test))
    meta = {"label_names": [f"c{i}" for i in range(10)]}
    (base / "batches.meta").write_bytes(pickle.dumps(meta))


@pytest.mark.slow
def test_cifar_path_on_generated_folder(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as cifar

    # Generated files cannot match torchvision's published md5 sums; the format is real.
    monkeypatch.setattr(cifar, "check_integrity", lambda *args, **kwargs: True)
    write_cifar10(tmp_path / "data")
    out = tmp_path / "out"
    rc = main(["track", "--dataset", "cifar10", "--data-path", str(tmp_path / "data"), "--arch",
               "resnet18", "--epochs", "3", "--batch-size", "16", "--quiet", "--val-fraction", "0.2",
               "--out", str(out)])
    assert rc == 0
    sf = load_scores(out / "scores.npz")
    assert sf.metadata["dataset"] == "cifar10" and sf.scores.size + sf.val_indices.size == 60


@pytest.mark.slow
def test_imagefolder_path_on_generated_tree(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", 8), ("val", 3)):
        for c in ("cat", "dog", "emu"):
            d = tmp_path / "tree" / split / c
            d.mkdir(parents=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(d / f"{i}.png")
    out = tmp_path / "out"
    rc = main(["track", "--dataset", "imagefolder", "--data-path", str(tmp_path / "tree"),
               "--image-size", "16", "--arch", "small-cnn", "--epochs", "3", "--batch-size", "8",
               "--val-fraction", "0.25", "--quiet", "--out", str(out)])
    assert rc == 0
    sf = load_scores(out / "scores.npz")
    assert sf.metadata["class_names"] == ["cat", "dog", "emu"] and sf.scores.size == 18


def test_cli_errors(tmp_path, capsys):
    assert main(["track", "--dataset", "fashion-mnist", "--data-path", str(tmp_path / "nowhere"),
                 "--quiet", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and "error" in err
    with pytest.raises(SystemExit):
        main(["select", "x.npz", "--fraction", "0"])
    assert "fraction must be in (0, 1]; got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["run", "--fractions", "0.1,2"])
    assert "fraction must be in (0, 1]; got 2" in capsys.readouterr().err
    assert main(["select", str(tmp_path / "missing.npz"), "--fraction", "0.1"]) == 2
    assert "scores file not found" in capsys.readouterr().err
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04 definitely not a zip")
    assert main(["select", str(bad), "--fraction", "0.1"]) == 2
    assert "not a readable cldfast scores file" in capsys.readouterr().err


def test_scores_from_another_dataset_are_refused(tmp_path, capsys):
    main(["track", *QUICK, "--epochs", "3", "--out", str(tmp_path)])
    sf = load_scores(tmp_path / "scores.npz")
    from cldfast.io import save_scores

    sf.metadata["fingerprint"] = "0123456789abcdef"
    save_scores(tmp_path / "other.npz", sf)
    rc = main(["train", *QUICK, "--epochs", "1", "--scores", str(tmp_path / "other.npz"),
               "--fraction", "0.5", "--out", str(tmp_path / "t")])
    assert rc == 2
    assert "computed on another dataset" in capsys.readouterr().err
    rc = main(["train", *QUICK, "--epochs", "1", "--scores", str(tmp_path / "scores.npz"),
               "--fraction", "0.5", "--out", str(tmp_path / "t")])
    assert rc == 0
    m = json.loads((tmp_path / "t" / "train_metrics.json").read_text())
    assert m["train_samples"] == int(np.floor(0.5 * np.bincount(sf.labels) + 0.5).sum())


def test_train_indices_file_errors(tmp_path, capsys):
    dup = tmp_path / "dup.npy"
    np.save(dup, np.array([1, 2, 2]))
    assert main(["train", *QUICK, "--epochs", "1", "--indices", str(dup), "--out", str(tmp_path)]) == 2
    assert "appears more than once" in capsys.readouterr().err
    far = tmp_path / "far.npy"
    np.save(far, np.array([1, 99999]))
    assert main(["train", *QUICK, "--epochs", "1", "--indices", str(far), "--out", str(tmp_path)]) == 2
    assert "outside the dataset" in capsys.readouterr().err


@pytest.mark.slow
def test_run_cells_in_worker_processes_equal_sequential_cells(tmp_path):
    """`jobs=2` trains the retraining cells in two spawned worker processes; with one torch
    thread everywhere each cell is the same computation as in the sequential run, so every
    coreset file and every test accuracy is identical."""
    import torch

    from cldfast.pipeline import run
    from cldfast.pipeline.workflows import available_cores, retrain_jobs

    recipe = Recipe(epochs=2, batch_size=64, lr=0.05, device="cpu")
    proxy = Recipe(epochs=4, batch_size=64, lr=0.05, device="cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = {}
        for jobs in (1, 2):
            res = run("digits", tmp_path / f"j{jobs}", proxy_recipe=proxy, recipe=recipe,
                      fractions=[0.3], seeds=2, jobs=jobs, progress=False)
            out[jobs] = res.metrics
        assert out[2]["retrain_jobs"] == 2 and out[1]["retrain_jobs"] == 1
        for name, r in out[1]["results"].items():
            assert out[2]["results"][name]["accuracies"] == r["accuracies"], name
        for f in (tmp_path / "j1" / "indices").iterdir():
            np.testing.assert_array_equal(np.load(f), np.load(tmp_path / "j2" / "indices" / f.name))
        # Auto: as many as torch has threads (here 1), and never for user bundles or on CUDA.
        assert retrain_jobs("digits", "small-cnn", recipe, 10, None) == 1
    finally:
        torch.set_num_threads(threads)
    assert retrain_jobs("digits", "small-cnn", recipe, 10, None) == min(threads, 10, available_cores())
    assert retrain_jobs(object(), "small-cnn", recipe, 10, None) == 1
    with pytest.raises(ValueError, match="jobs must be >= 1"):
        retrain_jobs("digits", "small-cnn", recipe, 10, 0)


def test_run_defaults_to_one_job_from_python_and_auto_resolves(monkeypatch):
    """pipeline.run() from a plain script trains its cells one after the other in-process
    (spawned workers would re-run a script without a __main__ guard); "auto" (or None) is the
    CLI's automatic choice."""
    import inspect

    from cldfast.pipeline import run
    from cldfast.pipeline.workflows import available_cores, retrain_jobs

    assert inspect.signature(run).parameters["jobs"].default == 1
    recipe = Recipe(device="cpu")
    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    assert retrain_jobs("digits", "small-cnn", recipe, 10, 1) == 1
    auto = min(8, available_cores(), 10)
    assert retrain_jobs("digits", "small-cnn", recipe, 10, "auto") == auto
    assert retrain_jobs("digits", "small-cnn", recipe, 10, None) == auto
    for bad in (0, -1, "two", 1.5, True):
        with pytest.raises(ValueError, match="jobs must be >= 1"):
            retrain_jobs("digits", "small-cnn", recipe, 10, bad)


def test_jobs_under_torchrun_auto_is_one_and_explicit_n_is_refused(monkeypatch):
    """Under torchrun every rank runs the same cells: jobs > 1 would train each W times."""
    import cldfast.core.distributed as ddist
    from cldfast.pipeline.workflows import retrain_jobs

    recipe = Recipe(device="cpu")
    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    monkeypatch.setattr(ddist, "rank_world", lambda: (0, 3))
    assert retrain_jobs("digits", "small-cnn", recipe, 10, "auto") == 1
    assert retrain_jobs("digits", "small-cnn", recipe, 10, 1) == 1
    with pytest.raises(ValueError, match=r"--jobs 2 .*torchrun \(world size 3\)"):
        retrain_jobs("digits", "small-cnn", recipe, 10, 2)
    with pytest.raises(ValueError, match="--jobs 4"):
        retrain_jobs("digits", "small-cnn", recipe, 1, 4)  # even with one cell


@pytest.mark.slow
def test_failed_cell_in_jobs_mode_stops_the_running_cells(tmp_path):
    """A cell that fails at once beside a long one: the long one is sent SIGTERM, writes its
    checkpoint and stops, the queued one does not run to its end, and the failure is raised
    without waiting for them (the long cell alone would train for minutes)."""
    import time

    from cldfast.data import load_dataset
    from cldfast.pipeline.retraining import retrain_cells

    bundle = load_dataset("digits")
    idx = np.arange(len(bundle.train_targets))
    long = Recipe(epochs=500, batch_size=16, lr=0.01, device="cpu")
    cells = [("long", idx, dict(arch="small-cnn", recipe=long, seed=0)),
             ("bad", idx[:50], dict(arch="no-such-model", recipe=long, seed=0)),
             ("queued", idx, dict(arch="small-cnn", recipe=long, seed=0))]
    out = tmp_path / "runs"
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="unknown architecture 'no-such-model'"):
        retrain_cells(bundle, "digits", out, cells, 2, progress=False)
    elapsed = time.perf_counter() - t0
    assert not (out / "long_metrics.json").exists()
    assert not (out / "queued_metrics.json").exists()
    assert (out / "checkpoints" / "long.pt").exists()  # stopped by SIGTERM, resumable
    assert elapsed < 90, elapsed


def test_findings_come_from_the_package_data_file():
    """The note said after a run on the embedded data is read from findings.json (shipped in
    the wheel beside the module), not written in code."""
    import json
    from importlib import resources

    from cldfast.pipeline import EMBEDDED_NOTE
    from cldfast.pipeline.findings import finding

    data = resources.files("cldfast.pipeline").joinpath("findings.json")
    assert data.is_file()
    assert json.loads(data.read_text(encoding="utf-8"))["embedded_note"] == EMBEDDED_NOTE
    assert EMBEDDED_NOTE.startswith("Note: this quick run on the embedded Fashion-MNIST")
    assert EMBEDDED_NOTE.endswith("--proxy-arch resnet18 --epochs 164")
    with pytest.raises(KeyError, match="embedded_note"):
        finding("no-such-finding")
