"""WebDataset shard format: plain tar files whose members ``<key>.png``, ``<key>.cls``, ``<key>.json`` form one sample.

Shards are built in memory and written with one storage put, so a shard is either wholly present or absent.
Tar headers carry fixed metadata (mtime 0, uid 0) so that the same samples always give the same bytes: a re-run
produces an identical checksum, which is what makes idempotent shard writes checkable.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

SAMPLE_EXTENSIONS = ("png", "cls", "json")
# WebDataset splits a member name at the first dot into key and extension, so keys must not contain dots.
_KEY_PATTERN = re.compile(r"^[A-Za-z0-9_-]+$")


def shard_name(index: int) -> str:
    return f"shard-{index:06d}.tar"


def sample_key(global_index: int) -> str:
    return f"{global_index:09d}"


def encode_png(image: np.ndarray) -> bytes:
    """Encode a uint8 image, (H, W) grey or (H, W, 3) RGB, as PNG."""
    if image.dtype != np.uint8:
        raise ValueError(f"PNG encoding needs uint8 pixels, got {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    buffer = io.BytesIO()
    # compress_level 1: a shard of small images is dominated by encode time, and size differs by a few percent.
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image)


@dataclass(frozen=True)
class Sample:
    key: str
    png: bytes
    label: int
    meta: dict[str, Any]


class ShardWriter:
    """Collects samples and renders one deterministic tar."""

    def __init__(self) -> None:
        self._buffer = io.BytesIO()
        self._tar = tarfile.open(fileobj=self._buffer, mode="w", format=tarfile.USTAR_FORMAT)
        self.count = 0
        self.class_counts: dict[int, int] = {}

    def _add_member(self, name: str, payload: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(payload)
        info.mtime = 0
        info.mode = 0o644
        self._tar.addfile(info, io.BytesIO(payload))

    def add(self, sample: Sample) -> None:
        if not _KEY_PATTERN.match(sample.key):
            raise ValueError(f"sample key {sample.key!r} must use only letters, digits, '_' and '-' (no dots)")
        self._add_member(f"{sample.key}.png", sample.png)
        self._add_member(f"{sample.key}.cls", str(sample.label).encode())
        self._add_member(f"{sample.key}.json", json.dumps(sample.meta, sort_keys=True).encode())
        self.count += 1
        self.class_counts[sample.label] = self.class_counts.get(sample.label, 0) + 1

    def finish(self) -> bytes:
        self._tar.close()
        return self._buffer.getvalue()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_shard(data: bytes) -> Iterator[Sample]:
    """Yield the samples of a shard in order. Raises ValueError on a sample with a missing part."""
    parts: dict[str, dict[str, bytes]] = {}
    order: list[str] = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, _, extension = member.name.partition(".")
            handle = tar.extractfile(member)
            assert handle is not None  # isfile() members always have a payload
            if key not in parts:
                parts[key] = {}
                order.append(key)
            parts[key][extension] = handle.read()
    for key in order:
        sample = parts[key]
        missing = [ext for ext in SAMPLE_EXTENSIONS if ext not in sample]
        if missing:
            raise ValueError(f"shard sample {key!r} lacks {', '.join(missing)}")
        yield Sample(key, sample["png"], int(sample["cls"]), json.loads(sample["json"]))
