"""The command line's scores utilities: export (CSV, the authors' pickle), select --method,
and --threads."""

from __future__ import annotations

import csv
import json
import pickle

import numpy as np
import pytest

from cldfast.cli import main
from cldfast.io import ScoresFile, load_scores, save_scores


@pytest.fixture
def scores_path(tmp_path):
    rng = np.random.default_rng(0)
    n = 120
    labels = rng.integers(0, 4, n)
    scores = rng.uniform(-1, 1, n)
    scores[3] = np.nan
    extra = {"forgetting": rng.integers(0, 6, n).astype(float), "aum": rng.normal(size=n),
             "num_differences": rng.integers(1, 9, n)}
    meta = {"dataset": "toy", "arch": "net", "class_names": ["a", "b", "c", "d"]}
    return save_scores(tmp_path / "scores.npz",
                       ScoresFile(scores, labels, np.arange(n) * 3 + 1, np.arange(5), meta, extra))


def test_export_csv_round_trips(scores_path, tmp_path, capsys):
    assert main(["export", str(scores_path), "--output", str(tmp_path / "s.csv")]) == 0
    sf = load_scores(scores_path)
    with open(tmp_path / "s.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 120 and rows[0]["class_name"] == ["a", "b", "c", "d"][sf.labels[0]]
    got = np.array([float(r["cld"]) if r["cld"] else np.nan for r in rows])
    np.testing.assert_array_equal(np.nan_to_num(got, nan=9), np.nan_to_num(sf.scores, nan=9))
    np.testing.assert_array_equal([float(r["aum"]) for r in rows], sf.extra["aum"])
    np.testing.assert_array_equal([int(r["dataset_index"]) for r in rows], sf.train_indices)


def test_export_authors_selects_what_select_selects(scores_path, tmp_path):
    assert main(["export", str(scores_path), "--format", "authors"]) == 0
    pkl = scores_path.with_name("CLD_indices_sorted_toy_net.pkl")
    with open(pkl, "rb") as fh:
        ranking = pickle.load(fh)
    for k in (3, 10):
        out = tmp_path / f"k{k}.npy"
        assert main(["select", str(scores_path), "--per-class", str(k), "-o", str(out)]) == 0
        theirs = np.sort(np.concatenate([v[:k] for v in ranking.values()]))
        np.testing.assert_array_equal(theirs, np.sort(np.load(out)))


def test_select_by_another_stored_score(scores_path, tmp_path, capsys):
    sf = load_scores(scores_path)
    out = tmp_path / "f.npy"
    assert main(["select", str(scores_path), "--method", "forgetting", "--per-class", "5",
                 "-o", str(out)]) == 0
    picked = np.load(out)
    pos = (picked - 1) // 3  # dataset index -> position
    # forgetting keeps its top end: within each class, nothing left out scores higher.
    for c in range(4):
        members = np.flatnonzero(sf.labels == c)
        chosen = np.intersect1d(members, pos)
        rest = np.setdiff1d(members, pos)
        assert chosen.size == 5
        assert sf.extra["forgetting"][chosen].min() >= sf.extra["forgetting"][rest].max()
    # aum keeps its bottom end by default.
    assert main(["select", str(scores_path), "--method", "aum", "--per-class", "2", "-o",
                 str(tmp_path / "a.npy")]) == 0
    pos = (np.load(tmp_path / "a.npy") - 1) // 3
    for c in range(4):
        members = np.flatnonzero(sf.labels == c)
        assert set(pos[sf.labels[pos] == c]) == set(members[np.argsort(sf.extra["aum"][members])[:2]])
    assert main(["select", str(scores_path), "--method", "el2n", "--per-class", "2"]) == 2
    assert "no 'el2n' scores" in capsys.readouterr().err


def test_threads_option(capsys):
    import torch

    before = torch.get_num_threads()
    try:
        assert main(["--threads", "1", "info"]) == 0
        assert json.loads(capsys.readouterr().out)["cpu_threads"] == 1
        assert torch.get_num_threads() == 1
    finally:
        __import__("cldfast").set_threads(before)
    with pytest.raises(SystemExit):
        main(["--threads", "0", "info"])
