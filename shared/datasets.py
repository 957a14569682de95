"""Where each dataset lives and what it contains, without reading its images.

The producer imports this module on laptops that have no torch (and maybe no numpy), so it must import neither;
decoding into tensors lives in :mod:`worker.data`. Nothing here downloads anything: a missing dataset is a
:class:`DatasetNotFound` whose one-line message says where we looked and how to install it.

Dataset names are those of :mod:`shared.specs`: ``fashion-mnist``, ``cifar10``, ``fake`` and
``imagefolder:<local path or s3://bucket/prefix>``.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from shared.settings import Settings
from shared.specs import BUILTIN_DATASETS
from shared.storage import Storage, StorageError, open_storage

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
FAKE_CLASSES = tuple(f"class{index}" for index in range(10))

# Where `apt-get install dataset-fashion-mnist` puts the four gzipped idx files.
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
# split -> (images file, labels file), without the optional ".gz"
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

CIFAR10_DIR_NAME = "cifar-10-batches-py"
CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{index}" for index in range(1, 6))
CIFAR10_TEST_BATCH = "test_batch"
CIFAR10_META = "batches.meta"

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
IMAGEFOLDER_PREFIX = "imagefolder:"
IMAGEFOLDER_SIZE = 64
# Every TEST_EVERY-th file of a class (in sorted order) is held out as the imagefolder test split.
IMAGEFOLDER_TEST_EVERY = 10


class DatasetNotFound(RuntimeError):
    """A dataset is not where it should be; the one-line message says where we looked and how to fix it."""


@dataclass(frozen=True)
class DatasetInfo:
    """What a located dataset is: its images' native size and channels, its classes, and where it lies."""

    name: str
    native_size: int
    channels: int
    class_names: tuple[str, ...]
    location: str

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


# Globals numpy needs to rebuild a uint8 array from a pickle (old and new module paths, protocols 2 to 5).
# Anything else in a data file is an attack or a mistake, so it is refused.
_PICKLE_ALLOWED = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that only rebuilds plain containers and numpy arrays: it cannot run arbitrary code."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in _PICKLE_ALLOWED:
            raise pickle.UnpicklingError(f"refused global {module}.{name}: only numpy arrays may be unpickled")
        if module.startswith("numpy.core."):
            # Files written by numpy 1 name numpy.core, which numpy 2 renamed to numpy._core (and warns on).
            try:
                return super().find_class("numpy._core." + module[len("numpy.core.") :], name)
            except ImportError:
                pass
        return super().find_class(module, name)


def restricted_load(handle: BinaryIO) -> object:
    """Unpickle HANDLE with :class:`RestrictedUnpickler`; byte strings stay bytes, as in the CIFAR-10 files."""
    return RestrictedUnpickler(handle, encoding="bytes").load()


def idx_file(directory: Path, stem: str) -> Path | None:
    """The idx file STEM in DIRECTORY, uncompressed or ``.gz``, or None when neither exists."""
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _data_dir(settings: Settings) -> Path | None:
    return Path(settings.data_dir).expanduser() if settings.data_dir else None


def _looked_in(dirs: list[Path], settings: Settings) -> str:
    where = ", ".join(str(directory) for directory in dirs)
    return where if settings.data_dir else f"{where} (AUGMENT_DATA_DIR is unset)"


def _locate_fashion_mnist(settings: Settings) -> DatasetInfo:
    data_dir = _data_dir(settings)
    candidates = [data_dir / "FashionMNIST" / "raw", data_dir / "fashion-mnist", data_dir] if data_dir else []
    candidates.append(FASHION_MNIST_SYSTEM_DIR)
    stems = [stem for files in FASHION_MNIST_FILES.values() for stem in files]
    for directory in candidates:
        if all(idx_file(directory, stem) for stem in stems):
            return DatasetInfo("fashion-mnist", 28, 1, FASHION_MNIST_CLASSES, str(directory))
    raise DatasetNotFound(
        f"Fashion-MNIST not found: looked in {_looked_in(candidates, settings)}; "
        "install it with `apt-get install -y dataset-fashion-mnist` "
        "or put the four idx files in $AUGMENT_DATA_DIR/FashionMNIST/raw/"
    )


def _locate_cifar10(settings: Settings) -> DatasetInfo:
    data_dir = _data_dir(settings)
    candidates = [data_dir / CIFAR10_DIR_NAME, data_dir] if data_dir else []
    needed = (*CIFAR10_TRAIN_BATCHES, CIFAR10_TEST_BATCH, CIFAR10_META)
    for directory in candidates:
        if all((directory / file_name).is_file() for file_name in needed):
            return DatasetInfo("cifar10", 32, 3, _cifar10_class_names(directory / CIFAR10_META), str(directory))
    where = _looked_in(candidates, settings) if candidates else "nowhere (AUGMENT_DATA_DIR is unset)"
    raise DatasetNotFound(
        f"CIFAR-10 not found: looked in {where}; extract cifar-10-python.tar.gz (the 'python version' from "
        f"https://www.cs.toronto.edu/~kriz/cifar.html) into $AUGMENT_DATA_DIR so that "
        f"$AUGMENT_DATA_DIR/{CIFAR10_DIR_NAME}/data_batch_1 exists"
    )


def _cifar10_class_names(meta_path: Path) -> tuple[str, ...]:
    with open(meta_path, "rb") as handle:
        meta = restricted_load(handle)
    names = meta.get(b"label_names") if isinstance(meta, dict) else None
    if not isinstance(names, list) or not names or not all(isinstance(name, bytes) for name in names):
        raise ValueError(f"{meta_path} has no label_names list; re-extract cifar-10-python.tar.gz")
    return tuple(name.decode("utf-8") for name in names)


@dataclass(frozen=True)
class ImageFolder:
    """The files of an ``imagefolder:`` dataset.

    ``files`` maps each class name (sorted) to its image paths (local) or storage keys (S3), sorted.
    ``storage`` is None for a local directory.
    """

    name: str
    location: str
    files: dict[str, tuple[str, ...]]
    storage: Storage | None

    @property
    def info(self) -> DatasetInfo:
        return DatasetInfo(self.name, IMAGEFOLDER_SIZE, 3, tuple(self.files), self.location)

    def read(self, ref: str) -> bytes:
        """The bytes of one image named as in ``files``."""
        return Path(ref).read_bytes() if self.storage is None else self.storage.get_bytes(ref)

    def split(self, split: str) -> list[tuple[str, int]]:
        """(file, class index) pairs of SPLIT: every tenth file of each class (sorted order) is "test"."""
        pairs = []
        for label, refs in enumerate(self.files.values()):
            for position, ref in enumerate(refs):
                is_test = position % IMAGEFOLDER_TEST_EVERY == IMAGEFOLDER_TEST_EVERY - 1
                if is_test == (split == "test"):
                    pairs.append((ref, label))
        return pairs


def _is_image(relative: str) -> bool:
    # Hidden segments are editor/OS droppings or FileStorage's in-flight ".tmp-" files, never data.
    return relative.lower().endswith(IMAGE_EXTENSIONS) and not any(part.startswith(".") for part in relative.split("/"))


def scan_image_folder(name: str, settings: Settings) -> ImageFolder:
    """List the class folders and images of NAME, ``imagefolder:<path or s3://bucket/prefix>``.

    Classes are the first path segment below the root; images may lie at any depth inside a class folder.
    Raises :class:`DatasetNotFound` when the root is missing or no class folder holds an image.
    """
    if not name.startswith(IMAGEFOLDER_PREFIX) or name == IMAGEFOLDER_PREFIX:
        raise ValueError(f"{name!r} is not an image folder dataset; use imagefolder:<path or s3://bucket/prefix>")
    target = name[len(IMAGEFOLDER_PREFIX) :]
    files: dict[str, list[str]] = {}
    storage: Storage | None = None
    if target.startswith("s3://"):
        try:
            storage = open_storage(settings, target, create_bucket=False)
        except StorageError as exc:
            raise DatasetNotFound(f"image folder {target}: {exc}") from None
        location = target
        for key in storage.list():
            class_name, slash, rest = key.partition("/")
            if slash and _is_image(key):
                files.setdefault(class_name, []).append(key)
    else:
        root = _local_image_root(target, settings)
        location = str(root)
        for path in root.rglob("*"):
            relative = path.relative_to(root).as_posix()
            if "/" in relative and _is_image(relative) and path.is_file():
                files.setdefault(relative.split("/", 1)[0], []).append(str(path))
    if not files:
        raise DatasetNotFound(
            f"image folder {location} has no class folder with images; lay it out as "
            f"<root>/<class name>/<image> with {', '.join(IMAGE_EXTENSIONS)} files"
        )
    ordered = {class_name: tuple(sorted(files[class_name])) for class_name in sorted(files)}
    return ImageFolder(name, location, ordered, storage)


def _local_image_root(target: str, settings: Settings) -> Path:
    path = Path(target).expanduser()
    candidates = [path]
    data_dir = _data_dir(settings)
    # A relative path is tried from the working directory, then from AUGMENT_DATA_DIR (where workers keep data).
    if not path.is_absolute() and data_dir:
        candidates.append(data_dir / path)
    for candidate in candidates:
        if candidate.is_dir():
            return candidate.resolve()
    raise DatasetNotFound(
        f"image folder not found: looked in {', '.join(str(candidate) for candidate in candidates)}; "
        "give an existing directory of class folders, or s3://bucket/prefix"
    )


def locate_dataset(name: str, settings: Settings) -> DatasetInfo:
    """Find dataset NAME without decoding its images; raise :class:`DatasetNotFound` if it is not there."""
    if name == "fake":
        return DatasetInfo("fake", 28, 1, FAKE_CLASSES, "generated")
    if name == "fashion-mnist":
        return _locate_fashion_mnist(settings)
    if name == "cifar10":
        return _locate_cifar10(settings)
    if name.startswith(IMAGEFOLDER_PREFIX) and name != IMAGEFOLDER_PREFIX:
        return scan_image_folder(name, settings).info
    raise DatasetNotFound(
        f"unknown dataset {name!r}; use one of {', '.join(BUILTIN_DATASETS)} or imagefolder:<path or s3://bucket/prefix>"
    )


__all__ = [
    "CIFAR10_DIR_NAME",
    "CIFAR10_META",
    "CIFAR10_TEST_BATCH",
    "CIFAR10_TRAIN_BATCHES",
    "FAKE_CLASSES",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_FILES",
    "IMAGE_EXTENSIONS",
    "IMAGEFOLDER_PREFIX",
    "IMAGEFOLDER_TEST_EVERY",
    "DatasetInfo",
    "DatasetNotFound",
    "ImageFolder",
    "RestrictedUnpickler",
    "idx_file",
    "locate_dataset",
    "restricted_load",
    "scan_image_folder",
]
