"""cldfast.export: the CSV reads back (with the csv module) to the same values, and the
authors' per-class ranking selects the same samples as cldfast's class-balanced selection."""

from __future__ import annotations

import csv
import pickle

import numpy as np
import pytest

from cldfast import select
from cldfast.pipeline.export import export_authors, export_csv
from cldfast.io import ScoresFile


def scores_file(seed=0, n=90, classes=3):
    rng = np.random.default_rng(seed)
    scores = rng.uniform(-1, 1, n)
    scores[[4, 17]] = np.nan
    labels = rng.integers(0, classes, n)
    train_indices = rng.permutation(n * 3)[:n]  # original indices, not positions
    extra = {"num_differences": rng.integers(0, 9, n), "forgetting": rng.integers(0, 5, n).astype(float),
             "el2n": rng.random(n)}
    return ScoresFile(scores, labels, train_indices, np.arange(10), {"dataset": "x"}, extra)


def test_csv_round_trip(tmp_path):
    sf = scores_file()
    paths = [f"train/{i}.png" for i in range(len(sf.scores))]
    out = export_csv(sf, tmp_path / "s.csv", file_paths=paths, class_names=["a", "b", "c"])
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["dataset_index", "file_path", "label", "class_name", "cld",
                             "num_differences", "el2n", "forgetting"]
    got = np.array([float(r["cld"]) if r["cld"] else np.nan for r in rows])
    np.testing.assert_array_equal(np.isnan(got), np.isnan(sf.scores))
    np.testing.assert_array_equal(got[~np.isnan(got)], sf.scores[~np.isnan(sf.scores)])
    np.testing.assert_array_equal([int(r["dataset_index"]) for r in rows], sf.train_indices)
    np.testing.assert_array_equal([float(r["el2n"]) for r in rows], sf.extra["el2n"])
    assert [r["class_name"] for r in rows[:3]] == [["a", "b", "c"][c] for c in sf.labels[:3]]
    assert rows[5]["file_path"] == "train/5.png"
    with pytest.raises(ValueError, match="file_paths has 3 entries"):
        export_csv(sf, tmp_path / "bad.csv", file_paths=["x"] * 3)


@pytest.mark.parametrize("k", [1, 7, 30])
def test_authors_pickle_selects_what_cldfast_selects(tmp_path, k):
    sf = scores_file(seed=1)
    out = export_authors(sf, tmp_path / "CLD_indices_sorted_x_y.pkl")
    with open(out, "rb") as fh:
        ranking = pickle.load(fh)
    assert sorted(ranking) == ["0", "1", "2"]
    # The authors' train_on_coresets.py keeps the first k indices of every class.
    theirs = np.sort(np.concatenate([v[:k] for v in ranking.values()]))
    # A k above some class's scored count: cldfast refuses it, the authors' v[:k] takes fewer,
    # as select(allow_short=True) does.
    short = any(((sf.labels == c) & ~np.isnan(sf.scores)).sum() < k for c in range(3))
    if short:
        with pytest.raises(ValueError, match="have a score"):
            select(sf.scores, sf.labels, per_class=k, dataset_indices=sf.train_indices)
    ours = np.sort(select(sf.scores, sf.labels, per_class=k, dataset_indices=sf.train_indices,
                          allow_short=short))
    np.testing.assert_array_equal(theirs, ours)
    s = dict(zip(sf.train_indices, sf.scores))
    for c, v in ranking.items():  # every scored sample of the class, best first
        assert len(v) == ((sf.labels == int(c)) & ~np.isnan(sf.scores)).sum()
        assert (np.diff([s[i] for i in v]) <= 0).all()
