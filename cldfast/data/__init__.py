"""Data: the index contract (``indexed``: original indices, split positions, loaders), the
dataset registry (``datasets``: :data:`REGISTRY`, one entry per named dataset with its
aliases, default epochs, native image size and loader, and
:func:`bundle_from_datasets` for your own) and streamed data (``stream``: WebDataset shards
with string keys, mapped to original indices by an index)."""

from .datasets import (DATASETS, DEFAULT_EPOCHS, DEFAULT_FASHION_MNIST_PATH, EMBEDDED, REGISTRY,
                       BatchServing, DatasetBundle, DatasetEntry, InMemoryImageDataset,
                       bundle_from_datasets, canonical_name, dataset_fingerprint, default_epochs,
                       holds_tensors, is_embedded, load_dataset, read_idx, serves_batches)
from .indexed import IndexedDataset, IndexedSubset, as_index_array, make_loader, split_train_val
from .stream import (ShardIndex, StreamedDataset, WebDatasetSplit, is_streamed, list_shards,
                     load_webdataset, read_index, shard_index, write_index)

__all__ = ["BatchServing", "DATASETS", "DEFAULT_EPOCHS", "DEFAULT_FASHION_MNIST_PATH", "EMBEDDED",
           "REGISTRY", "DatasetBundle", "DatasetEntry", "InMemoryImageDataset", "IndexedDataset",
           "IndexedSubset", "ShardIndex", "StreamedDataset", "WebDatasetSplit", "as_index_array",
           "bundle_from_datasets", "canonical_name", "dataset_fingerprint", "default_epochs",
           "holds_tensors", "is_embedded", "is_streamed", "list_shards", "load_dataset",
           "load_webdataset", "make_loader", "read_idx", "read_index", "serves_batches",
           "shard_index", "split_train_val", "write_index"]
