"""Settings read from the environment: the one place where configuration enters.

Every process (producer, worker, tests) builds a :class:`Settings` with :meth:`Settings.from_env`.
Secrets are kept out of ``repr`` so that a logged settings object never leaks them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

DEFAULT_BROKER_URL = "redis://localhost:6379/0"
DEFAULT_STORAGE_URL = "file://./augment-data"
DEFAULT_VISIBILITY_TIMEOUT_S = 20


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names the variable and the fix."""


def secret(env: Mapping[str, str], name: str) -> str:
    """Read a secret from NAME, or from the file named by NAME_FILE (Docker/Kubernetes secrets)."""
    value = env.get(name)
    if value:
        return value
    path = env.get(f"{name}_FILE")
    if path:
        try:
            return Path(path).read_text().strip()
        except OSError as exc:
            raise SettingsError(f"{name}_FILE={path} cannot be read ({exc.strerror}); point it at a readable file") from None
    return ""


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise SettingsError(f"{name}={raw!r} is not a boolean; use true or false")


def redact_url(url: str) -> str:
    """Return URL with any password replaced by ``***`` (safe to print)."""
    parts = urlsplit(url)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{hostport}"))


@dataclass(frozen=True)
class Settings:
    broker_url: str = DEFAULT_BROKER_URL
    storage_url: str = DEFAULT_STORAGE_URL
    s3_endpoint: str = ""
    s3_access_key: str = field(default="", repr=False)
    s3_secret_key: str = field(default="", repr=False)
    s3_secure: bool = False
    data_dir: str = ""
    # Seconds after its worker's last heartbeat that an unfinished task is handed to another worker (the bound
    # on recovery from a dead worker, see docs/operations.md); producer and worker must agree on it.
    visibility_timeout_s: int = DEFAULT_VISIBILITY_TIMEOUT_S
    # torch threads of a training job; None: one per usable core that is free when it starts (shared.cpus). A
    # job's weights depend on its thread count, so reproducing one bit for bit takes the count its card records.
    torch_threads: int | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        raw_timeout = env.get("AUGMENT_VISIBILITY_TIMEOUT", str(DEFAULT_VISIBILITY_TIMEOUT_S))
        try:
            visibility_timeout_s = int(raw_timeout)
            if visibility_timeout_s <= 0:
                raise ValueError
        except ValueError:
            raise SettingsError(
                f"AUGMENT_VISIBILITY_TIMEOUT={raw_timeout!r} is not a positive number of seconds"
            ) from None
        raw_threads = env.get("AUGMENT_TORCH_THREADS", "auto") or "auto"
        if raw_threads != "auto" and not (raw_threads.isdigit() and int(raw_threads) > 0):
            raise SettingsError(f"AUGMENT_TORCH_THREADS={raw_threads!r} is not a positive number of threads; "
                                "give one, or auto (a thread per free core)")
        settings = cls(
            broker_url=env.get("AUGMENT_BROKER_URL") or DEFAULT_BROKER_URL,
            storage_url=env.get("AUGMENT_STORAGE_URL") or DEFAULT_STORAGE_URL,
            s3_endpoint=env.get("AUGMENT_S3_ENDPOINT", ""),
            s3_access_key=secret(env, "AUGMENT_S3_ACCESS_KEY"),
            s3_secret_key=secret(env, "AUGMENT_S3_SECRET_KEY"),
            s3_secure=_flag(env, "AUGMENT_S3_SECURE", False),
            data_dir=env.get("AUGMENT_DATA_DIR", ""),
            visibility_timeout_s=visibility_timeout_s,
            torch_threads=None if raw_threads == "auto" else int(raw_threads),
        )
        settings.check()
        return settings

    def __repr__(self) -> str:
        # the broker URL may carry a password, and the S3 keys are secrets: show the masked form only
        return f"Settings({', '.join(f'{name}={value!r}' for name, value in self.describe().items())})"

    def check(self) -> None:
        try:
            _ = urlsplit(self.broker_url).port  # parsing the port is what validates it
        except ValueError:
            raise SettingsError("AUGMENT_BROKER_URL has a port that is not a number; use redis://host:port/db") from None
        scheme = urlsplit(self.broker_url).scheme
        if scheme not in {"redis", "rediss", "memory"}:
            raise SettingsError(
                f"AUGMENT_BROKER_URL has scheme {scheme!r}; use redis://host:port/db (or rediss:// for TLS)"
            )
        storage_scheme = urlsplit(self.storage_url).scheme
        if storage_scheme not in {"s3", "file"}:
            raise SettingsError(
                f"AUGMENT_STORAGE_URL has scheme {storage_scheme!r}; use s3://BUCKET[/prefix] or file:///path"
            )
        if storage_scheme == "s3" and not self.s3_endpoint:
            raise SettingsError("AUGMENT_STORAGE_URL is s3:// but AUGMENT_S3_ENDPOINT is unset; set it to host:port")

    def describe(self) -> dict[str, str]:
        """Settings as printable strings, with secrets masked."""
        return {
            "AUGMENT_BROKER_URL": redact_url(self.broker_url),
            "AUGMENT_STORAGE_URL": self.storage_url,
            "AUGMENT_S3_ENDPOINT": self.s3_endpoint,
            "AUGMENT_S3_ACCESS_KEY": "set" if self.s3_access_key else "unset",
            "AUGMENT_S3_SECRET_KEY": "set" if self.s3_secret_key else "unset",
            "AUGMENT_S3_SECURE": str(self.s3_secure).lower(),
            "AUGMENT_DATA_DIR": self.data_dir,
            "AUGMENT_VISIBILITY_TIMEOUT": str(self.visibility_timeout_s),
            "AUGMENT_TORCH_THREADS": str(self.torch_threads or "auto"),
        }
