"""Dataset location (shared.datasets) and decoding (worker.data): fast unit tests on real and generated data."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import subprocess
import sys
import uuid
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import shared.datasets as datasets
from shared.datasets import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_SYSTEM_DIR,
    DatasetNotFound,
    locate_dataset,
    restricted_load,
)
from shared.settings import Settings
from shared.storage import open_storage
from worker.data import load_dataset, read_idx

REPO = Path(__file__).resolve().parent.parent
needs_fashion_mnist = pytest.mark.skipif(
    not FASHION_MNIST_SYSTEM_DIR.is_dir(),
    reason=f"{FASHION_MNIST_SYSTEM_DIR} missing: apt-get install -y dataset-fashion-mnist",
)
CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def test_shared_datasets_imports_without_torch_or_numpy() -> None:
    code = "import sys, shared.datasets; print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_unknown_dataset_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFound, match="unknown dataset 'mnist'"):
        locate_dataset("mnist", Settings(data_dir=str(tmp_path)))
    with pytest.raises(DatasetNotFound, match="unknown dataset 'imagefolder:'"):
        locate_dataset("imagefolder:", Settings())
    with pytest.raises(ValueError, match="not an image folder dataset"):
        load_dataset("imagefolder:", Settings())


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="split 'val'"):
        load_dataset("fake", Settings(), split="val")
    with pytest.raises(ValueError, match="channels=2"):
        load_dataset("fake", Settings(), channels=2)
    with pytest.raises(ValueError, match="per_class=0"):
        load_dataset("fake", Settings(), per_class=0)


# ---- Fashion-MNIST ----


@needs_fashion_mnist
def test_fashion_mnist_from_debian_package(tmp_path: Path) -> None:
    settings = Settings(data_dir=str(tmp_path))  # empty: falls through to the package
    info = locate_dataset("fashion-mnist", settings)
    assert info.location == str(FASHION_MNIST_SYSTEM_DIR)
    assert (info.native_size, info.channels, info.num_classes) == (28, 1, 10)
    assert info.class_names == FASHION_MNIST_CLASSES

    data = load_dataset("fashion-mnist", settings)
    assert data.images.shape == (60000, 1, 28, 28) and data.images.dtype == torch.uint8
    assert data.labels.shape == (60000,) and data.labels.dtype == torch.int64
    assert data.labels.bincount().tolist() == [6000] * 10
    assert data.images.max() == 255 and data.info == info

    test = load_dataset("fashion-mnist", settings, split="test")
    assert test.images.shape == (10000, 1, 28, 28) and test.labels.shape == (10000,)
    assert 0 <= test.labels.min() and test.labels.max() == 9


@needs_fashion_mnist
def test_fashion_mnist_resized_to_rgb() -> None:
    data = load_dataset("fashion-mnist", Settings(), split="test", image_size=32, channels=3)
    assert data.images.shape == (10000, 3, 32, 32) and data.images.dtype == torch.uint8
    assert torch.equal(data.images[:, 0], data.images[:, 2])  # grey repeated, not tinted
    assert data.info.native_size == 28  # info describes the dataset, not the conversion


@needs_fashion_mnist
def test_per_class_is_balanced_seeded_and_in_dataset_order() -> None:
    settings = Settings()
    first = load_dataset("fashion-mnist", settings, split="test", per_class=3, seed=1)
    assert first.images.shape == (30, 1, 28, 28)
    assert first.labels.bincount().tolist() == [3] * 10
    again = load_dataset("fashion-mnist", settings, split="test", per_class=3, seed=1)
    assert torch.equal(first.images, again.images) and torch.equal(first.labels, again.labels)
    other = load_dataset("fashion-mnist", settings, split="test", per_class=3, seed=2)
    assert not torch.equal(first.images, other.images)
    # Not simply the first three of each class in file order: the permutation must have mixed them.
    head = load_dataset("fashion-mnist", settings, split="test", limit=200)
    firsts = torch.cat([head.images[head.labels == label][:3] for label in range(10)])
    assert not torch.equal(firsts.flatten(1).sum(1).sort().values, first.images.flatten(1).sum(1).sort().values)


def _write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(payload) if compress else payload)


def _write_fashion_mnist(directory: Path, compress: bool) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, count in (("train", 12), ("t10k", 4)):
        _write_idx(directory / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (count, 28, 28)), compress)
        _write_idx(directory / f"{prefix}-labels-idx1-ubyte", np.arange(count) % 10, compress)
    if compress:
        for path in directory.iterdir():
            path.rename(path.with_name(path.name + ".gz"))


@pytest.mark.parametrize("layout", ["FashionMNIST/raw", "fashion-mnist", "."])
@pytest.mark.parametrize("compress", [False, True])
def test_fashion_mnist_from_data_dir_first(tmp_path: Path, layout: str, compress: bool) -> None:
    _write_fashion_mnist(tmp_path / layout, compress)
    settings = Settings(data_dir=str(tmp_path))
    assert Path(locate_dataset("fashion-mnist", settings).location) == tmp_path / layout
    data = load_dataset("fashion-mnist", settings, split="test")
    assert data.images.shape == (4, 1, 28, 28) and data.labels.tolist() == [0, 1, 2, 3]


def test_fashion_mnist_missing_says_where_and_how(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "no-package")
    with pytest.raises(DatasetNotFound) as caught:
        load_dataset("fashion-mnist", Settings(data_dir=str(tmp_path / "data")))
    message = str(caught.value)
    assert "\n" not in message
    assert str(tmp_path / "data" / "FashionMNIST" / "raw") in message and str(tmp_path / "no-package") in message
    assert "apt-get install -y dataset-fashion-mnist" in message and "$AUGMENT_DATA_DIR/FashionMNIST/raw/" in message


def test_corrupt_idx_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "train-images-idx3-ubyte"
    _write_idx(path, np.zeros((3, 28, 28)), compress=False)
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(ValueError, match=f"{path} is truncated or corrupt"):
        read_idx(path)
    path.write_bytes(b"not an idx file")
    with pytest.raises(ValueError, match="not an unsigned-byte IDX file"):
        read_idx(path)


# ---- CIFAR-10 ----


def _write_cifar(directory: Path, per_batch: int = 4, protocol: int = pickle.DEFAULT_PROTOCOL) -> None:
    directory.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [*datasets.CIFAR10_TRAIN_BATCHES, datasets.CIFAR10_TEST_BATCH]:
        batch = {b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8), b"labels": list(range(per_batch))}
        (directory / name).write_bytes(pickle.dumps(batch, protocol=protocol))
    meta = {b"label_names": [name.encode() for name in CIFAR_NAMES], b"num_vis": 3072}
    (directory / datasets.CIFAR10_META).write_bytes(pickle.dumps(meta, protocol=protocol))


def test_cifar10_missing_names_the_dir_looked_in(tmp_path: Path) -> None:
    bogus = tmp_path / "no-such-dir"
    with pytest.raises(DatasetNotFound) as caught:
        locate_dataset("cifar10", Settings(data_dir=str(bogus)))
    message = str(caught.value)
    assert str(bogus / "cifar-10-batches-py") in message and "cifar-10-python.tar.gz" in message and "\n" not in message
    with pytest.raises(DatasetNotFound, match="AUGMENT_DATA_DIR is unset"):
        locate_dataset("cifar10", Settings())


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar10_loads_through_restricted_unpickler(tmp_path: Path, protocol: int) -> None:
    _write_cifar(tmp_path / "cifar-10-batches-py", protocol=protocol)
    settings = Settings(data_dir=str(tmp_path))
    info = locate_dataset("cifar10", settings)
    assert info.class_names == tuple(CIFAR_NAMES) and (info.native_size, info.channels) == (32, 3)

    train = load_dataset("cifar10", settings)
    assert train.images.shape == (20, 3, 32, 32) and train.images.dtype == torch.uint8
    assert train.labels.tolist() == [0, 1, 2, 3] * 5
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_1", "rb") as handle:
        first_row = restricted_load(handle)[b"data"][0]  # type: ignore[index]
    # Rows are 1024 red, then 1024 green, then 1024 blue values, each plane row-major.
    assert torch.equal(train.images[0], torch.from_numpy(first_row.reshape(3, 32, 32)))

    test = load_dataset("cifar10", settings, split="test", image_size=28, channels=1)
    assert test.images.shape == (4, 1, 28, 28)


def test_cifar10_dir_can_be_the_data_dir_itself(tmp_path: Path) -> None:
    _write_cifar(tmp_path / "batches")
    assert locate_dataset("cifar10", Settings(data_dir=str(tmp_path / "batches"))).location == str(tmp_path / "batches")


def test_numpy1_pickles_load_without_deprecation_warnings() -> None:
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    # numpy 1 wrote "numpy.core.multiarray"; GLOBAL operands are newline-terminated, so the rename is byte-safe.
    old_style = pickle.dumps(array, protocol=2).replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    assert b"numpy.core.multiarray\n" in old_style
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = restricted_load(io.BytesIO(old_style))
    assert isinstance(loaded, np.ndarray) and np.array_equal(loaded, array)


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


def test_pickle_with_os_system_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps({b"data": _Exploit(marker), b"labels": []})
    with pytest.raises(pickle.UnpicklingError, match=r"refused global (posix|nt|os)\.system"):
        restricted_load(io.BytesIO(payload))
    assert not marker.exists()


def test_cifar_batch_with_exploit_is_refused_naming_the_file(tmp_path: Path) -> None:
    directory = tmp_path / "cifar-10-batches-py"
    _write_cifar(directory)
    marker = tmp_path / "pwned"
    (directory / "data_batch_3").write_bytes(pickle.dumps({b"data": _Exploit(marker), b"labels": []}))
    with pytest.raises(pickle.UnpicklingError, match=f"{directory / 'data_batch_3'}: refused global"):
        load_dataset("cifar10", Settings(data_dir=str(tmp_path)))
    assert not marker.exists()


def test_cifar_batch_with_wrong_shape_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "cifar-10-batches-py"
    _write_cifar(directory)
    bad = {b"data": np.zeros((2, 100), dtype=np.uint8), b"labels": [0, 1]}
    (directory / "test_batch").write_bytes(pickle.dumps(bad))
    with pytest.raises(ValueError, match="test_batch is not a CIFAR-10 batch"):
        load_dataset("cifar10", Settings(data_dir=str(tmp_path)), split="test")


# ---- fake ----


def test_fake_is_deterministic_and_sized() -> None:
    train = load_dataset("fake", Settings(), seed=3)
    test = load_dataset("fake", Settings(), split="test", seed=3)
    assert train.images.shape == (640, 1, 28, 28) and test.images.shape == (160, 1, 28, 28)
    assert train.labels.bincount().tolist() == [64] * 10 and test.labels.bincount().tolist() == [16] * 10
    assert train.info.class_names == tuple(f"class{index}" for index in range(10))
    assert torch.equal(train.images, load_dataset("fake", Settings(), seed=3).images)
    assert not torch.equal(train.images, load_dataset("fake", Settings(), seed=4).images)


def test_fake_classes_are_distinct_and_learnable() -> None:
    train = load_dataset("fake", Settings())
    test = load_dataset("fake", Settings(), split="test")
    means = torch.stack([train.images[train.labels == label].float().mean(0) for label in range(10)])
    # A nearest-class-mean classifier is about the weakest learner there is; it must still separate the classes.
    distances = torch.cdist(test.images.float().flatten(1), means.flatten(1))
    accuracy = (distances.argmin(1) == test.labels).float().mean().item()
    assert accuracy > 0.9
    assert torch.cdist(means.flatten(1), means.flatten(1)).fill_diagonal_(1e9).min() > 100


def test_limit_and_per_class_on_fake() -> None:
    assert len(load_dataset("fake", Settings(), limit=7)) == 7
    assert load_dataset("fake", Settings(), limit=7).labels.tolist() == [0, 1, 2, 3, 4, 5, 6]
    few = load_dataset("fake", Settings(), per_class=5, limit=12)
    assert len(few) == 12 and torch.all(few.labels.bincount() <= 5)
    everything = load_dataset("fake", Settings(), split="test", per_class=100)
    assert len(everything) == 160  # classes with fewer than PER_CLASS keep all they have


# ---- imagefolder ----


def _png(path: Path, size: tuple[int, int], colour: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def _make_folder(root: Path) -> None:
    for index in range(3):
        _png(root / "cat" / f"{index}.png", (40 + index, 30), (200, 50, 50))
    for index in range(2):
        _png(root / "dog" / "nested" / f"{index}.png", (20, 50), (50, 50, 200))
    (root / "dog" / "notes.txt").write_text("not an image")
    (root / "empty").mkdir()
    _png(root / "loose.png", (10, 10), (0, 0, 0))  # not in a class folder: ignored


def test_imagefolder_local(tmp_path: Path) -> None:
    _make_folder(tmp_path / "pets")
    name = f"imagefolder:{tmp_path / 'pets'}"
    info = locate_dataset(name, Settings())
    assert info.class_names == ("cat", "dog") and (info.native_size, info.channels) == (64, 3)
    data = load_dataset(name, Settings())
    assert data.images.shape == (5, 3, 64, 64) and data.images.dtype == torch.uint8
    assert data.labels.tolist() == [0, 0, 0, 1, 1]
    assert data.images[0, :, 32, 32].tolist() == [200, 50, 50]
    small = load_dataset(name, Settings(), image_size=32, channels=1)
    assert small.images.shape == (5, 1, 32, 32)
    assert small.images[0, 0, 16, 16].item() == round(0.299 * 200 + 0.587 * 50 + 0.114 * 50)


def test_imagefolder_relative_path_is_found_under_data_dir(tmp_path: Path) -> None:
    _make_folder(tmp_path / "pets")
    info = locate_dataset("imagefolder:pets", Settings(data_dir=str(tmp_path)))
    assert info.location == str((tmp_path / "pets").resolve())


def test_imagefolder_centre_crops_before_resizing(tmp_path: Path) -> None:
    image = Image.new("L", (300, 100), 0)
    image.paste(255, (100, 0, 200, 100))  # white centre square between black side bands
    (tmp_path / "only").mkdir()
    image.save(tmp_path / "only" / "wide.png")
    data = load_dataset(f"imagefolder:{tmp_path}", Settings(), channels=1)
    assert data.images.shape == (1, 1, 64, 64)
    # The filter reaches a pixel or two past the crop box, so only the outermost columns may darken.
    assert data.images[..., 2:-2].min() >= 250 and data.images.float().mean() > 240


def test_imagefolder_transparency_lands_on_the_chosen_background_and_grey_images_join_an_rgb_folder(tmp_path: Path) -> None:
    icon = Image.new("RGBA", (64, 64), (0, 0, 0, 0))  # transparent pixels that store black, as most files do
    icon.paste((250, 200, 0, 255), (16, 16, 48, 48))  # an opaque yellow square in the middle
    (tmp_path / "icons").mkdir()
    icon.save(tmp_path / "icons" / "a.png")
    icon.convert("P").save(tmp_path / "icons" / "b.png", transparency=0)  # palette transparency, as GIFs and old PNGs
    Image.new("L", (64, 64), 90).save(tmp_path / "icons" / "c.png")  # a grey image among colour ones
    name = f"imagefolder:{tmp_path}"
    white = load_dataset(name, Settings(), channels=3)
    assert white.images[0, :, 2, 2].tolist() == [255, 255, 255] and white.images[0, :, 32, 32].tolist() == [250, 200, 0]
    assert white.images[1, :, 2, 2].tolist() == [255, 255, 255]
    assert white.images[2, :, 10, 10].tolist() == [90, 90, 90]  # grey repeated in every channel
    black = load_dataset(name, Settings(), channels=3, background="black")
    assert black.images[0, :, 2, 2].tolist() == [0, 0, 0] and black.images[0, :, 32, 32].tolist() == [250, 200, 0]
    assert load_dataset(name, Settings(), channels=3, background="#12ab34").images[0, :, 2, 2].tolist() == [18, 171, 52]


def test_imagefolder_test_split_is_every_tenth_file(tmp_path: Path) -> None:
    for index in range(12):
        _png(tmp_path / "a" / f"{index:02d}.png", (8, 8), (index * 20, 0, 0))
    train = load_dataset(f"imagefolder:{tmp_path}", Settings(), image_size=28)
    test = load_dataset(f"imagefolder:{tmp_path}", Settings(), split="test", image_size=28)
    assert (len(train), len(test)) == (11, 1)
    assert test.images[0, 0, 0, 0].item() == 9 * 20  # file 09.png, the tenth in sorted order


def test_imagefolder_too_small_for_a_test_split(tmp_path: Path) -> None:
    _make_folder(tmp_path)
    with pytest.raises(ValueError, match="no test images"):
        load_dataset(f"imagefolder:{tmp_path}", Settings(), split="test")


def test_imagefolder_corrupt_image_names_the_file(tmp_path: Path) -> None:
    _make_folder(tmp_path)
    bad = tmp_path / "dog" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    with pytest.raises(ValueError, match=f"cannot decode image {bad}") as caught:
        load_dataset(f"imagefolder:{tmp_path}", Settings())
    assert "\n" not in str(caught.value)


def test_imagefolder_missing_or_empty(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFound, match=f"looked in {tmp_path / 'nope'}"):
        locate_dataset(f"imagefolder:{tmp_path / 'nope'}", Settings())
    (tmp_path / "classless" / "cls").mkdir(parents=True)
    (tmp_path / "classless" / "cls" / "readme.txt").write_text("x")
    with pytest.raises(DatasetNotFound, match="no class folder with images"):
        locate_dataset(f"imagefolder:{tmp_path / 'classless'}", Settings())


@pytest.mark.integration
def test_imagefolder_s3_on_a_real_s3_server(tmp_path: Path, s3_server) -> None:
    _make_folder(tmp_path / "pets")
    bucket = f"images-{uuid.uuid4().hex[:10]}"
    settings = Settings(s3_endpoint=s3_server.endpoint, s3_access_key=s3_server.access_key,
                        s3_secret_key=s3_server.secret_key)
    storage = open_storage(settings, f"s3://{bucket}/pets")
    for path in (tmp_path / "pets").rglob("*"):
        if path.is_file():
            storage.put_file(path.relative_to(tmp_path / "pets").as_posix(), path)
    data = load_dataset(f"imagefolder:s3://{bucket}/pets", settings, image_size=32)
    assert data.info.class_names == ("cat", "dog") and data.info.location == f"s3://{bucket}/pets"
    assert data.images.shape == (5, 3, 32, 32) and data.labels.tolist() == [0, 0, 0, 1, 1]
    with pytest.raises(DatasetNotFound, match="does not exist"):
        locate_dataset(f"imagefolder:s3://missing-{bucket}/pets", settings)
    assert not s3_server.client().bucket_exists(f"missing-{bucket}")  # looking never creates a bucket


def test_a_long_tailed_subset_follows_its_profile_and_nests_in_the_balanced_one() -> None:
    from shared.specs import long_tail_counts

    tail = load_dataset("fake", Settings(), per_class=40, imbalance=10, seed=2)
    assert torch.bincount(tail.labels, minlength=10).tolist() == long_tail_counts(40, 10, 10, seed=2)
    balanced = load_dataset("fake", Settings(), per_class=40, seed=2)
    # the same seeded draw, cut shorter per class: a rare class's images are among its balanced ones
    balanced_rows = {bytes(image.numpy().tobytes()) for image in balanced.images}
    assert all(bytes(image.numpy().tobytes()) in balanced_rows for image in tail.images)


def test_the_validation_split_and_the_ceiling_pool_are_disjoint_from_the_subset_and_each_other() -> None:
    from worker.data import held_out_split

    subset = load_dataset("fake", Settings(), per_class=20, imbalance=4, seed=1)
    validation, pool = held_out_split("fake", Settings(), 20, 1, 100, imbalance=4, pool_per_class=5)
    keys = [{image.numpy().tobytes() for image in part.images} for part in (subset, validation, pool)]
    assert len(validation) == 100 and torch.bincount(pool.labels, minlength=10).tolist() == [5] * 10
    assert not keys[0] & keys[1] and not keys[0] & keys[2] and not keys[1] & keys[2]
