"""shared.shards and shared.manifest: WebDataset shards read back by us and by webdataset, deterministically."""

from __future__ import annotations

import gc
import io
import json
import tarfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import webdataset as wds
from hypothesis import given
from hypothesis import strategies as st

from shared.formats import FormatError
from shared.layout import manifest_key
from shared.manifest import MANIFEST_FORMAT, Manifest, ShardEntry
from shared.shards import (
    Sample,
    ShardWriter,
    decode_png,
    encode_png,
    encode_pngs,
    read_shard,
    sample_key,
    sample_record,
    sha256_hex,
    shard_name,
    tar_member,
)
from shared.storage import FileStorage

CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover"]


def make_samples(count: int, shape: tuple[int, ...], seed: int = 0, start: int = 0) -> list[Sample]:
    rng = np.random.default_rng(seed)
    samples = []
    for index in range(start, start + count):
        image = rng.integers(0, 256, size=shape, dtype=np.uint8)
        label = index % len(CLASS_NAMES)
        meta = {"class": label, "class_name": CLASS_NAMES[label], "index": index, "job": "g-abc", "note": "é✓"}
        samples.append(Sample(sample_key(index), encode_png(image), label, meta))
    return samples


def write(samples: list[Sample]) -> bytes:
    writer = ShardWriter()
    for sample in samples:
        writer.add_record(sample_record(sample), sample.label)
    return writer.finish()


def read_with_webdataset(path: Path, decode: str | None = None) -> list[dict[str, Any]]:
    # webdataset never closes the file it opens (it leaves that to garbage collection), which is a
    # ResourceWarning, an error under this project's filterwarnings; collect it here with the warning off.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        dataset = wds.WebDataset([str(path)], shardshuffle=False)
        if decode:
            dataset = dataset.decode(decode)
        records = list(dataset)
        del dataset
        gc.collect()
    return records


@pytest.mark.parametrize("shape", [(28, 28), (32, 32, 3), (64, 64, 3)], ids=["grey28", "rgb32", "rgb64"])
def test_shard_reads_back_with_read_shard_and_webdataset(shape: tuple[int, ...], tmp_path: Path) -> None:
    samples = make_samples(7, shape, start=1000)
    data = write(samples)
    path = tmp_path / shard_name(0)
    path.write_bytes(data)

    ours = list(read_shard(data))
    assert [s.key for s in ours] == [s.key for s in samples]
    assert [s.label for s in ours] == [s.label for s in samples]
    assert [s.meta for s in ours] == [s.meta for s in samples]
    assert [s.png for s in ours] == [s.png for s in samples]

    raw = read_with_webdataset(path)
    assert [r["__key__"] for r in raw] == [s.key for s in samples]
    assert [int(r["cls"]) for r in raw] == [s.label for s in samples]
    assert [json.loads(r["json"]) for r in raw] == [s.meta for s in samples]
    assert [r["png"] for r in raw] == [s.png for s in samples]
    for record in raw:
        assert {"png", "cls", "json"} <= set(record)

    decoded = read_with_webdataset(path, "l8" if len(shape) == 2 else "rgb8")
    assert [d["cls"] for d in decoded] == [s.label for s in samples]
    assert [d["json"] for d in decoded] == [s.meta for s in samples]
    for record, sample in zip(decoded, samples, strict=True):
        pixels = record["png"]
        assert pixels.dtype == np.uint8 and pixels.shape == shape
        np.testing.assert_array_equal(pixels, decode_png(sample.png))


def test_unconditional_label_and_none_metadata_round_trip(tmp_path: Path) -> None:
    image = np.zeros((4, 4), dtype=np.uint8)
    sample = Sample("000000000", encode_png(image), -1, {"class": -1, "class_name": None})
    data = write([sample])
    assert list(read_shard(data)) == [sample]
    path = tmp_path / "u.tar"
    path.write_bytes(data)
    (record,) = read_with_webdataset(path)
    assert int(record["cls"]) == -1
    assert json.loads(record["json"]) == {"class": -1, "class_name": None}


def test_shard_bytes_are_deterministic() -> None:
    first = write(make_samples(5, (32, 32, 3), seed=7))
    second = write(make_samples(5, (32, 32, 3), seed=7))
    assert first == second
    assert sha256_hex(first) == sha256_hex(second)
    assert write(make_samples(5, (32, 32, 3), seed=8)) != first


def test_shard_metadata_key_order_does_not_matter() -> None:
    png = encode_png(np.zeros((2, 2), dtype=np.uint8))
    one = write([Sample("k", png, 0, {"a": 1, "b": 2})])
    two = write([Sample("k", png, 0, {"b": 2, "a": 1})])
    assert one == two


def test_tar_headers_are_fixed() -> None:
    data = write(make_samples(2, (8, 8)))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == [
        "000000000.png",
        "000000000.cls",
        "000000000.json",
        "000000001.png",
        "000000001.cls",
        "000000001.json",
    ]
    for member in members:
        assert member.isfile()
        assert (member.mtime, member.uid, member.gid, member.mode) == (0, 0, 0, 0o644)
        assert (member.uname, member.gname) == ("", "")


def test_writer_counts() -> None:
    writer = ShardWriter()
    for sample in make_samples(7, (4, 4)):
        writer.add_record(sample_record(sample), sample.label)
    assert writer.count == 7
    assert writer.class_counts == {0: 3, 1: 2, 2: 2}
    writer.finish()


def test_empty_shard_is_a_valid_tar() -> None:
    data = ShardWriter().finish()
    assert list(read_shard(data)) == []
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert tar.getmembers() == []


@pytest.mark.parametrize("key", ["a.b", "000000001.png", ".hidden", "", "a/b", "a b", "a\nb", "ü"])
def test_bad_sample_keys_are_refused(key: str) -> None:
    writer = ShardWriter()
    with pytest.raises(ValueError, match="sample key"):
        writer.add_record(sample_record(Sample(key, b"png", 0, {})), 0)
    assert writer.count == 0
    assert list(read_shard(writer.finish())) == []


@pytest.mark.parametrize("key", ["000000001", "abc_DEF-9", "x"])
def test_good_sample_keys(key: str) -> None:
    png = encode_png(np.zeros((2, 2), dtype=np.uint8))
    (sample,) = read_shard(write([Sample(key, png, 3, {})]))
    assert sample.key == key and sample.label == 3


def test_read_shard_refuses_incomplete_samples() -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, payload in [("k.png", b"png"), ("k.cls", b"1")]:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    with pytest.raises(ValueError, match="'k' lacks json"):
        list(read_shard(buffer.getvalue()))


def test_read_shard_skips_directories() -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        directory = tarfile.TarInfo("somedir")
        directory.type = tarfile.DIRTYPE
        tar.addfile(directory)
        for name, payload in [("k.png", b"p"), ("k.cls", b"2"), ("k.json", b"{}")]:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    assert list(read_shard(buffer.getvalue())) == [Sample("k", b"p", 2, {})]


def test_names() -> None:
    assert shard_name(0) == "shard-000000.tar"
    assert shard_name(123456) == "shard-123456.tar"
    assert sample_key(0) == "000000000"
    assert sample_key(99_999_999) == "099999999"
    assert sha256_hex(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


# ---- PNG ----


@pytest.mark.parametrize("shape", [(28, 28), (1, 1), (5, 7), (32, 32, 3), (3, 9, 3)])
def test_png_round_trip(shape: tuple[int, ...]) -> None:
    image = np.random.default_rng(1).integers(0, 256, size=shape, dtype=np.uint8)
    data = encode_png(image)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    decoded = decode_png(data)
    assert decoded.dtype == np.uint8
    assert decoded.shape == shape
    np.testing.assert_array_equal(decoded, image)


def test_png_single_channel_becomes_grey() -> None:
    image = np.arange(16, dtype=np.uint8).reshape(4, 4, 1)
    decoded = decode_png(encode_png(image))
    assert decoded.shape == (4, 4)
    np.testing.assert_array_equal(decoded, image[:, :, 0])


def test_png_extremes() -> None:
    image = np.array([[0, 255], [255, 0]], dtype=np.uint8)
    np.testing.assert_array_equal(decode_png(encode_png(image)), image)


@pytest.mark.parametrize("dtype", [np.float32, np.int64, np.uint16, bool])
def test_png_needs_uint8(dtype: type) -> None:
    with pytest.raises(ValueError, match="uint8"):
        encode_png(np.zeros((4, 4), dtype=dtype))


def test_png_encoding_is_deterministic() -> None:
    image = np.random.default_rng(2).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    assert encode_png(image) == encode_png(image.copy())


# ---- manifest ----


def make_manifest(**changes: Any) -> Manifest:
    fields: dict[str, Any] = dict(
        job_id="g-0123456789ab",
        model_id="t-0123456789ab",
        shards=[ShardEntry(shard_name(0), 1000, 123_456, "a" * 64), ShardEntry(shard_name(1), 500, 61_000, "b" * 64)],
        class_counts={"0": 750, "1": 750},
        class_names=["cat", "dog"],
        image_size=32,
        channels=3,
        spec={"job_id": "g-0123456789ab", "model": "t-0123456789ab", "count": 1500, "class_counts": None},
        created_at="2026-01-02T03:04:05+00:00",
    )
    fields.update(changes)
    return Manifest(**fields)


def test_manifest_round_trip() -> None:
    manifest = make_manifest()
    assert manifest.total == 1500
    assert manifest.format == MANIFEST_FORMAT
    text = manifest.to_json()
    data = json.loads(text)
    assert data["total"] == 1500
    assert data["shards"][0] == {"name": "shard-000000.tar", "count": 1000, "size": 123_456, "sha256": "a" * 64}
    again = Manifest.from_json(text)
    assert again == manifest
    assert again.to_json() == text
    assert all(isinstance(entry, ShardEntry) for entry in again.shards)


def test_manifest_total_is_computed_not_trusted() -> None:
    assert make_manifest(total=7).total == 1500
    data = json.loads(make_manifest().to_json())
    data["total"] = 999_999
    assert Manifest.from_json(json.dumps(data)).total == 1500
    assert make_manifest(shards=[]).total == 0


@pytest.mark.parametrize("version", [0, 3, "1", None])
def test_manifest_unknown_format_refused(version: Any) -> None:
    data = json.loads(make_manifest().to_json())
    data["format"] = version
    with pytest.raises(FormatError, match="format"):
        Manifest.from_json(json.dumps(data))


def test_manifest_without_format_refused() -> None:
    data = json.loads(make_manifest().to_json())
    del data["format"]
    with pytest.raises(FormatError, match="the manifest has no format; this reader reads formats 1 to 2"):
        Manifest.from_json(json.dumps(data))


def test_manifest_load_and_shard_keys(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path)
    manifest = make_manifest()
    storage.put_text(manifest_key(manifest.job_id), manifest.to_json())
    loaded = Manifest.load(storage, manifest.job_id)
    assert loaded == manifest
    assert [loaded.shard_key(entry) for entry in loaded.shards] == [
        "synthetic/g-0123456789ab/shard-000000.tar",
        "synthetic/g-0123456789ab/shard-000001.tar",
    ]


def test_manifest_entries_match_written_shards(tmp_path: Path) -> None:
    """A shard written and listed the way generation does it verifies against its manifest entry."""
    storage = FileStorage(tmp_path)
    entries = []
    for index in range(2):
        data = write(make_samples(3, (8, 8), start=index * 3))
        key = f"synthetic/g-0123456789ab/{shard_name(index)}"
        storage.put_bytes(key, data)
        entries.append(ShardEntry(shard_name(index), 3, len(data), sha256_hex(data)))
    manifest = Manifest.from_json(make_manifest(shards=entries).to_json())
    assert manifest.total == 6
    for entry in manifest.shards:
        data = storage.get_bytes(manifest.shard_key(entry))
        assert (len(data), sha256_hex(data)) == (entry.size, entry.sha256)
        assert len(list(read_shard(data))) == entry.count


@given(
    st.lists(st.tuples(st.from_regex(r"[A-Za-z0-9_-]{1,40}\.(png|cls|json)", fullmatch=True), st.binary(max_size=2000)),
             max_size=8)
)
def test_tar_members_are_byte_identical_to_tarfile(members: list[tuple[str, bytes]]) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(payload), 0, 0o644
            tar.addfile(info, io.BytesIO(payload))
    body = b"".join(tar_member(name, payload) for name, payload in members) + b"\0" * 1024
    assert body + b"\0" * (-len(body) % 10240) == buffer.getvalue()


def test_batch_png_encoding_equals_one_by_one() -> None:
    images = np.random.default_rng(0).integers(0, 256, (5, 9, 7, 3), dtype=np.uint8)
    assert encode_pngs(images) == [encode_png(image) for image in images]
    assert [decode_png(data).tolist() for data in encode_pngs(images)] == images.tolist()
