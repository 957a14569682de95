"""Datasets decoded once into uint8 tensors: the training fast path (no DataLoader, no per-item transforms).

:func:`load_dataset` finds a dataset with :func:`shared.datasets.locate_dataset` (so a missing one is a
:class:`~shared.datasets.DatasetNotFound`), decodes the whole split, keeps the subset asked for, and converts it
to the requested size and channels in one batched pass.

Split rules: Fashion-MNIST and CIFAR-10 use their official train/test files; ``fake`` makes 640 train and
160 test images; an image folder holds out every tenth file of each class, in sorted file order, as "test"
(so a class needs at least ten images to appear in the test split).
"""

from __future__ import annotations

import gzip
import io
import math
import os
import pickle
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageColor, ImageOps

from shared.datasets import (
    CIFAR10_TEST_BATCH,
    CIFAR10_TRAIN_BATCHES,
    FASHION_MNIST_FILES,
    IMAGEFOLDER_PREFIX,
    IMAGEFOLDER_TEST_EVERY,
    DatasetInfo,
    ImageFolder,
    idx_file,
    locate_dataset,
    restricted_load,
    scan_image_folder,
)
from shared.settings import Settings
from shared.specs import DEFAULT_BACKGROUND, long_tail_counts

SPLITS = ("train", "test")
FAKE_TRAIN_SIZE = 640
FAKE_TEST_SIZE = 160
FAKE_SIZE = 28
LUMA_WEIGHTS = (0.299, 0.587, 0.114)

# Images per batched conversion: bounds the float copy (CIFAR-10 at 64x64 in one go would need 2.4 GB).
_CONVERT_CHUNK = 2048
# PIL and S3 reads release the GIL, so threads overlap decoding and network waits.
_DECODE_THREADS = min(8, os.cpu_count() or 1)
_IDX_UNSIGNED_BYTE = 0x08
_CIFAR_ROW = 3 * 32 * 32


@dataclass
class ImageData:
    """A whole split in memory: ``images`` (N, C, H, W) uint8 and ``labels`` (N,) int64."""

    images: torch.Tensor
    labels: torch.Tensor
    info: DatasetInfo

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def load_dataset(
    name: str,
    settings: Settings,
    split: str = "train",
    image_size: int | None = None,
    channels: int | None = None,
    limit: int | None = None,
    per_class: int | None = None,
    seed: int = 0,
    imbalance: float | None = None,
    background: str = DEFAULT_BACKGROUND,
) -> ImageData:
    """Decode SPLIT of dataset NAME into uint8 tensors at IMAGE_SIZE x IMAGE_SIZE with CHANNELS channels.

    IMAGE_SIZE and CHANNELS default to the dataset's own. PER_CLASS keeps, for every class, the first PER_CLASS
    images of a permutation seeded by SEED (classes with fewer keep them all); with IMBALANCE, the subset is
    long-tailed instead: class c keeps ``long_tail_counts(PER_CLASS, IMBALANCE, K, SEED)[c]``. LIMIT then keeps the
    first LIMIT images. Kept images stay in dataset order. ``fake`` images are generated from SEED. An image folder's
    transparent pixels are composited on BACKGROUND (a colour name or #rrggbb); its grey images in an RGB folder
    repeat their grey in all three channels, and its colour images in a grey folder keep their luma.
    Raises DatasetNotFound when the dataset is missing, ValueError for bad arguments or corrupt files, and
    pickle.UnpicklingError (naming the file) for a CIFAR-10 batch that holds anything but arrays.
    """
    _check_arguments(split, image_size, channels, limit, per_class)
    if name.startswith(IMAGEFOLDER_PREFIX):
        folder = scan_image_folder(name, settings)
        info = folder.info
        size = image_size or info.native_size
        images, labels = _load_image_folder(folder, split, size, channels or info.channels, limit, per_class, seed,
                                            imbalance, background)
    else:
        info = locate_dataset(name, settings)
        if name == "fake":
            images, labels = _make_fake(split, seed)
        elif name == "fashion-mnist":
            images, labels = _load_fashion_mnist(Path(info.location), split)
        else:
            images, labels = _load_cifar10(Path(info.location), split, info.num_classes)
        keep = _select(labels, limit, per_class, seed, imbalance)
        if keep is not None:
            images, labels = images[keep], labels[keep]
    images = _convert(images, image_size or info.native_size, channels or info.channels)
    return ImageData(images=images, labels=labels, info=info)


def _check_arguments(
    split: str, image_size: int | None, channels: int | None, limit: int | None, per_class: int | None
) -> None:
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not allowed; use one of {', '.join(SPLITS)}")
    if channels not in (None, 1, 3):
        raise ValueError(f"channels={channels!r} is not allowed; use 1 or 3")
    for argument, value in (("image_size", image_size), ("limit", limit), ("per_class", per_class)):
        if value is not None and value < 1:
            raise ValueError(f"{argument}={value!r} must be a positive integer")


def _select(labels: torch.Tensor, limit: int | None, per_class: int | None, seed: int,
            imbalance: float | None = None) -> torch.Tensor | None:
    """Indices to keep (sorted), or None to keep everything."""
    if limit is None and per_class is None:
        return None
    keep = torch.arange(labels.shape[0])
    if per_class is not None:
        # A seeded permutation first, so that files sorted by source or date do not bias the sample.
        order = torch.randperm(labels.shape[0], generator=torch.Generator().manual_seed(seed))
        shuffled = labels[order]
        counts = (long_tail_counts(per_class, imbalance, int(labels.max()) + 1, seed) if imbalance
                  else [per_class] * (int(labels.max()) + 1))
        keep = torch.cat([order[shuffled == label][: counts[label]] for label in labels.unique().tolist()]).sort().values
    return keep[:limit] if limit is not None else keep


def _convert(images: torch.Tensor, size: int, channels: int) -> torch.Tensor:
    """Resize (bilinear, antialiased) and convert grey <-> RGB in chunks; returns IMAGES itself when nothing changes."""
    count, have, height, width = images.shape
    if (have, height, width) == (channels, size, size):
        return images
    weights = torch.tensor(LUMA_WEIGHTS).view(1, 3, 1, 1)
    out = torch.empty((count, channels, size, size), dtype=torch.uint8)
    for start in range(0, count, _CONVERT_CHUNK):
        chunk = images[start : start + _CONVERT_CHUNK].float()
        # Reduce to grey before resizing, and let grey reach RGB only as uint8 in the final broadcast copy:
        # resizing or rounding three identical float channels would triple the work.
        if have == 3 and channels == 1:
            chunk = (chunk * weights).sum(dim=1, keepdim=True)
        if (height, width) != (size, size):
            chunk = F.interpolate(chunk, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[start : start + _CONVERT_CHUNK] = chunk.round_().clamp_(0, 255).to(torch.uint8)
    return out


def read_idx(path: Path) -> np.ndarray:
    """Parse an unsigned-byte IDX file (gzipped or not) into a writable uint8 array of the shape in its header."""
    if path.suffix == ".gz":
        with gzip.open(path, "rb") as handle:
            data = handle.read()
    else:
        data = path.read_bytes()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != _IDX_UNSIGNED_BYTE:
        raise ValueError(f"{path} is not an unsigned-byte IDX file; reinstall the dataset")
    header = 4 + 4 * data[3]
    dims = struct.unpack(f">{data[3]}I", data[4:header]) if len(data) >= header else ()
    if len(dims) != data[3] or len(data) - header != math.prod(dims):
        raise ValueError(f"{path} is truncated or corrupt (header says shape {dims}); reinstall the dataset")
    # frombuffer views immutable bytes; the copy makes the array writable, as torch expects.
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims).copy()


def _load_fashion_mnist(directory: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    paths = []
    for stem in FASHION_MNIST_FILES[split]:
        path = idx_file(directory, stem)
        if path is None:
            raise ValueError(f"{directory} lost {stem}[.gz] while loading; reinstall the dataset")
        paths.append(path)
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise ValueError(f"{paths[0]} and {paths[1]} disagree: images {images.shape}, labels {labels.shape}")
    if labels.size and labels.max() >= 10:
        raise ValueError(f"{paths[1]} has label {labels.max()}; Fashion-MNIST labels are 0-9")
    return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels).long()


def _load_cifar10(directory: Path, split: str, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    names = CIFAR10_TRAIN_BATCHES if split == "train" else (CIFAR10_TEST_BATCH,)
    arrays, labels = [], []
    for name in names:
        path = directory / name
        with open(path, "rb") as handle:
            try:
                batch = restricted_load(handle)
            except pickle.UnpicklingError as exc:
                raise pickle.UnpicklingError(f"{path}: {exc}") from None
        data = batch.get(b"data") if isinstance(batch, dict) else None
        batch_labels = batch.get(b"labels") if isinstance(batch, dict) else None
        if (
            not isinstance(data, np.ndarray)
            or data.dtype != np.uint8
            or data.ndim != 2
            or data.shape[1] != _CIFAR_ROW
            or not isinstance(batch_labels, list)
            or len(batch_labels) != data.shape[0]
            or not all(isinstance(label, int) and 0 <= label < num_classes for label in batch_labels)
        ):
            raise ValueError(
                f"{path} is not a CIFAR-10 batch: it needs uint8 data of {_CIFAR_ROW} columns "
                f"and one label 0-{num_classes - 1} per row"
            )
        arrays.append(data)
        labels.extend(batch_labels)
    images = np.concatenate(arrays).reshape(-1, 3, 32, 32)
    return torch.from_numpy(images), torch.tensor(labels, dtype=torch.int64)


def _make_fake(split: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ten classes of a bright bar whose angle is the class times 18 degrees, jittered and noisy."""
    total = FAKE_TRAIN_SIZE + FAKE_TEST_SIZE
    generator = torch.Generator().manual_seed(seed)

    def uniform(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator) - 0.5

    labels = torch.arange(total) % 10
    angle = (labels * (math.pi / 10) + uniform(total) * (math.pi / 30)).view(-1, 1, 1)
    centre = ((FAKE_SIZE - 1) / 2 + uniform(total, 2) * 4).view(-1, 2, 1, 1)
    half_length = (10 + uniform(total) * 2).view(-1, 1, 1)
    half_width = (1.5 + uniform(total) * 0.6).view(-1, 1, 1)
    brightness = (215 + uniform(total) * 60).view(-1, 1, 1)
    axis = torch.arange(FAKE_SIZE, dtype=torch.float32)
    ys, xs = torch.meshgrid(axis, axis, indexing="ij")
    dx, dy = xs - centre[:, 0], ys - centre[:, 1]
    along = dx * torch.cos(angle) + dy * torch.sin(angle)
    across = dy * torch.cos(angle) - dx * torch.sin(angle)
    # Soft edges in both directions keep the bar free of aliasing, so its angle is clear even at 28x28.
    bar = torch.exp(-((across / half_width) ** 2)) * torch.sigmoid(2 * (half_length - along.abs()))
    noise = torch.randn(total, FAKE_SIZE, FAKE_SIZE, generator=generator) * 10
    images = (20 + brightness * bar + noise).round().clamp(0, 255).to(torch.uint8).unsqueeze(1)
    part = slice(0, FAKE_TRAIN_SIZE) if split == "train" else slice(FAKE_TRAIN_SIZE, total)
    return images[part], labels[part]


def _load_image_folder(
    folder: ImageFolder, split: str, size: int, channels: int, limit: int | None, per_class: int | None, seed: int,
    imbalance: float | None, background: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    pairs = folder.split(split)
    if not pairs:
        raise ValueError(
            f"image folder {folder.location} has no {split} images: the test split is every "
            f"{IMAGEFOLDER_TEST_EVERY}th file of a class, so a class needs at least {IMAGEFOLDER_TEST_EVERY} images"
        )
    labels = torch.tensor([label for _, label in pairs], dtype=torch.int64)
    # Select before decoding: decoding is the expensive part of an image folder.
    keep = _select(labels, limit, per_class, seed, imbalance)
    if keep is not None:
        pairs, labels = [pairs[index] for index in keep.tolist()], labels[keep]
    mode = "L" if channels == 1 else "RGB"

    def decode(ref: str) -> np.ndarray:
        return _decode_image(folder.read(ref), ref, size, mode, background)

    with ThreadPoolExecutor(max_workers=_DECODE_THREADS) as pool:
        arrays = list(pool.map(decode, [ref for ref, _ in pairs]))
    stacked = torch.from_numpy(np.stack(arrays))
    images = stacked.unsqueeze(1) if channels == 1 else stacked.permute(0, 3, 1, 2).contiguous()
    return images, labels


def _decode_image(data: bytes, ref: str, size: int, mode: str, background: str = DEFAULT_BACKGROUND) -> np.ndarray:
    """Decode one image, composite its transparent pixels on BACKGROUND, centre-crop it to a square and resize it to
    SIZE (bicubic, antialiased). Converting RGBA straight to RGB would keep whatever colour a transparent pixel
    stores, black in most files: an icon's background would turn black."""
    try:
        with Image.open(io.BytesIO(data)) as opened:
            # Lets JPEG decode at a reduced scale (never below SIZE): a large photo decodes many times faster.
            opened.draft(mode, (size, size))
            image = ImageOps.exif_transpose(opened)
            if image.mode in ("RGBA", "LA", "PA", "P", "La", "RGBa") or "transparency" in image.info:
                # palette transparency must go through RGBA too, or PIL warns and may mangle the colours
                matte = Image.new("RGBA", image.size, ImageColor.getrgb(background))
                image = Image.alpha_composite(matte, image.convert("RGBA"))
            image = ImageOps.fit(image.convert(mode), (size, size), Image.Resampling.BICUBIC)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise ValueError(f"cannot decode image {ref}: {reason}") from None
    return np.asarray(image, dtype=np.uint8)


def split_validation(data: ImageData, share: float, seed: int) -> tuple[ImageData, ImageData]:
    """DATA as (training part, validation part): of each class's N images, round(N * SHARE) but never all of them go
    to validation, drawn by SEED. Both parts keep dataset order; the same arguments make the same split."""
    rng = torch.Generator().manual_seed(seed + 2)
    held = torch.zeros(len(data), dtype=torch.bool)
    for label in data.labels.unique().tolist():
        members = torch.nonzero(data.labels == label).flatten()
        count = min(len(members) - 1, int(len(members) * share + 0.5))
        held[members[torch.randperm(len(members), generator=rng)[:count]]] = True

    def part(keep: torch.Tensor) -> ImageData:
        return ImageData(images=data.images[keep], labels=data.labels[keep], info=data.info)

    return part(~held), part(held)


__all__ = ["ImageData", "load_dataset", "read_idx", "split_validation", "LUMA_WEIGHTS", "SPLITS"]


def held_out_split(
    name: str, settings: Settings, per_class: int, seed: int, size: int, image_size: int | None = None,
    channels: int | None = None, imbalance: float | None = None, pool_per_class: int = 0,
) -> tuple[ImageData, ImageData]:
    """Two disjoint sets of training-split images that the PER_CLASS/SEED/IMBALANCE subset (:func:`load_dataset`)
    leaves out: SIZE images as a validation split, for choosing recipes and settings so that the test split is
    touched by final figures only; and up to POOL_PER_CLASS further images of every class, real images that can
    stand where a generator's samples go (the study's ceiling: a perfect generator)."""
    full = load_dataset(name, settings, "train", image_size=image_size, channels=channels)
    subset = _select(full.labels, None, per_class, seed, imbalance)
    outside = torch.ones(len(full), dtype=torch.bool)
    if subset is not None:
        outside[subset] = False
    candidates = torch.nonzero(outside).flatten()
    shuffled = candidates[torch.randperm(len(candidates), generator=torch.Generator().manual_seed(seed + 1))]
    validation, rest = shuffled[:size].sort().values, shuffled[size:]
    pool = torch.cat([rest[full.labels[rest] == label][:pool_per_class] for label in full.labels.unique().tolist()])
    pool = pool.sort().values

    def part(indices: torch.Tensor) -> ImageData:
        return ImageData(images=full.images[indices], labels=full.labels[indices], info=full.info)

    return part(validation), part(pool)
