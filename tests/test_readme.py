"""The README's training-loop example runs as written, and its commands are the ones CI uses."""

import re
from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parent.parent / "README.md"


def block_after(marker: str) -> str:
    text = README.read_text()
    m = re.search(re.escape(marker) + r"\s*```(?:python|bash)\n(.*?)```", text, re.S)
    assert m, f"no code block after {marker} in README.md"
    return m.group(1)


def test_readme_example_runs(capsys):
    namespace: dict = {}
    exec(compile(block_after("<!-- readme-example -->"), "README.md", "exec"), namespace)
    scores, coreset = namespace["scores"], namespace["coreset"]
    assert scores.shape == (512,) and np.isfinite(scores.numpy()).all()
    assert coreset.size == sum(round(0.2 * n + 1e-9) for n in np.bincount(namespace["y_tr"].numpy()))
    assert "CLDTracker(num_samples=512" in capsys.readouterr().out


def test_readme_lightning_example_runs(tmp_path, monkeypatch):
    import pytest

    pytest.importorskip("lightning.pytorch")
    from cldfast.io import load_scores

    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(block_after("<!-- readme-lightning -->"), "README.md", "exec"), namespace)
    scores = namespace["scores"]
    assert scores.shape == (500,) and np.isfinite(scores.numpy()).all()
    np.testing.assert_array_equal(load_scores(tmp_path / "lightning_scores.npz").scores, scores.numpy())


def test_readme_huggingface_example_runs(tmp_path, monkeypatch):
    import pytest

    pytest.importorskip("transformers")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(block_after("<!-- readme-hf -->"), "README.md", "exec"), namespace)
    scores = namespace["scores"]
    assert scores.shape == (250,) and np.isfinite(scores.numpy()).all()


def test_ci_runs_the_readme_test_command():
    ci = (README.parent / ".ci" / "run").read_text()
    assert "<!-- ci:test-command -->" in ci
    assert "pytest" in block_after("<!-- ci:test-command -->")


def test_readme_pipeline_example_runs(tmp_path, monkeypatch, capsys):
    """A user-defined model on user data through cldfast.pipeline.track, then train."""
    from cldfast.io import load_scores

    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(block_after("<!-- readme-pipeline -->"), "README.md", "exec"), namespace)
    scores, coreset, m = namespace["scores"], namespace["coreset"], namespace["m"]
    # the user's V (120 samples) is CLD's validation split; the 600 training samples are scored
    assert scores.scores.shape == (600,) and np.isfinite(scores.scores).all()
    np.testing.assert_array_equal(scores.val_indices, np.arange(600, 720))
    assert scores.metadata["arch"] == "MLP" and scores.metadata["loss_source"] == "eval"
    assert load_scores(tmp_path / "points-out" / "scores.npz").scores.shape == (600,)
    assert coreset.max() < 600 and m["train_samples"] == coreset.size == 180
    assert m["recipe"]["optimizer"] == "adamw" and m["recipe"]["label_smoothing"] == 0.1
    assert 0.5 < m["test_accuracy"] <= 1.0  # the model learned the user's task
    assert "samples scored" in capsys.readouterr().out
