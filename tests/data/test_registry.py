"""The dataset registry (one DatasetEntry per named dataset), the bundle's own split and
registry name, and the batch-serving protocol the eval loop's fast path keys on."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from cldfast.data import (DATASETS, DEFAULT_EPOCHS, EMBEDDED, REGISTRY, BatchServing,
                          DatasetBundle, DatasetEntry, InMemoryImageDataset, bundle_from_datasets,
                          canonical_name, default_epochs, is_embedded, load_dataset,
                          serves_batches, split_train_val)


def test_public_tables_follow_the_registry():
    # The values the package documents (README, docs/method.md), written out here.
    assert DATASETS == ("auto", "fashion-mnist", "digits", "cifar10", "cifar100", "imagefolder",
                        "webdataset")
    assert DEFAULT_EPOCHS == {"fashion-mnist": (8, 10), "digits": (8, 10), "cifar10": (164, 164),
                              "cifar100": (164, 164), "imagefolder": (90, 90),
                              "webdataset": (90, 90), "custom": (164, 164)}
    assert EMBEDDED == ("fashion-mnist", "digits")
    assert [REGISTRY[n].native_size for n in ("fashion-mnist", "digits", "cifar10", "cifar100")] \
        == [28, 8, 32, 32]
    assert REGISTRY["imagefolder"].native_size is None and REGISTRY["webdataset"].native_size is None


@pytest.mark.parametrize("alias,name", [("fmnist", "fashion-mnist"), ("FashionMNIST", "fashion-mnist"),
                                        ("fashion_mnist", "fashion-mnist"), ("CIFAR-10", "cifar10"),
                                        ("cifar_100", "cifar100"), ("image_folder", "imagefolder"),
                                        ("wds", "webdataset"), ("Auto", "auto")])
def test_aliases_resolve(alias, name):
    assert canonical_name(alias) == name


def test_default_epochs_and_embedded():
    assert default_epochs("auto", "proxy") == 10 and default_epochs("fmnist") == 8
    assert default_epochs("custom", "proxy") == 164
    assert is_embedded("auto") and is_embedded("digits") and not is_embedded("cifar10")
    assert not is_embedded("no-such-data")


def _toy_bundle(name: str, size: int) -> DatasetBundle:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 255, (40, 1, size, size), generator=g, dtype=torch.uint8)
    y = np.arange(40) % 4
    train = InMemoryImageDataset(x, y, (0.5,), (0.25,))
    test = InMemoryImageDataset(x[:8], y[:8], (0.5,), (0.25,))
    return DatasetBundle(name=name, train=train, train_eval=train, test=test,
                         train_targets=y.astype(np.int64), test_targets=y[:8].astype(np.int64),
                         num_classes=4, input_shape=(1, size, size))


def test_one_entry_adds_a_dataset(monkeypatch):
    """An entry is all a new dataset needs: its name, aliases, epochs and native size work."""
    seen = {}

    def load(data_path, *, download=False, augment=True, image_size=None, **options):
        seen.update(data_path=data_path, augment=augment, **options)
        return _toy_bundle("toy", 6)

    monkeypatch.setitem(REGISTRY, "toy", DatasetEntry("toy", load, (3, 5), aliases=("toy-set",),
                                                      native_size=6))
    bundle = load_dataset("Toy_Set", "somewhere", augment=False)
    assert bundle.name == "toy" and seen == {"data_path": "somewhere", "augment": False}
    assert default_epochs("toy-set", "proxy") == 5 and default_epochs("toy") == 3
    with pytest.raises(ValueError, match="image_size=12 is not supported for toy"):
        load_dataset("toy", image_size=12)
    with pytest.raises(ValueError, match=r"index='i.json' \(--index\) applies to dataset "
                                         r"'webdataset' only"):
        load_dataset("toy", index="i.json")


def test_bundle_split_train_val():
    bundle = _toy_bundle("toy", 4)
    train, val = bundle.split_train_val(0.25, seed=3)
    want_train, want_val = split_train_val(bundle.train_targets, 0.25, 3)
    np.testing.assert_array_equal(train, want_train)
    np.testing.assert_array_equal(val, want_val)
    # A bundle with its own V: that V, and every other index as the training split.
    x = torch.randn(10, 3)
    own = bundle_from_datasets(TensorDataset(x, torch.arange(10) % 2),
                               TensorDataset(x[:4], torch.arange(4) % 2),
                               val=TensorDataset(x[:3], torch.tensor([0, 1, 0])))
    train, val = own.split_train_val(0.5, seed=0)
    np.testing.assert_array_equal(val, [10, 11, 12])
    np.testing.assert_array_equal(train, np.arange(10))


def test_registry_name():
    assert _toy_bundle("FMNIST", 4).registry_name == "fashion-mnist"
    assert _toy_bundle("my data", 4).registry_name == "custom"


class _Duck:
    """Serves batches without being an InMemoryImageDataset; items are never read one by one."""

    augmented = False

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return self.x.shape[0]

    def __getitem__(self, i):
        raise AssertionError("the eval loop should have used batch()")

    def batch(self, indices):
        return self.x[indices], self.y[indices]


def test_batch_serving_protocol():
    x = torch.randint(0, 255, (6, 1, 4, 4), dtype=torch.uint8)
    plain = InMemoryImageDataset(x, np.zeros(6), (0.5,), (0.25,))
    assert isinstance(plain, BatchServing) and serves_batches(plain)
    assert not serves_batches(plain.with_augmentation(flip=True, crop_padding=0))
    assert not serves_batches(TensorDataset(x, torch.zeros(6)))
    assert serves_batches(_Duck(x, torch.zeros(6)))


def test_eval_loop_uses_batch_serving_datasets():
    from cldfast.training.evaluation import eval_batches

    torch.manual_seed(0)
    x, y = torch.randn(10, 3), torch.arange(10) % 2
    model = torch.nn.Linear(3, 2)
    got = list(eval_batches(model, _Duck(x, y), np.arange(10), batch_size=4,
                            device=torch.device("cpu"), workers=0, onednn=False,
                            channels_last=False))
    logits = torch.cat([out for _, out, _ in got])
    torch.testing.assert_close(logits, model(x).detach())
