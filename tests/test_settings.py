"""shared.settings: defaults, parsing of the environment, secret handling."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.settings import (
    DEFAULT_BROKER_URL,
    DEFAULT_STORAGE_URL,
    DEFAULT_VISIBILITY_TIMEOUT_S,
    Settings,
    SettingsError,
    redact_url,
)

ACCESS = "AKIDEXAMPLEACCESS"
SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"
S3_ENV = {
    "AUGMENT_STORAGE_URL": "s3://bucket/prefix",
    "AUGMENT_S3_ENDPOINT": "127.0.0.1:9000",
}


def test_defaults() -> None:
    settings = Settings()
    assert settings.broker_url == DEFAULT_BROKER_URL
    assert settings.storage_url == DEFAULT_STORAGE_URL
    assert settings.s3_endpoint == ""
    assert settings.s3_access_key == "" and settings.s3_secret_key == ""
    assert settings.s3_secure is False
    assert settings.data_dir == ""
    assert settings.visibility_timeout_s == DEFAULT_VISIBILITY_TIMEOUT_S
    settings.check()


def test_from_env_empty_dict_gives_defaults() -> None:
    assert Settings.from_env({}) == Settings()


def test_from_env_empty_strings_fall_back_to_defaults() -> None:
    settings = Settings.from_env({"AUGMENT_BROKER_URL": "", "AUGMENT_STORAGE_URL": "", "AUGMENT_S3_SECURE": ""})
    assert settings == Settings()


def test_from_env_reads_every_variable() -> None:
    env = {
        "AUGMENT_BROKER_URL": "rediss://broker.example:6380/2",
        "AUGMENT_STORAGE_URL": "s3://data/augment",
        "AUGMENT_S3_ENDPOINT": "minio.example:9000",
        "AUGMENT_S3_ACCESS_KEY": ACCESS,
        "AUGMENT_S3_SECRET_KEY": SECRET,
        "AUGMENT_S3_SECURE": "yes",
        "AUGMENT_DATA_DIR": "/var/lib/augment",
        "AUGMENT_VISIBILITY_TIMEOUT": "7200",
        "AUGMENT_TORCH_THREADS": "3",
    }
    settings = Settings.from_env(env)
    assert settings == Settings(
        broker_url="rediss://broker.example:6380/2",
        storage_url="s3://data/augment",
        s3_endpoint="minio.example:9000",
        s3_access_key=ACCESS,
        s3_secret_key=SECRET,
        s3_secure=True,
        data_dir="/var/lib/augment",
        visibility_timeout_s=7200,
        torch_threads=3,
    )
    assert Settings.from_env({"AUGMENT_TORCH_THREADS": "auto"}).torch_threads is None


def test_from_env_reads_os_environ_when_no_mapping(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUGMENT_DATA_DIR", "/from/environ")
    monkeypatch.setenv("AUGMENT_BROKER_URL", "memory://")
    monkeypatch.delenv("AUGMENT_STORAGE_URL", raising=False)
    settings = Settings.from_env()
    assert settings.data_dir == "/from/environ"
    assert settings.broker_url == "memory://"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1", True),
        ("true", True),
        ("TRUE", True),
        (" yes ", True),
        ("on", True),
        ("0", False),
        ("false", False),
        ("No", False),
        ("off", False),
    ],
)
def test_s3_secure_flag_values(raw: str, expected: bool) -> None:
    assert Settings.from_env({"AUGMENT_S3_SECURE": raw}).s3_secure is expected


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"AUGMENT_S3_SECURE": "maybe"}, "AUGMENT_S3_SECURE"),
        ({"AUGMENT_S3_SECURE": "2"}, "AUGMENT_S3_SECURE"),
        ({"AUGMENT_BROKER_URL": "amqp://guest@localhost//"}, "AUGMENT_BROKER_URL"),
        ({"AUGMENT_BROKER_URL": "localhost:6379"}, "AUGMENT_BROKER_URL"),
        ({"AUGMENT_STORAGE_URL": "gs://bucket/x"}, "AUGMENT_STORAGE_URL"),
        ({"AUGMENT_STORAGE_URL": "/plain/path"}, "AUGMENT_STORAGE_URL"),
        ({"AUGMENT_STORAGE_URL": "s3://bucket/prefix"}, "AUGMENT_S3_ENDPOINT"),
        ({"AUGMENT_VISIBILITY_TIMEOUT": "0"}, "AUGMENT_VISIBILITY_TIMEOUT"),
        ({"AUGMENT_VISIBILITY_TIMEOUT": "soon"}, "AUGMENT_VISIBILITY_TIMEOUT"),
        ({"AUGMENT_TORCH_THREADS": "0"}, "AUGMENT_TORCH_THREADS"),
        ({"AUGMENT_TORCH_THREADS": "all"}, "AUGMENT_TORCH_THREADS"),
        ({"AUGMENT_S3_SECRET_KEY_FILE": "/nonexistent/augment/secret"}, "AUGMENT_S3_SECRET_KEY_FILE"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env(env)
    message = str(info.value)
    assert variable in message
    assert "\n" not in message


def test_s3_storage_without_endpoint_mentions_both_variables() -> None:
    with pytest.raises(SettingsError, match="AUGMENT_S3_ENDPOINT") as info:
        Settings.from_env({"AUGMENT_STORAGE_URL": "s3://bucket"})
    assert "AUGMENT_STORAGE_URL" in str(info.value)


def test_settings_error_is_a_value_error() -> None:
    assert issubclass(SettingsError, ValueError)


def test_check_on_directly_built_settings() -> None:
    with pytest.raises(SettingsError, match="AUGMENT_BROKER_URL"):
        Settings(broker_url="http://localhost").check()
    Settings(broker_url="memory://").check()


def test_secrets_absent_from_repr_and_describe() -> None:
    settings = Settings.from_env({**S3_ENV, "AUGMENT_S3_ACCESS_KEY": ACCESS, "AUGMENT_S3_SECRET_KEY": SECRET})
    assert settings.s3_access_key == ACCESS and settings.s3_secret_key == SECRET
    for text in (repr(settings), str(settings), repr(settings.describe())):
        assert ACCESS not in text
        assert SECRET not in text
    described = settings.describe()
    assert described["AUGMENT_S3_ACCESS_KEY"] == "set"
    assert described["AUGMENT_S3_SECRET_KEY"] == "set"
    assert described["AUGMENT_S3_ENDPOINT"] == "127.0.0.1:9000"
    assert all(isinstance(value, str) for value in described.values())


def test_describe_unset_secrets_and_keys() -> None:
    described = Settings().describe()
    assert described["AUGMENT_S3_ACCESS_KEY"] == "unset"
    assert described["AUGMENT_S3_SECRET_KEY"] == "unset"
    assert described["AUGMENT_S3_SECURE"] == "false"
    assert set(described) == {
        "AUGMENT_BROKER_URL",
        "AUGMENT_STORAGE_URL",
        "AUGMENT_S3_ENDPOINT",
        "AUGMENT_S3_ACCESS_KEY",
        "AUGMENT_S3_SECRET_KEY",
        "AUGMENT_S3_SECURE",
        "AUGMENT_DATA_DIR",
        "AUGMENT_VISIBILITY_TIMEOUT",
        "AUGMENT_TORCH_THREADS",
    }


def test_describe_redacts_broker_password() -> None:
    settings = Settings.from_env({"AUGMENT_BROKER_URL": "redis://:hunter2-pw@redis.example:6379/0"})
    assert settings.broker_url == "redis://:hunter2-pw@redis.example:6379/0"  # the real value is kept for use
    described = settings.describe()
    assert "hunter2-pw" not in repr(described)
    assert described["AUGMENT_BROKER_URL"] == "redis://:***@redis.example:6379/0"


def test_broker_password_absent_from_repr() -> None:
    settings = Settings.from_env({"AUGMENT_BROKER_URL": "redis://:hunter2-pw@redis.example:6379/0"})
    assert "hunter2-pw" not in repr(settings)


def test_secret_files_are_read(tmp_path: Path) -> None:
    access_file = tmp_path / "access"
    secret_file = tmp_path / "secret"
    access_file.write_text(ACCESS + "\n")
    secret_file.write_text(f"  {SECRET}\n\n")
    settings = Settings.from_env(
        {
            **S3_ENV,
            "AUGMENT_S3_ACCESS_KEY_FILE": str(access_file),
            "AUGMENT_S3_SECRET_KEY_FILE": str(secret_file),
        }
    )
    assert settings.s3_access_key == ACCESS
    assert settings.s3_secret_key == SECRET
    assert SECRET not in repr(settings)


def test_direct_secret_wins_over_file(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("from-file")
    settings = Settings.from_env({"AUGMENT_S3_SECRET_KEY": "direct", "AUGMENT_S3_SECRET_KEY_FILE": str(secret_file)})
    assert settings.s3_secret_key == "direct"


def test_unreadable_secret_file_is_a_settings_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="AUGMENT_S3_ACCESS_KEY_FILE") as info:
        Settings.from_env({"AUGMENT_S3_ACCESS_KEY_FILE": str(tmp_path)})  # a directory
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://:s3cr3t@localhost:6379/0", "redis://:***@localhost:6379/0"),
        ("redis://user:s3cr3t@localhost:6379/0", "redis://user:***@localhost:6379/0"),
        ("rediss://user:s3cr3t@redis.example/1", "rediss://user:***@redis.example/1"),
        ("redis://user:p%40ss@host:1/0", "redis://user:***@host:1/0"),
    ],
)
def test_redact_url_hides_password(url: str, expected: str) -> None:
    redacted = redact_url(url)
    assert redacted == expected
    assert "s3cr3t" not in redacted and "p%40ss" not in redacted


@pytest.mark.parametrize("url", ["redis://localhost:6379/0", "memory://", "redis://user@host:6379/0", "s3://b/p"])
def test_redact_url_without_password_is_unchanged(url: str) -> None:
    assert redact_url(url) == url


def test_redact_url_keeps_ipv6_brackets() -> None:
    assert redact_url("redis://u:pw@[::1]:6379/0") == "redis://u:***@[::1]:6379/0"
