"""The benchmark scripts run end to end at smoke sizes and write their tables.

`benchmarks/run_all.py --smoke` runs every benchmark script (each in its own process) into a
temporary results file; benchmarks/RESULTS.md must be left alone. Speed is never asserted:
the figures themselves come from the full run (`python benchmarks/run_all.py`).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
SECTIONS = ("overhead", "selection", "fidelity", "prune", "scale", "rehearsal")


# Every benchmark script end to end at smoke sizes: slow.
pytestmark = pytest.mark.slow


def test_run_all_smoke_writes_every_section_elsewhere(tmp_path):
    results = tmp_path / "RESULTS.md"
    real = BENCH / "RESULTS.md"
    before = real.read_bytes() if real.exists() else None
    proc = subprocess.run([sys.executable, str(BENCH / "run_all.py"), "--smoke", "--results", str(results)],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = results.read_text()
    for name in SECTIONS:
        assert f"<!-- section:{name} -->" in text and f"<!-- /section:{name} -->" in text, name
    assert "Machine:" in text
    # Each section holds its tables.
    assert "| model | device | batch |" in text and "isolated overhead" in text
    assert "(a) authors' pipeline" in text and "(c) cldfast, loss_source=train" in text
    assert "(b) cldfast eval mode, (a)'s training layout" in text and "--track-every 2" in text
    assert "ImageNet-1k" in text and "CLDTracker state" in text
    assert "Label noise: 20 % symmetric flips" in text and "| fraction | coreset |" in text
    assert "Checkpoint subsampling" in text and "Spearman seed 0 vs 1" in text
    assert "| device | N | record pass s |" in text
    # bench_update.py and bench_distributed.py only print here (they write nowhere but
    # RESULTS.md): their tables are in stdout.
    assert "| device | N | implementation |" in proc.stdout
    assert "| run | seeds | target saving |" in text and "cld@0.3" in text
    assert "| stage | wall s | peak RSS MiB |" in text and "export --format authors" in text
    for name in ("overhead", "selection", "fidelity", "prune", "scale", "rehearsal", "update",
                 "distributed"):
        assert f"bench_{name}.py ok" in proc.stdout
    assert (real.read_bytes() if real.exists() else None) == before, "RESULTS.md was modified"


def test_authors_baseline_scores_match_cldfast_eval_mode(tmp_path):
    """The faithful re-implementation trains the same model as cldfast's eval mode, so its
    offline numpy CLD equals the streaming scores (the sanity check of bench_selection)."""
    sys.path.insert(0, str(BENCH))
    try:
        from authors_baseline import collect_losses, compute_cld_scores
    finally:
        sys.path.remove(str(BENCH))
    import numpy as np
    import torch

    from cldfast import read_authors_pickle
    from cldfast.data import load_dataset, split_train_val
    from cldfast.pipeline import track
    from cldfast.training import Recipe

    bundle = load_dataset("digits")
    # Training in the baseline's memory layout (cldfast trains in channels_last on the CPU by
    # default, whose float rounding differs), so that both runs train bit for bit alike.
    recipe = Recipe(epochs=4, batch_size=64, lr=0.05, device="cpu", seed=1, train_channels_last=False)
    train_idx, val_idx = split_train_val(bundle.train_targets, 0.1, recipe.seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small convolutions: one thread is much faster on a small CPU
    try:
        res = collect_losses(bundle, train_idx, val_idx, "small-cnn", recipe, tmp_path / "a")
        sf, metrics = track(bundle, tmp_path / "b", recipe=recipe, loss_source="eval", progress=False)
    finally:
        torch.set_num_threads(threads)
    scores, ranking = compute_cld_scores(res.loss_path, bundle.num_classes, tmp_path / "a" / "cld.pkl",
                                         train_idx)
    assert res.extra_forward_passes == 4 and np.isfinite(scores).all()
    stored = read_authors_pickle(res.loss_path)
    assert stored.train_losses.shape == (4, train_idx.size)
    assert np.array_equal(sf.train_indices, train_idx)
    # cldfast's eval pass runs the model in channels_last (another float rounding of the same
    # losses, ~1e-7 relative), so the scores agree to float tolerance, not to the last bit.
    np.testing.assert_allclose(scores, sf.scores, rtol=0, atol=1e-5)
    assert metrics["extra_forward_passes_over_train"] == 4
    # The authors' per-class rankings are original indices sorted by descending CLD.
    c0 = ranking["0"]
    pos = np.searchsorted(train_idx, c0)
    assert np.all(np.diff(scores[pos]) <= 0)


@pytest.mark.parametrize("script", ["authors_baseline.py", "run_all.py"])  # the others run above
def test_scripts_have_help(script):
    proc = subprocess.run([sys.executable, str(BENCH / script), "--help"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and "usage:" in proc.stdout
