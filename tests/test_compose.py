"""Static checks of the container files: docker-compose.yml, Dockerfile, .dockerignore, .env.example.

No Docker engine is needed: the files are parsed and checked against the code they configure (the settings
that shared/settings.py reads, the CLI's commands and options, the queues in shared/broker.py).
"""

from __future__ import annotations

import json
import re
import shlex
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from producer.cli import main
from producer.dashboard.app import TOKEN_ENV
from shared.broker import QUEUES
from shared.settings import Settings

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_PATH = ROOT / "docker-compose.yml"
DOCKERFILE_PATH = ROOT / "Dockerfile"
ENV_EXAMPLE_PATH = ROOT / ".env.example"
SETTINGS_PATH = ROOT / "shared" / "settings.py"

SERVICES = {"redis", "minio", "worker", "flower", "producer", "dashboard"}
PINNED_IMAGE_SERVICES = ("redis", "minio", "flower")
REQUIRED_WORKER_ENV = (
    "AUGMENT_BROKER_URL",
    "AUGMENT_STORAGE_URL",
    "AUGMENT_S3_ENDPOINT",
    "AUGMENT_S3_ACCESS_KEY",
    "AUGMENT_S3_SECRET_KEY",
)
# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?message}, ${NAME?message}
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")
SECRET_KEY_NAME = re.compile(r"PASSWORD|SECRET|ACCESS_KEY|ROOT_USER|AUTH|TOKEN")
# A value that is nothing but a required substitution: no literal text, no fallback default.
REQUIRED_SUBSTITUTION = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*(:?\?[^}]*)?\}")
URL_PASSWORD = re.compile(r"[a-z]+://[^/@\s:]*:(\$\{[^}]*\}|[^@/\s]+)@")
# Stand-ins for the values .env provides, to resolve the file the way `docker compose` does.
VARIABLES = {
    "REDIS_PASSWORD": "redis-pw-0123456789",
    "MINIO_ROOT_USER": "minio-user",
    "MINIO_ROOT_PASSWORD": "minio-pw-0123",
    "AUGMENT_DASHBOARD_TOKEN": "dashboard-token-0123",
}


# ---- helpers ----


@pytest.fixture(scope="module")
def compose_text() -> str:
    return COMPOSE_PATH.read_text()


@pytest.fixture(scope="module")
def compose(compose_text: str) -> dict[str, Any]:
    document = yaml.safe_load(compose_text)
    assert isinstance(document, dict) and isinstance(document.get("services"), dict)
    return document


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


@pytest.fixture(scope="module")
def resolved(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services with ${...} substituted (compose substitutes before it splits commands or volumes)."""
    return resolve(compose["services"], VARIABLES)


@pytest.fixture(scope="module")
def env_example() -> str:
    return ENV_EXAMPLE_PATH.read_text()


def settings_env_names() -> set[str]:
    """The AUGMENT_* names shared/settings.py reads, plus the NAME_FILE variants of its secrets, and the dashboard's token."""
    source = SETTINGS_PATH.read_text()
    names = set(re.findall(r'"(AUGMENT_[A-Z0-9_]+)"', source))
    names |= {f"{name}_FILE" for name in re.findall(r'\bsecret\(env, "(AUGMENT_[A-Z0-9_]+)"\)', source)}
    return names | {TOKEN_ENV, f"{TOKEN_ENV}_FILE"}  # the dashboard's token, read like the settings' secrets


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    """A service's environment as a dict (compose allows a mapping or a list of NAME=value)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(key): "" if value is None else str(value) for key, value in env.items()}


def interpolate(text: str, variables: Mapping[str, str]) -> str:
    """Resolve ${...} as docker compose does; a missing required variable raises KeyError."""

    def replace(match: re.Match[str]) -> str:
        name, operator, argument = match.group(1), match.group(2), match.group(3)
        value = variables.get(name)
        unset_or_empty = value is None or (value == "" and operator is not None and operator.startswith(":"))
        if operator and operator.endswith("?") and unset_or_empty:
            raise KeyError(f"{name}: {argument}")
        if operator and operator.endswith("-") and unset_or_empty:
            return argument
        return value or ""

    return INTERPOLATION.sub(replace, text)


def resolve(node: Any, variables: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, variables)
    if isinstance(node, Mapping):
        return {key: resolve(value, variables) for key, value in node.items()}
    if isinstance(node, list):
        return [resolve(value, variables) for value in node]
    return node


def command_words(service: Mapping[str, Any]) -> list[str]:
    command = service.get("command")
    assert command, "service has no command"
    return list(command) if isinstance(command, list) else shlex.split(command)


def strings(node: Any) -> Iterator[str]:
    """Every string value anywhere in a parsed YAML document."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, Mapping):
        for value in node.values():
            yield from strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from strings(value)


def option_value(words: list[str], *names: str) -> str:
    for index, word in enumerate(words):
        for name in names:
            if word == name:
                return words[index + 1]
            if word.startswith(f"{name}="):
                return word.split("=", 1)[1]
    raise AssertionError(f"none of {names} in {words}")


def duration_s(value: str | int) -> float:
    if isinstance(value, int):
        return float(value)
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?", value.strip())
    assert parts and any(parts.groups()), f"{value!r} is not a compose duration"
    hours, minutes, seconds = (float(group or 0) for group in parts.groups())
    return hours * 3600 + minutes * 60 + seconds


def comment_block(text: str, service: str) -> str:
    """The comments inside one service's block of the compose file."""
    lines = text.splitlines()
    start = lines.index(f"  {service}:")
    block: list[str] = []
    for line in lines[start + 1 :]:
        if re.match(r"^ {0,2}\S", line):  # the next service or top-level key
            break
        if line.strip().startswith("#"):
            block.append(line.strip().lstrip("#").strip())
    return " ".join(block)


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with comments dropped and continuation lines joined."""
    logical: list[str] = []
    current = ""
    for line in DOCKERFILE_PATH.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        logical.append(current + stripped)
        current = ""
    if current:
        logical.append(current)
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in logical]


# ---- services and images ----


def test_all_services_exist(services: dict[str, Any]) -> None:
    assert SERVICES <= set(services), f"missing services: {sorted(SERVICES - set(services))}"


@pytest.mark.parametrize("name", PINNED_IMAGE_SERVICES)
def test_third_party_images_are_pinned(services: dict[str, Any], name: str) -> None:
    image = services[name].get("image", "")
    repository, sep, tag = image.rpartition(":")
    assert sep and "/" not in tag and tag, f"{name} image {image!r} has no tag"
    assert tag != "latest", f"{name} image {image!r} is not pinned"
    assert "${" not in image, f"{name} image {image!r} is chosen by a variable, not pinned"


def test_minio_is_pinned_to_a_release_with_the_reason(services: dict[str, Any], compose_text: str) -> None:
    image = services["minio"]["image"]
    assert re.fullmatch(r"(quay\.io/)?minio/minio:RELEASE\.\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}Z", image), image
    reason = comment_block(compose_text, "minio").lower()
    for word in ("community", "source", "image", "augment_s3_endpoint"):
        assert word in reason, f"the comment on the minio service should explain the pin (no {word!r}): {reason!r}"


def test_worker_and_producer_build_this_repository(services: dict[str, Any]) -> None:
    for name in ("worker", "producer"):
        build = services[name].get("build")
        context = build.get("context") if isinstance(build, dict) else build
        assert context in {".", "./"}, f"{name} does not build this repository: {build!r}"
    assert DOCKERFILE_PATH.is_file()


# ---- environment ----


def test_every_augment_name_in_compose_is_read_by_settings(compose_text: str) -> None:
    known = settings_env_names()
    assert {"AUGMENT_BROKER_URL", "AUGMENT_STORAGE_URL", "AUGMENT_S3_SECRET_KEY_FILE"} <= known  # the parse works
    used = set(re.findall(r"\bAUGMENT_[A-Z0-9_]+", compose_text))
    assert used, "the compose file configures no AUGMENT_* setting"
    assert used <= known, f"names shared/settings.py never reads: {sorted(used - known)}"


def test_every_augment_name_in_env_example_is_read_by_settings(env_example: str) -> None:
    used = set(re.findall(r"\bAUGMENT_[A-Z0-9_]+", env_example))
    assert used <= settings_env_names(), f"names shared/settings.py never reads: {sorted(used - settings_env_names())}"


def test_worker_env_sets_the_required_settings(services: dict[str, Any]) -> None:
    env = environment(services["worker"])
    for name in REQUIRED_WORKER_ENV:
        assert env.get(name), f"worker environment does not set {name}"
    assert env["AUGMENT_BROKER_URL"].startswith("redis://") and "@redis:6379/" in env["AUGMENT_BROKER_URL"]
    assert env["AUGMENT_STORAGE_URL"].startswith("s3://")
    assert env["AUGMENT_S3_ENDPOINT"].split(":")[0] == "minio"
    assert env.get("AUGMENT_S3_SECURE") == "false"  # MinIO here speaks plain HTTP
    assert env.get("AUGMENT_DATA_DIR") == "/data"


def test_worker_env_is_accepted_by_settings(resolved: dict[str, Any]) -> None:
    settings = Settings.from_env(environment(resolved["worker"]))
    assert settings.broker_url == f"redis://:{VARIABLES['REDIS_PASSWORD']}@redis:6379/0"
    assert (settings.s3_access_key, settings.s3_secret_key) == (
        VARIABLES["MINIO_ROOT_USER"],
        VARIABLES["MINIO_ROOT_PASSWORD"],
    )
    assert settings.visibility_timeout_s > 0


def test_producer_and_worker_share_one_environment(services: dict[str, Any]) -> None:
    # Same broker, storage and visibility timeout: a producer and worker that disagree lose or duplicate jobs.
    assert environment(services["producer"]) == environment(services["worker"])


def test_flower_watches_the_workers_broker(resolved: dict[str, Any]) -> None:
    words = command_words(resolved["flower"])
    assert words[0] == "celery" and "flower" in words
    assert option_value(words, "--broker", "-b") == environment(resolved["worker"])["AUGMENT_BROKER_URL"]
    assert option_value(words, "--port") == "5555"
    assert any(str(port).split(":")[-1] == "5555" for port in resolved["flower"].get("ports", []))


# ---- the CLI commands ----


@pytest.mark.parametrize("service", ["worker", "dashboard"])
def test_command_is_a_cli_command_with_accepted_options(resolved: dict[str, Any], service: str) -> None:
    words = command_words(resolved[service])
    assert words[0] in main.commands, f"{words[0]!r} is not an augment command: {sorted(main.commands)}"
    accepted = {opt for param in main.commands[words[0]].params for opt in param.opts}
    options = [word.split("=", 1)[0] for word in words[1:] if word.startswith("-")]
    assert options, f"the {service} command passes no options"
    for option in options:
        assert option in accepted, f"`augment {words[0]}` has no option {option}; it has {sorted(accepted)}"


def test_worker_queues_are_the_brokers_queues(resolved: dict[str, Any]) -> None:
    queues = option_value(command_words(resolved["worker"]), "--queues", "-Q").split(",")
    assert sorted(queues) == sorted(QUEUES), queues
    assert len(queues) == len(set(queues))


def test_producer_runs_the_augment_cli(services: dict[str, Any], compose_text: str) -> None:
    producer = services["producer"]
    assert producer.get("entrypoint") == ["augment"]
    assert "cli" in producer.get("profiles", []), "the producer must not start with `docker compose up`"
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts.get("augment") == "producer.cli:main"
    # The usage examples in the file's comments name real commands.
    examples = re.findall(r"docker compose run --rm (?:-\S+ (?:\S+ )?)*producer ([a-z-]+)", compose_text)
    assert examples, "the compose file shows no `docker compose run --rm producer ...` example"
    for command in examples:
        assert command in main.commands, f"example uses `augment {command}`, which does not exist"


def test_dashboard_is_published_on_loopback_with_a_required_token(services: dict[str, Any], resolved: dict[str, Any]) -> None:
    words = command_words(resolved["dashboard"])
    port = option_value(words, "--port")
    assert option_value(words, "--host") == "0.0.0.0"  # reachable through the published port, so the token is required
    assert resolved["dashboard"]["ports"] == [f"127.0.0.1:{port}:{port}"]
    assert re.fullmatch(r"\$\{AUGMENT_DASHBOARD_TOKEN:\?[^}]+\}", environment(services["dashboard"])[TOKEN_ENV])
    env = environment(services["dashboard"])
    del env[TOKEN_ENV]
    assert env == environment(services["worker"]), "the dashboard must read the broker and storage the workers write"
    assert services["dashboard"]["image"] == services["worker"]["image"]


# ---- worker deployment ----


def test_worker_reserves_a_gpu(services: dict[str, Any]) -> None:
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert any(
        device.get("driver") == "nvidia" and device.get("count") == 1 and "gpu" in device.get("capabilities", [])
        for device in devices
    ), devices


def test_worker_can_be_scaled(services: dict[str, Any]) -> None:
    worker = services["worker"]
    assert "container_name" not in worker, "container_name prevents --scale worker=N"
    assert not worker.get("ports"), "fixed host ports prevent --scale worker=N"
    assert worker.get("network_mode") != "host"


def test_worker_shuts_down_warm_after_its_dependencies(services: dict[str, Any]) -> None:
    worker = services["worker"]
    assert duration_s(worker.get("stop_grace_period", "10s")) >= 60, "10s (the default) cuts off a running task"
    depends = worker.get("depends_on")
    assert isinstance(depends, dict), "depends_on needs the long form to wait for health"
    for name in ("redis", "minio"):
        assert depends.get(name, {}).get("condition") == "service_healthy", f"worker does not wait for {name}"
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no healthcheck to wait for"


def test_worker_reads_datasets_read_only_at_data_dir(resolved: dict[str, Any]) -> None:
    data_dir = environment(resolved["worker"])["AUGMENT_DATA_DIR"]
    mounts = []
    for volume in resolved["worker"].get("volumes", []):
        if isinstance(volume, str):
            parts = volume.split(":")
            mounts.append((parts[1], "ro" in parts[2:]))
        else:
            mounts.append((volume["target"], bool(volume.get("read_only"))))
    assert (data_dir, True) in mounts, f"no read-only mount at {data_dir}: {mounts}"


# ---- redis ----


def test_redis_persists_and_requires_a_password(services: dict[str, Any], resolved: dict[str, Any]) -> None:
    words = command_words(resolved["redis"])
    assert words[0] == "redis-server"
    assert option_value(words, "--appendonly") == "yes"
    assert option_value(words, "--requirepass") == VARIABLES["REDIS_PASSWORD"], "requirepass must come from .env"
    assert re.search(r"--requirepass \$\{REDIS_PASSWORD[:?}]", services["redis"]["command"])
    assert any(volume.split(":")[1] == "/data" for volume in resolved["redis"].get("volumes", []))


# ---- secrets ----


def test_no_literal_secret_in_any_environment(services: dict[str, Any]) -> None:
    checked = 0
    for name, service in services.items():
        for key, value in environment(service).items():
            if SECRET_KEY_NAME.search(key) and not key.endswith("_FILE"):
                assert REQUIRED_SUBSTITUTION.fullmatch(value), f"{name}: {key}={value!r} is not a required ${{VAR}}"
                checked += 1
    assert checked >= 4  # the worker's and producer's S3 keys at least


def test_no_literal_password_in_urls_or_commands(compose: dict[str, Any]) -> None:
    passwords = [match.group(1) for text in strings(compose) for match in URL_PASSWORD.finditer(text)]
    assert passwords, "expected the broker URL to carry a password"
    for password in passwords:
        assert REQUIRED_SUBSTITUTION.fullmatch(password), f"URL password {password!r} is not a required ${{VAR}}"


def test_secrets_have_no_working_defaults(compose_text: str) -> None:
    secrets = {name for name, _, _ in INTERPOLATION.findall(compose_text) if SECRET_KEY_NAME.search(name)}
    assert {"REDIS_PASSWORD", "MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"} <= secrets
    for name, operator, argument in INTERPOLATION.findall(compose_text):
        if name in secrets:  # every use, not just one: ${NAME:-default} anywhere would start with a known secret
            assert operator.endswith("?"), f"${{{name}{operator}{argument}}} must be ${{{name}:?message}}"
    everything = dict.fromkeys(secrets, "x" * 16)
    interpolate(compose_text, everything)  # resolves with all of them set
    for name in secrets:
        with pytest.raises(KeyError, match=name):
            interpolate(compose_text, {key: value for key, value in everything.items() if key != name})


def test_env_example_documents_every_variable(compose_text: str, env_example: str) -> None:
    variables = {name for name, _, _ in INTERPOLATION.findall(compose_text)}
    for name in variables:
        assert re.search(rf"^#?\s*{name}=", env_example, re.M), f".env.example does not mention {name}"
    required = {name for name, operator, _ in INTERPOLATION.findall(compose_text) if operator.endswith("?")}
    for name in required:
        value = re.search(rf"^{name}=(.*)$", env_example, re.M)
        assert value, f".env.example must set {name} (uncommented): compose refuses to start without it"
        assert "change" in value.group(1).lower(), f"{name} in .env.example should be a change-me placeholder"
    assert re.search(r"^#.*\bchange", env_example, re.M | re.I), ".env.example should say to change the values"


# ---- Dockerfile ----


def test_dockerfile_installs_the_worker_extra_and_runs_augment() -> None:
    instructions = dockerfile_instructions()
    bases = [args for instruction, args in instructions if instruction == "FROM"]
    assert bases and bases[-1].split()[0] == "python:3.11-slim"
    installs = [args for instruction, args in instructions if instruction == "RUN" and "pip install" in args]
    assert any(re.search(r"""["']?\.\[worker\]["']?""", args) for args in installs), installs
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(requirement.startswith("torch") for requirement in extras["worker"])
    entrypoints = [args for instruction, args in instructions if instruction == "ENTRYPOINT"]
    assert entrypoints and json.loads(entrypoints[-1]) == ["augment"]


def test_dockerignore_keeps_local_state_out() -> None:
    entries = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    for entry in (".venv", ".git", ".env"):
        assert entry in entries, f".dockerignore does not exclude {entry}"
