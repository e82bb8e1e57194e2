"""What the workflows accept as ``data``: a dataset name, a :class:`DataSpec`, or a
:class:`cldfast.data.DatasetBundle` of your own; :func:`load_data` turns any of them into a
bundle."""

from __future__ import annotations

from dataclasses import dataclass

from ..data.datasets import DatasetBundle, load_dataset

__all__ = ["DataSpec", "load_data"]


@dataclass
class DataSpec:
    """Which dataset to load (see :func:`cldfast.data.load_dataset`).

    For WebDataset shards (``dataset="webdataset"``): ``data_path`` is the training shards'
    pattern (``'shards/train-{000000..000146}.tar'``), ``index`` the index file of their keys
    and labels (read if it exists, else written by one listing pass), ``test_data_path`` the
    test shards' pattern and ``shuffle_buffer`` the samples in each loader worker's shuffle
    buffer (:func:`cldfast.data.load_webdataset`)."""

    dataset: str = "auto"
    data_path: str | None = None
    download: bool = False
    image_size: int | None = None
    index: str | None = None
    test_data_path: str | None = None
    shuffle_buffer: int | None = None

    def load(self) -> DatasetBundle:
        return load_dataset(self.dataset, self.data_path, download=self.download,
                            image_size=self.image_size, index=self.index,
                            test_data_path=self.test_data_path, shuffle_buffer=self.shuffle_buffer)


def load_data(data: "DataSpec | DatasetBundle | str | None") -> DatasetBundle:
    """A bundle from what the workflows accept as ``data``: None (the embedded data), a
    dataset name, a :class:`DataSpec`, or a :class:`DatasetBundle` (returned as is)."""
    if data is None:
        data = DataSpec()
    elif isinstance(data, str):
        data = DataSpec(data)
    if isinstance(data, DatasetBundle):
        return data
    if not isinstance(data, DataSpec):
        raise TypeError("data must be a dataset name, a cldfast.pipeline.DataSpec or a "
                        "cldfast.data.DatasetBundle (cldfast.data.bundle_from_datasets builds one "
                        f"from your datasets); got {type(data).__name__}")
    return data.load()
