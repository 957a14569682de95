"""shared.storage: one behaviour suite run against FileStorage and against S3Storage on a real SeaweedFS S3."""

from __future__ import annotations

import hashlib
import os
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from shared.settings import Settings
from shared.storage import (
    FileStorage,
    ObjectNotFound,
    S3Storage,
    Storage,
    StorageError,
    StorageUnavailable,
    check_key,
    join_key,
    open_storage,
    retried,
)
from tests.support.servers import S3Server


def s3_settings(s3_server: S3Server, storage_url: str) -> Settings:
    return Settings(
        storage_url=storage_url,
        s3_endpoint=s3_server.endpoint,
        s3_access_key=s3_server.access_key,
        s3_secret_key=s3_server.secret_key,
    )


def new_bucket() -> str:
    return f"bucket-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="module")
def s3_bucket(s3_server: S3Server) -> str:
    """One bucket for this module: SeaweedFS gives every bucket 7 volumes, so a bucket per test exhausts them."""
    bucket = new_bucket()
    open_storage(s3_settings(s3_server, f"s3://{bucket}"))
    return bucket


@pytest.fixture(params=["file", pytest.param("s3", marks=pytest.mark.integration)])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "file":
        return FileStorage(tmp_path / "root")
    s3_server: S3Server = request.getfixturevalue("s3_server")
    bucket: str = request.getfixturevalue("s3_bucket")
    # a fresh prefix per test in the module's bucket; open_storage also checks/creates the bucket
    opened = open_storage(s3_settings(s3_server, f"s3://{bucket}/test-{uuid.uuid4().hex[:12]}/prefix"))
    assert isinstance(opened, S3Storage)
    return opened


# ---- behaviour common to both backends ----


def test_put_get_bytes(storage: Storage) -> None:
    payload = bytes(range(256)) * 17
    storage.put_bytes("models/t-abc/checkpoint.pt", payload)
    assert storage.get_bytes("models/t-abc/checkpoint.pt") == payload
    assert storage.size("models/t-abc/checkpoint.pt") == len(payload)
    assert storage.exists("models/t-abc/checkpoint.pt")


def test_checksum_is_the_sha256_of_the_bytes_or_none(storage: Storage, tmp_path: Path) -> None:
    storage.put_bytes("a/bytes", b"payload")
    source = tmp_path / "source"
    source.write_bytes(b"from a file")
    storage.put_file("a/file", source)
    assert storage.checksum("a/bytes") == hashlib.sha256(b"payload").hexdigest()
    assert storage.checksum("a/file") == hashlib.sha256(b"from a file").hexdigest()
    assert storage.checksum("a/missing") is None
    storage.put_bytes("a/bytes", b"changed")
    assert storage.checksum("a/bytes") == hashlib.sha256(b"changed").hexdigest()


def test_empty_object(storage: Storage) -> None:
    storage.put_bytes("empty", b"")
    assert storage.get_bytes("empty") == b""
    assert storage.size("empty") == 0
    assert storage.exists("empty")


def test_put_get_text(storage: Storage) -> None:
    text = '{"name": "Ünïcödé ✓", "n": 1}\n'
    storage.put_text("synthetic/g-abc/manifest.json", text)
    assert storage.get_text("synthetic/g-abc/manifest.json") == text
    assert storage.get_bytes("synthetic/g-abc/manifest.json") == text.encode("utf-8")


def test_put_file(storage: Storage, tmp_path: Path) -> None:
    source = tmp_path / "source.bin"
    payload = os.urandom(3 * (1 << 20) + 123)  # more than one copy chunk
    source.write_bytes(payload)
    storage.put_file("files/source.bin", source)
    storage.put_file("files/source-str.bin", str(source), content_type="application/x-tar")
    assert storage.get_bytes("files/source.bin") == payload
    assert storage.get_bytes("files/source-str.bin") == payload
    assert storage.size("files/source.bin") == len(payload)
    assert storage.checksum("files/source.bin") == hashlib.sha256(payload).hexdigest()
    if isinstance(storage, S3Storage):  # recorded at upload, as put_bytes records it: checksum() is a HEAD
        stat = storage.client.stat_object(storage.bucket, storage._object("files/source.bin"))
        assert stat.metadata["x-amz-meta-sha256"] == hashlib.sha256(payload).hexdigest()


def test_missing_object(storage: Storage) -> None:
    assert storage.size("nothing/here") is None
    assert not storage.exists("nothing/here")
    with pytest.raises(ObjectNotFound) as info:
        storage.get_bytes("nothing/here")
    assert "nothing/here" in str(info.value)
    with pytest.raises(ObjectNotFound):
        storage.get_text("nothing/here")
    assert issubclass(ObjectNotFound, StorageError)


def test_overwrite_replaces_content(storage: Storage, tmp_path: Path) -> None:
    storage.put_bytes("a/key", b"first version, longer than the second")
    storage.put_bytes("a/key", b"second")
    assert storage.get_bytes("a/key") == b"second"
    assert storage.size("a/key") == 6
    source = tmp_path / "third"
    source.write_bytes(b"3")
    storage.put_file("a/key", source)
    assert storage.get_bytes("a/key") == b"3"
    assert storage.list("a") == ["a/key"]


def test_list_by_prefix(storage: Storage) -> None:
    keys = ["m/x/2.bin", "m/x/1.bin", "m/x/deep/er/3.bin", "m/y/4.bin", "mx/5.bin", "m0", "other/6.bin"]
    for key in keys:
        storage.put_bytes(key, key.encode())
    assert storage.list() == sorted(keys)
    assert storage.list("m") == ["m/x/1.bin", "m/x/2.bin", "m/x/deep/er/3.bin", "m/y/4.bin"]
    assert storage.list("m/x") == ["m/x/1.bin", "m/x/2.bin", "m/x/deep/er/3.bin"]
    assert storage.list("m/x/deep") == ["m/x/deep/er/3.bin"]
    assert storage.list("mx") == ["mx/5.bin"]
    assert storage.list("nothing") == []
    assert storage.list("m/x/deep/er/nothing") == []


def test_list_empty_storage(storage: Storage) -> None:
    assert storage.list() == []
    assert storage.list("anything") == []


def test_download_prefix(storage: Storage, tmp_path: Path) -> None:
    objects = {
        "synthetic/g-1/shard-000000.tar": b"s0",
        "synthetic/g-1/sub/manifest.json": b"{}",
        "synthetic/g-2/shard-000000.tar": b"other job",
        "synthetic/g-10/x": b"other job too",
    }
    for key, data in objects.items():
        storage.put_bytes(key, data)
    out = tmp_path / "out"
    written = storage.download_prefix("synthetic/g-1", out)
    assert sorted(written) == [out / "shard-000000.tar", out / "sub" / "manifest.json"]
    assert (out / "shard-000000.tar").read_bytes() == b"s0"
    assert (out / "sub" / "manifest.json").read_bytes() == b"{}"
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "shard-000000.tar",
        "sub/manifest.json",
    ]
    assert storage.download_prefix("synthetic/nothing", tmp_path / "none") == []


def test_url_for_names_the_key_without_credentials(storage: Storage) -> None:
    url = storage.url_for("models/t-abc/model.json")
    assert url.startswith(f"{storage.scheme}://")
    assert url.endswith("models/t-abc/model.json")
    if isinstance(storage, S3Storage):
        assert url == f"s3://{storage.bucket}/{storage.prefix}/models/t-abc/model.json"
        assert storage.prefix.endswith("/prefix")


def test_dotted_names_that_are_not_traversal_are_fine(storage: Storage) -> None:
    for key in ["a/.hidden", "a/..b", "a/b..", "a/...", "v1.2/x.tar.gz", "sp ace/ü"]:
        storage.put_bytes(key, key.encode())
        assert storage.get_bytes(key) == key.encode()


BAD_KEYS = [
    "..",
    "../x",
    "a/../b",
    "a/..",
    "../../etc/passwd",  # parent segments
    ".",
    "./a",
    "a/./b",  # current-directory segments
    "/abs",
    "/",
    "/etc/passwd",  # absolute
    "a\\b",
    "..\\x",
    "\\abs",  # backslash
    "a\x00b",
    "\x00",
    "a\nb",
    "a\x7fb",  # NUL and control characters
    "",
    "a//b",
    "a/",
    "//a",  # empty segments
]


def _call(storage: Storage, method: str, key: str, tmp_path: Path) -> Any:
    source = tmp_path / "source"
    source.write_bytes(b"x")
    calls: dict[str, Callable[[], Any]] = {
        "put_bytes": lambda: storage.put_bytes(key, b"x"),
        "put_text": lambda: storage.put_text(key, "x"),
        "put_file": lambda: storage.put_file(key, source),
        "get_bytes": lambda: storage.get_bytes(key),
        "get_text": lambda: storage.get_text(key),
        "size": lambda: storage.size(key),
        "exists": lambda: storage.exists(key),
        "url_for": lambda: storage.url_for(key),
        "checksum": lambda: storage.checksum(key),
        "read_url": lambda: storage.read_url(key),
    }
    return calls[method]()


@pytest.mark.parametrize("key", BAD_KEYS)
@pytest.mark.parametrize(
    "method", ["put_bytes", "put_text", "put_file", "get_bytes", "get_text", "size", "exists", "url_for", "checksum", "read_url"]
)
def test_bad_keys_are_refused(storage: Storage, method: str, key: str, tmp_path: Path) -> None:
    storage.put_bytes("b", b"keep")  # a sibling that a bad put must not touch
    with pytest.raises(ValueError):
        _call(storage, method, key, tmp_path)
    assert storage.list() == ["b"]
    assert storage.get_bytes("b") == b"keep"


# "" is the whole store and "a/" a directory-style prefix, both fine for list(); "/etc/passwd" is left out because
# FileStorage.list refuses it only by accident (relative_to() fails on the absolute path it walks into).
@pytest.mark.parametrize("key", [key for key in BAD_KEYS if key not in ("", "a/", "/etc/passwd")])
def test_bad_prefixes_are_refused_by_list(
    request: pytest.FixtureRequest, storage: Storage, key: str, tmp_path: Path
) -> None:
    storage.put_bytes("a/b", b"x")
    with pytest.raises(ValueError):
        storage.list(key)
    with pytest.raises(ValueError):
        storage.download_prefix(key, tmp_path / "out")


def test_list_and_download_accept_trailing_slash(
    request: pytest.FixtureRequest, storage: Storage, tmp_path: Path
) -> None:
    storage.put_bytes("a/b", b"x")
    assert storage.list("a/") == ["a/b"]
    assert storage.download_prefix("a/", tmp_path / "out") == [tmp_path / "out" / "b"]


def test_get_of_a_prefix_is_object_not_found(request: pytest.FixtureRequest, storage: Storage) -> None:
    storage.put_bytes("dir/key", b"x")
    assert storage.size("dir") is None
    with pytest.raises(ObjectNotFound):
        storage.get_bytes("dir")


def test_check_key_and_join_key() -> None:
    assert check_key("a/b.c") == "a/b.c"
    assert join_key("models", "/t-abc/", "checkpoint.pt") == "models/t-abc/checkpoint.pt"
    assert join_key("", "a", "", "b") == "a/b"
    for key in BAD_KEYS:
        with pytest.raises(ValueError):
            check_key(key)
    with pytest.raises(ValueError):
        join_key("models", "..", "x")


# ---- FileStorage only ----


def _all_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() or p.is_symlink())


def test_file_symlink_out_of_root_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret")
    storage = FileStorage(tmp_path / "root")
    (storage.root / "dirlink").symlink_to(outside, target_is_directory=True)
    (storage.root / "filelink").symlink_to(outside / "secret")
    for key in ("dirlink/secret", "filelink"):
        with pytest.raises(ValueError, match="outside"):
            storage.get_bytes(key)
        with pytest.raises(ValueError):
            storage.size(key)
        with pytest.raises(ValueError):
            storage.put_bytes(key, b"overwritten")
        with pytest.raises(ValueError):
            storage.read_url(key)
    with pytest.raises(ValueError):
        storage.put_bytes("dirlink/new", b"new")
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]
    assert (outside / "secret").read_bytes() == b"secret"


def test_file_symlink_inside_root_is_allowed(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path / "root")
    storage.put_bytes("real/key", b"data")
    (storage.root / "alias").symlink_to(storage.root / "real", target_is_directory=True)
    assert storage.get_bytes("alias/key") == b"data"


def test_file_list_hides_symlinks_out_of_root(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret")
    storage = FileStorage(tmp_path / "root")
    storage.put_bytes("ok", b"1")
    (storage.root / "dirlink").symlink_to(outside, target_is_directory=True)
    (storage.root / "filelink").symlink_to(outside / "secret")
    assert storage.list() == ["ok"]
    with pytest.raises(ValueError, match="outside the storage root"):
        storage.list("dirlink")


def test_file_atomic_write_leaves_no_temp_files(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path / "root")
    source = tmp_path / "source"
    source.write_bytes(b"from file")
    storage.put_bytes("a/b/c", b"bytes")
    storage.put_text("a/t", "text")
    storage.put_file("a/f", source)
    storage.put_bytes("a/b/c", b"again")
    assert _all_files(storage.root) == ["a/b/c", "a/f", "a/t"]


def test_file_atomic_write_failure_keeps_old_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = FileStorage(tmp_path / "root")
    storage.put_bytes("a/key", b"old")

    # the source vanishes: the copy fails after the temp file was created
    with pytest.raises(FileNotFoundError):
        storage.put_file("a/key", tmp_path / "missing")
    assert _all_files(storage.root) == ["a/key"]
    assert storage.get_bytes("a/key") == b"old"

    # the write fails mid-way (after some bytes went out)
    def failing_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="No space"):
        storage.put_bytes("a/key", b"new content")
    with pytest.raises(OSError):
        storage.put_bytes("a/new-key", b"new content")
    monkeypatch.undo()
    assert _all_files(storage.root) == ["a/key"]
    assert storage.get_bytes("a/key") == b"old"
    assert not storage.exists("a/new-key")

    # an interrupt (BaseException) is cleaned up too
    def interrupted_fsync(fd: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted_fsync)
    with pytest.raises(KeyboardInterrupt):
        storage.put_bytes("a/key", b"new")
    monkeypatch.undo()
    assert _all_files(storage.root) == ["a/key"]
    assert storage.get_bytes("a/key") == b"old"


def test_file_list_skips_temp_files(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path / "root")
    storage.put_bytes("a/key", b"1")
    (storage.root / "a" / ".tmp-abc.part").write_bytes(b"partial")
    assert storage.list() == ["a/key"]
    assert storage.list("a") == ["a/key"]


def test_file_root_is_created_and_resolved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    storage = FileStorage("rel/root")
    assert storage.root == (tmp_path / "rel" / "root").resolve()
    assert storage.root.is_dir()
    storage.put_bytes("k", b"v")
    assert (tmp_path / "rel" / "root" / "k").read_bytes() == b"v"
    assert storage.url_for("k") == (storage.root / "k").as_uri()


def test_open_storage_file_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    absolute = open_storage(Settings(), f"file://{tmp_path}/abs")
    assert isinstance(absolute, FileStorage) and absolute.root == (tmp_path / "abs").resolve()
    monkeypatch.chdir(tmp_path)
    relative = open_storage(Settings(storage_url="file://./rel"))
    assert isinstance(relative, FileStorage) and relative.root == (tmp_path / "rel").resolve()
    spaced = open_storage(Settings(), f"file://{tmp_path}/with%20space")
    assert isinstance(spaced, FileStorage) and spaced.root == (tmp_path / "with space").resolve()


@pytest.mark.parametrize(
    ("url", "match"),
    [("gs://bucket/x", "scheme"), ("s3:///prefix", "no bucket"), ("s3://bucket", "AUGMENT_S3_ENDPOINT")],
)
def test_open_storage_bad_urls(url: str, match: str) -> None:
    with pytest.raises(StorageError, match=match):
        open_storage(Settings(), url)


# ---- S3 only ----


@pytest.mark.integration
def test_s3_prefix_isolation(s3_server: S3Server, s3_bucket: str) -> None:
    bucket = f"{s3_bucket}/isolation-{uuid.uuid4().hex[:8]}"
    one = open_storage(s3_settings(s3_server, f"s3://{bucket}/one"))
    two = open_storage(s3_settings(s3_server, f"s3://{bucket}/two"))
    one_deeper = open_storage(s3_settings(s3_server, f"s3://{bucket}/one/deeper"))
    bare = open_storage(s3_settings(s3_server, f"s3://{bucket}"))
    one.put_bytes("k", b"one")
    two.put_bytes("k", b"two")
    one_deeper.put_bytes("k", b"deeper")
    assert one.get_bytes("k") == b"one"
    assert two.get_bytes("k") == b"two"
    assert one.list() == ["deeper/k", "k"]
    assert two.list() == ["k"]
    assert one_deeper.list() == ["k"]
    assert bare.list() == ["one/deeper/k", "one/k", "two/k"]
    # a sibling prefix that merely starts with the same letters is not listed
    open_storage(s3_settings(s3_server, f"s3://{bucket}/one-more")).put_bytes("k", b"x")
    assert one.list() == ["deeper/k", "k"]


@pytest.mark.integration
def test_s3_open_storage_existing_bucket_is_fine(s3_server: S3Server, s3_bucket: str) -> None:
    url = f"s3://{s3_bucket}/existing-{uuid.uuid4().hex[:8]}"
    first = open_storage(s3_settings(s3_server, url))
    first.put_bytes("k", b"v")
    second = open_storage(s3_settings(s3_server, url))
    assert second.get_bytes("k") == b"v"


@pytest.mark.integration
def test_s3_read_url_is_presigned_and_can_be_fetched(s3_server: S3Server, s3_bucket: str) -> None:
    storage = open_storage(s3_settings(s3_server, f"s3://{s3_bucket}/presigned-{uuid.uuid4().hex[:8]}"))
    assert isinstance(storage, S3Storage)
    payload = os.urandom(10_000)
    storage.put_bytes("synthetic/g-abc/shard-000000.tar", payload, "application/x-tar")
    url = storage.read_url("synthetic/g-abc/shard-000000.tar", expires_s=300)
    assert url.startswith("http://")
    assert s3_server.secret_key not in url
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 (our own test server)
        assert response.read() == payload
    with pytest.raises(ValueError):
        storage.read_url("../escape")


@pytest.mark.integration
def test_s3_wrong_credentials_are_a_storage_error(s3_server: S3Server) -> None:
    settings = Settings(
        storage_url=f"s3://{new_bucket()}/p",
        s3_endpoint=s3_server.endpoint,
        s3_access_key=s3_server.access_key,
        s3_secret_key="wrong-" + s3_server.secret_key,
    )
    with pytest.raises(StorageError) as info:
        open_storage(settings)
    assert "wrong-" not in str(info.value)
    assert "AUGMENT_S3_SECRET_KEY" in str(info.value)


def test_s3_dead_endpoint_is_unreachable_quickly() -> None:
    settings = Settings(storage_url="s3://bucket/p", s3_endpoint="127.0.0.1:1", s3_access_key="a", s3_secret_key="b")
    started = time.monotonic()
    with pytest.raises(StorageError, match="unreachable") as info:
        open_storage(settings)
    assert time.monotonic() - started < 15
    assert "127.0.0.1:1" in str(info.value)
    assert "AUGMENT_S3_ENDPOINT" in str(info.value)


@pytest.mark.integration
def test_s3_writes_ride_out_an_outage_within_the_retry_window(s3_server: S3Server, s3_bucket: str) -> None:
    settings = s3_settings(s3_server, f"s3://{s3_bucket}/outage-{uuid.uuid4().hex[:8]}")
    patient = open_storage(settings, retry_window_s=120)
    impatient = open_storage(settings)
    # over minio's 5 MiB part size: a multipart upload, whose create and complete POSTs urllib3 never retries
    payload = os.urandom(6 * 1024 * 1024 + 123)
    s3_server.stop()
    restarter = threading.Timer(3.0, s3_server.start)
    try:
        started = time.monotonic()
        with pytest.raises(StorageUnavailable, match="unreachable"):
            impatient.put_bytes("big", b"x")
        assert time.monotonic() - started < 10
        restarter.start()
        patient.put_bytes("big", payload)
    finally:
        restarter.join()
        s3_server.start()
    assert patient.get_bytes("big") == payload
    assert patient.checksum("big") == hashlib.sha256(payload).hexdigest()


# ---- the retry decorator, on a backend whose store fails as asked ----


class FlakyBackend:
    """What `retried` needs from a backend, around an operation that fails FAILURES times before it answers."""

    def __init__(self, failures: int, retry_window_s: float, error: Exception | None = None):
        self.failures, self.retry_window_s, self.calls = failures, retry_window_s, 0
        self.error = error or ConnectionResetError("connection reset by peer")

    @staticmethod
    def transient_errors() -> tuple[type[Exception], ...]:
        return (OSError,)

    def unreachable(self, what: str, error: BaseException | None) -> str:
        return f"the store is unreachable ({what}: {type(error).__name__})"

    @retried
    def _read(self, key: str) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return f"value of {key}"


class FakeClock:
    """time.monotonic and time.sleep for the retry policy: a sleep moves the clock on, and is recorded."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(time, "monotonic", fake.monotonic)
    monkeypatch.setattr(time, "sleep", fake.sleep)
    return fake


def test_retried_rides_out_transient_errors_within_the_window(clock: FakeClock) -> None:
    flaky = FlakyBackend(failures=2, retry_window_s=30)
    assert flaky._read("k") == "value of k"
    assert flaky.calls == 3 and clock.sleeps == [0.5, 1.0]  # exponential backoff


def test_retried_gives_up_when_the_window_is_spent(clock: FakeClock) -> None:
    impatient = FlakyBackend(failures=1, retry_window_s=0)
    with pytest.raises(StorageUnavailable, match=r"unreachable \(read k: ConnectionResetError\)"):
        impatient._read("k")
    assert impatient.calls == 1 and clock.sleeps == []  # a window of 0 does not wait
    short = FlakyBackend(failures=100, retry_window_s=2)
    with pytest.raises(StorageUnavailable):
        short._read("k")
    # tries at 0, 0.5 and 1.5 s; the next sleep (2 s) would end past the window, so it gives up instead
    assert short.calls == 3 and clock.sleeps == [0.5, 1.0]


def test_retried_passes_other_errors_through_at_once() -> None:
    refused = FlakyBackend(failures=1, retry_window_s=30, error=PermissionError("denied"))
    refused.transient_errors = lambda: (ConnectionError,)  # type: ignore[method-assign]
    with pytest.raises(PermissionError):
        refused._read("k")
    assert refused.calls == 1
