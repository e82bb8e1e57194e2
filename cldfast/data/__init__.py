"""Data: the index contract (``indexed``: original indices, split positions, loaders), the
dataset registry (``datasets``: the named datasets, each with its default epochs, and
:func:`bundle_from_datasets` for your own) and streamed data (``stream``: WebDataset shards
with string keys, mapped to original indices by an index)."""

from .datasets import (DATASETS, DEFAULT_EPOCHS, DEFAULT_FASHION_MNIST_PATH, EMBEDDED, DatasetBundle,
                       InMemoryImageDataset, bundle_from_datasets, canonical_name, dataset_fingerprint,
                       default_epochs, holds_tensors, is_embedded, load_dataset, read_idx)
from .indexed import IndexedDataset, IndexedSubset, as_index_array, make_loader, split_train_val
from .stream import (ShardIndex, StreamedDataset, WebDatasetSplit, is_streamed, list_shards,
                     load_webdataset, read_index, shard_index, write_index)

__all__ = ["DATASETS", "DEFAULT_EPOCHS", "DEFAULT_FASHION_MNIST_PATH", "EMBEDDED", "DatasetBundle",
           "InMemoryImageDataset", "IndexedDataset", "IndexedSubset", "ShardIndex",
           "StreamedDataset", "WebDatasetSplit", "as_index_array", "bundle_from_datasets",
           "canonical_name", "dataset_fingerprint", "default_epochs", "holds_tensors",
           "is_embedded", "is_streamed", "list_shards", "load_dataset", "load_webdataset",
           "make_loader", "read_idx", "read_index", "shard_index", "split_train_val",
           "write_index"]
