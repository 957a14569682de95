"""Object storage behind one small interface, the backend chosen by URL scheme from :data:`BACKENDS`.

Keys are relative, ``/``-separated paths such as ``models/<job_id>/checkpoint.pt``. Every key is checked so
that nothing can escape the configured root or prefix. Writes are atomic in both backends: a reader sees the
old object, the whole new object, or nothing. A remote backend's operations are retried by :func:`retried`.
"""

from __future__ import annotations

import builtins
import functools
import hashlib
import io
import os
import re
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, TypeVar
from urllib.parse import SplitResult, unquote, urlsplit

from shared.settings import Settings

# Control characters and backslashes have no business in a key; "." and ".." segments would escape the root.
_BAD_KEY_CHARS = re.compile(r"[\x00-\x1f\x7f\\]")


class StorageError(RuntimeError):
    """Storage is unreachable or misconfigured; the message says which and what to do."""


class ObjectNotFound(StorageError):
    """The key does not exist."""


class StorageUnavailable(StorageError):
    """The store did not answer (or answered with a server error) for longer than the retry window.

    Worth retrying later: a task that meets it is retried with backoff instead of failing its job.
    """


SHA256_METADATA = "sha256"


def file_sha256(path: Path) -> str:
    """The sha256 hex digest of the file at PATH, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
Method = TypeVar("Method", bound=Callable[..., Any])


def retried(method: Method) -> Method:
    """Retry a remote backend's METHOD as a whole operation, with backoff, for the backend's ``retry_window_s``.

    Whole operations, not single HTTP requests: urllib3 does not retry POSTs, so a multipart upload's create and
    complete calls would otherwise fail on the first dropped connection (the pool's own urllib3 Retry only
    repeats single requests). tenacity runs the policy; the backend names what is worth
    retrying (``transient_errors()``) and how to say that the store is gone (``unreachable(what, error)``); when
    the window is spent the last error becomes :class:`StorageUnavailable`. A window of 0 fails at once.
    """

    @functools.wraps(method)
    def run(self: Any, *args: Any, **kwargs: Any) -> Any:
        import tenacity  # only a remote store pays for importing it

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(self.transient_errors()),
            wait=tenacity.wait_exponential(multiplier=0.5, max=8.0),  # 0.5, 1, 2, 4, 8, 8, ... seconds
            stop=tenacity.stop_before_delay(self.retry_window_s),  # no sleep that would end past the window
        )
        try:
            return retrying(method, self, *args, **kwargs)
        except tenacity.RetryError as exc:
            what = f"{method.__name__.strip('_')} {args[0] or '/'}"  # the operation and the object or prefix
            raise StorageUnavailable(self.unreachable(what, exc.last_attempt.exception())) from None

    return run  # type: ignore[return-value]


def check_key(key: str) -> str:
    """Return KEY if it is a safe relative object key, else raise ValueError naming the problem."""
    if not key or key.startswith("/"):
        raise ValueError(f"object key {key!r} must be a non-empty relative path")
    if _BAD_KEY_CHARS.search(key):
        raise ValueError(f"object key {key!r} contains a control character or backslash")
    for segment in key.split("/"):
        if segment in {"", ".", ".."}:
            raise ValueError(f"object key {key!r} has an empty, '.' or '..' segment")
    return key


def _prefix_key(prefix: str) -> str:
    """A listing prefix may end in one "/" (directory style); otherwise it obeys the key rules."""
    return check_key(prefix[:-1] if prefix.endswith("/") else prefix)


def join_key(*parts: str) -> str:
    return check_key("/".join(part.strip("/") for part in parts if part))


class Storage(ABC):
    """Minimal object store: whole-object put/get, existence, listing by prefix."""

    scheme: ClassVar[str]
    url_form: ClassVar[str]  # how a URL of this backend is written, for messages

    @classmethod
    @abstractmethod
    def open(cls, url: SplitResult, settings: Settings, create_bucket: bool, retry_window_s: float) -> Storage:
        """The store at URL (a URL of this backend's scheme)."""

    @abstractmethod
    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None: ...

    @abstractmethod
    def put_file(self, key: str, path: str | Path, content_type: str = "application/octet-stream") -> None: ...

    @abstractmethod
    def get_bytes(self, key: str) -> bytes: ...

    @abstractmethod
    def size(self, key: str) -> int | None:
        """Size in bytes, or None when the object does not exist."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object; one that does not exist is no error."""

    @abstractmethod
    def list(self, prefix: str = "") -> builtins.list[str]:
        """All keys under PREFIX (recursive), sorted."""

    @abstractmethod
    def url_for(self, key: str) -> str:
        """A URL a person can use to find the object (no credentials in it)."""

    @abstractmethod
    def read_url(self, key: str, expires_s: int = 3600) -> str:
        """Where other programs (webdataset, curl) read the object without this module: a path or a URL that
        carries its own short-lived authorisation, valid for EXPIRES_S seconds."""

    @abstractmethod
    def checksum(self, key: str) -> str | None:
        """The sha256 hex digest of the object's bytes, or None when the object does not exist."""

    def exists(self, key: str) -> bool:
        return self.size(key) is not None

    def get_text(self, key: str) -> str:
        return self.get_bytes(key).decode("utf-8")

    def put_text(self, key: str, text: str, content_type: str = "application/json") -> None:
        self.put_bytes(key, text.encode("utf-8"), content_type)

    def download_prefix(self, prefix: str, out_dir: str | Path) -> builtins.list[Path]:
        """Copy every object under PREFIX into OUT_DIR, keeping the relative layout."""
        out = Path(out_dir)
        written = []
        root = prefix.rstrip("/") + "/"
        for key in self.list(prefix):
            target = out / key[len(root):] if key.startswith(root) else out / key
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(self.get_bytes(key))
            written.append(target)
        return written


class FileStorage(Storage):
    """A directory. Not retried: a local disk that fails is not an outage that waiting rides out."""

    scheme = "file"
    url_form = "file:///path"

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    @classmethod
    def open(cls, url: SplitResult, settings: Settings, create_bucket: bool, retry_window_s: float) -> FileStorage:
        # file://relative/dir is accepted for convenience; file:///abs/dir is the canonical form.
        return cls(unquote(url.netloc + url.path) or ".")

    def _path(self, key: str) -> Path:
        path = (self.root / check_key(key)).resolve()
        # resolve() follows symlinks, so this also catches a link planted inside the root.
        if path != self.root and self.root not in path.parents:
            raise ValueError(f"object key {key!r} resolves outside the storage root")
        return path

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        self._atomic_write(key, lambda handle: handle.write(data))

    def put_file(self, key: str, path: str | Path, content_type: str = "application/octet-stream") -> None:
        def copy(handle: io.BufferedWriter) -> None:
            with open(path, "rb") as source:
                while chunk := source.read(1 << 20):
                    handle.write(chunk)

        self._atomic_write(key, copy)

    def _atomic_write(self, key: str, write: Callable[[io.BufferedWriter], object]) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as handle:
                write(handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp_name, target)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError):  # a "directory" is only a prefix, as in S3
            raise ObjectNotFound(f"{self.url_for(key)} does not exist") from None

    def size(self, key: str) -> int | None:
        path = self._path(key)
        return path.stat().st_size if path.is_file() else None

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def checksum(self, key: str) -> str | None:
        path = self._path(key)
        return file_sha256(path) if path.is_file() else None

    def list(self, prefix: str = "") -> builtins.list[str]:
        base = self._path(_prefix_key(prefix)) if prefix else self.root
        if not base.exists():
            return []
        keys = []
        for path in base.rglob("*") if base.is_dir() else [base]:
            # skip temp files of writes in flight and links that lead out of the root
            if path.is_file() and not path.name.startswith(".tmp-") and self.root in path.resolve().parents:
                keys.append(path.relative_to(self.root).as_posix())
        return sorted(keys)

    def url_for(self, key: str) -> str:
        return (self.root / check_key(key)).as_uri()

    def read_url(self, key: str, expires_s: int = 3600) -> str:
        """The path of the file that holds KEY (checked like every key: it cannot lead out of the root)."""
        return str(self._path(key))


class S3Storage(Storage):
    """Any S3 store (MinIO in production). Uses only calls that MinIO serves."""

    scheme = "s3"
    url_form = "s3://BUCKET[/prefix]"

    def __init__(self, bucket: str, prefix: str, settings: Settings, connect_timeout_s: float = 3.0, retry_window_s: float = 0.0):
        import urllib3
        from minio import Minio

        self.retry_window_s = retry_window_s
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        if self.prefix:
            check_key(self.prefix)
        self.endpoint = settings.s3_endpoint
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=connect_timeout_s, read=60.0),
            maxsize=8,
            retries=urllib3.Retry(total=2, backoff_factor=0.3, status_forcelist=(500, 502, 503, 504)),
        )
        self.client = Minio(
            settings.s3_endpoint,
            access_key=settings.s3_access_key or None,
            secret_key=settings.s3_secret_key or None,
            secure=settings.s3_secure,
            http_client=http,
        )

    @classmethod
    def open(cls, url: SplitResult, settings: Settings, create_bucket: bool, retry_window_s: float) -> S3Storage:
        if not url.netloc:
            raise StorageError(f"storage URL {url.geturl()!r} has no bucket; use {cls.url_form}")
        if not settings.s3_endpoint:
            raise StorageError("s3:// storage needs AUGMENT_S3_ENDPOINT=host:port")
        storage = cls(url.netloc, url.path, settings, retry_window_s=retry_window_s)
        storage.ensure_bucket(create=create_bucket)
        return storage

    @staticmethod
    def transient_errors() -> tuple[type[Exception], ...]:
        """What a store that is down or restarting raises: transport failures and 5xx answers."""
        import urllib3
        from minio.error import ServerError

        return (urllib3.exceptions.HTTPError, ServerError, OSError)

    def unreachable(self, what: str, error: BaseException | None) -> str:
        return (
            f"S3 at {self.endpoint} is unreachable ({what}: {type(error).__name__}); "
            "check AUGMENT_S3_ENDPOINT and that the server is running"
        )

    def ensure_bucket(self, create: bool = True) -> None:
        """Create the bucket if missing (or refuse, for read-only use); StorageError when S3 stays unreachable."""
        from minio.error import S3Error

        try:
            if not self._bucket_exists(self.bucket):
                if not create:
                    raise StorageError(f"bucket {self.bucket!r} does not exist at {self.endpoint}")
                self.client.make_bucket(self.bucket)
        except StorageError:
            raise
        except S3Error as exc:
            if exc.code == "BucketAlreadyOwnedByYou":
                return
            raise StorageError(
                f"S3 at {self.endpoint} refused bucket {self.bucket!r}: {exc.code}; "
                "check AUGMENT_S3_ACCESS_KEY / AUGMENT_S3_SECRET_KEY and the bucket name"
            ) from None
        except Exception as exc:  # urllib3 raises several unrelated types for a dead endpoint
            raise StorageError(self.unreachable(f"bucket {self.bucket}", exc)) from None

    @retried
    def _bucket_exists(self, bucket: str) -> bool:
        return self.client.bucket_exists(bucket)

    def _object(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        # the digest travels as object metadata, so checksum() needs a HEAD, not a download
        self._put_object(self._object(key), data, content_type, {SHA256_METADATA: hashlib.sha256(data).hexdigest()})

    @retried
    def _put_object(self, name: str, data: bytes, content_type: str, metadata: dict[str, str]) -> None:
        self.client.put_object(
            self.bucket, name, io.BytesIO(data), len(data), content_type=content_type, metadata=metadata  # type: ignore[arg-type]
        )

    def put_file(self, key: str, path: str | Path, content_type: str = "application/octet-stream") -> None:
        # the same digest metadata as put_bytes writes: checksum() of an uploaded file is a HEAD too
        self._put_file(self._object(key), str(path), content_type, {SHA256_METADATA: file_sha256(Path(path))})

    @retried
    def _put_file(self, name: str, path: str, content_type: str, metadata: dict[str, str]) -> None:
        self.client.fput_object(self.bucket, name, path, content_type=content_type, metadata=metadata)  # type: ignore[arg-type]

    def get_bytes(self, key: str) -> bytes:
        return self._get_object(self._object(key), key)

    @retried
    def _get_object(self, name: str, key: str) -> bytes:
        from minio.error import S3Error

        try:
            response = self.client.get_object(self.bucket, name)
        except S3Error as exc:
            if exc.code in {"NoSuchKey", "NoSuchObject"}:
                raise ObjectNotFound(f"{self.url_for(key)} does not exist") from None
            raise
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()

    @retried
    def _stat(self, name: str):  # type: ignore[no-untyped-def]
        from minio.error import S3Error

        try:
            return self.client.stat_object(self.bucket, name)
        except S3Error as exc:
            if exc.code in {"NoSuchKey", "NoSuchObject", "NotFound", "ResourceNotFound"}:
                return None
            raise

    def size(self, key: str) -> int | None:
        stat = self._stat(self._object(key))
        return None if stat is None else stat.size

    def delete(self, key: str) -> None:
        self._remove(self._object(key))

    @retried
    def _remove(self, name: str) -> None:
        self.client.remove_object(self.bucket, name)  # S3 answers a missing key with success too

    def checksum(self, key: str) -> str | None:
        stat = self._stat(self._object(key))
        if stat is None:
            return None
        recorded = (stat.metadata or {}).get(f"x-amz-meta-{SHA256_METADATA}")
        # objects written by other tools carry no digest: hash their bytes
        return str(recorded) if recorded else hashlib.sha256(self.get_bytes(key)).hexdigest()

    def list(self, prefix: str = "") -> builtins.list[str]:
        full = self._object(_prefix_key(prefix)) if prefix else self.prefix
        return self._list(full.rstrip("/") + "/" if full else "")

    @retried
    def _list(self, full: str) -> builtins.list[str]:
        strip = len(self.prefix) + 1 if self.prefix else 0
        return sorted(
            obj.object_name[strip:]
            for obj in self.client.list_objects(self.bucket, prefix=full or None, recursive=True)
            if obj.object_name is not None
        )

    def url_for(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._object(key)}"

    def read_url(self, key: str, expires_s: int = 3600) -> str:
        """A presigned HTTP(S) URL: it reads the object without credentials until it expires."""
        from datetime import timedelta

        return self.client.presigned_get_object(self.bucket, self._object(key), expires=timedelta(seconds=expires_s))


# scheme -> backend, as in webdataset and mosaicml/streaming; a new store is one class and one entry here
BACKENDS: dict[str, type[Storage]] = {backend.scheme: backend for backend in (FileStorage, S3Storage)}


def open_storage(settings: Settings, url: str | None = None, create_bucket: bool = True, retry_window_s: float = 0.0) -> Storage:
    """Open the store named by URL (default: ``settings.storage_url``); creates a missing S3 bucket if asked.

    RETRY_WINDOW_S is how long a remote store's calls keep retrying a store that does not answer: 0 for a person
    at a terminal (fail fast), minutes for a worker that must ride out a restart of the store.
    """
    url = url or settings.storage_url
    parts = urlsplit(url)
    backend = BACKENDS.get(parts.scheme)
    if backend is None:
        forms = " or ".join(backend.url_form for backend in BACKENDS.values())
        raise StorageError(f"storage URL {url!r} has scheme {parts.scheme!r}; use {forms}")
    return backend.open(parts, settings, create_bucket=create_bucket, retry_window_s=retry_window_s)
