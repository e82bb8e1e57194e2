"""Datasets for CLD experiments: loading, validation splits, index-tracking wrappers, loaders.

:func:`load_dataset` returns a :class:`DatasetBundle` holding three views of one dataset:
``train`` (augmented, what the optimiser sees), ``train_eval`` (the same samples in the same
order without augmentation, for eval-mode loss passes) and ``test``. Labels of the training
split are available as an array without decoding a single image, because the tracker needs
them before training starts.

Supported datasets (see :data:`REGISTRY`, which names each one's aliases, default epochs,
native image size and loader):

* ``fashion-mnist``: the IDX files (plain or ``.gz``), by default from
  ``/usr/share/datasets/fashion-mnist`` (Debian package ``dataset-fashion-mnist``); held in
  memory as one uint8 tensor and augmented on tensors.
* ``digits``: scikit-learn's bundled 8x8 digits, split 80/20 (stratified, seed 0).
* ``auto``: Fashion-MNIST when its files are there, else digits (with a one-line notice).
* ``cifar10`` / ``cifar100``: torchvision's CIFAR readers.
* ``imagefolder``: an ImageNet-style tree with ``train/`` and ``val/`` class folders.
* ``webdataset``: WebDataset tar shards (a brace pattern), read as a stream with string keys
  mapped to original indices by an index (:mod:`cldfast.data.stream`).

Index spaces: :func:`split_train_val` returns ORIGINAL dataset indices; :class:`IndexedSubset`
serves the samples at those indices and reports each one's POSITION in the subset, which is
what a tracker over that subset is indexed by (``subset.indices[position]`` maps back).
"""

from __future__ import annotations

import copy
import gzip
import hashlib
import os
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Protocol, Sequence, Union, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..defaults import VAL_FRACTION
from .indexed import IndexedDataset, IndexedSubset, as_index_array, make_loader, split_train_val

__all__ = [
    "DATASETS",
    "DEFAULT_EPOCHS",
    "DEFAULT_FASHION_MNIST_PATH",
    "EMBEDDED",
    "REGISTRY",
    "DatasetBundle",
    "DatasetEntry",
    "InMemoryImageDataset",
    "BatchServing",
    "serves_batches",
    "holds_tensors",
    "IndexedDataset",
    "IndexedSubset",
    "bundle_from_datasets",
    "canonical_name",
    "default_epochs",
    "is_embedded",
    "dataset_fingerprint",
    "load_dataset",
    "make_loader",
    "read_idx",
    "split_train_val",
]

PathLike = Union[str, "os.PathLike[str]"]

#: Where Debian's ``dataset-fashion-mnist`` package puts the IDX files.
DEFAULT_FASHION_MNIST_PATH = "/usr/share/datasets/fashion-mnist"

_FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
# Per-pixel statistics of the Fashion-MNIST training images (scaled to [0, 1]).
_FASHION_MNIST_MEAN = (0.2860,)
_FASHION_MNIST_STD = (0.3530,)

_CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)

# IDX type codes (third byte of the magic number) -> big-endian numpy dtype.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


@dataclass
class DatasetBundle:
    """One dataset, ready for training with CLD.

    Attributes:
        name: canonical dataset name (one of :data:`DATASETS`, never ``auto``).
        train: training split with training augmentation; item ``i`` is
            ``(image: float32 Tensor [C, H, W], label: int)``.
        train_eval: the same samples as ``train`` in the same order, without augmentation.
        test: the test (or ImageNet ``val``) split, without augmentation.
        train_targets: int64 [len(train)], the label of every training item in dataset order.
        test_targets: int64 [len(test)].
        num_classes: number of classes; labels are in ``[0, num_classes)``.
        input_shape: ``(C, H, W)`` of an image after the transforms.
        class_names: ``num_classes`` human-readable names, indexed by label.
        fingerprint: 16 hex digits identifying the data (see :func:`dataset_fingerprint`).
        val_indices: ORIGINAL indices of the training items that form a validation split
            given with the data (:func:`bundle_from_datasets` with ``val=``): CLD's V is then
            this split instead of a seeded share of the training set, and a full training run
            leaves it out. ``None`` (the named datasets): V is split off by
            :func:`split_train_val`.
    """

    name: str
    train: Dataset
    train_eval: Dataset
    test: Dataset
    train_targets: np.ndarray
    test_targets: np.ndarray
    num_classes: int
    input_shape: tuple[int, int, int]
    class_names: list[str] = field(default_factory=list)
    fingerprint: str = ""
    val_indices: Optional[np.ndarray] = None  # a validation split given with the data (never trained on)

    @property
    def streamed(self) -> bool:
        """Whether the splits are streams (WebDataset shards: :mod:`cldfast.data.stream`),
        read in order through their ``training_view`` / ``eval_view`` instead of by index."""
        from .stream import is_streamed

        return is_streamed(self.train)

    @property
    def registry_name(self) -> str:
        """The :data:`REGISTRY` name of this dataset, whose default epochs apply
        (:func:`default_epochs`), or :data:`CUSTOM` for a bundle of your own."""
        try:
            return canonical_name(self.name)
        except (TypeError, ValueError):
            return CUSTOM

    def split_train_val(self, val_fraction: float = VAL_FRACTION,
                        seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(training split, validation split V) in ORIGINAL indices: the bundle's own
        ``val_indices`` when it has them (every other index is the training split), else a
        seeded ``val_fraction`` of each class (:func:`split_train_val`)."""
        if self.val_indices is not None:
            val = np.asarray(self.val_indices, dtype=np.int64)
            return np.setdiff1d(np.arange(len(self.train_targets)), val), val
        return split_train_val(self.train_targets, val_fraction, seed)

    def __repr__(self) -> str:
        return (f"DatasetBundle(name={self.name!r}, train={len(self.train_targets)}, "
                f"test={len(self.test_targets)}, num_classes={self.num_classes}, "
                f"input_shape={self.input_shape}, fingerprint={self.fingerprint!r})")


# --------------------------------------------------------------------------------------------
# IDX files
# --------------------------------------------------------------------------------------------

def read_idx(path: PathLike) -> np.ndarray:
    """Reads one IDX file (the MNIST format), plain or gzip-compressed (``.gz`` suffix).

    Returns:
        an array of the file's shape and element type, in native byte order
        (uint8 for image and label files).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: bad magic number, unknown type code, or the data is truncated, has
            trailing bytes, or the gzip stream is corrupt; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file not found: {path}")
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise ValueError(f"cannot read IDX file {path}: corrupt or truncated gzip data ({e})") from None

    if len(raw) < 4:
        raise ValueError(f"IDX file {path} is truncated: {len(raw)} bytes, shorter than the 4-byte header")
    if raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        magic = int.from_bytes(raw[:4], "big")
        raise ValueError(f"IDX file {path} has bad magic number 0x{magic:08x}; expected 0x0000TTDD "
                         f"with type TT in {{{', '.join(f'0x{t:02x}' for t in _IDX_DTYPES)}}}")
    dtype = _IDX_DTYPES[raw[2]]
    ndim = raw[3]
    if ndim == 0:
        raise ValueError(f"IDX file {path} declares 0 dimensions; expected at least 1")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"IDX file {path} is truncated inside its header ({len(raw)} of {header} bytes)")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    found = len(raw) - header
    if found < expected:
        raise ValueError(f"IDX file {path} is truncated: shape {dims} needs {expected} bytes of data, "
                         f"found {found}")
    if found > expected:
        raise ValueError(f"IDX file {path} has {found - expected} unexpected trailing bytes after "
                         f"shape {dims} ({expected} bytes of data)")
    arr = np.frombuffer(raw, dtype=dtype, count=expected // dtype.itemsize, offset=header)
    # Copy into native byte order: the buffer is read-only and torch cannot take big-endian data.
    return arr.reshape(dims).astype(dtype.newbyteorder("="), copy=True)


def _find_idx(root: Path, base: str) -> Optional[Path]:
    """The file ``base`` or ``base.gz`` under ``root`` (or torchvision's ``FashionMNIST/raw``)."""
    for folder in (root, root / "FashionMNIST" / "raw"):
        for name in (base, base + ".gz"):
            candidate = folder / name
            if candidate.is_file():
                return candidate
    return None


def _fashion_mnist_files(root: Path) -> dict[str, Optional[Path]]:
    return {key: _find_idx(root, base) for key, base in _FASHION_MNIST_FILES.items()}


# --------------------------------------------------------------------------------------------
# In-memory datasets
# --------------------------------------------------------------------------------------------

@runtime_checkable
class BatchServing(Protocol):
    """A map-style dataset that can serve many items at once, without per-item Python.

    The eval loop (:func:`cldfast.training.evaluation.eval_batches`) reads such a dataset
    with ``batch`` instead of a DataLoader when it is not augmented (:func:`serves_batches`).
    ``batch(indices)`` must equal stacking ``dataset[i]`` for every ``i`` of the int64 CPU
    tensor ``indices``, returning ``(x [B, ...], y int64 [B])``. :class:`InMemoryImageDataset`
    implements it; any dataset with these two members gets the same fast path.
    """

    #: Whether items are randomly transformed (then ``batch`` is not used).
    augmented: bool

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


def serves_batches(dataset: Any) -> bool:
    """Whether ``dataset`` may be read a batch at a time: it implements
    :class:`BatchServing` and is not augmented."""
    return isinstance(dataset, BatchServing) and not dataset.augmented


class InMemoryImageDataset(Dataset):
    """Images held as one integer tensor, normalised (and optionally augmented) per item.

    Serving from one tensor avoids a PIL round trip per item, which dominates the cost of
    small-image training on CPU.

    Args:
        images: integer tensor [N, C, H, W] (uint8 for 8-bit images).
        targets: int64 array or tensor [N].
        mean, std: per-channel statistics of ``images / max_value``; C values each.
        max_value: pixel value that maps to 1.0 before normalisation (255 for 8-bit).
        flip: randomly mirror images horizontally (p = 0.5).
        crop_padding: if > 0, zero-pad by this many pixels on each side and take a random
            H x W crop (the usual "random crop with padding"); 0 disables it.

    Item ``i`` is ``(x: float32 Tensor [C, H, W], y: int)``. Randomness comes from torch's
    global generator (per-worker seeded by the DataLoader).
    """

    def __init__(self, images: torch.Tensor, targets: Any, mean: Sequence[float],
                 std: Sequence[float], *, max_value: float = 255.0, flip: bool = False,
                 crop_padding: int = 0) -> None:
        if images.dim() != 4:
            raise ValueError(f"images must be a 4-D tensor [N, C, H, W]; got shape {tuple(images.shape)}")
        targets = torch.as_tensor(np.asarray(targets), dtype=torch.int64)
        if targets.shape != (images.shape[0],):
            raise ValueError(f"targets must have shape [{images.shape[0]}] to match images; "
                             f"got {tuple(targets.shape)}")
        channels = images.shape[1]
        if len(mean) != channels or len(std) != channels:
            raise ValueError(f"mean and std need {channels} values (one per channel); "
                             f"got {len(mean)} and {len(std)}")
        if crop_padding < 0:
            raise ValueError(f"crop_padding must be >= 0; got {crop_padding}")
        self.images = images
        self.targets = targets
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.max_value = float(max_value)
        self.flip = bool(flip)
        self.crop_padding = int(crop_padding)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x = self.images[index].to(torch.float32).div_(self.max_value)
        if self.flip and bool(torch.rand(()) < 0.5):
            x = x.flip(-1)
        if self.crop_padding:
            p = self.crop_padding
            h, w = x.shape[-2:]
            # Pad before normalising so the border is black, like padding the raw image.
            padded = F.pad(x, (p, p, p, p))
            top, left = (int(v) for v in torch.randint(0, 2 * p + 1, (2,)))
            x = padded[:, top:top + h, left:left + w]
        x = (x - self.mean) / self.std
        return x, int(self.targets[index])

    @property
    def augmented(self) -> bool:
        """Whether items are randomly transformed (then :meth:`batch` is refused)."""
        return self.flip or self.crop_padding > 0

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Items ``indices`` at once, without per-item Python: what stacking
        ``self[i]`` for every ``i`` gives, element for element (the same float32 operations).

        Args:
            indices: int64 [B] dataset indices (CPU).
        Returns:
            (x float32 [B, C, H, W], y int64 [B]).
        Only for datasets without augmentation (the eval-mode views such as ``train_eval``).
        """
        if self.augmented:
            raise ValueError("batch() serves un-augmented views only (flip=False, crop_padding=0); "
                             "use the dataset's train_eval / test view, or index items one by one")
        x = self.images[indices].to(torch.float32).div_(self.max_value)
        x = (x - self.mean) / self.std
        return x, self.targets[indices]

    def with_augmentation(self, *, flip: bool, crop_padding: int) -> "InMemoryImageDataset":
        """A view sharing this dataset's image tensor, with different augmentation."""
        view = copy.copy(self)
        view.flip = bool(flip)
        view.crop_padding = int(crop_padding)
        return view


# --------------------------------------------------------------------------------------------
# Fingerprints
# --------------------------------------------------------------------------------------------

def dataset_fingerprint(name: str, train_targets: Any, num_test: int,
                        content: Iterable[Union[bytes, bytearray, memoryview, np.ndarray]] = ()) -> str:
    """A short, deterministic identifier of a dataset's contents.

    SHA-256 over the canonical name, the train and test sizes, the train label vector (as
    little-endian int64) and ``content`` (raw image bytes of the train split, or for
    file-backed datasets the sorted relative file paths); the first 16 hex digits.

    Args:
        name: canonical dataset name.
        train_targets: int [N], labels of the training split in dataset order.
        num_test: number of test items.
        content: byte chunks (numpy arrays are hashed as their C-contiguous bytes).
    """
    labels = np.ascontiguousarray(np.asarray(train_targets), dtype="<i8")
    h = hashlib.sha256()
    h.update(f"cldfast-dataset-v1\0{name}\0{labels.shape[0]}\0{int(num_test)}\0".encode())
    h.update(labels.tobytes())
    for chunk in content:
        if isinstance(chunk, np.ndarray):
            chunk = memoryview(np.ascontiguousarray(chunk)).cast("B")
        h.update(chunk)
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# Loaders per dataset: fn(data_path, *, download, augment, image_size, **options) -> bundle,
# each one named in the registry below
# --------------------------------------------------------------------------------------------

def _load_fashion_mnist(data_path: Optional[PathLike], *, augment: bool = True,
                        **_unused: Any) -> DatasetBundle:
    root = Path(data_path) if data_path is not None else Path(DEFAULT_FASHION_MNIST_PATH)
    if not root.is_dir():
        raise FileNotFoundError(f"Fashion-MNIST folder not found: {root} (apt-get install "
                                "dataset-fashion-mnist, or pass data_path= / --data-path)")
    files = _fashion_mnist_files(root)
    missing = [_FASHION_MNIST_FILES[k] for k, p in files.items() if p is None]
    if missing:
        raise FileNotFoundError(f"Fashion-MNIST files missing in {root}: {', '.join(missing)} "
                                "(each plain or .gz); apt-get install dataset-fashion-mnist, "
                                "or pass data_path= / --data-path")
    arrays = {key: read_idx(path) for key, path in files.items()}  # type: ignore[arg-type]
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        img_path, lbl_path = files[f"{split}_images"], files[f"{split}_labels"]
        if images.ndim != 3 or images.dtype != np.uint8:
            raise ValueError(f"{img_path}: expected uint8 images [N, H, W]; got {images.dtype} "
                             f"of shape {images.shape}")
        if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            raise ValueError(f"{lbl_path}: expected {images.shape[0]} labels to match "
                             f"{img_path}; got shape {labels.shape}")
        if labels.size and int(labels.max()) >= len(_FASHION_MNIST_CLASSES):
            raise ValueError(f"{lbl_path}: label {int(labels.max())} is outside [0, 10)")
    if arrays["train_images"].shape[1:] != arrays["test_images"].shape[1:]:
        raise ValueError(f"train and test images differ in size: {arrays['train_images'].shape[1:]} "
                         f"vs {arrays['test_images'].shape[1:]}")

    train_images = torch.from_numpy(arrays["train_images"]).unsqueeze(1)
    test_images = torch.from_numpy(arrays["test_images"]).unsqueeze(1)
    train_targets = arrays["train_labels"].astype(np.int64)
    test_targets = arrays["test_labels"].astype(np.int64)

    train_eval = InMemoryImageDataset(train_images, train_targets, _FASHION_MNIST_MEAN, _FASHION_MNIST_STD)
    train = train_eval.with_augmentation(flip=augment, crop_padding=2 if augment else 0)
    test = InMemoryImageDataset(test_images, test_targets, _FASHION_MNIST_MEAN, _FASHION_MNIST_STD)
    _, h, w = arrays["train_images"].shape
    return DatasetBundle(
        name="fashion-mnist", train=train, train_eval=train_eval, test=test,
        train_targets=train_targets, test_targets=test_targets,
        num_classes=len(_FASHION_MNIST_CLASSES), input_shape=(1, int(h), int(w)),
        class_names=list(_FASHION_MNIST_CLASSES),
        fingerprint=dataset_fingerprint("fashion-mnist", train_targets, len(test_targets),
                                        [arrays["train_images"]]),
    )


def _load_digits(data_path: Optional[PathLike] = None, **_unused: Any) -> DatasetBundle:
    """scikit-learn's bundled digits (``data_path`` is not used)."""
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        raise ImportError("the 'digits' dataset needs scikit-learn: pip install "
                          "'cldfast[pipeline]' (or pip install scikit-learn)") from None
    digits = load_digits()
    # Pixel values are counts 0..16, so uint8 holds them exactly.
    images = np.asarray(digits.images, dtype=np.uint8)
    labels = np.asarray(digits.target, dtype=np.int64)
    train_idx, test_idx = train_test_split(np.arange(labels.shape[0]), test_size=0.2,
                                           random_state=0, stratify=labels)
    # Keep the original order inside each split so that dataset order is easy to reason about.
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    train_images = np.ascontiguousarray(images[train_idx])
    scaled = train_images.astype(np.float64) / 16.0
    mean, std = (float(scaled.mean()),), (float(scaled.std()),)

    train_targets, test_targets = labels[train_idx], labels[test_idx]
    train = InMemoryImageDataset(torch.from_numpy(train_images).unsqueeze(1), train_targets,
                                 mean, std, max_value=16.0)
    # No augmentation: flips and shifts change the identity of 8x8 digits more than they help.
    train_eval = train.with_augmentation(flip=False, crop_padding=0)
    test = InMemoryImageDataset(torch.from_numpy(np.ascontiguousarray(images[test_idx])).unsqueeze(1),
                                test_targets, mean, std, max_value=16.0)
    return DatasetBundle(
        name="digits", train=train, train_eval=train_eval, test=test,
        train_targets=train_targets, test_targets=test_targets, num_classes=10,
        input_shape=(1, 8, 8), class_names=[str(d) for d in range(10)],
        fingerprint=dataset_fingerprint("digits", train_targets, len(test_targets), [train_images]),
    )


def _with_transform(dataset: Any, transform: Callable) -> Any:
    """A shallow copy of a torchvision dataset that applies ``transform`` instead.

    The copy shares the loaded data (CIFAR's array, ImageFolder's sample list), so the
    augmented and plain views cost no extra memory or loading time.
    """
    from torchvision.datasets.vision import StandardTransform

    view = copy.copy(dataset)
    view.transform = transform
    view.transforms = StandardTransform(transform, getattr(dataset, "target_transform", None))
    return view


def _load_cifar(name: str, data_path: Optional[PathLike], *, download: bool = False,
                augment: bool = True, **_unused: Any) -> DatasetBundle:
    from torchvision import datasets, transforms

    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    pretty = "CIFAR-10" if name == "cifar10" else "CIFAR-100"
    root = Path(data_path) if data_path is not None else Path("data")
    folder = root / cls.base_folder
    needed = [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    missing = [f for f in needed if not (folder / f).is_file()]
    if missing and not download:
        raise FileNotFoundError(f"{pretty} not found: looked in {folder} and missing "
                                f"{', '.join(missing)}; pass download=True (--download on the "
                                f"command line) to fetch it into {root}, or --data-path to point "
                                "at the folder that holds " + cls.base_folder)

    mean, std = _CIFAR_STATS[name]
    normalize = [transforms.ToTensor(), transforms.Normalize(mean, std)]
    eval_tf = transforms.Compose(normalize)
    train_tf = transforms.Compose([transforms.RandomCrop(32, padding=4),
                                   transforms.RandomHorizontalFlip()] + normalize)
    try:
        train_eval = cls(root=str(root), train=True, download=download, transform=eval_tf)
        test = cls(root=str(root), train=False, download=False, transform=eval_tf)
    except RuntimeError as e:
        raise ValueError(f"{pretty} files in {folder} failed torchvision's checksum ({e}); delete "
                         "the folder and fetch it again with --download") from None
    train = _with_transform(train_eval, train_tf) if augment else train_eval

    train_targets = np.asarray(train_eval.targets, dtype=np.int64)
    test_targets = np.asarray(test.targets, dtype=np.int64)
    return DatasetBundle(
        name=name, train=train, train_eval=train_eval, test=test,
        train_targets=train_targets, test_targets=test_targets,
        num_classes=len(train_eval.classes), input_shape=(3, 32, 32),
        class_names=list(train_eval.classes),
        fingerprint=dataset_fingerprint(name, train_targets, len(test_targets), [train_eval.data]),
    )


def _image_folder(path: Path, transform: Callable) -> Any:
    from torchvision import datasets

    if not path.is_dir():
        raise FileNotFoundError(f"image folder not found: {path} (expected one sub-folder per class)")
    try:
        return datasets.ImageFolder(str(path), transform=transform)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"no usable class folders or images in {path}: {e}") from None


def _load_image_folder(data_path: Optional[PathLike], *, augment: bool = True,
                       image_size: Optional[int] = None, **_unused: Any) -> DatasetBundle:
    from torchvision import transforms

    if data_path is None:
        raise ValueError("data_path is required for 'imagefolder': a folder holding train/ and val/, "
                         "each with one sub-folder per class")
    root = Path(data_path)
    size = 224 if image_size is None else int(image_size)
    if size < 1:
        raise ValueError(f"image_size must be >= 1; got {image_size}")
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise FileNotFoundError(f"'imagefolder' needs {root / split} (ImageNet layout: "
                                    f"{root}/train/<class>/*.jpg and {root}/val/<class>/*.jpg)")

    normalize = [transforms.ToTensor(), transforms.Normalize(_IMAGENET_MEAN, _IMAGENET_STD)]
    eval_tf = transforms.Compose([transforms.Resize(int(size * 256 / 224)),
                                  transforms.CenterCrop(size)] + normalize)
    train_tf = transforms.Compose([transforms.RandomResizedCrop(size),
                                   transforms.RandomHorizontalFlip()] + normalize)
    train_eval = _image_folder(root / "train", eval_tf)
    test = _image_folder(root / "val", eval_tf)
    if train_eval.classes != test.classes:
        only_train = sorted(set(train_eval.classes) - set(test.classes))
        only_val = sorted(set(test.classes) - set(train_eval.classes))
        raise ValueError(f"class folders of {root / 'train'} and {root / 'val'} differ: only in "
                         f"train: {only_train[:10]}{' ...' if len(only_train) > 10 else ''}; only "
                         f"in val: {only_val[:10]}{' ...' if len(only_val) > 10 else ''}")
    train = _with_transform(train_eval, train_tf) if augment else train_eval

    train_targets = np.asarray(train_eval.targets, dtype=np.int64)
    test_targets = np.asarray(test.targets, dtype=np.int64)
    rel_paths = sorted(Path(p).relative_to(root).as_posix() for p, _ in train_eval.samples)
    return DatasetBundle(
        name="imagefolder", train=train, train_eval=train_eval, test=test,
        train_targets=train_targets, test_targets=test_targets,
        num_classes=len(train_eval.classes), input_shape=(3, size, size),
        class_names=list(train_eval.classes),
        fingerprint=dataset_fingerprint("imagefolder", train_targets, len(test_targets),
                                        ["\n".join(rel_paths).encode()]),
    )


def _load_cifar10(data_path: Optional[PathLike], **kwargs: Any) -> DatasetBundle:
    return _load_cifar("cifar10", data_path, **kwargs)


def _load_cifar100(data_path: Optional[PathLike], **kwargs: Any) -> DatasetBundle:
    return _load_cifar("cifar100", data_path, **kwargs)


def _load_webdataset(data_path: Any, *, augment: bool = True, image_size: Optional[int] = None,
                     index: Any = None, test_data_path: Any = None,
                     shuffle_buffer: Optional[int] = None, **_unused: Any) -> DatasetBundle:
    from .stream import load_webdataset

    return load_webdataset(data_path, index=index, test_data_path=test_data_path,
                           augment=augment, image_size=image_size, shuffle_buffer=shuffle_buffer)


# --------------------------------------------------------------------------------------------
# The registry: one entry per named dataset (aliases, default epochs, native size, loader)
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DatasetEntry:
    """One named dataset of :data:`REGISTRY`.

    Attributes:
        name: the canonical name (lower case, ``-`` between words).
        load: ``load(data_path, *, download, augment, image_size, **options)`` returning a
            :class:`DatasetBundle` named ``name``; arguments it has no use for are accepted
            and ignored.
        epochs: default epochs ``(retraining, proxy)`` when the caller gives none
            (:func:`default_epochs`, :func:`cldfast.training.default_recipe`).
        aliases: other spellings :func:`canonical_name` maps to ``name`` (after lower-casing
            and ``_`` -> ``-``).
        native_size: side of the dataset's square images; ``image_size`` must then be left
            out or equal to it. ``None``: ``image_size`` is passed on to ``load``.
        embedded: shipped with (or bundled for) the package: the quick default data.
        options: keyword arguments of ``load`` beyond the common ones, which only this
            dataset accepts (e.g. WebDataset's ``index``).
    """

    name: str
    load: Callable[..., DatasetBundle]
    epochs: tuple[int, int]
    aliases: tuple[str, ...] = ()
    native_size: Optional[int] = None
    embedded: bool = False
    options: tuple[str, ...] = ()


#: The named datasets, in the order ``--help`` lists them. Default epochs: the embedded data
#: gets a quick recipe that fits a 2-core CPU in minutes (docs/method.md says what it can and
#: cannot show); CIFAR the authors' 164 epochs; ImageFolder and WebDataset shards (ImageNet) 90.
REGISTRY: dict[str, DatasetEntry] = {e.name: e for e in (
    DatasetEntry("fashion-mnist", _load_fashion_mnist, (8, 10), aliases=("fmnist", "fashionmnist"),
                 native_size=28, embedded=True),
    DatasetEntry("digits", _load_digits, (8, 10), native_size=8, embedded=True),
    DatasetEntry("cifar10", _load_cifar10, (164, 164), aliases=("cifar-10",), native_size=32),
    DatasetEntry("cifar100", _load_cifar100, (164, 164), aliases=("cifar-100",), native_size=32),
    DatasetEntry("imagefolder", _load_image_folder, (90, 90), aliases=("image-folder",)),
    DatasetEntry("webdataset", _load_webdataset, (90, 90), aliases=("wds",),
                 options=("index", "test_data_path", "shuffle_buffer")),
)}

#: ``auto``: the embedded Fashion-MNIST when its files are there, else digits
#: (:func:`load_dataset`); its default epochs are Fashion-MNIST's.
AUTO = "auto"
#: The name of user bundles (:func:`bundle_from_datasets`) and their default epochs: the
#: authors' CIFAR recipe.
CUSTOM = "custom"
CUSTOM_EPOCHS: tuple[int, int] = (164, 164)

#: Canonical dataset names accepted by :func:`load_dataset` (case-insensitive; ``_`` and
#: ``-`` are interchangeable, and each entry's aliases, e.g. ``fmnist``, work too).
DATASETS: tuple[str, ...] = (AUTO, *REGISTRY)
#: Default epochs per dataset, ``(retraining, proxy)``, from :data:`REGISTRY` (``cldfast
#: run`` and :func:`cldfast.pipeline.run` both take them from here), plus :data:`CUSTOM`'s.
DEFAULT_EPOCHS: dict[str, tuple[int, int]] = {**{n: e.epochs for n, e in REGISTRY.items()},
                                              CUSTOM: CUSTOM_EPOCHS}
#: The datasets shipped with (or bundled for) the package.
EMBEDDED: tuple[str, ...] = tuple(n for n, e in REGISTRY.items() if e.embedded)


def canonical_name(name: str) -> str:
    """The registry's name for ``name`` (case-insensitive, ``_`` = ``-``, aliases such as
    ``fmnist``, ``fashionmnist``, ``cifar-10``); ``auto`` stays ``auto``."""
    if not isinstance(name, str):
        raise TypeError(f"dataset name must be a string, one of {', '.join(DATASETS)}; got {name!r}")
    key = name.strip().lower().replace("_", "-")
    key = next((e.name for e in REGISTRY.values() if key in e.aliases), key)
    if key != AUTO and key not in REGISTRY:
        raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)} "
                         "(aliases: fmnist, fashion_mnist)")
    return key


def is_embedded(name: str) -> bool:
    """Whether ``name`` means the embedded data (``auto``, Fashion-MNIST or digits)."""
    try:
        key = canonical_name(name)
    except (TypeError, ValueError):
        return False
    return key == AUTO or REGISTRY[key].embedded


def default_epochs(name: str, role: str = "train") -> int:
    """Epochs of a ``role`` (``"train"``: a retraining, ``"proxy"``: the tracked proxy) on
    dataset ``name`` when the caller gives none (see :data:`DEFAULT_EPOCHS`)."""
    if role not in ("train", "proxy"):
        raise ValueError(f"role must be 'train' or 'proxy'; got {role!r}")
    key = CUSTOM if name == CUSTOM else canonical_name(name)
    key = "fashion-mnist" if key == AUTO else key
    entry = REGISTRY.get(key)
    return (entry.epochs if entry is not None else CUSTOM_EPOCHS)[0 if role == "train" else 1]


def _resolve_auto(data_path: Optional[PathLike]) -> str:
    """What ``auto`` loads: Fashion-MNIST when its files are at ``data_path`` (default
    :data:`DEFAULT_FASHION_MNIST_PATH`), else digits, said on stderr."""
    root = Path(data_path) if data_path is not None else Path(DEFAULT_FASHION_MNIST_PATH)
    if root.is_dir() and all(p is not None for p in _fashion_mnist_files(root).values()):
        return "fashion-mnist"
    print(f"cldfast: Fashion-MNIST not found at {root}; using scikit-learn's digits instead "
          "(apt-get install dataset-fashion-mnist, or pass --data-path)", file=sys.stderr)
    return "digits"


def load_dataset(name: str = "auto", data_path: Optional[PathLike] = None, *, download: bool = False,
                 augment: bool = True, image_size: Optional[int] = None,
                 index: Optional[PathLike] = None, test_data_path: Any = None,
                 shuffle_buffer: Optional[int] = None) -> DatasetBundle:
    """Loads a dataset as a :class:`DatasetBundle`.

    Args:
        name: one of :data:`DATASETS` (case-insensitive; ``fashion_mnist`` and ``fmnist``
            mean ``fashion-mnist``; each entry of :data:`REGISTRY` lists its aliases).
        data_path: where the data lives. Fashion-MNIST: the folder of IDX files (default
            ``/usr/share/datasets/fashion-mnist``). CIFAR: the folder holding
            ``cifar-10-batches-py`` / ``cifar-100-python`` (default ``./data``). ImageFolder:
            the folder holding ``train/`` and ``val/`` (required). WebDataset: the training
            shards, a brace pattern such as ``'shards/train-{000000..000146}.tar'``
            (required). Ignored for ``digits``.
        download: CIFAR only: fetch the data into ``data_path`` if it is not there.
        augment: apply training augmentation to ``bundle.train`` (Fashion-MNIST: flip and
            random crop 28 with padding 2; CIFAR: random crop 32 with padding 4 and flip;
            ImageFolder: RandomResizedCrop and flip; WebDataset: RandomResizedCrop and flip
            with ``image_size``, else a flip; digits: none). ``False`` makes ``train`` match
            ``train_eval``.
        image_size: ImageFolder: side of the square crop (default 224). WebDataset: resize
            and crop to this size (default: images as stored, all of one size).
        index, test_data_path, shuffle_buffer: WebDataset only: the index file of keys and
            labels (read if it exists, else written by a listing pass), the test split's
            shard pattern, and the shuffle buffer per loader worker (see
            :func:`cldfast.data.stream.load_webdataset`).

    Raises:
        ValueError: unknown name, bad ``image_size``, corrupt files.
        FileNotFoundError: the data is not where it was looked for; the message says where.
    """
    key = canonical_name(name)
    options = {"index": index, "test_data_path": test_data_path, "shuffle_buffer": shuffle_buffer}
    for arg, value in options.items():
        takers = [n for n, e in REGISTRY.items() if arg in e.options]
        if value is not None and key not in takers:
            flag = "--" + arg.replace("_", "-")
            raise ValueError(f"{arg}={value!r} ({flag}) applies to dataset "
                             f"{' / '.join(repr(n) for n in takers)} only; got dataset {name!r}")
    if key == AUTO:
        key = _resolve_auto(data_path)
    entry = REGISTRY[key]
    native = entry.native_size
    if native is not None and image_size is not None and int(image_size) != native:
        raise ValueError(f"image_size={image_size} is not supported for {key} (its images are "
                         f"{native}x{native}); image_size applies to "
                         "'imagefolder' only")
    given = {k: v for k, v in options.items() if k in entry.options}
    return entry.load(data_path, download=download, augment=augment, image_size=image_size,
                      **given)


# --------------------------------------------------------------------------------------------
# Your own datasets
# --------------------------------------------------------------------------------------------

def _targets_of(name: str, dataset: Any, given: Any) -> np.ndarray:
    if given is not None:
        t = np.asarray(given)
    elif hasattr(dataset, "targets"):
        t = np.asarray(dataset.targets)
    else:  # one pass over the items: only the labels are kept
        t = np.asarray([int(dataset[i][1]) for i in range(len(dataset))])
    if t.ndim != 1 or t.shape[0] != len(dataset):
        raise ValueError(f"{name}: expected {len(dataset)} labels (one per item); got shape {t.shape}")
    if t.size and not np.issubdtype(t.dtype, np.integer):
        raise TypeError(f"{name}: labels must be integer class ids; got dtype {t.dtype}")
    if t.size and int(t.min()) < 0:
        raise ValueError(f"{name}: labels must be >= 0; got {int(t.min())}")
    return t.astype(np.int64)


def bundle_from_datasets(train: Dataset, test: Dataset, *, val: Optional[Dataset] = None,
                         train_eval: Optional[Dataset] = None, num_classes: Optional[int] = None,
                         class_names: Optional[Sequence[str]] = None, name: str = "custom",
                         train_targets: Any = None, test_targets: Any = None,
                         val_targets: Any = None) -> DatasetBundle:
    """A :class:`DatasetBundle` from your own map-style datasets, for :mod:`cldfast.pipeline`.

    Args:
        train: items ``(input: Tensor, label: int)``, what the optimiser sees (augmented if
            you want).
        test: the same kind of items, for the test accuracy.
        val: optional validation dataset: CLD's V (never trained on). Without it the
            pipeline splits a seeded share of ``train`` off (``val_fraction``).
        train_eval: ``train``'s items in the same order without augmentation, for the
            eval-mode loss passes (the paper's estimator); default ``train`` itself.
        num_classes: default ``max(label) + 1`` over all splits.
        train_targets / test_targets / val_targets: the labels as arrays; default the
            dataset's ``targets`` attribute, else one pass over its items.

    Labels must be integers in ``[0, num_classes)``. The inputs' shape is read from the
    first item of ``train_eval``. Indices in scores and coreset files are positions in
    ``train`` (then ``val``'s items follow, at ``len(train) + j``).
    """
    from torch.utils.data import ConcatDataset

    train_eval = train if train_eval is None else train_eval
    if len(train_eval) != len(train):
        raise ValueError(f"train_eval has {len(train_eval)} items but train has {len(train)}; "
                         "it must hold the same samples in the same order")
    tr = _targets_of("train", train, train_targets)
    te = _targets_of("test", test, test_targets)
    va = _targets_of("val", val, val_targets) if val is not None else np.zeros(0, np.int64)
    seen = int(max([int(a.max()) for a in (tr, te, va) if a.size] or [0])) + 1
    if num_classes is None:
        num_classes = seen
    elif int(num_classes) < seen:
        raise ValueError(f"num_classes={num_classes} but the labels contain class {seen - 1}")
    first = train_eval[0][0]
    if not isinstance(first, torch.Tensor):
        raise TypeError(f"dataset items must be (Tensor, int); the first input is {type(first).__name__} "
                        "(add a transform such as torchvision.transforms.ToTensor())")
    shape = tuple(int(v) for v in first.shape)
    val_indices = None
    if val is not None:
        val_indices = np.arange(len(train), len(train) + len(val), dtype=np.int64)
        train, train_eval = ConcatDataset([train, val]), ConcatDataset([train_eval, val])
        tr = np.concatenate([tr, va])
    names = list(class_names) if class_names is not None else [str(c) for c in range(int(num_classes))]
    if len(names) != int(num_classes):
        raise ValueError(f"class_names has {len(names)} names for {num_classes} classes")
    return DatasetBundle(name=str(name), train=train, train_eval=train_eval, test=test,
                         train_targets=tr, test_targets=te, num_classes=int(num_classes),
                         input_shape=shape, class_names=names,
                         fingerprint=dataset_fingerprint(str(name), tr, len(te)),
                         val_indices=val_indices)


def holds_tensors(dataset: Any) -> bool:
    """Whether ``dataset`` serves items from tensors already in memory, without per-item
    decoding: an :class:`InMemoryImageDataset` (the embedded data), a ``TensorDataset``, or
    a subset / concatenation / index wrapper of such. Loaders over these run in the main
    process by default (``Recipe.workers="auto"`` gives 0 workers)."""
    from torch.utils.data import ConcatDataset, Subset, TensorDataset

    if isinstance(dataset, (InMemoryImageDataset, TensorDataset)):
        return True
    if isinstance(dataset, (Subset, IndexedSubset, IndexedDataset)):
        return holds_tensors(dataset.dataset)
    if isinstance(dataset, ConcatDataset):
        return all(holds_tensors(d) for d in dataset.datasets)
    return False
