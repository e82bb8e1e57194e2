"""Offline replay of stored trajectories and the authors' pickle reader."""

import pickle

import numpy as np
import pytest
import torch

import cldfast

from numpy_reference import cld_reference_dense


def make_authors_pickle(path, train, val, labels, val_labels, per_epoch_labels=True):
    # The authors extend per-epoch Python lists with numpy arrays, then pickle a dict.
    data = {"tr_loss": [], "val_loss": [], "tr_lbl": [], "val_lbl": []}
    for t in range(train.shape[0]):
        tr, vl = [], []
        tr.extend(train[t])
        vl.extend(val[t])
        data["tr_loss"].append(tr)
        data["val_loss"].append(vl)
        if per_epoch_labels:
            data["tr_lbl"].append(list(labels))
            data["val_lbl"].append(list(val_labels))
    if not per_epoch_labels:
        data["tr_lbl"], data["val_lbl"] = list(labels), np.asarray(val_labels)
    with open(path, "wb") as fh:
        pickle.dump(data, fh)


def problem(seed=0, t=9, n=50, q=12, classes=4):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    val_labels = np.arange(q) % classes
    train = rng.random((t, n)).astype(np.float32)
    val = rng.random((t, q)).astype(np.float32)
    return train, val, labels, val_labels


@pytest.mark.parametrize("per_class", [True, False])
def test_cld_from_trajectories_matches_reference(per_class):
    train, val, labels, val_labels = problem()
    train[3, :10] = np.nan  # not observed at checkpoint 3: differences span over it
    got = cldfast.cld_from_trajectories(train, val, labels, val_labels, per_class=per_class)
    want = cld_reference_dense(train, val, labels, val_labels, per_class)
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_cld_from_trajectories_shape_errors():
    train, val, labels, val_labels = problem()
    with pytest.raises(ValueError, match="train_losses has 9 checkpoints but val_losses has 8"):
        cldfast.cld_from_trajectories(train, val[:8], labels, val_labels)
    with pytest.raises(ValueError, match="train_losses must be 2-D"):
        cldfast.cld_from_trajectories(train[0], val, labels, val_labels)
    with pytest.raises(ValueError, match="49 samples per checkpoint but train_labels has 50"):
        cldfast.cld_from_trajectories(train[:, :49], val, labels, val_labels)


@pytest.mark.parametrize("per_epoch_labels", [True, False])
def test_read_authors_pickle(tmp_path, per_epoch_labels):
    train, val, labels, val_labels = problem(1)
    path = tmp_path / "losses.pickle"
    make_authors_pickle(path, train, val, labels, val_labels, per_epoch_labels)
    got = cldfast.read_authors_pickle(path)
    np.testing.assert_array_equal(got.train_losses, train)
    np.testing.assert_array_equal(got.val_labels, val_labels)
    np.testing.assert_allclose(got.scores(), cld_reference_dense(train, val, labels, val_labels),
                               atol=1e-6)


class Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_read_authors_pickle_refuses_code(tmp_path, capsys):
    path = tmp_path / "evil.pickle"
    with open(path, "wb") as fh:
        pickle.dump({"tr_loss": Payload()}, fh)
    with pytest.raises(ValueError, match="refusing to load builtins.print"):
        cldfast.read_authors_pickle(path)
    assert "must never run" not in capsys.readouterr().out


def test_read_authors_pickle_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="loss pickle not found"):
        cldfast.read_authors_pickle(tmp_path / "nope.pickle")
    trunc = tmp_path / "trunc.pickle"
    train, val, labels, val_labels = problem(2)
    make_authors_pickle(trunc, train, val, labels, val_labels)
    trunc.write_bytes(trunc.read_bytes()[:100])
    with pytest.raises(ValueError, match="not a readable loss pickle"):
        cldfast.read_authors_pickle(trunc)
    wrong = tmp_path / "wrong.pickle"
    wrong.write_bytes(pickle.dumps({"tr_loss": [[1.0]]}))
    with pytest.raises(ValueError, match="missing keys"):
        cldfast.read_authors_pickle(wrong)
