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


@pytest.mark.parametrize("source, said", [
    ("eval", "eval-mode losses of every training sample"),
    ("train", "train-mode losses of the samples it kept")])
def test_train_prune_says_which_losses_fed_the_scores(tmp_path, capsys, source, said):
    out = tmp_path / source
    assert main(["train", "--dataset", "digits", "--epochs", "3", "--batch-size", "128",
                 "--device", "cpu", "--quiet", "--prune", "cld", "--prune-saving", "0.2",
                 "--prune-loss-source", source, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"CLD scores of the pruned run ({said}" in printed
    assert load_scores(out / "train_scores.npz").metadata["loss_source"] == source


def test_select_random_names_what_it_did_not_an_order(scores_path, capsys):
    assert main(["select", str(scores_path), "--method", "random", "--order", "top",
                 "--fraction", "0.2", "--seed", "1"]) == 0
    captured = capsys.readouterr()
    written = scores_path.with_name("indices_random_f0.2.npy")
    assert written.exists() and not list(scores_path.parent.glob("*top*"))
    assert "(random, uniform draw, class-balanced)" in captured.out and "_top_" not in captured.out
    assert "--order top does not apply to --method random" in captured.err
    # the same draw as CLD's --order random, under the same name
    drawn = np.load(written)
    written.unlink()
    assert main(["select", str(scores_path), "--order", "random", "--fraction", "0.2",
                 "--seed", "1"]) == 0
    np.testing.assert_array_equal(np.load(written), drawn)


@pytest.mark.parametrize("command", ["run", "track", "train", "bench", "info"])
def test_threads_before_or_after_the_subcommand(command):
    from cldfast.cli import build_parser

    parser = build_parser()
    assert parser.parse_args([command, "--threads", "3"]).threads == 3
    assert parser.parse_args(["--threads", "3", command]).threads == 3
    assert parser.parse_args(["--threads", "5", command, "--threads", "3"]).threads == 3
    assert parser.parse_args([command]).threads is None
    with pytest.raises(SystemExit):
        parser.parse_args([command, "--threads", "0"])


def test_threads_after_the_subcommand_sets_the_threads(capsys):
    import torch

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert main(["info", "--threads", "1"]) == 0
        assert json.loads(capsys.readouterr().out)["cpu_threads"] == 1
        assert torch.get_num_threads() == 1
    finally:
        __import__("cldfast").set_threads(before)


def _unscored(tmp_path, meta, n=40):
    labels = np.arange(n) % 4
    return save_scores(tmp_path / "scores.npz",
                       ScoresFile(np.full(n, np.nan), labels, np.arange(n) + 100, np.arange(5), meta))


@pytest.mark.parametrize("meta, why", [
    ({"checkpoints": 2}, "the proxy tracked 2 epoch(s), 3 are needed"),
    ({"tracked_epochs": [1, 2]}, "the proxy tracked 2 epoch(s), 3 are needed"),
    ({"checkpoints": 5, "nonfinite_train_losses": 999},
     "the proxy tracked 5 epochs, but no sample has finite losses at the end of 3 of them"),
    ({}, "does not record how many epochs were tracked"),
])
@pytest.mark.parametrize("method", ["cld", "random"])
def test_select_from_a_file_without_scores_is_an_error_and_writes_nothing(tmp_path, capsys, meta,
                                                                          why, method):
    from cldfast.pipeline import write_coreset

    path = _unscored(tmp_path, meta)
    with pytest.raises(ValueError, match="no sample has a CLD score") as info:
        write_coreset(path, method=method, fraction=0.5)
    assert why in str(info.value)
    out = tmp_path / "picked.npy"
    assert main(["select", str(path), "--method", method, "--per-class", "2", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "cldfast select: error: no sample has a CLD score" in err and why in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.npz"]  # nothing written
    assert main(["select", str(path), "--fraction", "0.5"]) == 2  # default name: not written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.npz"]


def test_select_more_than_a_class_has_scored_is_an_error_and_writes_nothing(tmp_path, capsys):
    from cldfast.pipeline import cld_coreset, write_coreset

    labels = np.arange(40) % 4
    scores = np.linspace(-1, 1, 40)
    scores[np.flatnonzero(labels == 2)[:7]] = np.nan  # class 2: 3 of 10 scored
    path = save_scores(tmp_path / "scores.npz",
                       ScoresFile(scores, labels, np.arange(40), np.arange(40, 44), {"checkpoints": 8}))
    sf = load_scores(path)
    assert cld_coreset(sf, per_class=3).size == 12
    with pytest.raises(ValueError, match=r"class 2: .*asks for 4 samples \(per_class=4\) but only 3"):
        cld_coreset(sf, per_class=4)
    with pytest.raises(ValueError, match=r"class 2: .*asks for 5 samples \(fraction 0.5"):
        write_coreset(path, fraction=0.5)
    for args, quota in ((["--per-class", "4"], "asks for 4 samples (per_class=4)"),
                        (["--fraction", "0.5"], "asks for 5 samples (fraction 0.5 of its 10"),
                        (["--fraction", "0.5", "-o", str(tmp_path / "x.txt")], "asks for 5")):
        assert main(["select", str(path), *args]) == 2
        err = capsys.readouterr().err
        assert "class 2:" in err and quota in err and "only 3 of its 10 samples have a score" in err
        assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.npz"]
    assert main(["select", str(path), "--per-class", "3"]) == 0  # enough scored: written
    assert (tmp_path / "indices_top_k3.npy").exists()


def _help_texts(parser) -> list[tuple[str, str]]:
    import argparse

    out = [("cldfast", parser.description or "")]
    for action in parser._actions:  # argparse has no public walk over its options
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out += [(f"{name} {t[0]}", t[1]) for t in _help_texts(sub)]
        elif action.help:
            out.append(("/".join(action.option_strings) or action.dest, action.help))
    return out


def test_help_texts_quote_no_measured_figures():
    """Help says what an option does and where the measurements are; figures quoted in help
    go stale (the --loss-source help quoted other numbers than benchmarks/RESULTS.md)."""
    import re

    from cldfast.cli import build_parser

    texts = _help_texts(build_parser())
    measured = re.compile(r"\d+(?:\.\d+)?x (?:faster|slower)|~\d+(?:\.\d+)?x\b|AUROC|Spearman|"
                          r"\d+\.\d+ vs \d|\d+(?:\.\d+)? ?% test accuracy")
    assert [(where, text) for where, text in texts if measured.search(text)] == []
    loss_source = dict(texts)["track --loss-source"]
    assert "docs/method.md" in loss_source and "APPROXIMATION" in loss_source
