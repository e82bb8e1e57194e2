"""Streamed data: WebDataset tar shards, read in order, with string keys instead of positions.

A WebDataset is a list of tar files ("shards"); the files of one sample share a key (the
file name without its extensions, e.g. ``n01440764/n01440764_10026``), and its fields are
the extensions: an image (``.jpg``, ``.png``, ... decoded by webdataset's PIL handler) or a
``.npy`` array, and the class, an integer in the ``.cls`` field. Shards are read from start
to end, never by position. This module makes such data a cldfast dataset:

* **Keys, positions, labels.** A :class:`ShardIndex` lists every shard's keys and labels in
  the order of the shards (as ``--data-path`` expands) and, inside a shard, in tar order.
  That order is the dataset's INDEX ORDER: the ORIGINAL index of a sample (what scores,
  coreset and indices files hold) is its place in it, and :class:`cldfast.IdMap` maps each
  key read from a shard to that index. The index comes from an index file (JSON, see
  :func:`write_index`; written once) or from one listing pass over the shards, which reads
  only the ``.cls`` fields and gives the labels and the class count before any image is
  decoded (the tracker needs them before training starts).
* **Splits and V.** The training split and the validation split V are chosen on the
  index's labels exactly as for map-style data (:func:`cldfast.data.split_train_val`: a
  seeded per-class share), so the same samples in a map-style dataset get the same split.
  The test split is a separate shard pattern (``--test-data-path``).
* **Order.** :meth:`WebDatasetSplit.training_view` serves one epoch of the training
  split as ``(input, target, position)`` items, like :class:`cldfast.data.IndexedSubset`:
  by default the shards are shuffled per epoch (seeded), split between ranks and loader
  workers the way webdataset's ``split_by_node`` / ``split_by_worker`` split them (every
  k-th shard), and each worker's samples pass a seeded shuffle buffer. ``shuffle=False``
  serves them in index order, batch for batch the order of a map-style loader without
  shuffling, whatever the number of workers (each worker then reads every shard and
  decodes only the samples of its own batches).
* **Eval passes.** :meth:`WebDatasetSplit.eval_view` streams the shards once, without
  augmentation, split between ranks and workers; each wanted sample is served once, with
  its position in the requested index list.

Every stream checks what it reads against the index: a key the index does not list, a key
found in another shard than the index says, a label that differs from the index's, or a
shard with fewer samples than the index lists is an error naming the key and the shard.
"""

from __future__ import annotations

import copy
import io as _io
import json
import logging
import os
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from .._extras import require
from ..core.distributed import rank_world
from ..core.ids import IdMap
from ..io import atomic_write

log = logging.getLogger("cldfast")

__all__ = ["INDEX_FORMAT", "DEFAULT_SHUFFLE_BUFFER", "IMAGE_EXTENSIONS", "ShardError", "ShardIndex",
           "StreamedDataset", "WebDatasetSplit", "expand_shards", "is_streamed", "list_shards",
           "load_webdataset", "read_index", "shard_index", "shard_name", "write_index"]

#: The ``format`` field of an index file.
INDEX_FORMAT = "cldfast-webdataset-index"
#: Samples in each loader worker's shuffle buffer when none is given.
DEFAULT_SHUFFLE_BUFFER = 1000
#: Fields read as images (webdataset's PIL handler), in this order of preference.
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "ppm", "pgm", "pbm", "bmp", "tif", "tiff", "gif")
_LABEL_FIELD = "cls"
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def _wds():
    return require("webdataset", "--dataset webdataset (WebDataset shards)")


class ShardError(ValueError):
    """Shards and their index disagree, or a shard cannot be read; the message names the
    sample's key and the shard."""


def is_streamed(dataset: Any) -> bool:
    """Whether ``dataset`` is read as a stream (:class:`StreamedDataset`), not by position."""
    return isinstance(dataset, StreamedDataset)


class StreamedDataset(IterableDataset):
    """A dataset read in order from start to end. The training loop and the eval passes
    read it through :meth:`training_view` and :meth:`eval_view`, which serve
    ``(input, target, position)`` items."""

    targets: np.ndarray

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def training_view(self, indices: Any, *, seed: int, rank: int = 0, world: int = 1,
                      shuffle: bool = True, batch_size: int = 1, workers: int = 0) -> IterableDataset:
        raise NotImplementedError

    def eval_view(self, indices: Any, *, rank: int = 0, world: int = 1,
                  workers: int = 0) -> IterableDataset:
        raise NotImplementedError


# --------------------------------------------------------------------------------------------
# Shard lists, the listing pass and index files
# --------------------------------------------------------------------------------------------

def _is_local(url: str) -> bool:
    return "://" not in url and not url.startswith("pipe:")


def shard_name(url: str) -> str:
    """The name a shard has in an index file: the file name of its URL (for a ``pipe:``
    URL, of its last word)."""
    last = url.split()[-1] if url.startswith("pipe:") and url.split() else url
    return os.path.basename(last.rstrip("/")) or url


def _expand(text: str) -> list[str]:
    """webdataset's expansion of a shard pattern: ``::`` separates patterns, braces expand."""
    expand = getattr(getattr(_wds(), "shardlists", None), "expand_urls", None)
    if expand is not None:
        return list(expand(text))
    import braceexpand  # a dependency of webdataset

    return [u for part in text.split("::") for u in braceexpand.braceexpand(part)]


def _npy(data: bytes) -> np.ndarray:
    return np.load(_io.BytesIO(data), allow_pickle=False)


def expand_shards(pattern: Any, what: str = "data_path") -> list[str]:
    """The shard URLs of ``pattern``: brace-expanded as webdataset expands them
    (``shards/train-{000000..000146}.tar``; ``::`` joins patterns), or a list of URLs as
    given. Local files must exist.

    Raises:
        ValueError: the pattern expands to nothing, or names a shard twice.
        FileNotFoundError: local shards missing; the message names ``what`` and them.
    """
    if isinstance(pattern, (str, os.PathLike)):
        text = os.fspath(pattern)
        if not text.strip():
            raise ValueError(f"{what} is empty; expected a shard pattern such as "
                             "'shards/train-{000000..000009}.tar'")
        urls = _expand(text)
    else:
        urls = [os.fspath(u) for u in pattern]
        text = f"the list of {len(urls)} shards"
    if not urls:
        raise ValueError(f"{what}={text!r} names no shard")
    seen: dict[str, str] = {}
    for url in urls:
        name = shard_name(url)
        if name in seen:
            raise ValueError(f"{what}={text!r} names the shard {name!r} twice ({seen[name]!r} and "
                             f"{url!r}); shard file names must be unique")
        seen[name] = url
    missing = [u for u in urls if _is_local(u) and not Path(u.removeprefix("file:")).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{what}={text!r}: {len(missing)} of its {len(urls)} shard(s) not found, e.g. "
            f"{', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''} (expected tar files; "
            "the pattern is brace-expanded as webdataset does, e.g. 'train-{000000..000009}.tar')")
    return urls


def _parse_label(raw: bytes, key: str, url: str) -> int:
    try:
        value = int(raw.decode("utf-8").strip())
    except (UnicodeDecodeError, ValueError):
        raise ShardError(f"shard {url}: sample {key!r} has .{_LABEL_FIELD} = {raw[:40]!r}; expected "
                         "a non-negative integer class id") from None
    if value < 0:
        raise ShardError(f"shard {url}: sample {key!r} has class {value}; expected a non-negative "
                         "integer class id")
    return value


def _list_one(url: str) -> tuple[list[str], list[int]]:
    """Keys and labels of one shard in tar order: reads the ``.cls`` members, steps over
    the rest (webdataset's key rule: the file name up to the first dot of its base name)."""
    wds = _wds()
    keys: list[str] = []
    labels: list[Optional[int]] = []
    fields: dict[str, list[str]] = {}
    try:
        stream = wds.gopen(url, "rb")
        with tarfile.open(fileobj=stream, mode="r|*") as tar:
            for member in tar:
                if not member.isreg():
                    continue
                if "/" not in member.name and member.name.startswith("__") and member.name.endswith("__"):
                    continue
                key, ext = wds.tariterators.base_plus_ext(member.name)
                if key is None or key.startswith("__"):
                    continue
                if not keys or keys[-1] != key:
                    if key in fields:
                        raise ShardError(f"shard {url}: the files of sample {key!r} are not next "
                                         "to each other in the tar file (webdataset groups a "
                                         "sample's files by consecutive names)")
                    keys.append(key)
                    labels.append(None)
                    fields[key] = []
                fields[key].append(ext.lower())
                if ext.lower() == _LABEL_FIELD:
                    data = tar.extractfile(member).read()  # type: ignore[union-attr]
                    labels[-1] = _parse_label(data, key, url)
        close = getattr(stream, "close", None)
        if close is not None:
            close()
    except ShardError:
        raise
    except (OSError, tarfile.TarError, EOFError, ValueError) as e:
        raise ShardError(f"cannot read shard {url}: {type(e).__name__}: {e}") from None
    for key, label in zip(keys, labels):
        if label is None:
            raise ShardError(f"shard {url}: sample {key!r} has no .{_LABEL_FIELD} field (its fields: "
                             f"{', '.join(fields[key])}); each sample's class is read from its "
                             f".{_LABEL_FIELD} field, an integer")
    return keys, [int(v) for v in labels]  # type: ignore[arg-type]


def list_shards(urls: Sequence[str], progress: bool = False) -> dict[str, dict[str, list]]:
    """The listing pass: ``{shard name: {"keys": [...], "labels": [...]}}`` of every shard,
    read in order (only the ``.cls`` fields are read; no image is decoded)."""
    out: dict[str, dict[str, list]] = {}
    for i, url in enumerate(urls):
        keys, labels = _list_one(url)
        out[shard_name(url)] = {"keys": keys, "labels": labels}
        if progress and (i + 1) % 50 == 0:
            log.info("listing pass: %d of %d shards", i + 1, len(urls))
    return out


def read_index(path: Any) -> dict[str, Any]:
    """An index file's contents: ``{"shards": {name: {"keys", "labels"}}, ...}`` with the
    optional ``class_names``, ``num_classes``, ``mean`` and ``std``.

    Raises:
        ValueError: not an index file, or a malformed entry; the message names the file.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"index file {path}: cannot read it as JSON ({e}); delete it to list "
                         "the shards again") from None
    if not isinstance(doc, dict) or doc.get("format") != INDEX_FORMAT:
        raise ValueError(f"index file {path}: expected a JSON object with \"format\": "
                         f"\"{INDEX_FORMAT}\" (written by cldfast); got "
                         f"{type(doc).__name__ if not isinstance(doc, dict) else repr(doc.get('format'))}")
    shards = doc.get("shards")
    if not isinstance(shards, dict):
        raise ValueError(f"index file {path}: \"shards\" must map shard file names to "
                         "{\"keys\": [...], \"labels\": [...]}")
    for name, entry in shards.items():
        keys = entry.get("keys") if isinstance(entry, dict) else None
        labels = entry.get("labels") if isinstance(entry, dict) else None
        if (not isinstance(keys, list) or not isinstance(labels, list) or len(keys) != len(labels)
                or not all(isinstance(k, str) for k in keys)
                or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in labels)):
            raise ValueError(f"index file {path}: shard {name!r} needs \"keys\" (strings) and "
                             "\"labels\" (non-negative integers) of equal length")
    for opt in ("mean", "std"):
        if opt in doc and (not isinstance(doc[opt], list)
                           or not all(isinstance(v, (int, float)) for v in doc[opt])):
            raise ValueError(f"index file {path}: \"{opt}\" must be a list of numbers (one per channel)")
    if "class_names" in doc and not (isinstance(doc["class_names"], list)
                                     and all(isinstance(v, str) for v in doc["class_names"])):
        raise ValueError(f"index file {path}: \"class_names\" must be a list of strings")
    return doc


def write_index(path: Any, shards: dict[str, dict[str, list]], **extra: Any) -> Path:
    """Write an index file (atomically): JSON ``{"format": "cldfast-webdataset-index",
    "version": 1, "shards": {name: {"keys": [...], "labels": [...]}}}`` plus ``extra``
    top-level fields (``class_names``, ``num_classes``, ``mean``, ``std``: optional, and
    kept when cldfast adds shards to the file)."""
    doc = {"format": INDEX_FORMAT, "version": 1, **extra, "shards": shards}
    return atomic_write(Path(path), lambda p: p.write_text(json.dumps(doc) + "\n"))


@dataclass
class ShardIndex:
    """Keys and labels of a list of shards, in index order (shard by shard, tar order).

    Attributes:
        urls: the shards, in the order of the pattern.
        keys: N sample keys; ``keys[i]`` is the sample at original index ``i``.
        labels: int64 [N].
        shard_of: int64 [N], the shard (index into ``urls``) of every sample.
        ids: :class:`cldfast.IdMap` of ``keys``: key -> original index.
        source: where the index came from (an index file, or the listing pass).
        meta: the index file's optional fields (class_names, num_classes, mean, std).
    """

    urls: list[str]
    keys: list[str]
    labels: np.ndarray
    shard_of: np.ndarray
    ids: IdMap
    source: str
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def counts(self) -> np.ndarray:
        """Samples per shard, int64 [len(urls)]."""
        return np.bincount(self.shard_of, minlength=len(self.urls)).astype(np.int64)

    def original_index(self, key: str, url: str, shard: int) -> int:
        """The original index of ``key``, read from shard number ``shard`` at ``url``;
        :class:`ShardError` when the index does not list it there."""
        try:
            orig = int(self.ids.positions([key])[0])
        except KeyError:
            raise ShardError(f"shard {url}: sample {key!r} is not in the index ({self.source}), "
                             f"which lists {len(self.keys)} keys for {len(self.urls)} shard(s); "
                             f"{_stale_hint(self.source)}") from None
        if int(self.shard_of[orig]) != shard:
            raise ShardError(f"shard {url}: sample {key!r} is listed in shard "
                             f"{self.urls[int(self.shard_of[orig])]} by the index ({self.source}); "
                             f"{_stale_hint(self.source)}")
        return orig

    @classmethod
    def empty(cls) -> "ShardIndex":
        return cls([], [], np.zeros(0, np.int64), np.zeros(0, np.int64), IdMap([]), "no shards")


def _stale_hint(source: str) -> str:
    if source.startswith("index file "):
        return (f"the shards changed since the index was written: delete {source[len('index file '):]} "
                "to list them again")
    return "the shards changed while they were read"


def shard_index(pattern: Any, index_file: Any = None, *, what: str = "data_path") -> ShardIndex:
    """The :class:`ShardIndex` of the shards ``pattern`` names (see :func:`expand_shards`).

    With ``index_file``: the shards are looked up in it by file name; when the file does not
    exist or lacks some of them, those are listed (:func:`list_shards`) and the file is
    (re)written with them added, so the listing pass runs once (under torchrun by rank 0;
    the other ranks wait for the file). Without it: a listing pass over all shards, in
    every process.

    Raises:
        ValueError: a key appears twice (keys must be unique across the shards), or a shard
            or the index file cannot be read; the message names key, shard and file.
    """
    urls = expand_shards(pattern, what)
    names = [shard_name(u) for u in urls]
    doc: dict[str, Any] = {}
    listed: dict[str, dict[str, list]] = {}
    if index_file is not None and Path(index_file).is_file():
        doc = read_index(index_file)
        listed = dict(doc["shards"])
    todo = [u for u, n in zip(urls, names) if n not in listed]
    if todo and index_file is not None and rank_world()[1] > 1 and rank_world()[0] != 0:
        # Under torchrun rank 0 lists the shards and writes the file; the others wait for it
        # (polling the file, not a collective, which could time out during a long listing).
        log.info("waiting for rank 0's listing pass to write %s", index_file)
        while todo:
            time.sleep(2.0)
            if Path(index_file).is_file():
                doc = read_index(index_file)
                listed = dict(doc["shards"])
                todo = [u for u, n in zip(urls, names) if n not in listed]
    if todo:
        where = f" for {index_file}" if index_file is not None else ""
        log.info("listing pass over %d shard(s)%s (keys and .cls labels only)", len(todo), where)
        listed.update(list_shards(todo, progress=True))
        if index_file is not None:
            extra = {k: v for k, v in doc.items() if k not in ("format", "version", "shards")}
            write_index(index_file, listed, **extra)
            log.info("wrote the index of %d shard(s) to %s", len(listed), index_file)
    source = f"index file {index_file}" if index_file is not None else f"a listing pass over {what}"
    keys: list[str] = []
    labels: list[int] = []
    shard_of: list[np.ndarray] = []
    for s, name in enumerate(names):
        entry = listed[name]
        keys.extend(entry["keys"])
        labels.extend(entry["labels"])
        shard_of.append(np.full(len(entry["keys"]), s, dtype=np.int64))
    try:
        ids = IdMap(keys)
    except ValueError:
        first: dict[str, int] = {}
        for s, name in enumerate(names):
            for key in listed[name]["keys"]:
                if key in first:
                    raise ValueError(f"sample key {key!r} appears in shard {urls[first[key]]} and "
                                     f"in shard {urls[s]} ({source}); WebDataset keys must be "
                                     "unique across the shards of a split") from None
                first[key] = s
        raise
    meta = {k: doc[k] for k in ("class_names", "num_classes", "mean", "std") if k in doc}
    return ShardIndex(urls, keys, np.asarray(labels, dtype=np.int64),
                      np.concatenate(shard_of) if shard_of else np.zeros(0, np.int64), ids,
                      source, meta)


# --------------------------------------------------------------------------------------------
# Reading samples
# --------------------------------------------------------------------------------------------

def _raw_samples(url: str) -> Iterator[dict[str, Any]]:
    """The samples of one shard as webdataset groups them (``__key__`` and one bytes entry
    per field), read errors re-raised naming the shard."""
    wds = _wds()
    it = iter(wds.tariterators.tarfile_samples([{"url": url}]))
    while True:
        try:
            sample = next(it)
        except StopIteration:
            return
        except (OSError, tarfile.TarError, EOFError, ValueError, AssertionError) as e:
            raise ShardError(f"cannot read shard {url}: {type(e).__name__}: {e.args[0] if e.args else e}") from None
        yield sample


@dataclass
class _Decoding:
    """How a split's samples become tensors: from an image field (PIL, in ``mode``) through
    ``transform``, or from a float ``.npy`` array as is."""

    kind: str                       # "image" or "array"
    mode: str = "RGB"               # "L" or "RGB" (images)
    stored_size: Optional[tuple[int, int]] = None  # (W, H) every image must have (no resize)
    shape: Optional[tuple[int, ...]] = None        # array inputs: the shape each must have
    transform: Optional[Callable] = None


def _first_sample(urls: Sequence[str], counts: np.ndarray) -> tuple[dict[str, Any], str]:
    for url, n in zip(urls, counts):
        if n:
            for sample in _raw_samples(url):
                return sample, url
    raise ValueError("the shards hold no sample")


def _image_field(sample: dict[str, Any]) -> Optional[str]:
    for ext in IMAGE_EXTENSIONS:
        if ext in sample:
            return ext
    return None


def _to_pil(array: np.ndarray, key: str, url: str):
    from PIL import Image

    a = array
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = np.moveaxis(a, 0, -1)  # [C, H, W] -> [H, W, C]
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] != 3):
        raise ShardError(f"shard {url}: sample {key!r} has a uint8 .npy of shape {array.shape}; "
                         "expected an image [H, W], [H, W, 1 or 3] or [1 or 3, H, W]")
    return Image.fromarray(np.ascontiguousarray(a), mode="L" if a.ndim == 2 else "RGB")


class WebDatasetSplit(StreamedDataset):
    """One split (training or test) of a WebDataset: its shards, their index and how a
    sample is decoded and transformed. Iterating it gives ``(input, target)`` in index
    order (one process; use the views for loaders with workers).

    Item inputs: an image field (``.jpg``, ``.png``, ... in :data:`IMAGE_EXTENSIONS`; PIL
    via webdataset's decoder, converted to the mode of the first image: ``L`` for grayscale,
    else ``RGB``) or a ``.npy`` array (uint8: an image; float: the input tensor as stored,
    untransformed), through ``transform``; the target is the ``.cls`` field, checked against
    the index's label.
    """

    def __init__(self, index: ShardIndex, decoding: _Decoding, *, augmented: bool = False,
                 shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER, name: str = "train") -> None:
        self.index = index
        self.decoding = decoding
        self.augmented = bool(augmented)
        self.shuffle_buffer = int(shuffle_buffer)
        self.name = name

    @property
    def targets(self) -> np.ndarray:  # type: ignore[override]
        return self.index.labels

    def __repr__(self) -> str:
        return (f"WebDatasetSplit({self.name}, {len(self.index)} samples in "
                f"{len(self.index.urls)} shard(s), {'augmented' if self.augmented else 'plain'})")

    def with_decoding(self, decoding: _Decoding, *, augmented: bool) -> "WebDatasetSplit":
        view = copy.copy(self)
        view.decoding, view.augmented = decoding, bool(augmented)
        return view

    # ----- decoding ---------------------------------------------------------------------
    def decode(self, sample: dict[str, Any], url: str, orig: int) -> tuple[torch.Tensor, int]:
        """(input, target) of one raw sample (original index ``orig``) read from ``url``."""
        key = sample["__key__"]
        raw = sample.get(_LABEL_FIELD)
        if raw is None:
            raise ShardError(f"shard {url}: sample {key!r} has no .{_LABEL_FIELD} field")
        label = _parse_label(raw, key, url)
        expected = int(self.index.labels[orig])
        if label != expected:
            raise ShardError(f"shard {url}: sample {key!r} has class {label}, the index "
                             f"({self.index.source}) says {expected}; {_stale_hint(self.index.source)}")
        return self._input(sample, key, url), label

    def _input(self, sample: dict[str, Any], key: str, url: str) -> torch.Tensor:
        wds = _wds()
        d = self.decoding
        ext = _image_field(sample)
        img = None
        if ext is not None:
            handler = wds.autodecode.imagehandler("pill" if d.mode == "L" else "pil")
            try:
                img = handler(ext, sample[ext])
            except Exception as e:  # PIL's errors for damaged or unknown image data
                raise ShardError(f"shard {url}: cannot decode the .{ext} image of sample {key!r}: "
                                 f"{type(e).__name__}: {e}") from None
            if img is None:
                raise ShardError(f"shard {url}: webdataset's image decoder does not take the .{ext} "
                                 f"field of sample {key!r}")
        elif "npy" in sample:
            try:
                array = _npy(sample["npy"])
            except Exception as e:
                raise ShardError(f"shard {url}: cannot read the .npy of sample {key!r}: "
                                 f"{type(e).__name__}: {e}") from None
            if array.dtype == np.uint8:
                img = _to_pil(array, key, url).convert(d.mode)
            elif np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer):
                if d.kind != "array":
                    raise ShardError(f"shard {url}: sample {key!r} holds a {array.dtype} .npy but "
                                     "the split's first sample is an image; a split's inputs must "
                                     "be all images (uint8) or all float arrays")
                x = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
                if d.shape is not None and tuple(x.shape) != d.shape:
                    raise ShardError(f"shard {url}: sample {key!r} has a .npy of shape "
                                     f"{tuple(x.shape)}; the first sample's is {d.shape} (float "
                                     "arrays are used as stored and must all have one shape)")
                return x
            else:
                raise ShardError(f"shard {url}: sample {key!r} has a .npy of dtype {array.dtype}; "
                                 "expected uint8 (an image) or a float array (the input itself)")
        else:
            fields = [k for k in sample if not k.startswith("__")]
            raise ShardError(f"shard {url}: sample {key!r} has no input field (its fields: "
                             f"{', '.join(fields)}); expected an image ({', '.join(IMAGE_EXTENSIONS)}) "
                             "or .npy")
        if d.kind != "image":
            raise ShardError(f"shard {url}: sample {key!r} holds an image but the split's first "
                             "sample is a float array; a split's inputs must be of one kind")
        if d.stored_size is not None and img.size != d.stored_size:
            raise ShardError(f"shard {url}: sample {key!r} is a {img.size[0]}x{img.size[1]} image, "
                             f"the first one {d.stored_size[0]}x{d.stored_size[1]}; pass image_size= "
                             "(--image-size PX, e.g. 224) to resize and crop every image to one size")
        return d.transform(img)  # type: ignore[misc]

    # ----- views ------------------------------------------------------------------------
    def _lookup(self, indices: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
        """(indices as int64, lookup [N]: original index -> position in ``indices``, -1 if
        absent); duplicate indices are refused (a stream serves each sample once)."""
        n = len(self.index)
        idx = np.asarray(indices)
        if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
            raise ValueError(f"{what} must be a 1-D array of integer original indices; got "
                             f"{idx.dtype} of shape {idx.shape}")
        idx = idx.astype(np.int64)
        if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= n):
            bad = int(idx.min()) if int(idx.min()) < 0 else int(idx.max())
            raise IndexError(f"{what} holds index {bad}, outside [0, {n}) for the {n} samples of "
                             f"the shards")
        lookup = np.full(n, -1, dtype=np.int64)
        lookup[idx] = np.arange(idx.shape[0], dtype=np.int64)
        if idx.size and int((lookup >= 0).sum()) != idx.shape[0]:
            dup = int(idx[np.flatnonzero(lookup[idx] != np.arange(idx.shape[0]))[0]])
            raise ValueError(f"{what} lists original index {dup} ({self.index.keys[dup]!r}) more than "
                             "once; streamed shards serve every sample once per pass")
        return idx, lookup

    def training_view(self, indices: Any, *, seed: int, rank: int = 0, world: int = 1,
                      shuffle: bool = True, batch_size: int = 1, workers: int = 0) -> "_ShardStream":
        """One epoch of the samples at ``indices`` (original indices; the training split) as
        ``(input, target, position in indices)``, for a loader with ``workers`` workers and
        ``batch_size``, on rank ``rank`` of ``world``.

        ``shuffle`` (default): the shards holding training samples are permuted with
        ``seed`` (give one per epoch), every ``world``-th goes to this rank and of those
        every ``readers``-th to each worker (webdataset's ``split_by_node`` /
        ``split_by_worker`` rule); each worker's samples pass a shuffle buffer of
        ``shuffle_buffer`` samples seeded by (seed, rank, worker). With ``world > 1`` every
        worker of every rank serves equally many samples (the largest share; the others
        repeat samples of their own shards), so that all ranks run the same number of
        batches, as DistributedSampler's padding does.

        ``shuffle=False``: index order. The samples sorted by original index (padded to a
        multiple of ``world`` with the first ones and dealt out rank by rank, as
        DistributedSampler without shuffling does) are cut into batches, and worker ``w``
        serves batches ``w, w + readers, ...``: the loader's round-robin over its workers
        then yields them in index order, the batches of a map-style loader over the same
        samples without shuffling. Each worker reads every shard then (it decodes only
        its own samples).
        """
        idx, lookup = self._lookup(indices, "indices")
        readers = max(1, int(workers))
        counts = np.bincount(self.index.shard_of[idx], minlength=len(self.index.urls)) if idx.size \
            else np.zeros(len(self.index.urls), np.int64)
        if not shuffle:
            return self._ordered_view(idx, lookup, rank, world, int(batch_size), readers)
        held = np.flatnonzero(counts > 0)
        perm = held[np.random.default_rng([int(seed) % 2**63, 0xC1D]).permutation(held.shape[0])]
        shares = [[perm[r::world][w::readers] for w in range(readers)] for r in range(world)]
        sizes = np.array([[int(counts[s].sum()) for s in row] for row in shares], dtype=np.int64)
        plans: list[list[_Pass]] = []
        if world == 1:
            plans = [[_Pass(shares[0][w], lookup)] for w in range(readers)]
            total = int(sizes.sum())
        else:
            target = int(sizes.max()) if sizes.size else 0
            if target and sizes.sum() and (target * world * readers) > 1.1 * sizes.sum():
                log.warning("%d shard(s) with training samples for %d rank(s) x %d worker(s): "
                            "to keep every rank's batch count equal, %.0f %% of each epoch are "
                            "repeated samples; shards many times more numerous than ranks x "
                            "workers avoid that", held.shape[0], world, readers,
                            100 * (1 - sizes.sum() / (target * world * readers)))
            for w in range(readers):
                own, n = shares[rank][w], int(sizes[rank, w])
                passes = [_Pass(own, lookup)]
                source = own if n else (perm[rank::world] if int(sizes[rank].sum()) else perm)
                per_pass = int(counts[source].sum())
                need = target - n
                while need > 0 and per_pass > 0:
                    passes.append(_Pass(source, lookup, limit=min(need, per_pass)))
                    need -= per_pass
                plans.append(passes)
            total = target * readers
        return _ShardStream(self, plans, total, buffer=self.shuffle_buffer,
                            seed=(int(seed) % 2**63, int(rank)), shards_permuted=True)

    def _ordered_view(self, idx: np.ndarray, lookup: np.ndarray, rank: int, world: int,
                      batch_size: int, readers: int) -> "_ShardStream":
        order = np.sort(idx)
        if world > 1 and order.size:
            total = -(-order.shape[0] // world) * world
            order = np.resize(order, total)[rank::world]
        batch_of = np.arange(order.shape[0]) // max(1, batch_size)
        plans = []
        for w in range(readers):
            mine = order[batch_of % readers == w]
            # Increasing runs (a padded tail wraps back to the first samples): one pass each.
            cuts = np.flatnonzero(np.diff(mine) <= 0) + 1
            passes = []
            for run in np.split(mine, cuts):
                if run.size == 0:
                    continue
                run_lookup = np.full(len(self.index), -1, dtype=np.int64)
                run_lookup[run] = lookup[run]
                shards = np.unique(self.index.shard_of[run])
                passes.append(_Pass(shards, run_lookup, expect=run))
            plans.append(passes)
        return _ShardStream(self, plans, int(order.shape[0]), buffer=0, seed=(0, int(rank)),
                            shards_permuted=False)

    def eval_view(self, indices: Any, *, rank: int = 0, world: int = 1,
                  workers: int = 0) -> "_ShardStream":
        """The samples at ``indices`` (original indices), each once, as ``(input, target,
        position in indices)``, without augmentation: the shards holding them, every
        ``world``-th to this rank and of those every ``readers``-th to each worker
        (webdataset's ``split_by_node`` / ``split_by_worker`` rule), read in order. Over all
        ranks every sample is served exactly once; a rank with no shard serves nothing."""
        idx, lookup = self._lookup(indices, "indices")
        readers = max(1, int(workers))
        counts = np.bincount(self.index.shard_of[idx], minlength=len(self.index.urls)) if idx.size \
            else np.zeros(len(self.index.urls), np.int64)
        held = np.flatnonzero(counts > 0)
        mine = held[rank::world]
        plans = [[_Pass(mine[w::readers], lookup)] for w in range(readers)]
        return _ShardStream(self, plans, int(counts[mine].sum()), buffer=0, seed=(0, int(rank)),
                            shards_permuted=False)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int]]:
        view = self.eval_view(np.arange(len(self.index)))
        for x, y, _ in view:
            yield x, y


@dataclass
class _Pass:
    """One read of ``shards`` in order, serving the samples whose ``lookup`` entry (original
    index -> position) is >= 0; at most ``limit`` of them; ``expect``: the original indices
    in the order they must arrive (index-order passes)."""

    shards: np.ndarray
    lookup: np.ndarray
    limit: Optional[int] = None
    expect: Optional[np.ndarray] = None


class _ShardStream(IterableDataset):
    """A view's samples for a DataLoader: worker ``w`` of ``len(plans)`` runs ``plans[w]``.
    ``len()`` is the number of samples all workers serve together."""

    def __init__(self, split: WebDatasetSplit, plans: list[list[_Pass]], total: int, *,
                 buffer: int, seed: tuple[int, int], shards_permuted: bool) -> None:
        self.split, self.plans, self.total = split, plans, int(total)
        self.buffer, self.seed, self.shards_permuted = int(buffer), seed, shards_permuted

    def __len__(self) -> int:
        return self.total

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int, int]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if workers != len(self.plans):
            raise RuntimeError(f"this stream was planned for {len(self.plans)} loader worker(s) but "
                               f"is read by {workers}; build the view with workers={workers}")
        raw = self._read(self.plans[worker])
        if self.buffer > 1:
            rng = np.random.default_rng([self.seed[0], self.seed[1], worker, 0xB0F])
            raw = _shuffled(raw, self.buffer, rng)
        for position, orig, sample, url in raw:
            x, y = self.split.decode(sample, url, orig)
            yield x, y, position

    def _read(self, passes: list[_Pass]) -> Iterator[tuple[int, int, dict[str, Any], str]]:
        for p in passes:
            yield from self._read_pass(p)

    def _read_pass(self, p: _Pass) -> Iterator[tuple[int, int, dict[str, Any], str]]:
        """(position, original index, raw sample, shard URL) of the samples ``p`` serves,
        checking each shard against the index."""
        index = self.split.index
        served = nxt = 0
        for shard in (int(s) for s in p.shards):
            url = index.urls[shard]
            lo = int(np.searchsorted(index.shard_of, shard, side="left"))
            hi = int(np.searchsorted(index.shard_of, shard, side="right"))
            wanted = p.lookup[lo:hi] >= 0
            expected, got = int(wanted.sum()), []
            for sample in _raw_samples(url):
                orig = index.original_index(sample["__key__"], url, shard)
                position = int(p.lookup[orig])
                if position < 0:
                    continue
                if p.expect is not None:
                    if nxt >= p.expect.shape[0] or int(p.expect[nxt]) != orig:
                        want = index.keys[int(p.expect[nxt])] if nxt < p.expect.shape[0] else None
                        raise ShardError(f"shard {url}: sample {sample['__key__']!r} arrived where "
                                         f"the index ({index.source}) puts {want!r}; "
                                         f"{_stale_hint(index.source)}")
                    nxt += 1
                got.append(orig)
                served += 1
                yield position, orig, sample, url
                if p.limit is not None and served >= p.limit:
                    return
            if len(got) != expected:
                absent = np.setdiff1d(np.flatnonzero(wanted) + lo, np.asarray(got, dtype=np.int64))
                example = f" (e.g. missing: {index.keys[int(absent[0])]!r})" if absent.size else ""
                raise ShardError(f"shard {url} holds {len(got)} of the {expected} wanted samples the "
                                 f"index ({index.source}) lists for it{example}; "
                                 f"{_stale_hint(index.source)}")


def _shuffled(items: Iterator[Any], size: int, rng: np.random.Generator) -> Iterator[Any]:
    """A shuffle buffer of ``size`` items (webdataset's ``shuffle`` stage, seeded): once
    full, each new item takes the place of a random one, which is served."""
    buf: list[Any] = []
    for item in items:
        if len(buf) < size:
            buf.append(item)
            continue
        j = int(rng.integers(size))
        buf[j], item = item, buf[j]
        yield item
    order = rng.permutation(len(buf))
    for j in order:
        yield buf[int(j)]


# --------------------------------------------------------------------------------------------
# A bundle from shards
# --------------------------------------------------------------------------------------------

def _decodings(sample: dict[str, Any], url: str, image_size: Optional[int], mean: Any, std: Any,
               augment: bool) -> tuple[_Decoding, _Decoding, tuple[float, ...], tuple[float, ...]]:
    """(plain, training) decodings of a split whose first sample is ``sample``, and the
    normalisation used."""
    from torchvision import transforms

    key = sample["__key__"]
    ext = _image_field(sample)
    if ext is None and "npy" not in sample:
        fields = [k for k in sample if not k.startswith("__")]
        raise ShardError(f"shard {url}: sample {key!r} has no input field (its fields: "
                         f"{', '.join(fields)}); expected an image ({', '.join(IMAGE_EXTENSIONS)}) "
                         "or .npy")
    if ext is None:
        array = _npy(sample["npy"])
        if array.dtype != np.uint8:
            if image_size is not None:
                raise ValueError(f"image_size={image_size} does not apply: the shards hold float "
                                 ".npy arrays, used as stored")
            shape = tuple(int(v) for v in array.shape)
            plain = _Decoding("array", shape=shape)
            return plain, plain, (), ()
        first = _to_pil(array, key, url)
    else:
        from PIL import Image

        with _io.BytesIO(sample[ext]) as f:
            first = Image.open(f)
            first.load()
    mode = "L" if first.mode in ("L", "1", "I", "I;16", "F") else "RGB"
    channels = 1 if mode == "L" else 3
    if mean is None:
        mean = (0.5,) if mode == "L" else _IMAGENET_MEAN
    if std is None:
        std = (0.5,) if mode == "L" else _IMAGENET_STD
    mean, std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"the index's mean and std need {channels} value(s) each (the images are "
                         f"{mode}); got {len(mean)} and {len(std)}")
    normalize = [transforms.ToTensor(), transforms.Normalize(mean, std)]
    if image_size is not None:
        size = int(image_size)
        if size < 1:
            raise ValueError(f"image_size must be >= 1; got {image_size}")
        eval_tf = transforms.Compose([transforms.Resize(int(size * 256 / 224)),
                                      transforms.CenterCrop(size)] + normalize)
        train_tf = transforms.Compose([transforms.RandomResizedCrop(size),
                                       transforms.RandomHorizontalFlip()] + normalize)
        stored = None
    else:
        eval_tf = transforms.Compose(normalize)
        train_tf = transforms.Compose([transforms.RandomHorizontalFlip()] + normalize)
        stored = first.size
    plain = _Decoding("image", mode=mode, stored_size=stored, transform=eval_tf)
    train = _Decoding("image", mode=mode, stored_size=stored, transform=train_tf) if augment else plain
    return plain, train, mean, std


def load_webdataset(data_path: Any, *, index: Any = None, test_data_path: Any = None,
                    augment: bool = True, image_size: Optional[int] = None,
                    shuffle_buffer: Optional[int] = None):
    """A :class:`cldfast.data.DatasetBundle` over WebDataset shards (see the module docstring).

    Args:
        data_path: the training shards: a brace pattern (``'shards/train-{000000..000146}.tar'``;
            ``::`` joins patterns) or a list of URLs.
        index: an index file (JSON, :func:`write_index`) listing each shard's keys and
            labels; read when it exists, else written by one listing pass. Shards of
            ``test_data_path`` are kept in the same file. ``None``: a listing pass every time.
        test_data_path: shards of the test split (e.g. ImageNet's val); ``None``: no test
            split (the test accuracy is then NaN).
        augment: training augmentation (with ``image_size``: RandomResizedCrop and flip;
            without: a horizontal flip).
        image_size: resize and center-crop eval inputs to this square size (RandomResizedCrop
            for training); ``None``: images are used at their stored size, which must be the
            same for all.
        shuffle_buffer: samples in each loader worker's shuffle buffer (default
            :data:`DEFAULT_SHUFFLE_BUFFER`); 0 or 1: only the shard order is shuffled.

    Normalisation: the index file's ``mean`` / ``std`` when it has them, else ImageNet's for
    RGB images and 0.5 / 0.5 for grayscale. Classes: ``num_classes`` (and ``class_names``)
    from the index file when given, else the largest label + 1.
    """
    from .datasets import DatasetBundle, dataset_fingerprint

    if data_path is None:
        raise ValueError("data_path (--data-path) is required for 'webdataset': the training "
                         "shards, e.g. 'shards/train-{000000..000146}.tar'")
    buffer = DEFAULT_SHUFFLE_BUFFER if shuffle_buffer is None else int(shuffle_buffer)
    if buffer < 0:
        raise ValueError(f"shuffle_buffer (--shuffle-buffer) must be >= 0; got {shuffle_buffer}")
    train_index = shard_index(data_path, index, what="data_path")
    if len(train_index) == 0:
        raise ValueError(f"the training shards ({data_path!r}) hold no sample")
    if test_data_path is not None:
        test_index = shard_index(test_data_path, index, what="test_data_path")
    else:
        test_index = ShardIndex.empty()
        log.warning("webdataset: no test shards (test_data_path= / --test-data-path): test "
                    "accuracies are not measured (NaN)")
    meta = train_index.meta
    sample, url = _first_sample(train_index.urls, train_index.counts)
    plain, train_dec, mean, std = _decodings(sample, url, image_size, meta.get("mean"),
                                             meta.get("std"), augment)
    train_eval = WebDatasetSplit(train_index, plain, shuffle_buffer=buffer, name="train")
    train = train_eval.with_decoding(train_dec, augmented=train_dec is not plain)
    test = WebDatasetSplit(test_index, plain, shuffle_buffer=buffer, name="test")
    first_shard = train_index.urls.index(url)
    first_x = train_eval.decode(sample, url, train_index.original_index(sample["__key__"], url,
                                                                          first_shard))[0]
    labels, test_labels = train_index.labels, test_index.labels
    seen = int(max([int(a.max()) for a in (labels, test_labels) if a.size] or [0])) + 1
    num_classes = int(meta.get("num_classes", seen))
    if num_classes < seen:
        raise ValueError(f"the index's num_classes={num_classes} but the labels contain class "
                         f"{seen - 1}")
    names = list(meta.get("class_names") or [str(c) for c in range(num_classes)])
    if len(names) != num_classes:
        raise ValueError(f"the index's class_names has {len(names)} names for {num_classes} classes")
    if labels.size and np.bincount(labels, minlength=num_classes).min() == 0:
        empty = int(np.flatnonzero(np.bincount(labels, minlength=num_classes) == 0)[0])
        log.info("webdataset: class %d has no training sample", empty)
    fingerprint = dataset_fingerprint("webdataset", labels, len(test_labels),
                                      ["\n".join(train_index.keys).encode()])
    return DatasetBundle(name="webdataset", train=train, train_eval=train_eval, test=test,
                         train_targets=labels, test_targets=test_labels, num_classes=num_classes,
                         input_shape=tuple(int(v) for v in first_x.shape),  # type: ignore[arg-type]
                         class_names=names, fingerprint=fingerprint)
