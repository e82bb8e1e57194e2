"""Tests of cldfast.data: IDX parsing, dataset loading, splits, index wrappers, loaders."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cldfast.data import (
    DATASETS,
    DEFAULT_FASHION_MNIST_PATH,
    IndexedDataset,
    IndexedSubset,
    dataset_fingerprint,
    load_dataset,
    make_loader,
    read_idx,
    split_train_val,
)


def write_idx(path: Path, array: np.ndarray, *, truncate: int = 0) -> Path:
    """Writes ``array`` (uint8) as an IDX file, gzipped when the name ends in .gz."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    raw = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    if truncate:
        raw = raw[:-truncate]
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(raw)
    return path


def write_fashion_mnist(folder: Path, n_train: int = 40, n_test: int = 20, gz: bool = True,
                        seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    write_idx(folder / f"train-images-idx3-ubyte{suffix}", rng.integers(0, 256, (n_train, 28, 28)))
    write_idx(folder / f"train-labels-idx1-ubyte{suffix}", np.arange(n_train) % 10)
    write_idx(folder / f"t10k-images-idx3-ubyte{suffix}", rng.integers(0, 256, (n_test, 28, 28)))
    write_idx(folder / f"t10k-labels-idx1-ubyte{suffix}", np.arange(n_test) % 10)


# --------------------------------------------------------------------------------------------
# IDX
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_read_idx_roundtrip(tmp_path, suffix):
    images = np.random.default_rng(1).integers(0, 256, (5, 4, 3)).astype(np.uint8)
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    got_images = read_idx(write_idx(tmp_path / f"img{suffix}", images))
    got_labels = read_idx(write_idx(tmp_path / f"lbl{suffix}", labels))
    assert got_images.dtype == np.uint8 and got_images.shape == (5, 4, 3)
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)
    assert got_images.flags.writeable


def test_read_idx_big_endian_int32(tmp_path):
    values = np.array([[1, -2], [70000, 3]], dtype=">i4")
    path = tmp_path / "ints"
    path.write_bytes(struct.pack(">BBBB", 0, 0, 0x0C, 2) + struct.pack(">2I", 2, 2) + values.tobytes())
    got = read_idx(path)
    assert got.dtype == np.int32 and got.dtype.isnative
    np.testing.assert_array_equal(got, values.astype(np.int32))


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_read_idx_truncated(tmp_path, suffix):
    path = write_idx(tmp_path / f"short{suffix}", np.zeros((3, 4, 4), np.uint8), truncate=5)
    with pytest.raises(ValueError, match=r"truncated: shape \(3, 4, 4\) needs 48 bytes of data, found 43") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_read_idx_trailing_bytes_and_bad_magic(tmp_path):
    path = write_idx(tmp_path / "long", np.zeros((2, 2), np.uint8))
    path.write_bytes(path.read_bytes() + b"\0\0")
    with pytest.raises(ValueError, match="trailing"):
        read_idx(path)
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x12\x34\x08\x01" + b"\0" * 8)
    with pytest.raises(ValueError, match=r"bad magic number 0x12340801") as info:
        read_idx(bad)
    assert str(bad) in str(info.value)


def test_read_idx_corrupt_gzip(tmp_path):
    path = write_idx(tmp_path / "cut.gz", np.zeros((50, 28, 28), np.uint8))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupt or truncated gzip") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_read_idx_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        read_idx(tmp_path / "nothing-here")


# --------------------------------------------------------------------------------------------
# Fashion-MNIST / digits / auto
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_from_generated_files(tmp_path, gz):
    write_fashion_mnist(tmp_path, gz=gz)
    bundle = load_dataset("Fashion_MNIST", tmp_path)
    assert bundle.name == "fashion-mnist"
    assert len(bundle.train) == len(bundle.train_eval) == 40 and len(bundle.test) == 20
    assert bundle.input_shape == (1, 28, 28) and bundle.num_classes == 10
    assert len(bundle.class_names) == 10
    assert bundle.train_targets.dtype == np.int64
    np.testing.assert_array_equal(bundle.train_targets, np.arange(40) % 10)
    x, y = bundle.train_eval[3]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and y == 3
    # Augmented items keep shape and label; the eval view is deterministic.
    xa, ya = bundle.train[3]
    assert xa.shape == x.shape and ya == y
    torch.testing.assert_close(bundle.train_eval[3][0], x)


def test_fashion_mnist_augmentation_is_flip_and_shift(tmp_path):
    write_fashion_mnist(tmp_path, n_train=10, n_test=10)
    bundle = load_dataset("fmnist", tmp_path)
    plain = bundle.train_eval[0][0]
    torch.manual_seed(0)
    seen_different = False
    for _ in range(20):
        aug = bundle.train[0][0]
        seen_different |= not torch.equal(aug, plain)
        # Every augmented image is a flipped or unflipped copy shifted by at most 2 pixels.
        ok = False
        for cand in (plain, plain.flip(-1)):
            for dy in range(-2, 3):
                for dx in range(-2, 3):
                    inner = aug[:, 2:-2, 2:-2]
                    ref = cand[:, 2 + dy:26 + dy, 2 + dx:26 + dx]
                    ok |= torch.allclose(inner, ref)
        assert ok
    assert seen_different
    no_aug = load_dataset("fmnist", tmp_path, augment=False)
    torch.testing.assert_close(no_aug.train[0][0], plain)


def test_fashion_mnist_missing_file_names_it(tmp_path):
    write_fashion_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"t10k-labels-idx1-ubyte") as info:
        load_dataset("fashion-mnist", tmp_path)
    assert str(tmp_path) in str(info.value)


def test_fashion_mnist_mismatched_labels(tmp_path):
    write_fashion_mnist(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(39, np.uint8))
    with pytest.raises(ValueError, match="expected 40 labels"):
        load_dataset("fashion-mnist", tmp_path)


def test_real_fashion_mnist():
    root = Path(DEFAULT_FASHION_MNIST_PATH)
    if not root.is_dir():
        pytest.skip(f"Fashion-MNIST not installed at {root} (apt-get install dataset-fashion-mnist)")
    bundle = load_dataset("fashion-mnist")
    assert len(bundle.train) == 60000 and len(bundle.test) == 10000
    assert bundle.num_classes == 10 and bundle.input_shape == (1, 28, 28)
    assert np.bincount(bundle.train_targets).tolist() == [6000] * 10
    assert np.bincount(bundle.test_targets).tolist() == [1000] * 10
    x, _ = bundle.train_eval[0]
    # Normalised with the dataset's own statistics: roughly zero mean over many images.
    batch = torch.stack([bundle.train_eval[i][0] for i in range(0, 60000, 600)])
    assert abs(float(batch.mean())) < 0.1 and 0.8 < float(batch.std()) < 1.2
    assert x.shape == (1, 28, 28)
    assert load_dataset("auto").name == "fashion-mnist"


def test_auto_falls_back_to_digits(tmp_path, capsys):
    bundle = load_dataset("auto", tmp_path)
    err = capsys.readouterr().err
    assert bundle.name == "digits"
    assert err.count("\n") == 1
    assert f"Fashion-MNIST not found at {tmp_path}" in err and "digits" in err
    assert len(bundle.train) + len(bundle.test) == 1797
    assert len(bundle.test) == 360 and bundle.input_shape == (1, 8, 8)
    x, y = bundle.train[0]
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32 and isinstance(y, int)
    assert y == bundle.train_targets[0]
    # Stratified: every class is in both splits, in proportion.
    counts = np.bincount(bundle.test_targets, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37


def test_auto_uses_fashion_mnist_when_present(tmp_path, capsys):
    write_fashion_mnist(tmp_path)
    assert load_dataset("auto", tmp_path).name == "fashion-mnist"
    assert capsys.readouterr().err == ""


def test_digits_is_deterministic():
    a, b = load_dataset("digits"), load_dataset("DIGITS")
    np.testing.assert_array_equal(a.train_targets, b.train_targets)
    assert a.fingerprint == b.fingerprint
    torch.testing.assert_close(a.train[5][0], b.train[5][0])


def test_unknown_name_lists_choices():
    with pytest.raises(ValueError) as info:
        load_dataset("mnist-ish")
    for name in DATASETS:
        assert name in str(info.value)
    assert "mnist-ish" in str(info.value)


def test_image_size_rejected_for_fixed_size_datasets():
    with pytest.raises(ValueError, match="image_size=64"):
        load_dataset("digits", image_size=64)


# --------------------------------------------------------------------------------------------
# split_train_val
# --------------------------------------------------------------------------------------------

def expected_val_count(n_c: int, f: float) -> int:
    k = int(np.floor(f * n_c + 0.5))
    if f > 0 and n_c >= 2:
        k = max(k, 1)
    return min(k, n_c - 1)


@settings(max_examples=60, deadline=None)
@given(
    targets=st.lists(st.integers(0, 6), min_size=0, max_size=200),
    fraction=st.sampled_from([0.0, 0.01, 0.1, 0.25, 0.5, 0.75, 0.99]),
    seed=st.integers(0, 2**31),
)
def test_split_train_val_invariants(targets, fraction, seed):
    targets = np.asarray(targets, dtype=np.int64)
    train, val = split_train_val(targets, fraction, seed)
    assert train.dtype == np.int64 and val.dtype == np.int64
    assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)
    assert np.intersect1d(train, val).size == 0
    np.testing.assert_array_equal(np.union1d(train, val), np.arange(targets.shape[0]))
    for c in np.unique(targets):
        n_c = int((targets == c).sum())
        assert int((targets[val] == c).sum()) == expected_val_count(n_c, fraction)
        assert int((targets[train] == c).sum()) >= 1
    again = split_train_val(targets, fraction, seed)
    np.testing.assert_array_equal(again[0], train)
    np.testing.assert_array_equal(again[1], val)


def test_split_train_val_rounding_and_seeds():
    targets = np.repeat(np.arange(4), [25, 10, 2, 1])
    train, val = split_train_val(targets, 0.1, seed=0)
    # 2.5 rounds up to 3; 1.0 -> 1; 0.2 -> 0 but min 1 for a 2-sample class; 1 sample -> none.
    assert np.bincount(targets[val], minlength=4).tolist() == [3, 1, 1, 0]
    big = np.arange(1000) % 10
    a = split_train_val(big, 0.1, seed=0)[1]
    b = split_train_val(big, 0.1, seed=1)[1]
    assert not np.array_equal(a, b)
    assert split_train_val(big, 0.0)[1].size == 0


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5, float("nan")])
def test_split_train_val_bad_fraction(bad):
    with pytest.raises(ValueError, match=r"val_fraction must be in \[0, 1\); got " + str(bad)):
        split_train_val(np.arange(10) % 2, bad)


def test_split_train_val_bad_targets():
    with pytest.raises(ValueError, match="1-D"):
        split_train_val(np.zeros((2, 2), np.int64))
    with pytest.raises(TypeError, match="integer"):
        split_train_val(np.array([0.5, 1.5]))


# --------------------------------------------------------------------------------------------
# CIFAR (generated files in torchvision's pickle format)
# --------------------------------------------------------------------------------------------

def write_cifar10(root: Path, per_batch: int = 6, n_test: int = 8) -> Path:
    """Writes a tiny CIFAR-10 tree as torchvision reads it.

    The real batches are Python 2 pickles whose str keys come back as str under
    ``encoding="latin1"``; a Python 3 pickle needs str keys to look the same (bytes keys such
    as b"data" would stay bytes and torchvision's ``entry["data"]`` would miss them).
    """
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def dump(name: str, n: int, offset: int) -> None:
        entry = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 "labels": [(offset + i) % 10 for i in range(n)]}
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f)

    for b in range(1, 6):
        dump(f"data_batch_{b}", per_batch, (b - 1) * per_batch)
    dump("test_batch", n_test, 0)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f)
    return folder


@pytest.fixture
def no_cifar_md5(monkeypatch):
    # torchvision's CIFAR reader checks every file's md5 against the published archive (in
    # _check_integrity and _load_meta, through cifar.check_integrity), which generated files
    # can never match; the reading itself is what these tests exercise.
    import torchvision.datasets.cifar as cifar

    monkeypatch.setattr(cifar, "check_integrity", lambda *args, **kwargs: True)


def test_cifar10_generated(tmp_path, no_cifar_md5):
    write_cifar10(tmp_path)
    bundle = load_dataset("CIFAR10", tmp_path)
    assert bundle.name == "cifar10" and bundle.num_classes == 10
    assert len(bundle.train) == 30 and len(bundle.test) == 8
    assert bundle.input_shape == (3, 32, 32)
    np.testing.assert_array_equal(bundle.train_targets, np.arange(30) % 10)
    assert bundle.class_names == [f"class{i}" for i in range(10)]
    x, y = bundle.train[7]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y == 7
    xe, ye = bundle.train_eval[7]
    assert ye == 7
    # Shared data, different transform: the eval view is deterministic.
    torch.testing.assert_close(bundle.train_eval[7][0], xe)
    assert bundle.train.data is bundle.train_eval.data
    assert len(bundle.fingerprint) == 16


def test_cifar_checksum_failure_is_explained(tmp_path):
    folder = write_cifar10(tmp_path)  # real md5 check left on: generated files fail it
    with pytest.raises(ValueError, match="checksum") as info:
        load_dataset("cifar10", tmp_path)
    assert str(folder) in str(info.value) and "--download" in str(info.value)


def test_cifar_missing_folder_message(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_dataset("cifar100", tmp_path / "nowhere")
    msg = str(info.value)
    assert str(tmp_path / "nowhere" / "cifar-100-python") in msg
    assert "--download" in msg


# --------------------------------------------------------------------------------------------
# ImageFolder
# --------------------------------------------------------------------------------------------

def write_image_tree(root: Path, classes=("cat", "dog", "owl"), per_class=(4, 2),
                     val_classes=None) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n, names in (("train", per_class[0], classes), ("val", per_class[1], val_classes or classes)):
        for c in names:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / c / f"img{i}.png")


def test_image_folder_generated(tmp_path):
    write_image_tree(tmp_path)
    bundle = load_dataset("imagefolder", tmp_path, image_size=32)
    assert bundle.name == "imagefolder" and bundle.num_classes == 3
    assert bundle.class_names == ["cat", "dog", "owl"]
    assert bundle.input_shape == (3, 32, 32)
    assert len(bundle.train) == 12 and len(bundle.test) == 6
    np.testing.assert_array_equal(bundle.train_targets, np.repeat(np.arange(3), 4))
    np.testing.assert_array_equal(bundle.test_targets, np.repeat(np.arange(3), 2))
    for ds in (bundle.train, bundle.train_eval, bundle.test):
        x, y = ds[5]
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert bundle.train[5][1] == 1
    # Fingerprint is built from relative paths, so moving the tree keeps it.
    moved = tmp_path / "moved"
    moved.mkdir()
    for split in ("train", "val"):
        (tmp_path / split).rename(moved / split)
    assert load_dataset("imagefolder", moved, image_size=32).fingerprint == bundle.fingerprint


def test_image_folder_missing_val(tmp_path):
    write_image_tree(tmp_path)
    import shutil

    shutil.rmtree(tmp_path / "val")
    with pytest.raises(FileNotFoundError, match="val") as info:
        load_dataset("imagefolder", tmp_path)
    assert str(tmp_path / "val") in str(info.value)


def test_image_folder_class_mismatch(tmp_path):
    write_image_tree(tmp_path, val_classes=("cat", "dog", "emu"))
    with pytest.raises(ValueError, match=r"only in train: \['owl'\].*only in val: \['emu'\]"):
        load_dataset("imagefolder", tmp_path, image_size=32)


def test_image_folder_needs_path():
    with pytest.raises(ValueError, match="data_path is required"):
        load_dataset("imagefolder")


# --------------------------------------------------------------------------------------------
# Fingerprints
# --------------------------------------------------------------------------------------------

def test_fingerprint_stable_and_sensitive(tmp_path):
    write_fashion_mnist(tmp_path / "a")
    write_fashion_mnist(tmp_path / "b")
    fa = load_dataset("fashion-mnist", tmp_path / "a").fingerprint
    assert fa == load_dataset("fashion-mnist", tmp_path / "a", augment=False).fingerprint
    assert fa == load_dataset("fashion-mnist", tmp_path / "b").fingerprint
    assert len(fa) == 16 and int(fa, 16) >= 0

    labels = np.arange(40) % 10
    labels[17] = 3
    write_idx(tmp_path / "b" / "train-labels-idx1-ubyte.gz", labels)
    assert load_dataset("fashion-mnist", tmp_path / "b").fingerprint != fa
    write_fashion_mnist(tmp_path / "c", seed=1)  # same labels, different pixels
    assert load_dataset("fashion-mnist", tmp_path / "c").fingerprint != fa


def test_dataset_fingerprint_helper():
    t = np.arange(10) % 3
    base = dataset_fingerprint("x", t, 5, [b"abc"])
    assert base == dataset_fingerprint("x", t.astype(np.int32), 5, [np.frombuffer(b"abc", np.uint8)])
    assert base != dataset_fingerprint("y", t, 5, [b"abc"])
    assert base != dataset_fingerprint("x", t, 6, [b"abc"])
    assert base != dataset_fingerprint("x", t, 5, [b"abd"])


# --------------------------------------------------------------------------------------------
# Index wrappers and loaders
# --------------------------------------------------------------------------------------------

class _Numbered(torch.utils.data.Dataset):
    def __len__(self):
        return 10

    def __getitem__(self, i):
        return torch.tensor([float(i)]), i % 3


def test_indexed_subset_positions_and_indices():
    original = np.array([7, 2, 9, 4])
    sub = IndexedSubset(_Numbered(), original)
    assert len(sub) == 4
    np.testing.assert_array_equal(sub.indices, original)
    assert sub.indices.dtype == np.int64 and not sub.indices.flags.writeable
    for k, i in enumerate(original):
        x, y, pos = sub[k]
        assert pos == k and float(x) == i and y == i % 3
    assert sub[-1][2] == 3
    batch = next(iter(make_loader(sub, 4, shuffle=False)))
    assert batch[2].tolist() == [0, 1, 2, 3]
    assert sub.indices[batch[2].numpy()].tolist() == [7, 2, 9, 4]


def test_indexed_subset_bad_indices():
    with pytest.raises(IndexError, match="index 10"):
        IndexedSubset(_Numbered(), [1, 10])
    with pytest.raises(TypeError, match="integer"):
        IndexedSubset(_Numbered(), [0.5])
    assert len(IndexedSubset(_Numbered(), [])) == 0


def test_indexed_dataset():
    ds = IndexedDataset(_Numbered())
    assert len(ds) == 10
    x, y, i = ds[6]
    assert float(x) == 6 and y == 0 and i == 6


def test_make_loader_reproducible():
    ds = IndexedDataset(_Numbered())

    def order(seed: int) -> list[int]:
        return [int(i) for _, _, batch in make_loader(ds, 3, shuffle=True, seed=seed) for i in batch]

    assert order(0) == order(0)
    assert sorted(order(0)) == list(range(10))
    assert order(0) != order(1)
    loader = make_loader(ds, 3, shuffle=False, drop_last=True, pin_memory=False)
    assert [len(b[2]) for b in loader] == [3, 3, 3]
    with pytest.raises(ValueError, match="batch_size"):
        make_loader(ds, 0, shuffle=False)


def test_make_loader_with_workers_matches_order():
    ds = IndexedDataset(_Numbered())
    with_workers = make_loader(ds, 4, shuffle=True, seed=3, num_workers=1, pin_memory=False)
    assert with_workers.persistent_workers
    in_process = make_loader(ds, 4, shuffle=True, seed=3, pin_memory=False)
    assert [b[2].tolist() for b in with_workers] == [b[2].tolist() for b in in_process]
