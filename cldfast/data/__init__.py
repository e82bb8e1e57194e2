"""Data: the index contract (``indexed``: original indices, split positions, loaders) and the
dataset registry (``datasets``: the named datasets, each with its default epochs, and
:func:`bundle_from_datasets` for your own)."""

from .datasets import (DATASETS, DEFAULT_EPOCHS, DEFAULT_FASHION_MNIST_PATH, EMBEDDED, DatasetBundle,
                       InMemoryImageDataset, bundle_from_datasets, canonical_name, dataset_fingerprint,
                       default_epochs, is_embedded, load_dataset, read_idx)
from .indexed import IndexedDataset, IndexedSubset, as_index_array, make_loader, split_train_val

__all__ = ["DATASETS", "DEFAULT_EPOCHS", "DEFAULT_FASHION_MNIST_PATH", "EMBEDDED", "DatasetBundle",
           "InMemoryImageDataset", "IndexedDataset", "IndexedSubset", "as_index_array",
           "bundle_from_datasets", "canonical_name", "dataset_fingerprint", "default_epochs",
           "is_embedded", "load_dataset", "make_loader", "read_idx", "split_train_val"]
