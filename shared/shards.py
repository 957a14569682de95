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
import struct
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

SAMPLE_EXTENSIONS = ("png", "cls", "json")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_END = struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
# WebDataset splits a member name at the first dot into key and extension, so keys must not contain dots.
_KEY_PATTERN = re.compile(r"^[A-Za-z0-9_-]+$")


def shard_name(index: int, attempt: int | None = None) -> str:
    """The file name of shard INDEX; one made under a lease names its ATTEMPT (the lease's epoch), so that a late
    upload of an earlier attempt lands beside the shard a manifest lists, never over it."""
    return f"shard-{index:06d}.tar" if attempt is None else f"shard-{index:06d}-a{attempt}.tar"


def sample_key(global_index: int) -> str:
    return f"{global_index:09d}"


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def encode_png(image: np.ndarray) -> bytes:
    """Encode a uint8 image, (H, W) grey or (H, W, 3) RGB, as PNG."""
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    return encode_pngs(image[None])[0]


def encode_pngs(images: np.ndarray) -> list[bytes]:
    """Encode a batch of uint8 images, (B, H, W) grey or (B, H, W, 1 or 3), as PNGs.

    Written with zlib directly: for the small images a GAN makes, Pillow's per-image set-up costs several times
    the compression itself. Rows are unfiltered and compressed at level 1; any PNG reader decodes the result.
    """
    if images.dtype != np.uint8:
        raise ValueError(f"PNG encoding needs uint8 pixels, got {images.dtype}")
    if images.ndim == 4 and images.shape[3] == 1:
        images = images[..., 0]
    if images.ndim == 3:
        color_type = 0  # grey
    elif images.ndim == 4 and images.shape[3] == 3:
        color_type = 2  # RGB
    else:
        raise ValueError(f"PNG encoding needs (H, W) or (H, W, 3) pixels, got shape {images.shape[1:]}")
    batch, height, width = images.shape[:3]
    rows = np.zeros((batch, height, 1 + images[0, 0].size), dtype=np.uint8)  # a leading 0 per row: filter "None"
    rows[:, :, 1:] = images.reshape(batch, height, -1)
    head = _PNG_SIGNATURE + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0))
    return [head + _png_chunk(b"IDAT", zlib.compress(image_rows.tobytes(), 1)) + _PNG_END for image_rows in rows]


def decode_png(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image)


@dataclass(frozen=True)
class Sample:
    key: str
    png: bytes
    label: int
    meta: dict[str, Any]


_BLOCK = 512
_RECORD = 20 * _BLOCK  # tar archives are padded to whole records, as tarfile writes them
# The constant parts of a USTAR header: mode 0644, uid/gid 0, mtime 0, regular file, no user or group names.
_HEADER_TAIL = b"0" + b"\0" * 100 + b"ustar\x0000" + b"\0" * 247
# ...and their share of the header checksum, with the checksum field counted as eight spaces
_HEADER_TAIL_SUM = sum(_HEADER_TAIL) + 8 * ord(" ")


def tar_member(name: str, payload: bytes) -> bytes:
    """One regular-file member (USTAR header, payload, padding) with fixed metadata, so equal input gives equal bytes.

    Written by hand because ``tarfile`` spends ~35 us per member building headers, more than the PNG encoding of
    a small image costs; the result reads with ``tarfile`` and the ``webdataset`` package like any tar.
    """
    encoded = name.encode("ascii")
    if len(encoded) > 100:
        raise ValueError(f"tar member name {name!r} is longer than 100 bytes")
    head = encoded.ljust(100, b"\0") + b"0000644\0" + b"0000000\0" * 2 + b"%011o\0" % len(payload) + b"00000000000\0"
    checksum = sum(head) + _HEADER_TAIL_SUM
    header = head + b"%06o\0 " % checksum + _HEADER_TAIL
    return header + payload + b"\0" * (-len(payload) % _BLOCK)


def sample_record(sample: Sample) -> bytes:
    """The three tar members of SAMPLE: ``<key>.png``, ``<key>.cls``, ``<key>.json``."""
    if not _KEY_PATTERN.match(sample.key):
        raise ValueError(f"sample key {sample.key!r} must use only letters, digits, '_' and '-' (no dots)")
    return (
        tar_member(f"{sample.key}.png", sample.png)
        + tar_member(f"{sample.key}.cls", str(sample.label).encode())
        + tar_member(f"{sample.key}.json", json.dumps(sample.meta, sort_keys=True).encode())
    )


class ShardWriter:
    """Collects samples and renders one deterministic tar."""

    def __init__(self) -> None:
        self._records: list[bytes] = []
        self.count = 0
        self.class_counts: dict[int, int] = {}

    def add_record(self, record: bytes, label: int) -> None:
        """Add a sample already rendered by :func:`sample_record` (e.g. in another thread)."""
        self._records.append(record)
        self.count += 1
        self.class_counts[label] = self.class_counts.get(label, 0) + 1

    def finish(self) -> bytes:
        body = b"".join(self._records) + b"\0" * (2 * _BLOCK)  # two zero blocks end the archive
        return body + b"\0" * (-len(body) % _RECORD)


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
